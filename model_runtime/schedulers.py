"""Sampler names (as AUTOMATIC1111 / Civitai spell them) -> diffusers scheduler classes.

A diffusers scheduler holds per-run state (timesteps, step index, solver history), so a
scheduler shared by two concurrent calls corrupts both. Every call
therefore gets a *new* scheduler built with ``from_config`` from the checkpoint's own config;
the checkpoint's scheduler object is never mutated.
"""
from __future__ import annotations

import dataclasses
import importlib.util

import diffusers
from diffusers import SchedulerMixin

from model_runtime.errors import ModelRuntimeError

DEFAULT = "default"  # the checkpoint's own scheduler, as saved


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    name: str
    class_name: str
    overrides: tuple[tuple[str, object], ...] = ()
    requires: str | None = None  # an optional package the scheduler imports at run time

    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


def _spec(name, cls, requires=None, **overrides) -> SamplerSpec:
    return SamplerSpec(name, cls, tuple(sorted(overrides.items())), requires)


# Denoising-diffusion checkpoints (SD 1.x/2.x, SDXL, PixArt, Kandinsky decoder ...).
SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in [
    _spec("DPM++ 2M", "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2,
          use_karras_sigmas=False),
    _spec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", algorithm_type="dpmsolver++", solver_order=2,
          use_karras_sigmas=True),
    _spec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++",
          use_karras_sigmas=False),
    _spec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", algorithm_type="sde-dpmsolver++",
          use_karras_sigmas=True),
    _spec("DPM++ SDE", "DPMSolverSDEScheduler", requires="torchsde", use_karras_sigmas=False),
    _spec("DPM++ SDE Karras", "DPMSolverSDEScheduler", requires="torchsde", use_karras_sigmas=True),
    _spec("DPM2", "KDPM2DiscreteScheduler", use_karras_sigmas=False),
    _spec("DPM2 a", "KDPM2AncestralDiscreteScheduler", use_karras_sigmas=False),
    _spec("Euler", "EulerDiscreteScheduler", use_karras_sigmas=False),
    _spec("Euler a", "EulerAncestralDiscreteScheduler"),
    _spec("Heun", "HeunDiscreteScheduler", use_karras_sigmas=False),
    _spec("LMS", "LMSDiscreteScheduler", use_karras_sigmas=False),
    _spec("LMS Karras", "LMSDiscreteScheduler", use_karras_sigmas=True),
    _spec("DDIM", "DDIMScheduler"),
    _spec("DDPM", "DDPMScheduler"),
    _spec("PNDM", "PNDMScheduler", skip_prk_steps=True),  # PLMS, as Stable Diffusion ships it
    _spec("UniPC", "UniPCMultistepScheduler"),
    _spec("DEIS", "DEISMultistepScheduler"),
]}

# Flow-matching checkpoints (SD3, Flux) pass flow-specific arguments (sigmas, mu) to their
# scheduler, which the classic samplers above do not accept: only flow samplers apply.
FLOW_SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in [
    _spec("Euler", "FlowMatchEulerDiscreteScheduler", stochastic_sampling=False),
    _spec("Euler a", "FlowMatchEulerDiscreteScheduler", stochastic_sampling=True),
]}


class UnknownSchedulerError(ModelRuntimeError, ValueError):
    """A sampler name the runtime does not know; the message lists the known ones."""


def is_flow_matching(scheduler: SchedulerMixin) -> bool:
    return type(scheduler).__name__.startswith("FlowMatch")


def _table(base: SchedulerMixin) -> dict[str, SamplerSpec]:
    return FLOW_SAMPLERS if is_flow_matching(base) else SAMPLERS


def available(base: SchedulerMixin) -> list[str]:
    """Sampler names usable with a checkpoint whose saved scheduler is ``base``."""
    compatible = {c.__name__ for c in getattr(base, "compatibles", [])} | {type(base).__name__}
    return [name for name, spec in _table(base).items()
            if spec.class_name in compatible and spec.available()]


def _normalise(name: str) -> str:
    return " ".join(str(name).replace("_", " ").split()).lower()


