"""The sampling settings a model recommends: its folder's ``medisyn.json`` (``steps``,
``guidance_scale``; the embedded model writes one), else the runtime's own, 25 steps at guidance 7.0
(the usual Stable Diffusion settings, and what :class:`model_runtime.generation.GenerationRequest`
uses when given none).

No torch import until a model name has to be resolved.
"""
from __future__ import annotations

import json
import math
import os
import pathlib

from model_runtime.errors import ModelRuntimeError

MODEL_FILE = "medisyn.json"
STEPS = 25
GUIDANCE = 7.0


def recommended_settings(model: str | os.PathLike, config: str | os.PathLike | None = None) -> tuple[int, float]:
    """(steps, guidance scale) for ``model``: a registry key, a diffusers folder, a single-file
    checkpoint (its configs from ``config``, as ``load`` finds them) or a cached Hub id.

    A key missing from ``medisyn.json`` takes the runtime's own value; a model that cannot be found
    raises :class:`model_runtime.loading.ModelNotFoundError`, an unreadable ``medisyn.json`` a
    :class:`ModelRuntimeError` naming it."""
    from model_runtime import loading

    folder = loading.config_root(loading.resolve(model)[0], config)
    path = pathlib.Path(folder) / MODEL_FILE
    if not path.is_file():
        return STEPS, GUIDANCE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        steps = int(data.get("steps", STEPS))
        guidance = float(data.get("guidance_scale", GUIDANCE))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelRuntimeError(f"{path}: cannot read the recommended steps and guidance ({exc})") from None
    if steps < 1 or not math.isfinite(guidance) or guidance < 0:
        raise ModelRuntimeError(f"{path}: steps must be at least 1 and guidance_scale finite and >= 0")
    return steps, guidance


def settings_or_runtime_defaults(model: str | os.PathLike | None) -> tuple[int, float]:
    """`recommended_settings`, or the runtime's own when there is no model or it cannot be found
    or read: the starting values of a form or a plan, where the run itself reports such a model."""
    if model:
        try:
            return recommended_settings(model)
        except ModelRuntimeError:
            pass
    return STEPS, GUIDANCE
