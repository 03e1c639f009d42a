"""Low-level features of one stimulus as a reader's browser receives it: intensity
histogram, colour and tint, noise, sharpness, JPEG blockiness, PNG byte size, padding, and a
coarse spatial map."""
from __future__ import annotations

import math
import re

import numpy as np
from scipy import ndimage

from studies.audit.rules import GRID
from studies.imaging.stimuli import decode_png, letterbox_geometry

FEATURE_NAMES = (
    "mean", "std", "min", "max", "p01", "p05", "p25", "p50", "p75", "p95", "p99",
    "colourfulness", "tint_rg", "tint_bg", "log_noise_sigma", "log_laplacian_var",
    "blockiness", "png_bytes_per_pixel", "padding_fraction",
)
"""Global features: the leak classifier's inputs (and each tested alone)."""
GRID_FEATURE_NAMES = tuple(f"grid_{kind}_{r}{c}" for kind in ("mean", "edges")
                           for r in range(GRID) for c in range(GRID))
"""Spatial-map features: tested one by one (a mark in one cell), not fed to the classifier."""
_FEATURE_LABELS = {
    "mean": "mean intensity", "std": "intensity spread (std)", "min": "minimum intensity",
    "max": "maximum intensity", "p01": "1st percentile",
    "p05": "5th percentile", "p25": "25th percentile", "p50": "median intensity",
    "p75": "75th percentile", "p95": "95th percentile", "p99": "99th percentile",
    "colourfulness": "colourfulness", "tint_rg": "red-green tint (mean R-G)",
    "tint_bg": "blue-green tint (mean B-G)", "log_noise_sigma": "noise level",
    "log_laplacian_var": "sharpness (variance of Laplacian)",
    "blockiness": "JPEG 8x8 blockiness",
    "png_bytes_per_pixel": "PNG byte size (the Content-Length a browser sees)",
    "padding_fraction": "black padding fraction",
}
_ROWS = ("top", "upper middle", "lower middle", "bottom") if GRID == 4 else None
_COLS = ("left", "centre-left", "centre-right", "right") if GRID == 4 else None


def feature_label(name: str) -> str:
    if name in _FEATURE_LABELS:
        return _FEATURE_LABELS[name]
    m = re.fullmatch(r"grid_(mean|edges)_(\d)(\d)", name)
    if m:
        kind = "mean intensity" if m.group(1) == "mean" else "edge energy"
        r, c = int(m.group(2)), int(m.group(3))
        where = (f"{_ROWS[r]} {_COLS[c]}" if _ROWS else f"row {r + 1}, column {c + 1}")
        return f"{kind} in the {where} cell of a {GRID}x{GRID} grid"
    return name


# Immerkaer (1996) fast noise estimate: this kernel cancels image structure up to 2nd order.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


def stimulus_features(png: bytes, original_width: int | None = None,
                      original_height: int | None = None) -> dict[str, float]:
    """Low-level features of a stimulus PNG (FEATURE_NAMES and GRID_FEATURE_NAMES).

    The original's size, when given, locates the original 8x8 JPEG grid in the stimulus
    (letterbox offset and scale) for the blockiness measure.
    """
    rgb = decode_png(png)
    h, w = rgb.shape[:2]
    r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
    grey_full = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
    # Channel max/min pairwise: far faster than reducing over the short last axis.
    hi = np.maximum(np.maximum(r, g), b)
    chroma_full = hi - np.minimum(np.minimum(r, g), b)  # exactly 0 for grey

    # Padding = black border rows/columns, as a reader sees it.
    lit = hi > 0
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if rows.size == 0:
        box = (0, h, 0, w)
    else:
        box = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
    content_area = (box[1] - box[0]) * (box[3] - box[2])
    padding = 1.0 - content_area / (h * w) if rows.size else 1.0
    inner = (slice(box[0], box[1]), slice(box[2], box[3]))
    grey = grey_full[inner]
    chroma = chroma_full[inner]

    pcts = np.percentile(grey, [1, 5, 25, 50, 75, 95, 99])
    feats = {
        "mean": float(grey.mean()), "std": float(grey.std()),
        "min": float(grey.min()), "max": float(grey.max()),
        **{name: float(v) for name, v in zip(("p01", "p05", "p25", "p50", "p75", "p95", "p99"),
                                             pcts)},
        "colourfulness": float(chroma.mean(dtype=np.float64) / 255.0),
        # Signed: a consistent cast (SD's warm greys) is a cue even when faint.
        "tint_rg": float((r[inner] - g[inner]).mean(dtype=np.float64) / 255.0),
        "tint_bg": float((b[inner] - g[inner]).mean(dtype=np.float64) / 255.0),
        "log_noise_sigma": math.log10(_noise_sigma(grey) + 1e-4),
        "log_laplacian_var": math.log10(_laplacian_var(grey) + 1e-6),
        "blockiness": _grid_blockiness(grey_full, original_width, original_height, box),
        "png_bytes_per_pixel": len(png) / (h * w),
        "padding_fraction": float(padding),
    }
    feats.update(_grid_features(grey_full))
    return feats