def is_own(name: str | None, base: SchedulerMixin) -> bool:
    """True when ``name`` asks for the checkpoint's own scheduler: None, "default" or its class name."""
    return name is None or _normalise(name) in (DEFAULT, _normalise(type(base).__name__))


def canonical_name(name: str | None, base: SchedulerMixin) -> str:
    """The display name a request's sampler resolves to (for provenance and batching keys).

    The checkpoint's own scheduler is labelled by its class name, not by a sampler name: a
    saved scheduler may have any config (``sde-dpmsolver++``, ``solver_order=3``, LCM, TCD,
    EDM ...), which a sampler name would misdescribe. Passing that label back as a name
    selects the checkpoint's own scheduler again, so a recorded image can be regenerated.
    """
    if is_own(name, base):
        return type(base).__name__
    wanted = _normalise(name)
    for key in _table(base):
        if _normalise(key) == wanted:
            return key
    raise UnknownSchedulerError(f"unknown or unsupported scheduler {name!r} for this model; choose one of: "
                                + _choices(base))


def make_scheduler(name: str | None, base: SchedulerMixin) -> SchedulerMixin:
    """A new scheduler for one call: ``name`` built from ``base``'s config, or for the checkpoint's
    own (see :func:`is_own`) an unchanged copy of ``base``."""
    if is_own(name, base):
        return fresh_copy(base)
    display = canonical_name(name, base)
    spec = _table(base)[display]
    if display not in available(base):
        why = f"needs the '{spec.requires}' package" if not spec.available() else "is not compatible with it"
        raise UnknownSchedulerError(f"scheduler {display!r} {why}; choose one of: " + _choices(base))
    cls = getattr(diffusers, spec.class_name)
    return cls.from_config(base.config, **dict(spec.overrides))


def _choices(base: SchedulerMixin) -> str:
    # the own scheduler first: for LCM/TCD/EDM checkpoints it is the only choice
    return ", ".join([f"{type(base).__name__} (the model's own)"] + available(base))


def fresh_copy(scheduler: SchedulerMixin) -> SchedulerMixin:
    """Same class and config, no shared state (for secondary schedulers such as a prior's)."""
    return type(scheduler).from_config(scheduler.config)


def a1111_name(scheduler: SchedulerMixin) -> str | None:
    """The AUTOMATIC1111 sampler name that describes this scheduler exactly, or None.

    A sampler name fits when the class is the sampler's and the config has every setting the
    name implies (its overrides above, and order 2 for the "2M" solvers), so building that
    sampler from this config gives the same scheduler. Used for the A1111 ``Sampler:`` field of
    the checkpoint's own scheduler (``DDIMScheduler`` -> "DDIM"); provenance JSON keeps the
    class name, which also regenerates the image.
    """
    cls = type(scheduler).__name__
    config = scheduler.config
    if is_flow_matching(scheduler):
        candidates = FLOW_SAMPLERS
    else:
        candidates = SAMPLERS
    for name, spec in candidates.items():
        if spec.class_name != cls:
            continue
        if any(config.get(key, False) != value for key, value in spec.overrides):
            continue
        if cls == "DPMSolverMultistepScheduler" and config.get("solver_order") != 2:
            continue
        return _to_a1111(name)
    return None


# Our table's names that A1111 spells differently, and those A1111 has no sampler for
# (A1111's lists: modules/sd_samplers_kdiffusion.py and sd_samplers_timesteps.py).
_A1111_ALIASES = {"PNDM": "PLMS"}
_NOT_IN_A1111 = {"DDPM", "DEIS"}


def _to_a1111(name: str) -> str | None:
    return None if name in _NOT_IN_A1111 else _A1111_ALIASES.get(name, name)


def a1111_label(name: str | None, base: SchedulerMixin) -> str:
    """What the A1111 ``Sampler:`` field says for a request's sampler on this checkpoint: A1111's
    name when there is one, else the canonical name (a class name for the model's own)."""
    if is_own(name, base):
        return a1111_name(base) or type(base).__name__
    display = canonical_name(name, base)
    return _to_a1111(display) or display
