"""The Generate tab (admin side): text-to-image with any registry model or a local path.

A thin layer over `model_runtime`: the registry fills the model picker (licence shown),
presets fill the prompt, `model_runtime.generation.generate` runs the request with a step
callback and a cancel flag, and `model_runtime.provenance` writes each PNG with its
metadata (AUTOMATIC1111 `parameters` + JSON, `synthetic: true`) — wanted here, unlike the
blinded reader side.

Every finished run is kept as a *batch* folder (`<db dir>/<db stem>.batches/<id>/`: the
PNGs and a `manifest.csv` that `medisyn study create` accepts), so a batch can become a
study ("New study" → "Generation batches", or "Send to study" below).
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import functools
import html
import pathlib
import secrets
import threading
import time

import numpy as np

from studio.admin.run_slots import RunSlots


LOCAL_PATH = "__local__"
MAX_IMAGES = 16
MAX_STEPS = 150

_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()
# Generations at once in this process; Gradio lets up to GENERATE_ADMITTED requests into
# the handler, where the rest wait for a slot and Cancel reaches them (studio/admin/run_slots.py).
SLOTS = RunSlots(limit=2)
GENERATE_ADMITTED = 8


def batches_root(db_path, batches_dir=None) -> pathlib.Path:
    if batches_dir:
        return pathlib.Path(batches_dir)
    p = pathlib.Path(db_path)
    return p.parent / f"{p.stem}.batches"


def model_choices() -> list[tuple[str, str]]:
    """(label, key) for every registry entry, then 'a local path'."""
    from model_runtime import registry

    out = []
    for e in registry.list_models():
        mark = "" if e.available() else "  (not downloaded)"
        out.append((f"{e.name}{mark}", e.key))
    out.append(("Local diffusers folder…", LOCAL_PATH))
    return out


def model_info(key: str) -> str:
    """Markdown about a registry entry: licence first, then modalities and prompt style."""
    from model_runtime import registry

    if key == LOCAL_PATH:
        return "Give the path of a diffusers folder (with `model_index.json`) on the server."
    e = registry.get(key)
    # Registry text is shown as Markdown, where "<modality>" would vanish as an HTML tag.
    esc = functools.partial(html.escape, quote=False)
    lines = [f"**{esc(e.name)}** — licence: **{esc(e.licence)}**"
             + ("" if e.licence_verified else " *(as reported; verify)*")]
    if e.modalities:
        lines.append(f"Modalities: {esc(', '.join(e.modalities))} — presets of other modalities are "
                     "marked: the model would answer them with one of these")
    if e.prompt_style:
        lines.append(f"Prompts: {esc(e.prompt_style)}")
    if not e.available() and e.lora:
        lines.append(f"⚠️ Not on this machine: needs the base `{esc(e.base or '')}` in the Hugging Face cache "
                     f"and the LoRA adapter in `{esc(str(e.lora_path))}` — nothing is downloaded at run time.")
    elif not e.available():
        where = e.hub_id or e.path
        lines.append(f"⚠️ Not on this machine: put `{where}` in the Hugging Face cache "
                     "(or a local folder) to use it — nothing is downloaded at run time.")
    if e.notes:
        lines.append(esc(e.notes))
    return "  \n".join(lines)


def model_location(key: str, local_path: str | None) -> str:
    from model_runtime import registry

    if key == LOCAL_PATH:
        path = pathlib.Path(str(local_path or "").strip()).expanduser()
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{path} is not a diffusers folder (no model_index.json)")
        return str(path)
    return registry.get(key).location


def get_model(location: str, loras: tuple[str, ...] = ()):
    """Load once per process (per model and LoRA set); concurrent first requests wait for the same load."""
    from model_runtime.loading import load

    key = (location, tuple(loras)) if loras else location
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load(location, options={"loras": list(loras)} if loras else None)
        return _MODELS[key]


def model_loaded(location: str, loras: tuple[str, ...] = ()) -> bool:
    """Whether `get_model` has this model (with these LoRAs, or on its own) loaded already."""
    return (location, loras) in _MODELS or location in _MODELS


def lora_dirs() -> list[pathlib.Path]:
    """Where the LoRA picker looks: assets/loras and the folders in MEDISYN_LORAS (os.pathsep-separated)."""
    import os

    from model_runtime import registry

    extra = [pathlib.Path(p) for p in os.environ.get("MEDISYN_LORAS", "").split(os.pathsep) if p.strip()]
    return [registry.assets_dir() / "loras", *extra]


def lora_choices(dirs=None) -> list[str]:
    """Local LoRA adapters: .safetensors files and `medisyn model finetune` output folders, two levels deep."""
    from model_runtime.lora import DEFAULT_FILE

    found = []
    for root in dirs if dirs is not None else lora_dirs():
        root = pathlib.Path(root)
        if not root.is_dir():
            continue
        for path in sorted([root, *root.glob("*"), *root.glob("*/*")]):
            if path.is_dir() and (path / DEFAULT_FILE).is_file():
                found.append(str(path))
            elif path.is_file() and path.suffix == ".safetensors" and path.name != DEFAULT_FILE \
                    and path.parent.name != "checkpoints" and not (path.parent / DEFAULT_FILE).exists():
                found.append(str(path))
    return list(dict.fromkeys(found))


def lora_specs(values) -> tuple[str, ...]:
    """The picker's values ("PATH" or "PATH:SCALE"), checked: a bad one is a ValueError naming it."""
    from model_runtime.lora import LoraError, parse_spec

    specs = []
    for value in values or ():
        try:
            spec = parse_spec(value)
            spec.file  # exists and holds one adapter
        except LoraError as exc:
            raise ValueError(f"LoRA: {exc}") from None
        specs.append(f"{spec.path}:{spec.scale:g}")
    return tuple(specs)


