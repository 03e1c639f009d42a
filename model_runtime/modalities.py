"""Which image modalities a model knows, and which ones a request asks for.

A model declares its modalities in its registry entry (``assets/models.json``: ``modalities``)
or, for a folder outside the registry, in the folder's ``medisyn.json`` (``"modalities": [...]``,
as the embedded model does). Declared names are free text ("brain MRI", "chest X-ray"); they are
matched to the preset modalities (``assets/prompt_presets.json``) plus nuclear medicine by the
keyword patterns below, so "brain MRI" counts as MRI.

A request asks for a modality when its manifest modality (``--modality`` / the CSV column / a
preset) names one, or when its prompt does ("Chest X-ray (CXR) ...", "Optical coherence
tomography image ..."). Asked for a modality it does not know, a model still answers — with one
it was trained on, which a manifest would then label as the one requested — so the CLI warns and
the Generate tab marks the preset.

No torch import: the studio reads this to fill menus without loading a model.
"""
from __future__ import annotations

import json
import os
import pathlib
import re

from model_runtime import registry
from model_runtime.defaults import MODEL_FILE

# Canonical names: the presets' "modality" values, plus nuclear medicine (the embedded model's).
_PATTERNS: dict[str, str] = {
    "chest X-ray": r"\bchest\s*x-?ray|\bcxr\b|\bchest radiograph|\bradiograph|\bx-?ray\b",
    "CT": r"\bct\b|computed tomography",
    "MRI": r"\bmri\b|\bmr image|magnetic resonance",
    "ultrasound": r"ultrasound|sonograph|echocardiograph|doppler",
    "fundus photograph": r"\bfundus|fundoscop|funduscop|retinal photograph",
    "OCT": r"\boct\b|optical coherence tomograph",
    "histology": r"histolog|histopatholog|\bh&e\b|immunohistochem|whole-slide",
    "endoscopy": r"endoscop|gastroscop",
    "colonoscopy": r"colonoscop",
    "dermoscopy": r"dermoscop|dermatoscop",
    "clinical photograph": r"clinical photograph|skin photograph",
    "surgical video frame": r"surgical video|laparoscop|surgical frame",
    "nuclear medicine": r"scintigra|nuclear medicine|bone scan|\bspect\b|(?-i:\bPET\b)",
}
_COMPILED = {name: re.compile(pattern, re.IGNORECASE) for name, pattern in _PATTERNS.items()}
CANONICAL = tuple(_PATTERNS)


def mentioned(text: str) -> set[str]:
    """Canonical modalities a prompt or a modality label names."""
    text = str(text or "")
    found = {name for name, pattern in _COMPILED.items() if pattern.search(text)}
    if "colonoscopy" in found:
        found.discard("endoscopy")  # "colonoscopy image" is not the upper-GI preset
    return found


def known(declared) -> set[str]:
    """Canonical modalities covered by a model's declared names."""
    out: set[str] = set()
    for name in declared or ():
        exact = [c for c in CANONICAL if c.lower() == str(name).strip().lower()]
        out.update(exact or mentioned(name))
    return out


def declared(model: str | os.PathLike | None = None, *, path: str | os.PathLike | None = None,
             entry: registry.ModelEntry | None = None) -> tuple[str, ...]:
    """The modalities a model declares (empty when it declares none: then nothing is checked).

    ``model`` may be a registry key, a Hub id or a folder; or pass the resolved ``path``/``entry``.
    The registry entry wins; a folder's ``medisyn.json`` covers models outside the registry.
    """
    if entry is None and model is not None:
        entry = registry.find(os.fspath(model))
    if entry is not None and entry.modalities:
        return tuple(entry.modalities)
    folder = pathlib.Path(path) if path is not None else (
        entry.local_path if entry is not None and entry.path else (pathlib.Path(os.fspath(model)) if model else None))
    if folder is None:
        return ()
    try:
        data = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    values = data.get("modalities") if isinstance(data, dict) else None
    return tuple(str(v) for v in values) if isinstance(values, list) else ()


def unknown_to(declared_names, *texts: str) -> set[str]:
    """Modalities named in ``texts`` (prompt, modality label) that the model does not declare;
    empty when the model declares nothing."""
    if not declared_names:
        return set()
    asked: set[str] = set()
    for text in texts:
        asked |= mentioned(text)
    return asked - known(declared_names)


def supports_preset(preset_modality: str, declared_names) -> bool | None:
    """True/False for a preset's modality; None when the model declares nothing."""
    if not declared_names:
        return None
    wanted = known([preset_modality])
    return bool(wanted) and wanted <= known(declared_names)