def _grid_features(grey: np.ndarray) -> dict[str, float]:
    """Mean and edge energy (mean absolute step to the right and down neighbours) per cell of
    a GRID x GRID grid over the whole stimulus, padding included: where a mark would sit."""
    h, w = grey.shape
    dx = np.zeros_like(grey)
    dy = np.zeros_like(grey)
    dx[:, :-1] = np.abs(np.diff(grey, axis=1))
    dy[:-1] = np.abs(np.diff(grey, axis=0))
    edges = dx + dy
    ys = np.linspace(0, h, GRID + 1).round().astype(int)
    xs = np.linspace(0, w, GRID + 1).round().astype(int)
    out = {}
    for i in range(GRID):
        for j in range(GRID):
            cell = (slice(ys[i], max(ys[i + 1], ys[i] + 1)), slice(xs[j], max(xs[j + 1], xs[j] + 1)))
            out[f"grid_mean_{i}{j}"] = float(grey[cell].mean())
            out[f"grid_edges_{i}{j}"] = float(edges[cell].mean())
    return out


def _noise_sigma(grey: np.ndarray) -> float:
    if min(grey.shape) < 3:
        return 0.0
    resid = ndimage.convolve(grey.astype(np.float64), _NOISE_KERNEL, mode="reflect")[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(resid).mean() / 6.0)


def _laplacian_var(grey: np.ndarray) -> float:
    if min(grey.shape) < 3:
        return 0.0
    return float(ndimage.laplace(grey.astype(np.float64))[1:-1, 1:-1].var())


def blockiness(grey: np.ndarray, period_x: float = 8.0, period_y: float = 8.0) -> float:
    """Mean absolute step across block boundaries / mean step elsewhere (1 = no blocking).

    Boundaries sit after every `period` pixels from the array origin (rounded), so a
    resampled JPEG grid can be followed. Returns 1.0 when the grid is too fine to see.
    """
    ratios = []
    for axis, period in ((1, period_x), (0, period_y)):
        n = grey.shape[axis]
        if period < 3 or n < 2 * period + 2:
            continue
        steps = np.abs(np.diff(grey.astype(np.float32), axis=axis)).mean(axis=1 - axis)
        edges = np.round(np.arange(period, n - 1, period)).astype(int) - 1
        edges = edges[(edges >= 0) & (edges < steps.size)]
        mask = np.zeros(steps.size, bool)
        mask[edges] = True
        inside = steps[~mask].mean()
        ratios.append(float(steps[mask].mean() / inside) if inside > 1e-6 else 1.0)
    return float(np.mean(ratios)) if ratios else 1.0


def _grid_blockiness(grey_full, ow, oh, box) -> float:
    size = grey_full.shape[0]
    if ow and oh and grey_full.shape[0] == grey_full.shape[1]:
        new_w, new_h, left, top = letterbox_geometry(int(ow), int(oh), size)
        region = grey_full[top:top + new_h, left:left + new_w]
        return blockiness(region, 8.0 * new_w / ow, 8.0 * new_h / oh)
    return blockiness(grey_full[box[0]:box[1], box[2]:box[3]])