MAX_FIELDS = 6  # the most fields any preset has (view, anatomy, finding, ..., sex, age)


NOT_DECLARED = " — not a modality of this model"


def model_modalities(key: str | None, local_path: str | None = None) -> tuple[str, ...]:
    """The modalities the chosen model declares (registry entry, or a local folder's
    medisyn.json); empty when it declares none or the choice is not usable."""
    from model_runtime import modalities

    try:
        if key == LOCAL_PATH:
            return modalities.declared(path=str(local_path or "").strip()) if local_path else ()
        return modalities.declared(key) if key else ()
    except (OSError, ValueError):
        return ()


def preset_choices(declared: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(\"Specialty · label\", key) of every prompt preset; with a model's ``declared``
    modalities, presets of other modalities are marked (the model would answer them with one
    of its own modalities, which the batch manifest would then mislabel)."""
    from model_runtime import modalities, presets

    out = []
    for p in presets.list_presets():
        label = f"{p.specialty.capitalize()} · {p.label}"
        if modalities.supports_preset(p.modality, declared) is False:
            label += NOT_DECLARED
        out.append((label, p.key))
    return out


def preset_fields(key: str) -> list[dict]:
    """The preset's fields: name, label, options, default (for the field pickers)."""
    from model_runtime import presets

    p = presets.get_preset(key)
    return [{"name": f.name, "label": f.label, "options": list(f.options), "default": f.default}
            for f in p.fields]


def preset_prompt(key: str, values: dict | None = None) -> tuple[str, str]:
    """(prompt, modality) of a preset with the given field values (defaults otherwise)."""
    from model_runtime import presets

    p = presets.get_preset(key)
    names = set(p.field_names)
    return p.render(**{k: v for k, v in (values or {}).items() if k in names}), p.modality


def model_own_prompt(key: str | None, local_path: str | None, preset_key: str) -> str | None:
    """The chosen model's own caption for the preset's modality (its medisyn.json `prompts`,
    the captions it was trained on), or None. A small model knows only its captions: the
    pathology preset's default "H&E-stained ... colon tissue" gives the embedded model's
    brown immunohistochemistry texture, its own caption says so."""
    import json

    from model_runtime import modalities, presets, registry

    try:
        if key == LOCAL_PATH:
            folder = pathlib.Path(str(local_path or "").strip()) if local_path else None
        else:
            entry = registry.get(key) if key else None
            folder = entry.local_path if entry is not None and entry.path else None
        if folder is None:
            return None
        data = json.loads((pathlib.Path(folder) / modalities.MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError):
        return None
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, dict):
        return None
    wanted = presets.get_preset(preset_key).modality
    for text in prompts.values():
        if wanted in modalities.mentioned(str(text)):
            return str(text)
    return None


@dataclasses.dataclass
class Batch:
    batch_id: str
    folder: pathlib.Path
    images: list[np.ndarray]
    seeds: list[int]
    files: list[pathlib.Path]
    seconds: float
    prompt_seen: str | None = None  # set when the text encoder read only part of the prompt


def run_generation(location: str, *, prompt: str, negative_prompt: str = "", seed: int = 0,
                   steps: int = 25, guidance: float = 7.0, scheduler: str | None = None,
                   n_images: int = 1, width: int | None = None, height: int | None = None,
                   modality: str = "", out_root, on_step=None, cancel: threading.Event | None = None,
                   loras=()) -> Batch:
    """Generate `n_images` (seeds seed, seed+1, ...), write them with provenance to a new
    batch folder in the CLI batch job's layout (`model_runtime.batch_job.write_batch`:
    images/r00000_000.png..., manifest.csv, generation.csv; row 0 of a job with this seed)
    and return the batch."""
    from model_runtime import batch_job, prompts_file
    from model_runtime.generation import GenerationRequest, generate

    if not str(prompt or "").strip():
        raise ValueError("write a prompt (or pick a preset)")
    n_images = int(n_images)
    steps = int(steps)
    if not 1 <= n_images <= MAX_IMAGES:
        raise ValueError(f"number of images must be 1–{MAX_IMAGES}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be 1–{MAX_STEPS}")
    loaded = get_model(location, lora_specs(loras))
    request = GenerationRequest(prompt=prompt.strip(), negative_prompt=negative_prompt or "",
                                num_images=n_images, seed=int(seed), steps=steps,
                                guidance_scale=float(guidance), scheduler=scheduler or None,
                                width=width, height=height)
    t0 = time.perf_counter()
    results = generate(loaded, request, on_step=on_step, cancel=cancel)
    seconds = time.perf_counter() - t0
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    batch_id = f"{stamp}-{secrets.token_hex(3)}"
    folder = pathlib.Path(out_root) / batch_id
    folder.mkdir(parents=True, exist_ok=True)
    tasks = prompts_file.plan_tasks([prompts_file.PromptRow(
        row=0, where="Generate tab", prompt=prompt.strip(), modality=modality,
        negative_prompt=negative_prompt or "", n=n_images)], seed=int(seed))
    images, seeds, pngs = [], [], []
    for item, task in zip(results, tasks):
        if item.seed != task.seed:  # the job's seed rule and the request's must agree
            raise RuntimeError(f"image {item.index} has seed {item.seed}, expected {task.seed}")
        # The admin's download keeps the provenance chunks (A1111 `parameters` + JSON).
        tmp = folder / f".{item.index:03d}.png"
        item.save_png(tmp)
        pngs.append(tmp.read_bytes())
        tmp.unlink()
        images.append(np.asarray(item.image.convert("RGB")))
        seeds.append(item.seed)
    batch_job.write_batch(folder, _job_spec(loaded, request, results), tasks, pngs)
    files = [folder / t.rel_path for t in tasks]
    return Batch(batch_id, folder, images, seeds, files, seconds,
                 prompt_seen=results[0].prompt_seen if results else None)


def _job_spec(loaded, request, results):
    """The batch job's description of this run (generation.csv's columns)."""
    import json

    import torch

    from model_runtime import batch_job, schedulers
    from model_runtime.provenance import generator_label

    width, height = (results[0].image.size if results else (request.width or 0, request.height or 0))
    dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(loaded.dtype)
    try:
        scheduler = schedulers.canonical_name(request.scheduler, loaded.pipe.scheduler)
    except Exception:  # a name the registry does not know: record it as given
        scheduler = request.scheduler or type(loaded.pipe.scheduler).__name__
    adapters = loaded.loras
    return batch_job.JobSpec(
        model=str(loaded.model_id), model_label=generator_label(loaded.model_id, loaded.entry),
        weights_sha256=loaded.weights_hash, steps=request.steps,
        guidance_scale=request.guidance_scale, scheduler=scheduler, width=int(width),
        height=int(height), extra_json="{}", device=str(loaded.device), dtype=dtype,
        options_json="{}", threads=torch.get_num_threads(), loras_json=json.dumps(adapters))


RANDOM_SEED = -1  # the seed field's "a new random seed each run"


def resolve_seed(value) -> int:
    """The seed a run uses: the one given, or a fresh random one for RANDOM_SEED (or none)."""
    if value is None or value == "" or int(value) < 0:
        return secrets.randbelow(2**31)
    return int(value)


def time_left(first: tuple[int, float], step: int, total: int, now: float) -> str:
    """" — about 12 s left" from the pace since the first step seen ("" before a pace)."""
    step0, t0 = first
    if step <= step0 or now <= t0:
        return ""
    left = (now - t0) / (step - step0) * (total - step)
    return f" — about {left:.0f} s left"


def batch_seed(batch_folder) -> int | None:
    """The base seed of a batch (its first image's seed in generation.csv)."""
    if not batch_folder:
        return None
    details = pathlib.Path(batch_folder) / "generation.csv"
    if not details.is_file():
        return None
    with details.open(newline="", encoding="utf-8") as fh:
        first = next(csv.DictReader(fh), None)
    return int(first["seed"]) - int(first.get("k") or 0) if first else None


def batch_zip(batch_folder) -> pathlib.Path:
    """One zip of a batch (images, manifest.csv, generation.csv) for download-all."""
    import zipfile

    folder = pathlib.Path(batch_folder)
    out = folder / f"{folder.name}.zip"
    tmp = out.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:  # PNGs do not compress
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix != ".tmp" and path != out:
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    tmp.replace(out)
    return out


def batch_choices(db_path, batches_dir=None) -> list[tuple[str, str]]:
    """(label, folder) of the saved generation batches, newest first."""
    root = batches_root(db_path, batches_dir)
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir(), reverse=True):
        man = d / "manifest.csv"
        if not man.is_file():
            continue
        with man.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        prompt = rows[0]["prompt"] if rows else ""
        out.append((f"{d.name}: {len(rows)} × “{prompt[:50]}”", str(d)))
    return out


def send_to_study(db_path, batch_folder, study: str, *, actor="admin"):
    """Add a batch's images to an existing (draft) study as synthetic cases."""
    from studies.ingest import add_cases

    return add_cases(db_path, study, manifest=pathlib.Path(batch_folder) / "manifest.csv",
                     actor=actor)
