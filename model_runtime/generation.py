"""Text-to-image generation: ``generate(loaded, request) -> list[GeneratedImage]``.

Reproducibility: image k of a request uses its own CPU ``torch.Generator`` seeded ``seed + k``
(noise is drawn on the CPU and moved to the device, so a seed means the same noise on every
device). On CPU, :func:`generate` runs one image per forward pass by default, which makes image
k bit-identical to a single run with ``seed + k`` (same machine, same
``torch.get_num_threads()``). An explicit ``batch_size`` > 1 is faster but only agrees to within
1/255: MKL and oneDNN pick different kernels for different batch sizes. On CUDA/MPS the default
is the whole request in one pass; GPU kernels are not bit-reproducible across batch sizes anyway.

Thread safety: diffusers schedulers keep per-run state and fast tokenizers keep padding
settings on a shared object, so every call runs on a shallow copy of the pipeline that shares
all weights but owns fresh schedulers and this thread's tokenizers (see ``_call_pipeline``).

Progress and cancellation ride on ``callback_on_step_end``: ``on_step(done, total)`` after every
denoising step; a set ``cancel`` event raises :class:`GenerationCancelled` at the next step.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import json
import logging
import math
import numbers
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import torch
from diffusers import DiffusionPipeline, SchedulerMixin

from model_runtime import defaults, devices, quiet, schedulers
from model_runtime.errors import ModelRuntimeError
from model_runtime.loading import LoadedModel
from model_runtime.provenance import denoiser_sha256

log = logging.getLogger(__name__)
quiet.install()  # diffusers' per-call "input was truncated" dump: we say it once, in words

MAX_SEED = 2**63 - 1
# Offset for the generators of negative-prompt prior samples (Kandinsky): any fixed value works,
# it only has to differ from the image seeds' own streams.
_NEGATIVE_SEED_OFFSET = 0x5EED_0000_0000


class GenerationCancelled(ModelRuntimeError, RuntimeError):
    """Raised by generate() when its cancel event was set during the run."""


class NonFiniteOutputError(ModelRuntimeError, RuntimeError):
    """The model produced NaN or infinite values: corrupted weights, or fp16 overflow."""


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    num_images: int = 1
    seed: int | None = None            # None: a random seed, recorded in the output
    steps: int = defaults.STEPS
    guidance_scale: float = defaults.GUIDANCE
    scheduler: str | None = None       # a name from model_runtime.schedulers; None: the checkpoint's own
    width: int | None = None           # None: the checkpoint's native size
    height: int | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # further pipeline call arguments

    def __post_init__(self):
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        for name in ("num_images", "steps"):
            value = getattr(self, name)
            # 20.0 from a JSON file is fine; 2.5 would have been truncated silently
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value != int(value):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
        if not 1 <= self.num_images <= 10_000:
            raise ValueError(f"num_images must be between 1 and 10000, got {self.num_images}")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")
        guidance = self.guidance_scale
        # NaN/inf would silently give black images; negative guidance is not a thing
        if not isinstance(guidance, numbers.Real) or isinstance(guidance, bool) or not math.isfinite(guidance) \
                or guidance < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance!r}")
        if self.seed is not None and not 0 <= int(self.seed) <= MAX_SEED - 10_000:
            raise ValueError(f"seed must be between 0 and {MAX_SEED - 10_000}, got {self.seed}")
        for side in ("width", "height"):
            value = getattr(self, side)
            if value is not None and not 8 <= int(value) <= 8192:
                raise ValueError(f"{side} must be between 8 and 8192, got {value}")
        reserved = {"prompt", "negative_prompt", "generator", "num_images_per_prompt", "output_type",
                    "callback_on_step_end", "prior_callback_on_step_end", "latents"}
        if reserved & set(self.extra):
            raise ValueError(f"extra may not set {sorted(reserved & set(self.extra))}")
        try:
            json.dumps(self.extra, sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"extra must be JSON-serialisable (it is recorded in provenance): {exc}") from None

    def seeded(self) -> "GenerationRequest":
        """This request with a concrete seed (a random one if none was given)."""
        if self.seed is not None:
            return self
        return dataclasses.replace(self, seed=secrets.randbelow(2**32))

    def seeds(self) -> list[int]:
        if self.seed is None:
            raise ValueError("request has no seed yet; call seeded() first")
        return [int(self.seed) + k for k in range(int(self.num_images))]


@dataclasses.dataclass
class GeneratedImage:
    """One image and everything needed to regenerate it."""
    image: "PIL.Image.Image"  # noqa: F821
    prompt: str
    negative_prompt: str
    seed: int
    index: int                 # k: position in its request
    steps: int
    guidance_scale: float
    scheduler: str             # canonical sampler name
    width: int
    height: int
    extra: dict
    model_id: str
    model_name: str
    pipeline_class: str
    weights_sha256: str
    device: str
    dtype: str
    seconds: float = 0.0       # wall time of the forward pass that produced it (shared by its batch)
    loras: list = dataclasses.field(default_factory=list)  # fused adapters: {"name", "scale", "sha256"}
    sampler_a1111: str = ""    # A1111's name for the scheduler when it differs from ``scheduler``
    denoiser_sha256: str = ""  # sha256 of the UNet/transformer weight file (A1111's "Model hash")
    prompt_seen: str | None = None  # the part of the prompt the text encoders read; None: all of it

    def parameters(self) -> dict:
        return {"prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed,
                "steps": self.steps, "guidance_scale": self.guidance_scale, "scheduler": self.scheduler,
                "width": self.width, "height": self.height, "extra": dict(self.extra)}

    def provenance(self) -> dict:
        from model_runtime import provenance
        return provenance.record(self)

    def save_png(self, path) -> "pathlib.Path":  # noqa: F821
        from model_runtime import provenance
        return provenance.save_png(self, path)


# --- the shared core: one pipeline call for many (prompt, negative, seed) slots ----------

@dataclasses.dataclass(frozen=True)
class Shared:
    """Parameters every image of one pipeline call must share."""
    steps: int
    guidance_scale: float
    scheduler: str
    width: int
    height: int
    extra_json: str = "{}"
    has_negative: bool = False  # several pipelines treat "no negative prompt" unlike an empty one

    @property
    def extra(self) -> dict:
        return json.loads(self.extra_json)


@dataclasses.dataclass(frozen=True)
class Slot:
    prompt: str
    negative_prompt: str
    seed: int


def shared_params(loaded: LoadedModel, request: GenerationRequest) -> Shared:
    """The batching key of ``request`` on ``loaded`` (defaults resolved)."""
    h, w = loaded.default_size()
    return Shared(steps=int(request.steps), guidance_scale=float(request.guidance_scale),
                  scheduler=schedulers.canonical_name(request.scheduler, loaded.pipe.scheduler),
                  width=int(request.width or w), height=int(request.height or h),
                  extra_json=json.dumps(request.extra, sort_keys=True),
                  has_negative=bool(request.negative_prompt.strip()))


def slots_of(request: GenerationRequest) -> list[Slot]:
    return [Slot(request.prompt, request.negative_prompt, s) for s in request.seeds()]


def run_slots(loaded: LoadedModel, shared: Shared, slots: Sequence[Slot], *,
              on_step: Callable[[int, int], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> list:
    """Generate one PIL image per slot in a single pipeline call."""
    if not slots:
        return []
    pipe = _call_pipeline(loaded, shared.scheduler)
    params = _call_parameters(type(pipe))
    prompts = [s.prompt for s in slots]
    generators = [torch.Generator("cpu").manual_seed(s.seed) for s in slots]
    # "np", not "pil": a PIL conversion turns NaN into black pixels, which would pass as an image
    kwargs = dict(prompt=prompts, num_inference_steps=shared.steps, guidance_scale=shared.guidance_scale,
                  height=shared.height, width=shared.width, num_images_per_prompt=1, output_type="np")
    if shared.has_negative:
        if "negative_prompt" not in params:
            raise ValueError(f"{type(pipe).__name__} does not take a negative prompt")
        kwargs["negative_prompt"] = [s.negative_prompt for s in slots]
        if _is_prior_pipeline(pipe):
            # the prior samples negative embeddings from its own noise: one generator each
            generators += [torch.Generator("cpu").manual_seed(s.seed + _NEGATIVE_SEED_OFFSET) for s in slots]
    kwargs["generator"] = generators
    extra = shared.extra
    unknown = set(extra) - params  # pipelines swallow unknown **kwargs: a typo would pass silently
    if unknown:
        raise ValueError(f"{type(pipe).__name__} does not take argument(s) {sorted(unknown)}")
    kwargs.update(extra)

    prior_steps = int(extra.get("prior_num_inference_steps", 25)) if "prior_callback_on_step_end" in params else 0
    total = prior_steps + shared.steps

    def stage_callback(offset: int, stage_steps: int):
        def report(done_in_stage: int) -> None:
            if should_stop is not None and should_stop():
                raise GenerationCancelled("generation cancelled")
            if on_step is not None:
                on_step(offset + min(stage_steps, max(1, done_in_stage)), total)

        def on_step_end(pipe_, i, _t, callback_kwargs):
            # higher-order samplers (Heun, DPM2) run ~2 model calls per step: scale to steps
            loop_len = getattr(pipe_, "_num_timesteps", None) or stage_steps
            done = round((i + 1) * stage_steps / loop_len)
            _check_finite(callback_kwargs.get("latents"), f"the latents after step {done} of {stage_steps}")
            report(done)
            return callback_kwargs

        def legacy(step_index, _t, latents):  # PixArt-style callback(step, timestep, latents)
            _check_finite(latents, f"the latents after step {step_index + 1} of {stage_steps}")
            report(step_index + 1)

        return on_step_end, legacy

    main_end, main_legacy = stage_callback(prior_steps, shared.steps)
    if "callback_on_step_end" in params:
        kwargs["callback_on_step_end"] = main_end
    elif "callback" in params:
        kwargs.update(callback=main_legacy, callback_steps=1)
    if prior_steps:
        kwargs["prior_callback_on_step_end"] = stage_callback(0, prior_steps)[0]

    if loaded.serialised:
        with loaded.lock:
            images = pipe(**kwargs).images
    else:
        images = pipe(**kwargs).images
    return to_pil(images)


def _check_finite(values, what: str) -> None:
    if values is None or not torch.is_tensor(values):
        return
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteOutputError(
            f"the model produced NaN/infinite values in {what}: its weights are probably corrupted "
            "(or a half-precision overflow: try --dtype fp32); no image was written")


def to_pil(images) -> list:
    """PIL images from a pipeline's "np" output (floats in [0, 1]), refusing NaN/inf.

    The same arithmetic as diffusers' own PIL conversion (``numpy_to_pil``: x255, round, uint8),
    so the bytes equal an ``output_type="pil"`` run; only a non-finite value now fails instead
    of becoming a black pixel.
    """
    import numpy as np

    if isinstance(images, list) and images and not isinstance(images[0], np.ndarray):
        return list(images)  # a pipeline that ignores output_type and returns PIL already
    array = np.asarray(images)
    if not np.isfinite(array).all():
        raise NonFiniteOutputError(
            "the model produced NaN/infinite values in the decoded image: its weights (VAE or "
            "denoiser) are probably corrupted (or a half-precision overflow: try --dtype fp32); "
            "no image was written")
    if array.ndim == 3:
        array = array[None, ...]
    return DiffusionPipeline.numpy_to_pil(array)


def _is_prior_pipeline(pipe) -> bool:
    return hasattr(pipe, "prior_pipe")


@functools.lru_cache(maxsize=64)
def _call_parameters(cls) -> frozenset[str]:
    """Named parameters of the pipeline's __call__ (not its catch-all **kwargs)."""
    return frozenset(name for name, p in inspect.signature(cls.__call__).parameters.items()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def _call_pipeline(loaded: LoadedModel, scheduler_name: str | None) -> DiffusionPipeline:
    """A per-call view of the pipeline: same weights, fresh schedulers, this thread's tokenizers.

    Two kinds of shared state break under concurrent calls: schedulers keep per-run state
    (timesteps, step index, solver history), and Hugging Face fast tokenizers keep their
    padding/truncation settings on the shared Rust object, so a thread tokenising with
    ``padding="max_length"`` races one tokenising without (seen here as a 2-token negative
    prompt next to a 77-token prompt). So every call gets new schedulers, and every thread its
    own copy of each tokenizer (made once per thread and model, then reused).

    Not ``DiffusionPipeline.from_pipe``: it calls ``.to(dtype)`` on every shared module
    (float32 unless told otherwise) while other threads may be running them, and costs ~6 ms.
    A shallow copy shares the modules and owns its attributes, so the per-call state diffusers
    keeps on the pipeline (``_guidance_scale``, ``_interrupt``, ...) stays private.
    """
    base = loaded.pipe
    replacements: dict[int, object] = {id(base.scheduler): schedulers.make_scheduler(scheduler_name, base.scheduler)}
    replacements.update(_thread_tokenizers(loaded))
    return _copy_with(base, replacements)


_local = threading.local()


def _thread_tokenizers(loaded: LoadedModel) -> dict[int, object]:
    """id(shared tokenizer) -> this thread's private copy, for every tokenizer of the pipeline."""
    cache = getattr(_local, "tokenizers", None)
    if cache is None:
        # weak keys: a long-lived worker thread must not keep an unloaded model's weights alive
        cache = _local.tokenizers = weakref.WeakKeyDictionary()
    copies = cache.get(loaded.pipe)
    if copies is None:
        copies = cache[loaded.pipe] = {id(c): copy.deepcopy(c) for c in loaded.pipe.components.values()
                                       if _is_tokenizer(c)}
    return copies


def _is_tokenizer(component) -> bool:
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover
        return False
    return isinstance(component, PreTrainedTokenizerBase)


def _copy_with(pipe, replacements: dict[int, object]):
    view = copy.copy(pipe)
    for name, component in pipe.components.items():
        if isinstance(component, SchedulerMixin) and id(component) not in replacements:
            replacements[id(component)] = schedulers.fresh_copy(component)  # e.g. a prior's scheduler
        if id(component) in replacements:
            setattr(view, name, replacements[id(component)])
    # combined pipelines (Kandinsky: prior_pipe + decoder_pipe) hold sub-pipelines that
    # reference the same schedulers and tokenizers: copy those too, mapping old -> new
    for attr, value in list(vars(pipe).items()):
        if isinstance(value, DiffusionPipeline):
            object.__setattr__(view, attr, _copy_with(value, replacements))
    return view


# --- the public entry point ------------------------------------------------------------

def default_batch_size(device: str, num_images: int) -> int:
    """Images per forward pass when the caller does not say: 1 on CPU, so image k is
    bit-identical to a single run with seed + k; the whole request on a GPU, where batching
    pays most and kernels are not batch-invariant in any case."""
    return 1 if str(device) == "cpu" else max(1, int(num_images))


def generate(loaded: LoadedModel, request: GenerationRequest, *,
             on_step: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None,
             batch_size: int | None = None) -> list[GeneratedImage]:
    """Generate ``request.num_images`` images; image k uses seed ``request.seed + k``.

    ``batch_size`` caps images per forward pass (None: :func:`default_batch_size` — one at a
    time on CPU, bit-identical to single runs; all at once on a GPU). ``on_step(done, total)``
    reports progress over all passes; setting ``cancel`` raises GenerationCancelled at the next step.
    """
    request = request.seeded()
    shared = shared_params(loaded, request)
    slots = slots_of(request)
    size = max(1, int(batch_size)) if batch_size else default_batch_size(loaded.device, len(slots))
    chunks = [slots[i:i + size] for i in range(0, len(slots), size)]
    out: list[GeneratedImage] = []
    for c, chunk in enumerate(chunks):
        def chunk_step(done, total, c=c):
            if on_step is not None:
                on_step(c * total + done, total * len(chunks))

        t0 = time.perf_counter()
        images = run_slots(loaded, shared, chunk, on_step=chunk_step,
                           should_stop=(cancel.is_set if cancel is not None else None))
        seconds = time.perf_counter() - t0
        for slot, image in zip(chunk, images):
            out.append(make_result(loaded, shared, slot, image, index=slot.seed - int(request.seed),
                                   seconds=seconds))
    if out and out[0].prompt_seen is not None:
        log.warning(truncation_message(request.prompt, out[0].prompt_seen))
    return out


def truncation_message(prompt: str, seen: str) -> str:
    """One warning in words for a prompt longer than the text encoder reads."""
    return (f"the prompt is longer than the model's text encoder reads: it used only the first "
            f"{len(seen)} of {len(prompt)} characters, up to \"...{seen[-40:]}\"; the rest had no effect. "
            "The text it read is recorded with the image (prompt_seen).")


def make_result(loaded: LoadedModel, shared: Shared, slot: Slot, image, *, index: int,
                seconds: float = 0.0) -> GeneratedImage:
    sampler = schedulers.a1111_label(shared.scheduler, loaded.pipe.scheduler)
    return GeneratedImage(
        image=image, prompt=slot.prompt, negative_prompt=slot.negative_prompt, seed=slot.seed, index=index,
        steps=shared.steps, guidance_scale=shared.guidance_scale, scheduler=shared.scheduler,
        width=image.width, height=image.height, extra=shared.extra, model_id=loaded.model_id,
        model_name=loaded.name, pipeline_class=loaded.pipeline_class, weights_sha256=loaded.weights_hash,
        device=loaded.device, dtype=devices.dtype_name(loaded.dtype), seconds=seconds, loras=loaded.loras,
        sampler_a1111=sampler if sampler != shared.scheduler else "",
        denoiser_sha256=denoiser_sha256(loaded.path, subfolder=loaded.options.unet_subfolder,
                                        variant=loaded.options.variant),
        prompt_seen=prompt_seen(loaded, slot.prompt, shared.extra))


# --- what the text encoders read --------------------------------------------------------

def prompt_seen(loaded: LoadedModel, prompt: str, extra: dict | None = None) -> str | None:
    """The part of ``prompt`` the model's text encoders read, or None when they read all of it.

    Each tokenizer of the pipeline keeps at most its encoder's limit of tokens (CLIP: 77 with
    the start/end tokens; a T5 encoder: the pipeline's ``max_sequence_length``) and drops the
    rest silently. With several encoders (SD3, Flux: CLIP + T5) the one that reads furthest
    counts. The result is the prompt's own text up to the last token kept, so a reader study
    can show exactly what the model was conditioned on. A word cut in the middle is left out,
    so every word of the result was read in full.
    """
    tokenizers = list(_thread_tokenizers(loaded).values())  # private copies: thread-safe
    if not tokenizers:
        return None
    furthest = 0
    for tokenizer in tokenizers:
        end = _kept_chars(tokenizer, prompt, _token_limit(tokenizer, type(loaded.pipe), extra or {}))
        if end is None:
            return None
        furthest = max(furthest, end)
    return prompt[:furthest].rstrip()


def _token_limit(tokenizer, pipe_cls, extra: dict) -> int:
    if "T5" in type(tokenizer).__name__:
        param = inspect.signature(pipe_cls.__call__).parameters.get("max_sequence_length")
        if param is not None:
            return int(extra.get("max_sequence_length", param.default))
    return int(tokenizer.model_max_length)


def _kept_chars(tokenizer, prompt: str, limit: int) -> int | None:
    """Characters of ``prompt`` covered by the tokens kept under ``limit``; None if all fit."""
    encoded = tokenizer(prompt, truncation=False, add_special_tokens=True, return_offsets_mapping=True,
                        verbose=False)  # no "sequence length is longer than" warning: we know
    ids = encoded["input_ids"]
    if len(ids) <= limit:
        return None
    special = set(tokenizer.all_special_ids)
    content = [(i, off) for i, off in zip(ids, encoded["offset_mapping"]) if i not in special]
    keep = max(0, limit - (len(ids) - len(content)))  # the specials (start/end) are always kept
    if keep == 0:
        return 0
    end = int(content[keep - 1][1][1])
    if 0 < end < len(prompt) and prompt[end - 1].isalnum() and prompt[end].isalnum():
        # the cut falls inside a word: the model read only its first pieces, so the word is
        # left out (what is shown as "read" must all have been read)
        end = max(0, prompt.rfind(" ", 0, end))
    return end
