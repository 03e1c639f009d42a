"""Open any diffusers text-to-image checkpoint: ``load(model) -> LoadedModel``.

``model`` is a registry key (``"embedded"``, ``"medisyn"``), a local diffusers directory, or a
Hugging Face Hub id. Hub ids are resolved from the local cache only — the runtime never
downloads — so a missing model fails fast with :class:`ModelNotFoundError` saying how to get it.

The pipeline class comes from ``model_index.json``: text-to-image classes load through
``DiffusionPipeline``; others (an img2img checkpoint, a Kandinsky decoder) through
``AutoPipelineForText2Image``, which picks their text-to-image twin. Pipelines that need an input
image (inpainting, ControlNet ...) are refused before any weight is read (:func:`check_supported`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import threading

import torch

from model_runtime import devices, lora as lora_mod, provenance, registry
from model_runtime.errors import ModelNotFoundError, ModelRuntimeError

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")   # A1111/ComfyUI checkpoints (from_single_file)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class UnsupportedPipelineError(ModelRuntimeError, ValueError):
    """A checkpoint for a task the runtime does not run (inpainting, ControlNet ...)."""


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """Speed and memory options. ``None`` means "the sane default for this device"."""
    compile: bool | None = None          # torch.compile the denoiser (CUDA only; default off: minutes of warm-up)
    channels_last: bool | None = None    # default on for CUDA UNets
    vae_slicing: bool | None = None      # decode a batch one image at a time; default on for CUDA
    vae_tiling: bool | None = None       # tiled decode for very large images; default off
    cpu_offload: bool | None = None      # model CPU offload; default on when the weights do not fit in VRAM
    safety_checker: bool = False         # SD's NSFW filter blanks anatomy: off unless asked for
    unet_subfolder: str | None = None    # swap in another UNet (MINIM keeps one per modality)
    lora: str | None = None              # LoRA adapter (file or folder), needs the peft package
    lora_scale: float = 1.0
    loras: tuple = ()                    # more adapters: "PATH[:SCALE]" specs or lora.Lora; all fused
    config: str | None = None            # single-file checkpoints: a local diffusers folder with the configs
    variant: str | None = None           # e.g. "fp16" weight files
    revision: str | None = None          # Hub revision to look up in the cache
    cache_dir: str | None = None         # Hugging Face cache (default: HF_HUB_CACHE)
    hash_weights: bool = True            # start hashing the weights in the background at load

    @classmethod
    def coerce(cls, value: "LoadOptions | dict | None") -> "LoadOptions":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown load option(s): {sorted(unknown)}")
        return cls(**value)

    def __post_init__(self):
        object.__setattr__(self, "loras", lora_mod.coerce(self.loras))  # JSON round trips give lists/dicts

    def adapters(self) -> tuple[lora_mod.Lora, ...]:
        """Every LoRA to apply, in order: ``lora`` (with ``lora_scale``) first, then ``loras``."""
        first = (lora_mod.Lora(str(self.lora), float(self.lora_scale)),) if self.lora else ()
        return first + self.loras


class LoadedModel:
    """A pipeline ready to generate, plus what provenance needs to describe it.

    Thread-safe to share: :func:`model_runtime.generation.generate` gives every call its own
    scheduler. With CPU offload enabled, calls are serialised on :attr:`lock`.
    """

    def __init__(self, pipe, *, model_id: str, path: pathlib.Path, device: str, dtype: torch.dtype,
                 options: LoadOptions, entry: registry.ModelEntry | None, extra_weights=(), adapters=()):
        self.pipe = pipe
        self.model_id = model_id
        self.path = path
        self.device = device
        self.dtype = dtype
        self.options = options
        self.entry = entry
        self.lock = threading.Lock()
        self._extra_weights = tuple(extra_weights)
        self.adapters = tuple(adapters)
        self.config_path = path          # where the configs live (differs for a single-file checkpoint)
        self._hash: str | None = None
        self._default_size: tuple[int, int] | None = None
        self._hash_lock = threading.Lock()

    # --- description -------------------------------------------------------------------
    @property
    def loras(self) -> list[dict]:
        """The fused LoRA adapters: name (A1111's), scale and sha256 of the weights file."""
        return [{"name": a.name, "scale": a.scale, "sha256": provenance.file_sha256(a.file)} for a in self.adapters]

    @property
    def name(self) -> str:
        return self.entry.name if self.entry else self.model_id

    @property
    def pipeline_class(self) -> str:
        return type(self.pipe).__name__

    @property
    def family(self) -> str:
        return family_of(self.pipeline_class)

    @property
    def serialised(self) -> bool:
        """Calls must not overlap (offloaded pipelines move modules between devices)."""
        return bool(self.options.cpu_offload)

    @property
    def weights_hash(self) -> str:
        """sha256 over the weight files (see :func:`model_runtime.provenance.weights_hash`);
        computed once, then cached."""
        with self._hash_lock:
            if self._hash is None:
                self._hash = provenance.weights_hash(self.path, extra=self._extra_weights)
            return self._hash

    def default_size(self) -> tuple[int, int]:
        """(height, width) the checkpoint generates by default (see :func:`default_size`)."""
        if self._default_size is None:
            self._default_size = default_size(self.config_path)
        return self._default_size

    def schedulers(self) -> list[str]:
        from model_runtime import schedulers
        return schedulers.available(self.pipe.scheduler)

    def describe(self) -> dict:
        h, w = self.default_size()
        return {"model_id": self.model_id, "name": self.name, "path": str(self.path),
                "pipeline": self.pipeline_class, "family": self.family, "device": self.device,
                "dtype": devices.dtype_name(self.dtype), "default_size": [h, w],
                "schedulers": self.schedulers(),
                "licence": self.entry.licence if self.entry else None}

    def __repr__(self) -> str:
        return f"LoadedModel({self.model_id!r}, {self.pipeline_class}, {self.device}, {devices.dtype_name(self.dtype)})"


# --- resolution ------------------------------------------------------------------------

def resolve(model: str | os.PathLike, *, revision: str | None = None,
            cache_dir: str | None = None) -> tuple[pathlib.Path, registry.ModelEntry | None]:
    """(local diffusers directory, registry entry or None) for a key, a path or a Hub id."""
    text = os.fspath(model)
    entry = registry.find(text)
    if entry is not None:
        if entry.lora:  # a LoRA entry generates with its base model's pipeline
            if not entry.base:
                raise ModelNotFoundError(f"model {entry.key!r} names no base model in assets/models.json")
            _check_entry_lora(entry)
            path, _ = resolve(entry.base, revision=revision, cache_dir=cache_dir)
            return path, entry
        if entry.path:
            path = entry.local_path
            if not (path / "model_index.json").is_file():
                raise ModelNotFoundError(
                    f"model {entry.key!r} ({entry.name}) is not built yet: expected a diffusers "
                    f"pipeline at {path}. Build it with `medisyn model train` or pass another model.")
            return path, entry
        if not entry.loadable or not entry.hub_id:
            raise ModelNotFoundError(
                f"model {entry.key!r} ({entry.name}) cannot be loaded by name: {entry.notes} "
                f"Source: {entry.source_url}")
        text = entry.hub_id
    path = pathlib.Path(text).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelNotFoundError(
                    f"{path} is a single file but not a checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}); "
                    "the runtime loads those and diffusers pipeline directories (with model_index.json)")
            return path.resolve(), entry  # a single-file checkpoint: see config_root
        if not (path / "model_index.json").is_file():
            raise ModelNotFoundError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
        return path.resolve(), entry
    if _HUB_ID.match(text):
        return _from_hub_cache(text, revision=revision, cache_dir=cache_dir), entry
    raise ModelNotFoundError(
        f"model {text!r} not found: not a registry key ({', '.join(e.key for e in registry.list_models())}), "
        "not an existing directory, and not a Hub id of the form owner/name")


def _from_hub_cache(repo_id: str, *, revision: str | None, cache_dir: str | None) -> pathlib.Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        # local_files_only: the runtime never downloads (tests and air-gapped sites rely on it)
        path = pathlib.Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                              local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        from huggingface_hub import constants
        where = cache_dir or constants.HF_HUB_CACHE
        raise ModelNotFoundError(
            f"Hub model {repo_id!r} is not in the local Hugging Face cache ({where}) and the runtime "
            f"does not download. On a machine with network access run `hf download {repo_id}` "
            "(accept the licence on the model page first if it is gated), or pass a local "
            "diffusers directory.") from exc
    if not (path / "model_index.json").is_file():
        raise ModelNotFoundError(f"Hub model {repo_id!r} in the cache at {path} has no model_index.json: "
                                 "not a diffusers pipeline")
    return path


# --- loading ---------------------------------------------------------------------------

def load(model: str | os.PathLike, *, device: str | None = None, dtype: str | torch.dtype | None = None,
         options: LoadOptions | dict | None = None) -> LoadedModel:
    """Load ``model`` for text-to-image generation on ``device`` in ``dtype`` (defaults: see devices)."""
    from model_runtime import quiet

    quiet.install()  # transformers' torchvision-fallback notices during loading (see quiet.py)
    opts = LoadOptions.coerce(options)
    path, entry = resolve(model, revision=opts.revision, cache_dir=opts.cache_dir)
    root = config_root(path, opts.config, cache_dir=opts.cache_dir)
    check_supported(root)
    index = json.loads((root / "model_index.json").read_text(encoding="utf-8"))
    class_name = index.get("_class_name", "")
    device = devices.pick_device(device)
    dtype = devices.pick_dtype(device, dtype, family=family_of(class_name))
    opts = _resolve_defaults(opts, device, path)

    kwargs: dict = {"dtype": dtype, "local_files_only": True}
    if opts.variant:
        kwargs["variant"] = opts.variant
    if "safety_checker" in index and not opts.safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    adapters = adapters_for(entry, opts)
    extra_weights = [a.file for a in adapters]
    if opts.unet_subfolder:
        from diffusers import UNet2DConditionModel
        unet_dir = path / opts.unet_subfolder
        if not unet_dir.is_dir():
            raise ModelNotFoundError(f"unet_subfolder {opts.unet_subfolder!r} not found under {path}")
        kwargs["unet"] = UNet2DConditionModel.from_pretrained(str(unet_dir), dtype=dtype, local_files_only=True)

    with quiet.loading_quietly():  # no library loading bars (the studio log, the demo seed)
        if path.is_file():
            pipe = _from_single_file(path, root, class_name, kwargs)
        else:
            pipe = _from_pretrained(path, class_name, kwargs)
    try:
        lora_mod.apply(pipe, adapters)
    except lora_mod.LoraError as exc:
        raise ModelNotFoundError(str(exc)) from None
    _place(pipe, device, opts)
    pipe.set_progress_bar_config(disable=True)

    model_id = entry.key if entry is not None else os.fspath(model)
    loaded = LoadedModel(pipe, model_id=model_id, path=path, device=device, dtype=dtype,
                         options=opts, entry=entry, extra_weights=extra_weights, adapters=adapters)
    loaded.config_path = root
    if opts.hash_weights:
        # hashing a multi-GB checkpoint takes seconds: do it while the user types a prompt
        provenance.hash_in_background(loaded)
    log.info("loaded %r", loaded)
    return loaded


def adapters_for(entry: registry.ModelEntry | None, opts: LoadOptions) -> tuple[lora_mod.Lora, ...]:
    """The LoRAs a load applies: a LoRA registry entry's own adapter, then the options' ones.
    Every file is checked here, before any weights are read."""
    adapters = opts.adapters()
    if entry is not None and entry.lora:
        _check_entry_lora(entry)
        adapters = (lora_mod.Lora(str(entry.lora_path), 1.0),) + adapters
    try:
        for a in adapters:
            a.file
    except lora_mod.LoraError as exc:
        raise ModelNotFoundError(str(exc)) from None
    return adapters


def config_root(path: pathlib.Path, config: str | os.PathLike | None = None, *,
                cache_dir: str | None = None) -> pathlib.Path:
    """The diffusers folder holding the configs for ``path``: ``path`` itself for a pipeline folder.

    A single-file checkpoint carries weights only. ``config`` (a local diffusers folder or a cached
    Hub id of the same architecture) says how to build it; without one, diffusers infers the
    architecture from the checkpoint's keys and its reference repository is looked up in the
    local Hugging Face cache — never downloaded."""
    path = pathlib.Path(path)
    if not path.is_file():
        return path
    if config:
        root, _ = resolve(config, cache_dir=cache_dir)
        if root.is_file():
            raise ModelNotFoundError(f"--config {config}: expected a diffusers folder, got a single file")
        return root
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint

    try:
        checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
        repo = fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"]
    except Exception as exc:  # unreadable file, or keys of no architecture diffusers knows
        raise ModelNotFoundError(f"{path}: cannot infer the architecture of this single-file checkpoint ({str(exc).strip()}); "
                                 "pass --config with a local diffusers folder of the same architecture") from None
    try:
        return _from_hub_cache(repo, revision=None, cache_dir=cache_dir)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{path} looks like {repo}, whose configs are needed to build it: {exc} "
                                 "Or pass --config with a local diffusers folder of the same architecture.") from None


