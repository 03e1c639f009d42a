"""The decoded image and what every format's decoder shares: its error, intensity mapping
(windows, presets, percentiles) and the size limits."""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from PIL import Image

MAX_PIXELS = 64_000_000
"""Default limit on the pixels of the decoded 2-D image (decompression-bomb guard)."""
TOTAL_PIXEL_FACTOR = 16
"""All frames / volumes of one file together may hold at most this many times MAX_PIXELS."""
PERCENTILES = (0.5, 99.5)
"""Robust scaling: these percentiles of the image map to 0 and 1."""
REDUCING_GAP = 3.0
"""Box-reduce by int(ratio / REDUCING_GAP) before Lanczos; 3.0 is visually exact (PIL docs)."""

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    # (centre, width) in Hounsfield units, the usual radiology defaults.
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
DEFAULT_PRESET: dict[str, str] = {"CT": "soft_tissue"}
"""Preset used for a modality when neither the caller nor the file gives a window. A
modality matches by DICOM code or as a word of a free-text description ("CT chest")."""
_MODALITY_ALIASES = {"COMPUTED TOMOGRAPHY": "CT"}

class ImageError(ValueError):
    """An image file is missing, corrupt, unsupported or too large. The message names it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass
class DecodedImage:
    """Display-ready pixels and what the original file looked like."""

    pixels: np.ndarray          # float32 in [0, 1]; HxW (grey) or HxWx3 (RGB)
    original_format: str        # 'PNG' | 'JPEG' | 'TIFF' | 'DICOM' | 'NIfTI'
    original_width: int         # of the decoded 2-D image (DICOM Columns, NIfTI slice)
    original_height: int
    original_mode: str          # PIL mode, DICOM Photometric Interpretation, NIfTI dtype
    original_bit_depth: int     # bits per sample (DICOM Bits Stored)
    original_bytes: int         # file size
    modality: str | None = None  # the DICOM Modality tag, else the caller's
    scaling: str = ""           # how intensities were mapped, for the record
    reduced_by: int = 1         # integer box-reduction applied (see target_size)
    degenerate: str = ""        # why the image shows (almost) nothing, e.g. "constant"; "" if fine
    burned_in: str = ""         # DICOM: why burned-in text is likely (see burned_in_reason); "" if not
    crop: tuple[int, int, int, int] | None = None  # (x, y, w, h) applied, in source pixels


def require_values(p, values: np.ndarray) -> None:
    """An image none of whose pixels is a number (e.g. an all-NaN NIfTI slice) is empty."""
    if values.size == 0:
        raise ImageError(p, "image has no pixels")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).any():
        raise ImageError(p, "image has no content: no pixel holds a finite value (all NaN "
                            "or infinite)")


def reduce_factor(width: int, height: int, size: int) -> int:
    """Integer box-reduction PIL applies before resampling (width, height) to fit `size`."""
    return max(1, int(max(width, height) / size / REDUCING_GAP))



def check_window(path, window):
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key == "auto" or key in WINDOW_PRESETS:
            return key
        raise ImageError(path, f"unknown window preset {window!r}; choose one of "
                               f"{', '.join(sorted(WINDOW_PRESETS))}, auto or centre/width")
    try:
        centre, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ImageError(path, f"window must be (centre, width) or a preset name, "
                               f"not {window!r}") from None
    if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
        raise ImageError(path, f"window width must be > 0 (got {window!r})")
    return (centre, width)


def linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Map [centre - width/2, centre + width/2] linearly to [0, 1], clipping outside."""
    out = (values.astype(np.float32) - np.float32(centre - width / 2)) / np.float32(width)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def robust_scale(values: np.ndarray) -> np.ndarray:
    """Map the PERCENTILES of the finite values to [0, 1]."""
    values = values.astype(np.float32, copy=False)
    flat = values.reshape(-1)
    if flat.size > 1 << 22:  # percentiles of a regular subsample are plenty and much faster
        flat = flat[:: flat.size >> 22]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return np.zeros(values.shape, np.float32)
    lo, hi = np.percentile(flat, PERCENTILES)
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return linear_window(values, (lo + hi) / 2, hi - lo)


def default_preset(*modalities: str | None) -> str | None:
    """The DEFAULT_PRESET of the first modality that has one."""
    for modality in modalities:
        text = " ".join((modality or "").upper().replace("-", " ").split())
        for alias, code in _MODALITY_ALIASES.items():
            text = text.replace(alias, code)
        for word in [text] + text.split():
            if word in DEFAULT_PRESET:
                return DEFAULT_PRESET[word]
    return None


def explicit_or_preset(values, window, modality):
    """Apply a caller window or the modality's default preset; None if neither applies."""
    if window == "auto":
        return robust_scale(values), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}"
    if isinstance(window, tuple):
        return linear_window(values, *window), f"window {window[0]:g}/{window[1]:g}"
    name = window or default_preset(modality)
    if name:
        c, w = WINDOW_PRESETS[name]
        return linear_window(values, c, w), f"preset {name} {c:g}/{w:g}"
    return None



def check_pixels(p, n, limit, what, total=False):
    if n > limit:
        scope = "in total" if total else "per image"
        raise ImageError(p, f"image too large: {what} = {n:,} pixels; the limit is "
                            f"{limit:,} {scope} (decompression bomb guard)")


def reduce_pixels(px: np.ndarray, target_size: int | None):
    """Box-reduce float pixels by the same integer factor PIL's reducing_gap would use."""
    if not target_size:
        return px, 1
    h, w = px.shape[:2]
    f = reduce_factor(w, h, target_size)
    if f == 1:
        return px, 1
    chans = [px] if px.ndim == 2 else [px[..., c] for c in range(px.shape[2])]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), "F").reduce(f))
           for c in chans]
    return (out[0] if px.ndim == 2 else np.stack(out, axis=-1)), f


def short_message(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
