"""Known medical text-to-image checkpoints (``assets/models.json``).

The registry is data, not code: each entry names where the weights live (a Hub id or a path
under ``assets/``), which modalities it covers, how its prompts are written, its licence as
reported by the source, and where that information came from. ``load("medisyn")`` and
``load("hiesingerlab/MediSyn")`` both resolve through :func:`find`.

No torch import here: the studio reads the registry to fill menus without loading a model.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib

from model_runtime.errors import ModelRuntimeError

EMBEDDED = "embedded"


class UnknownModelError(ModelRuntimeError, KeyError):
    """A registry key that is not in assets/models.json."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown model"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    key: str
    name: str
    family: str
    licence: str
    source_url: str
    modalities: tuple[str, ...] = ()
    modalities_note: str = ""
    prompt_style: str = ""
    prompt_examples: tuple[str, ...] = ()
    hub_id: str | None = None
    path: str | None = None          # relative to the assets folder
    loadable: bool = True             # load() can open it as-is once it is on disk
    licence_verified: bool = False
    notes: str = ""
    base: str | None = None          # LoRA entries: the base model (registry key, Hub id or folder)
    lora: str | None = None          # LoRA entries: adapter file or folder, relative to the assets folder

    @property
    def lora_path(self) -> pathlib.Path | None:
        """Where a LoRA entry's adapter weights must be put (they are not shipped)."""
        return assets_dir() / self.lora if self.lora else None

    @property
    def local_path(self) -> pathlib.Path | None:
        """Absolute path of an entry shipped under assets/ (it may not exist yet)."""
        return assets_dir() / self.path if self.path else None

    @property
    def location(self) -> str:
        """What to pass to the loader: the local path or the Hub id."""
        if self.path:
            return str(self.local_path)
        return self.hub_id or self.key

    def available(self) -> bool:
        """True when the weights are on disk (shipped folder or Hugging Face cache)."""
        if self.path:
            return (self.local_path / "model_index.json").is_file()
        if self.lora:
            base = find(self.base) if self.base else None
            base_ok = base.available() if base else (
                (pathlib.Path(self.base) / "model_index.json").is_file() or _in_hub_cache(self.base))
            folder = self.lora_path
            has_lora = folder.is_file() or (folder.is_dir() and any(folder.glob("*.safetensors")))
            return bool(base_ok and has_lora)
        if self.hub_id:
            return _in_hub_cache(self.hub_id)
        return False

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["modalities"] = list(self.modalities)
        out["prompt_examples"] = list(self.prompt_examples)
        return out


def assets_dir() -> pathlib.Path:
    """The shipped assets folder (``MEDISYN_ASSETS`` overrides, e.g. for an installed wheel)."""
    override = os.environ.get("MEDISYN_ASSETS")
    if override:
        return pathlib.Path(override)
    return pathlib.Path(__file__).resolve().parents[1] / "assets"


def embedded_model_path() -> pathlib.Path:
    return get(EMBEDDED).local_path


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime: float) -> tuple[ModelEntry, ...]:
    data = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(ModelEntry)}
    entries = []
    for raw in data["models"]:
        unknown = set(raw) - fields
        if unknown:
            raise ValueError(f"{path}: model {raw.get('key')!r} has unknown field(s) {sorted(unknown)}")
        item = dict(raw)
        item["modalities"] = tuple(item.get("modalities", ()))
        item["prompt_examples"] = tuple(item.get("prompt_examples", ()))
        entries.append(ModelEntry(**item))
    return tuple(entries)


def list_models() -> list[ModelEntry]:
    """Every registry entry, in file order (the embedded model first)."""
    path = assets_dir() / "models.json"
    return list(_read(str(path), path.stat().st_mtime))


def get(key: str) -> ModelEntry:
    """The entry with this key; UnknownModelError lists the known keys."""
    for entry in list_models():
        if entry.key == key:
            return entry
    known = ", ".join(e.key for e in list_models())
    raise UnknownModelError(f"unknown model key {key!r} (registry keys: {known})")


def find(name: str) -> ModelEntry | None:
    """Entry whose key or Hub id matches ``name`` (case-insensitive), or None."""
    wanted = str(name).strip().lower()
    for entry in list_models():
        if entry.key.lower() == wanted or (entry.hub_id and entry.hub_id.lower() == wanted):
            return entry
    return None


def _in_hub_cache(repo_id: str) -> bool:
    """True when the repo's model_index.json is in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with diffusers
        return False
    try:
        found = try_to_load_from_cache(repo_id, "model_index.json")
    except (OSError, ValueError):
        return False
    return isinstance(found, str)