def _from_single_file(path: pathlib.Path, root: pathlib.Path, class_name: str, kwargs: dict):
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_single_file"):
        raise ModelNotFoundError(f"{class_name} (from {root}) cannot be built from a single file")
    kwargs = {k: v for k, v in kwargs.items() if k != "variant"}
    try:
        pipe = cls.from_single_file(str(path), config=str(root), **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelNotFoundError(f"could not build {class_name} from {path} with the configs of {root}: "
                                 f"{str(exc).splitlines()[0][:300]}") from exc
    if "prompt" not in _call_parameters(pipe):
        raise ModelNotFoundError(f"{class_name} is not a text-to-image pipeline (its call takes no prompt)")
    return pipe


def _check_entry_lora(entry: registry.ModelEntry) -> None:
    if not (entry.lora_path.is_file() or entry.lora_path.is_dir()):
        raise ModelNotFoundError(
            f"model {entry.key!r} ({entry.name}) needs its LoRA weights, which are not shipped: put the "
            f"adapter (.safetensors) at {entry.lora_path}. Source: {entry.source_url}")


def _from_pretrained(path: pathlib.Path, class_name: str, kwargs: dict):
    import diffusers
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    text2image = {cls.__name__ for cls in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()}
    cls = getattr(diffusers, class_name, None)
    try:
        if class_name in text2image or cls is None or not _is_known_task(class_name):
            pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
        else:
            pipe = AutoPipelineForText2Image.from_pretrained(str(path), **kwargs)
    except (OSError, EnvironmentError) as exc:
        raise ModelNotFoundError(f"could not load the pipeline at {path}: {exc}") from exc
    if "prompt" not in _call_parameters(pipe):
        raise ModelNotFoundError(f"{class_name} at {path} is not a text-to-image pipeline (its call takes no prompt)")
    return pipe


# Pipelines that need an input image besides the prompt (mask, control image, image to edit):
# loaded as text-to-image they would die mid-run with a shape error, so they are refused at load.
# img2img checkpoints are not here: the same weights load as their text-to-image twin.
_IMAGE_CONDITIONED = (
    ("Inpaint", "an inpainting pipeline (it needs an image and a mask)"),
    ("Fill", "an inpainting pipeline (it needs an image and a mask)"),
    ("PaintByExample", "an inpainting pipeline (it needs an image, a mask and an example)"),
    ("Control", "a ControlNet / control pipeline (it needs a control image)"),
    ("Adapter", "a T2I-Adapter pipeline (it needs a control image)"),
    ("InstructPix2Pix", "an image-editing pipeline (it needs an image to edit)"),
    ("Depth2Img", "a depth-to-image pipeline (it needs an input image)"),
    ("Upscale", "an upscaling pipeline (it needs a low-resolution image)"),
    ("ImageVariation", "an image-variation pipeline (it needs an input image)"),
)
SUPPORTED_TASKS = ("text-to-image checkpoints (SD 1.x/2.x, SDXL, PixArt, SD3, Flux, Kandinsky 2.2, ...); "
                   "img2img checkpoints load as their text-to-image pipeline")


def check_supported(path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose pipeline needs an input image, from its configs alone (no
    weights read): UnsupportedPipelineError names the class and what the runtime runs."""
    root = pathlib.Path(path)
    class_name = pipeline_class_name(root)
    for marker, what in _IMAGE_CONDITIONED:
        if marker in class_name:
            raise UnsupportedPipelineError(
                f"{root} is a {class_name}: {what}. MediSyn Studio generates images from text only; "
                f"it runs {SUPPORTED_TASKS}.")
    # an inpainting UNet saved under a text-to-image class: latents + mask + masked image channels
    unet = _read_json(root / "unet" / "config.json") or {}
    vae = _read_json(root / "vae" / "config.json") or {}
    if unet.get("in_channels") and vae.get("latent_channels") and unet["in_channels"] != vae["latent_channels"]:
        raise UnsupportedPipelineError(
            f"{root} ({class_name or 'no pipeline class'}): its UNet takes {unet['in_channels']} input channels "
            f"but the VAE makes {vae['latent_channels']}-channel latents, so it is an inpainting or otherwise "
            f"image-conditioned UNet. MediSyn Studio runs {SUPPORTED_TASKS}.")


def _is_known_task(class_name: str) -> bool:
    """True for pipelines AutoPipelineForText2Image knows how to map (img2img, inpaint, decoders)."""
    from diffusers.pipelines.auto_pipeline import (AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
                                                   AUTO_INPAINT_PIPELINES_MAPPING)
    known = {c.__name__ for m in (AUTO_IMAGE2IMAGE_PIPELINES_MAPPING, AUTO_INPAINT_PIPELINES_MAPPING)
             for c in m.values()}
    return class_name in known or class_name in {"KandinskyV22Pipeline", "KandinskyPipeline"}


def _call_parameters(pipe) -> set[str]:
    import inspect
    return set(inspect.signature(pipe.__call__).parameters)


def _resolve_defaults(opts: LoadOptions, device: str, path: pathlib.Path) -> LoadOptions:
    cuda = devices.is_cuda(device)
    cpu_offload = opts.cpu_offload
    if cpu_offload is None:
        # weights on disk vs 60% of VRAM (activations, VAE decode and the CUDA context need the rest)
        cpu_offload = cuda and _weights_bytes(path) > 0.6 * _cuda_total_memory(device)
    return dataclasses.replace(
        opts,
        compile=bool(opts.compile) and cuda,
        channels_last=cuda if opts.channels_last is None else opts.channels_last,
        vae_slicing=cuda if opts.vae_slicing is None else opts.vae_slicing,
        vae_tiling=bool(opts.vae_tiling),
        cpu_offload=bool(cpu_offload) and cuda,
    )


def _cuda_total_memory(device: str) -> int:
    index = torch.device(device).index or 0
    return torch.cuda.get_device_properties(index).total_memory


def _weights_bytes(path: pathlib.Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in provenance.WEIGHT_SUFFIXES and f.is_file())


def _place(pipe, device: str, opts: LoadOptions) -> None:
    _ensure_sdpa(pipe)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    vae = getattr(pipe, "vae", None)
    if opts.channels_last and denoiser is not None and "UNet" in type(denoiser).__name__:
        denoiser.to(memory_format=torch.channels_last)
        if vae is not None:
            vae.to(memory_format=torch.channels_last)
    if vae is not None:
        if opts.vae_slicing and hasattr(vae, "enable_slicing"):
            vae.enable_slicing()
        if opts.vae_tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
    if opts.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if opts.compile and denoiser is not None:
        # in place, so the attribute keeps its class (from_pipe checks component types)
        denoiser.compile(mode="max-autotune-no-cudagraphs", fullgraph=False)


def _ensure_sdpa(pipe) -> None:
    """Use PyTorch scaled-dot-product attention wherever a model still has the classic processor."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for component in pipe.components.values():
        processors = getattr(component, "attn_processors", None)
        if not processors:
            continue
        if any(type(p) is AttnProcessor for p in processors.values()):
            component.set_attn_processor({name: AttnProcessor2_0() if type(p) is AttnProcessor else p
                                          for name, p in processors.items()})


def attention_processors(pipe) -> set[str]:
    """Class names of every attention processor in the pipeline (for tests and diagnostics)."""
    names = set()
    for component in pipe.components.values():
        for proc in (getattr(component, "attn_processors", None) or {}).values():
            names.add(type(proc).__name__)
    return names


def default_size(path: str | os.PathLike, config: str | None = None) -> tuple[int, int]:
    """(height, width) a checkpoint generates by default, read from its configs (no weights
    loaded), so a batch job can fix every image's size before any worker loads the model."""
    root = config_root(pathlib.Path(path), config)
    index = _read_json(root / "model_index.json") or {}
    class_name = index.get("_class_name", "")
    scale = 8
    for sub in ("vae", "movq"):
        cfg = _read_json(root / sub / "config.json")
        if cfg and cfg.get("block_out_channels"):
            scale = 2 ** (len(cfg["block_out_channels"]) - 1)
            break
    if class_name.startswith("Flux"):
        return (128 * scale, 128 * scale)   # FluxPipeline.default_sample_size
    if class_name.startswith("Kandinsky"):
        return (512, 512)                   # the Kandinsky pipelines' call defaults
    for sub in ("unet", "transformer"):
        cfg = _read_json(root / sub / "config.json")
        if cfg and cfg.get("sample_size"):
            sample = cfg["sample_size"]
            if isinstance(sample, (list, tuple)):
                return (int(sample[0]) * scale, int(sample[1]) * scale)
            return (int(sample) * scale, int(sample) * scale)
    return (512, 512)


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def saved_scheduler(path: str | os.PathLike, config: str | None = None):
    """The checkpoint's scheduler, built from its config alone (no weights loaded)."""
    import diffusers

    root = config_root(pathlib.Path(path), config)
    index = _read_json(root / "model_index.json") or {}
    entry = index.get("scheduler")
    if not entry or entry[1] is None:
        raise ModelNotFoundError(f"{root}: model_index.json names no scheduler")
    cls = getattr(diffusers, entry[1])
    return cls.from_config(cls.load_config(str(root / "scheduler")))


def pipeline_class_name(path: str | os.PathLike, config: str | None = None) -> str:
    """The pipeline class a checkpoint's model_index.json names ("" if none)."""
    return (_read_json(config_root(pathlib.Path(path), config) / "model_index.json") or {}).get("_class_name", "")


def family_of(pipeline_class: str) -> str:
    for prefix, family in (("StableDiffusionXL", "sdxl"), ("StableDiffusion3", "sd3"),
                           ("StableDiffusion", "sd"), ("Flux", "flux"), ("PixArt", "pixart"),
                           ("KandinskyV22", "kandinsky22"), ("Sana", "sana")):
        if pipeline_class.startswith(prefix):
            return family
    return "other"
