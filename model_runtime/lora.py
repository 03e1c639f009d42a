"""LoRA adapters at load time: ``PATH[:SCALE]`` specs, which file a folder means, names and hashes.

A LoRA is a ``.safetensors`` file (diffusers/peft or kohya/A1111 layout: diffusers'
``load_lora_weights`` converts the common ones) or a folder holding one — such as the folder
``medisyn model finetune`` writes (``pytorch_lora_weights.safetensors`` beside checkpoints and
validation images). Adapters are loaded under their own names, weighted with ``set_adapters`` and
fused into the base weights (no per-step overhead). Pipelines without diffusers' LoRA loader
mixin but with a UNet (the Kandinsky 2.2 decoder) get the adapter on the UNet directly.

Provenance records each adapter as (name, scale, sha256): the name is what A1111's
``<lora:name:scale>`` prompt tag uses (the file's stem, or the folder's name for a folder).
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re

from model_runtime.errors import ModelRuntimeError

LORA_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt")
DEFAULT_FILE = "pytorch_lora_weights.safetensors"


class LoraError(ModelRuntimeError, LookupError):
    """A LoRA path that holds no adapter weights, or a pipeline that cannot take one."""


@dataclasses.dataclass(frozen=True)
class Lora:
    path: str          # as given: a file or a folder
    scale: float = 1.0

    @property
    def file(self) -> pathlib.Path:
        return weights_file(self.path)

    @property
    def name(self) -> str:
        return lora_name(self.path)


def parse_spec(text: str) -> Lora:
    """``PATH`` or ``PATH:SCALE`` (the scale is whatever follows the last colon, if it is a number)."""
    text = str(text).strip()
    if not text:
        raise LoraError("empty LoRA path")
    head, sep, tail = text.rpartition(":")
    if sep and head and re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?", tail.strip()):
        return Lora(head, float(tail))
    return Lora(text, 1.0)


def weights_file(path: str | os.PathLike) -> pathlib.Path:
    """The adapter file a path means: the file itself, or the one LoRA file in a folder."""
    p = pathlib.Path(path).expanduser()
    if p.is_file():
        if p.suffix not in LORA_SUFFIXES:
            raise LoraError(f"{p}: not a LoRA weights file ({', '.join(LORA_SUFFIXES)})")
        return p.resolve()
    if p.is_dir():
        if (p / DEFAULT_FILE).is_file():
            return (p / DEFAULT_FILE).resolve()
        found = sorted(f for f in p.iterdir() if f.suffix == ".safetensors" and f.is_file())
        if len(found) == 1:
            return found[0].resolve()
        raise LoraError(f"{p}: expected {DEFAULT_FILE} or exactly one .safetensors file, found "
                        f"{len(found)}: {[f.name for f in found][:5]}")
    raise LoraError(f"LoRA {p} not found")


def lora_name(path: str | os.PathLike) -> str:
    """A1111's name for an adapter: the file's stem; for a folder (or its default file) the folder's name."""
    p = pathlib.Path(path).expanduser()
    if p.is_dir() or p.name == DEFAULT_FILE:
        return (p if p.is_dir() else p.parent).resolve().name
    return p.stem


def coerce(value) -> tuple[Lora, ...]:
    """Lora objects from specs ("PATH:SCALE"), (path, scale) pairs, dicts or Lora objects."""
    out = []
    for item in value or ():
        if isinstance(item, Lora):
            out.append(item)
        elif isinstance(item, str):
            out.append(parse_spec(item))
        elif isinstance(item, dict):
            out.append(Lora(str(item["path"]), float(item.get("scale", 1.0))))
        else:
            path, scale = item
            out.append(Lora(str(path), float(scale)))
    return tuple(out)


def _adapter_names(loras) -> list[str]:
    names, seen = [], {}
    for lora in loras:
        base = re.sub(r"\W+", "_", lora.name) or "lora"
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


def apply(pipe, loras: tuple[Lora, ...]) -> None:
    """Load every adapter, weight it by its scale, and fuse them all into the base weights."""
    import importlib.util

    if not loras:
        return
    if importlib.util.find_spec("peft") is None:
        raise LoraError("LoRA adapters need the 'peft' package: pip install peft")
    names = _adapter_names(loras)
    files = [lora.file for lora in loras]
    if hasattr(pipe, "load_lora_weights"):
        for file, name in zip(files, names):
            pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=name)
            if not any(name in found for found in pipe.get_list_adapters().values()):
                # diffusers skips keys it cannot place: an adapter for another family loads as nothing
                raise LoraError(f"{file}: none of its weights fit {type(pipe).__name__} "
                                "(a LoRA made for another model family?)")
        pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        return
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "load_lora_adapter"):
        raise LoraError(f"{type(pipe).__name__} does not support LoRA adapters")
    # Kandinsky 2.2 (combined or decoder pipeline): the adapter belongs to the decoder UNet
    from safetensors.torch import load_file

    for file, name in zip(files, names):
        state = load_file(str(file)) if file.suffix == ".safetensors" else _torch_load(file)
        prefix = "unet" if any(k.startswith("unet.") for k in state) else None
        unet.load_lora_adapter(state, prefix=prefix, adapter_name=name)
    unet.set_adapters(names, weights=[lora.scale for lora in loras])
    unet.fuse_lora(lora_scale=1.0, adapter_names=names)


def _torch_load(file: pathlib.Path) -> dict:
    import torch
    return torch.load(file, map_location="cpu", weights_only=True)
