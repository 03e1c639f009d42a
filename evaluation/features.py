"""Local image feature extractors: nothing is downloaded, every model comes from a file or folder.

`load_extractor(spec, weights=None)`:

- `"pixels"`: the image itself, grey, box-averaged to 32 x 32 (1,024 values in [0, 1]). No model;
  useful as a sanity baseline and for tests, not comparable with published FIDs.
- `"inception"`: the standard FID Inception network as TorchScript, the file StyleGAN2-ADA/3 and
  clean-fid use (`inception-2015-12-05.pt`, also cached by clean-fid as
  `pt_inception-2015-12-05-6726825d.pt`). Taken from `weights`, else `$MEDISYN_INCEPTION`, else
  the first of `INCEPTION_CACHE` that exists. It receives uint8 N x 3 x 299 x 299 images and is
  called with `return_features=True` (2,048 pool features).
- a TorchScript file (`.pt`, `.pth`, `.torchscript`). Two calling conventions, told apart by the
  signature of its `forward`:
  * it takes `return_features` (the FID Inception file and exports made like it): uint8
    N x 3 x 299 x 299, called with `return_features=True`;
  * it takes only the image (any plain `torch.jit.trace`/`script` export of a torchvision or
    timm network, or a copy-detection descriptor network such as SSCD's
    `sscd_disc_mixup.torchscript.pt`): float N x 3 x 224 x 224 in [0, 1], normalised with the
    ImageNet mean/std — the convention those networks were trained with.
  A sidecar `<file>.json` overrides the input: `{"input_size": 288, "mean": [...], "std": [...],
  "dtype": "float" | "uint8"}` (SSCD recommends 288). 4-D outputs are average-pooled; a tuple's
  first element is used. torchvision and timm themselves are not dependencies.
- a Hugging Face model folder (config.json): any transformers vision model (ViT, DINOv2, ResNet,
  ConvNeXt, Swin ...) or the vision half of a CLIP-like model (`get_image_features`). Pixels are
  resized to the config's `image_size` (bicubic) and normalised with the mean/std of the folder's
  `preprocessor_config.json` or (transformers 5) `processor_config.json`; a CLIP-like folder with
  neither is an error, a plain vision model falls back to 0.5/0.5. Embedding: `pooler_output` when the model
  has one, else the mean of `last_hidden_state` over tokens or positions.

Errors (`EvaluationError`, one line): missing weights (saying where to put them), a folder that
is not a vision model, a model whose input channels differ from the 3 of the normalised images.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.errors import EvaluationError

__all__ = ["FeatureExtractor", "INCEPTION_CACHE", "INCEPTION_FILES", "find_inception", "image_size", "load_extractor",
           "mean_std", "vision_config"]

INCEPTION_FILES = ("inception-2015-12-05.pt", "pt_inception-2015-12-05-6726825d.pt")
INCEPTION_CACHE = (
    pathlib.Path("~/.cache/medisyn/weights").expanduser(),
    pathlib.Path("~/.cache/clean-fid").expanduser(),
    pathlib.Path("~/.cache/torch/hub/checkpoints").expanduser(),
)
INCEPTION_SIZE = 299
PIXEL_GRID = 32


@dataclasses.dataclass
class FeatureExtractor:
    """uint8 N x S x S x 3 normalised images (S = input_size) -> float32 N x dim features."""

    name: str
    dim: int
    input_size: int
    fn: Callable[[np.ndarray], np.ndarray]
    batch_size: int = 32

    def from_normalised(self, images: np.ndarray) -> np.ndarray:
        """Features of images normalised at any size (resized to input_size if needed)."""
        if images.shape[1] != self.input_size:
            t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
            t = F.interpolate(t, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
            images = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = [self.fn(images[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)


def find_inception(weights=None) -> pathlib.Path:
    """The Inception TorchScript file: `weights`, $MEDISYN_INCEPTION or a cache folder; else an error."""
    # nothing is downloaded: every way of missing the file names the offline alternative
    offline = "or use --features pixels, which needs no weights"
    if weights:
        p = pathlib.Path(weights).expanduser()
        if not p.is_file():
            raise EvaluationError(f"--weights: no such file: {p} ({offline})")
        return p
    env = os.environ.get("MEDISYN_INCEPTION")
    if env:
        p = pathlib.Path(env).expanduser()
        if p.is_file():
            return p
        raise EvaluationError(f"MEDISYN_INCEPTION points to a missing file: {p} ({offline})")
    for folder in INCEPTION_CACHE:
        for name in INCEPTION_FILES:
            if (folder / name).is_file():
                return folder / name
    raise EvaluationError(
        "the FID Inception weights are not on this machine and nothing is downloaded: get "
        "'inception-2015-12-05.pt' (the TorchScript file StyleGAN2-ADA and clean-fid use) and pass "
        f"--weights FILE, set MEDISYN_INCEPTION, or put it in {INCEPTION_CACHE[0]}; {offline}")


def load_extractor(spec: str, *, weights=None, device: str = "cpu", batch_size: int = 32) -> FeatureExtractor:
    """A FeatureExtractor for 'pixels', 'inception', a TorchScript file or a HF model folder."""
    if spec == "pixels":
        return FeatureExtractor("pixels", PIXEL_GRID ** 2, 256, _pixel_features, batch_size)
    if spec == "inception":
        return _torchscript(find_inception(weights), "inception", device, batch_size)
    p = pathlib.Path(spec).expanduser()
    if p.is_file():
        return _torchscript(p, str(p), device, batch_size)
    if p.is_dir():
        return _hf_vision(p, device, batch_size)
    raise EvaluationError(f"--features: {spec!r} is not 'inception', 'pixels', a TorchScript file or a "
                          "model folder")


def _pixel_features(images: np.ndarray) -> np.ndarray:
    from evaluation.images import to_grey

    g = torch.from_numpy(to_grey(images))[:, None]
    return F.adaptive_avg_pool2d(g, PIXEL_GRID).flatten(1).numpy()


def _channel_error(exc: Exception, what: str) -> EvaluationError | None:
    text = str(exc)
    if "channels" in text and ("expected" in text or "Expected" in text):
        return EvaluationError(f"{what}: the model does not take 3-channel images "
                               f"(mismatched channel counts: {text.splitlines()[0][:160]})")
    return None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PLAIN_SIZE = 224


def _takes_return_features(model) -> bool | None:
    """Whether a TorchScript module's forward has a `return_features` argument (None: unknown)."""
    try:
        return any(a.name == "return_features" for a in model.forward.schema.arguments)
    except (AttributeError, RuntimeError):
        return None


