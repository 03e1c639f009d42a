"""Fine-tuning's data: captioned images, read the same way by ``finetune`` and ``mixture``.

``read_examples`` takes a folder's ``captions.csv`` (``path,caption``) or a manifest CSV (``path``
and ``prompt``; a study or ``generate`` manifest), paths relative to the CSV. Images decode through
``studies.imaging.decode_rgb`` by default — DICOM and NIfTI windowed exactly as at study ingest —
and are centre-cropped to a square.
"""
from __future__ import annotations

import csv
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model_runtime.errors import ModelRuntimeError
from studies.imaging import decode_rgb


class FinetuneError(ModelRuntimeError, ValueError):
    """Bad data, an unsupported base model or an inconsistent resume; the message says which."""


@dataclass(frozen=True)
class Example:
    path: pathlib.Path
    caption: str


def read_examples(data) -> list[Example]:
    """(image path, caption) pairs from a folder's captions.csv or a manifest CSV."""
    data = pathlib.Path(data)
    if data.is_dir():
        table = data / "captions.csv"
        if not table.is_file():
            raise FinetuneError(f"{data}: no captions.csv (columns path,caption) in the folder")
    elif data.is_file():
        table = data
    else:
        raise FinetuneError(f"{data}: no such folder or file")
    try:
        with open(table, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FinetuneError(f"{table}: not a readable CSV ({exc})") from None
    text_column = "caption" if "caption" in columns else "prompt" if "prompt" in columns else None
    if "path" not in columns or text_column is None:
        raise FinetuneError(f"{table}: needs a 'path' column and a 'caption' (or 'prompt') column, "
                            f"found {sorted(columns)}")
    examples = []
    for line, row in enumerate(rows, start=2):
        caption = (row.get(text_column) or "").strip()
        if not caption:
            raise FinetuneError(f"{table} line {line}: empty {text_column}")
        if not (row.get("path") or "").strip():
            raise FinetuneError(f"{table} line {line}: empty path")
        path = (table.parent / row["path"].strip())
        if not path.is_file():
            raise FinetuneError(f"{table} line {line}: image {row['path']!r} not found")
        examples.append(Example(path, caption))
    if not examples:
        raise FinetuneError(f"{table} lists no images")
    return examples


def square(image: Image.Image, size: int) -> np.ndarray:
    """Centre crop to a square, resize to size x size, uint8 RGB."""
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def decode_all(examples: Sequence[Example], size: int,
               decode: Callable[[pathlib.Path], Image.Image] | None = None) -> np.ndarray:
    """Every image as uint8 N x size x size x 3; an unreadable one is a FinetuneError naming it."""
    decode = decode or decode_rgb
    out = np.empty((len(examples), size, size, 3), dtype=np.uint8)
    for i, ex in enumerate(examples):
        try:
            out[i] = square(decode(ex.path), size)
        except FinetuneError:
            raise
        except Exception as exc:  # PIL, pydicom, nibabel all raise their own types
            raise FinetuneError(f"{ex.path}: cannot read the image ({type(exc).__name__}: {exc})") from None
    return out