def _sidecar(path: pathlib.Path) -> dict:
    """Input settings from `<file>.json` next to a TorchScript file ({} when absent)."""
    side = path.with_name(path.name + ".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        out = {}
        if "input_size" in data:
            out["input_size"] = int(data["input_size"])
            if not 16 <= out["input_size"] <= 2048:
                raise ValueError("input_size out of range")
        for key in ("mean", "std"):
            if key in data:
                values = [float(v) for v in data[key]]
                if len(values) != 3 or (key == "std" and min(values) <= 0):
                    raise ValueError(f"{key} needs 3 values")
                out[key] = values
        if "dtype" in data:
            if data["dtype"] not in ("float", "uint8"):
                raise ValueError("dtype is 'float' or 'uint8'")
            out["dtype"] = data["dtype"]
        return out
    except (ValueError, TypeError) as exc:
        raise EvaluationError(f"{side}: bad input settings ({exc})") from None


def _torchscript(path: pathlib.Path, name: str, device: str, batch_size: int) -> FeatureExtractor:
    try:
        model = torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # not TorchScript: a state dict, a pickle, anything else
        raise EvaluationError(f"{path}: not a TorchScript model file ({type(exc).__name__}); export the "
                              "network with torch.jit.script or torch.jit.trace") from None
    takes_kw = _takes_return_features(model)
    settings = _sidecar(path)
    # Inception-style files take uint8 at 299 px; plain vision exports take ImageNet-normalised floats
    inception_style = takes_kw is not False
    dtype = settings.get("dtype", "uint8" if inception_style else "float")
    size = settings.get("input_size", INCEPTION_SIZE if inception_style else PLAIN_SIZE)
    mean = torch.tensor(settings.get("mean", IMAGENET_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(settings.get("std", IMAGENET_STD), dtype=torch.float32).view(1, 3, 1, 1)
    state = {"kw": takes_kw is not False}

    def run(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        if dtype == "float":
            x = (x.float().div(255.0) - mean) / std
        x = x.to(device)
        with torch.no_grad():
            if state["kw"]:
                try:
                    out = model(x, return_features=True)
                except RuntimeError as exc:
                    # schema unknown and the keyword refused: call with the image only
                    if takes_kw is not None or "argument" not in str(exc):
                        raise
                    state["kw"] = False
            if not state["kw"]:
                out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 4:
            out = out.mean(dim=(2, 3))
        return out.reshape(len(images), -1).float().cpu().numpy()

    probe = np.zeros((2, size, size, 3), np.uint8)
    try:
        dim = run(probe).shape[1]
    except Exception as exc:
        kind = "uint8" if dtype == "uint8" else "float"
        raise _channel_error(exc, str(path)) or EvaluationError(
            f"{path}: the model fails on {kind} N x 3 x {size} x {size} images "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    return FeatureExtractor(name, dim, size, run, batch_size)


@contextlib.contextmanager
def quiet_transformers():
    """No "Loading weights" progress bar from transformers: the CLI's output is ours."""
    from transformers.utils import logging as tlog

    was = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tlog.enable_progress_bar()


def vision_config(config):
    """The vision part of a model config (a CLIP config's ``vision_config``), else the config itself."""
    return getattr(config, "vision_config", None) or config


def _hf_vision(folder: pathlib.Path, device: str, batch_size: int) -> FeatureExtractor:
    import transformers

    if not (folder / "config.json").is_file():
        raise EvaluationError(f"{folder}: not a model folder (no config.json); --features takes 'inception', "
                              "'pixels', a TorchScript file or a Hugging Face vision model folder")
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise EvaluationError(f"{folder}: unreadable model config ({type(exc).__name__})") from None
    vcfg = vision_config(config)
    channels = getattr(vcfg, "num_channels", 3)
    if channels != 3:
        raise EvaluationError(f"{folder}: the model takes {channels}-channel images but evaluation images "
                              "are 3-channel RGB (mismatched channel counts)")
    try:
        with quiet_transformers():
            model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
    except Exception as exc:
        raise EvaluationError(f"{folder}: cannot load the model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    import inspect

    image_features = getattr(model, "get_image_features", None)
    takes_pixels = "pixel_values" in inspect.signature(model.forward).parameters
    if image_features is None and not takes_pixels:
        raise EvaluationError(f"{folder}: {type(model).__name__} is not a vision model (it takes no "
                              "pixel_values); give an image model folder")
    size = image_size(vcfg)
    mean, std = mean_std(folder, required=image_features is not None)

    def run(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = ((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).to(device)
        with torch.no_grad():
            if image_features is not None:
                out = image_features(pixel_values=x)
            else:
                out = model(pixel_values=x)
        out = _embedding(out)
        return out.reshape(len(images), -1).float().cpu().numpy()

    probe = np.zeros((1, size, size, 3), np.uint8)
    try:
        dim = run(probe).shape[1]
    except EvaluationError:
        raise
    except Exception as exc:
        raise _channel_error(exc, str(folder)) or EvaluationError(
            f"{folder}: the model fails on {size} x {size} RGB images ({type(exc).__name__})") from None
    return FeatureExtractor(str(folder), dim, size, run, batch_size)


def _embedding(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        t = out
    else:
        t = getattr(out, "image_embeds", None)
        if t is None:
            t = getattr(out, "pooler_output", None)
        if t is None:
            t = getattr(out, "last_hidden_state", None)
            if t is None:
                raise EvaluationError("the model returned no image embedding")
            t = t.mean(dim=1) if t.dim() == 3 else t
    if t.dim() == 4:  # convolutional feature maps (N x C x H x W)
        t = t.mean(dim=(2, 3))
    return t


def image_size(vcfg) -> int:
    """The square input side a vision config declares (224 when it declares none)."""
    size = getattr(vcfg, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    return int(size or 224)


PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def mean_std(folder: pathlib.Path, *, required: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The image processor's normalisation (image_mean, image_std) saved with a model folder.

    transformers writes it to ``preprocessor_config.json`` (an image processor alone) or, from
    version 5 on, inside ``processor_config.json`` under ``image_processor`` (a processor with a
    tokenizer, e.g. CLIPProcessor). ``required``: a folder with neither is an error (a CLIP model
    normalised with the wrong statistics gives wrong scores without any sign); otherwise 0.5/0.5."""
    for name in PROCESSOR_FILES:
        cfg = folder / name
        if not cfg.is_file():
            continue
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
            data = data.get("image_processor", data) if name == "processor_config.json" else data
            if data.get("do_normalize", True) is False:
                mean, std = [0.0] * 3, [1.0] * 3
            else:
                mean, std = list(data["image_mean"])[:3], list(data["image_std"])[:3]
            return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise EvaluationError(f"{cfg}: no readable image_mean/image_std (the image normalisation of "
                                  "this model is unknown)") from None
    if required:
        raise EvaluationError(f"{folder}: neither preprocessor_config.json nor processor_config.json, so the "
                              "model's image normalisation (mean/std) is unknown; save its processor into the "
                              "folder (processor.save_pretrained(folder))")
    return torch.full((3,), 0.5), torch.full((3,), 0.5)
