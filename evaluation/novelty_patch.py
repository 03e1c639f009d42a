"""Partial copies: a region of a reference (training) image inside a synthetic image.

The `patch` measure of `evaluation.novelty`. Windows of 37.5 % of the image side are compared
on the grey image as decoded (not the globally standardised one: a region pasted into another
image keeps its own pixel values, while its standardised values depend on the image around it,
and bright speckle is clipped differently). Two stages:

1. Candidates: every structured window of the query (64 x 64 grid, stride 2) against every
   window of every reference (stride 4), as 12 x 12 zero-mean unit vectors (exact search, in
   blocks). Each query window keeps its PER_WINDOW best reference windows; the pairs are
   reduced to one per (reference, displacement) — so that many overlapping windows of one
   merely similar image cannot crowd out the true source — and the PATCH_CANDIDATES best kept.
2. Refinement: each candidate pair is re-matched at 128 px as the Pearson correlation of the
   48-px query window with the best-placed window within ±FINE_SHIFT px of the reference
   window, on band-passed images (difference of Gaussians of BLUR_SIGMA and SURROUND_SIGMA px).
   The fine blur: a region copied at an odd pixel offset lands half a pixel off the 128-px
   grid, which decorrelates speckle (ultrasound) unless the finest detail is smoothed away.
   The coarse one removed: smooth shading and single edges make windows of unrelated smooth
   images (a CT head, a brain MR slice) correlate almost as well as a copy; what a copy keeps
   and a look-alike does not is the detail in between.

The measure is the best refined correlation (higher = closer); its threshold is calibrated on
held-out real images like every other measure.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evaluation import descriptors as D

__all__ = ["patch_search", "prepare_reference"]

PATCH_GRID = 64
PATCH = 24           # window side on the 64 grid (37.5 % of the image side; 48 px at 128)
PATCH_POOL = 2       # candidate vectors: windows pooled to 12 x 12
REF_STRIDE = 4
QUERY_STRIDE = 2     # with REF_STRIDE 4: some query window lies within 1 px of a reference window
PATCH_MIN_STD = 0.03
"""Windows whose grey values (0-1) vary less than this (background, flat regions) are skipped."""
PER_WINDOW = 8
"""Reference windows kept per query window at the candidate stage."""
PATCH_CANDIDATES = 128
"""Candidate pairs per query (distinct reference and displacement) refined at 128 px."""
FINE_SHIFT = 8
"""Refinement: the query window is matched at 128 px within ±8 px of the reference window found."""
BLUR_SIGMA = 0.7
SURROUND_SIGMA = 1.5
"""Refinement on the difference of Gaussians of these widths (px at 128): a band-pass."""
MIN_DETAIL = 0.008
"""Windows whose band-passed grey values (0-1) vary less than this are not compared."""
_BLOCK = 32768       # reference windows per search block


def grey_float(grey: np.ndarray) -> torch.Tensor:
    """N x 128 x 128 uint8 grey -> N x 1 x 128 x 128 float in [0, 1]."""
    return torch.from_numpy(np.array(grey, dtype=np.uint8)).float().div(255.0)[:, None]


def window_vectors(grey: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (N x W x 144 float32) of the PATCH x PATCH windows of each image (64 grid,
    `stride`), and a mask (N x W) of the windows with structure (grey SD >= PATCH_MIN_STD)."""
    with torch.no_grad():
        x = D._pool(grey_float(grey), PATCH_GRID)
        win = F.unfold(x, PATCH, stride=stride)                          # N x P^2 x W
        n, _, nw = win.shape
        win = win.transpose(1, 2).reshape(n * nw, 1, PATCH, PATCH)
        std = win.flatten(1).std(dim=1)
        v = F.avg_pool2d(win, PATCH_POOL).flatten(1)
        v = v - v.mean(dim=1, keepdim=True)
        v = v / (v.norm(dim=1, keepdim=True) + 1e-6)
    return v.numpy().reshape(n, nw, -1).astype(np.float32), (std.numpy() >= PATCH_MIN_STD).reshape(n, nw)


def window_origin(index: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corner (64 grid) of window `index` of `window_vectors(..., stride)`."""
    per_side = (PATCH_GRID - PATCH) // stride + 1
    index = np.asarray(index)
    return (index // per_side) * stride, (index % per_side) * stride


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="replicate")
    return F.conv2d(F.conv2d(x, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))


def band_pass(grey: np.ndarray) -> torch.Tensor:
    """The images the refinement correlates: N x 1 x 128 x 128 differences of Gaussians."""
    with torch.no_grad():
        x = grey_float(grey)
        return _gaussian(x, BLUR_SIGMA) - _gaussian(x, SURROUND_SIGMA)


def _box_mean(x: torch.Tensor, side: int) -> torch.Tensor:
    """Means of every side x side window of n x H x W (summed-area table: far faster on CPU
    than average pooling with a large kernel)."""
    c = F.pad(x.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    s = c[:, side:, side:] - c[:, :-side, side:] - c[:, side:, :-side] + c[:, :-side, :-side]
    return (s / (side * side)).float()


def refine_patches(q_img: torch.Tensor, q_rows: np.ndarray, q_win: np.ndarray, r_pad: torch.Tensor,
                   r_rows: np.ndarray, r_win: np.ndarray) -> np.ndarray:
    """Pearson correlation, at 128 px, of query window q_win[i] of image q_img[q_rows[i]] with the
    best-placed window (±FINE_SHIFT px) around reference window r_win[i] of r_pad[r_rows[i]]
    (`band_pass` images; the references padded by FINE_SHIFT, `padded`): a copied region matches
    at near 1, a merely similar-looking one does not."""
    scale = D.STRUCT_SIZE // PATCH_GRID
    side = PATCH * scale
    n = len(q_win)
    if not n:
        return np.zeros(0, np.float32)
    qy, qx = window_origin(q_win, QUERY_STRIDE)
    ry, rx = window_origin(r_win, REF_STRIDE)
    with torch.no_grad():
        ys = torch.arange(side)
        span = torch.arange(side + 2 * FINE_SHIFT)
        qi, ri = torch.from_numpy(np.asarray(q_rows))[:, None, None], torch.from_numpy(np.asarray(r_rows))[:, None, None]
        qy_, qx_ = torch.from_numpy(qy * scale), torch.from_numpy(qx * scale)
        ry_, rx_ = torch.from_numpy(ry * scale), torch.from_numpy(rx * scale)
        kernels = q_img[:, 0][qi, (qy_[:, None] + ys)[:, :, None], (qx_[:, None] + ys)[:, None, :]]     # n x s x s
        regions = r_pad[:, 0][ri, (ry_[:, None] + span)[:, :, None], (rx_[:, None] + span)[:, None, :]].float()
        centred = kernels - kernels.mean(dim=(1, 2), keepdim=True)
        k_norm = centred.flatten(1).norm(dim=1)
        k = (centred / (k_norm[:, None, None] + 1e-6))[:, None]
        corr = F.conv2d(regions[None], k, groups=n)[0]                         # n x o x o
        mu = _box_mean(regions, side)
        sq = _box_mean(regions * regions, side)
        norm = ((sq - mu * mu).clamp_min(0) * side * side).sqrt()
        # windows without fine detail (smooth, or upscaled from a small image) are no evidence
        # of a copy: what little band-pass they have is resampling ripple, alike in any image
        ok = (norm > MIN_DETAIL * side) & (k_norm[:, None, None] > MIN_DETAIL * side)
        ncc = torch.where(ok, corr / (norm + 1e-6), torch.full_like(corr, -1.0))
        return ncc.flatten(1).max(1).values.clamp(-1, 1).numpy().astype(np.float32)


def padded(img: torch.Tensor) -> torch.Tensor:
    """Band-passed images padded by FINE_SHIFT (border values) for the shift search."""
    return F.pad(img, (FINE_SHIFT,) * 4, mode="replicate")


def prepare_reference(ref: dict) -> None:
    """The reference windows of the patch search ('patch_vec', 'patch_owner', 'patch_window') and the
    band-passed reference images ('patch_band'), once per run."""
    if "patch_vec" in ref:
        return
    vec, mask = [], []
    grey = ref["grey"]
    for s in range(0, len(grey), 512):
        v, m = window_vectors(np.asarray(grey[s:s + 512]), REF_STRIDE)
        vec.append(v)
        mask.append(m)
    vec, mask = np.concatenate(vec), np.concatenate(mask)
    owner = np.repeat(np.arange(len(vec)), vec.shape[1]).reshape(mask.shape)
    window = np.tile(np.arange(vec.shape[1]), len(vec)).reshape(mask.shape)
    # band-passed references for the refinement, computed once (half precision: 41 kB per image)
    ref["patch_band"] = torch.cat([padded(band_pass(np.asarray(grey[s:s + 512]))).half()
                                   for s in range(0, len(grey), 512)])
    ref["patch_vec"] = np.ascontiguousarray(vec[mask])
    ref["patch_owner"] = owner[mask]
    ref["patch_window"] = window[mask]


def _candidates(w: torch.Tensor, base: np.ndarray, skip) -> tuple[np.ndarray, np.ndarray]:
    """Per query window (rows of w), its PER_WINDOW best base rows: (similarities, rows), exact,
    streamed over blocks of the base; `skip(start, stop)` masks base rows a query must not match."""
    best_s = best_i = None
    for start in range(0, len(base), _BLOCK):
        block = torch.from_numpy(np.ascontiguousarray(base[start:start + _BLOCK]))
        sims = w @ block.T
        mask = skip(start, start + len(block))
        if mask is not None:
            sims[:, torch.from_numpy(mask)] = -np.inf
        s, i = sims.topk(min(PER_WINDOW, sims.shape[1]), dim=1)
        i = i + start
        if best_s is not None:
            s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
            s, order = s.topk(min(PER_WINDOW, s.shape[1]), dim=1)
            i = torch.gather(i, 1, order)
        best_s, best_i = s, i
    return best_s.numpy(), best_i.numpy()


def patch_search(query_grey: np.ndarray, ref: dict, query_groups=None, ref_groups=None):
    """Best refined window correlation per query (N x 128 x 128 uint8 grey images) against the
    reference set (`prepare_reference` done), and the reference it came from (-1: none). A query
    is never matched with a reference of its own group (query_groups with ref_groups)."""
    query_grey = np.asarray(query_grey)
    qv, qm = window_vectors(query_grey, QUERY_STRIDE)
    base, owner, where = ref["patch_vec"], ref["patch_owner"], ref["patch_window"]
    best = np.full(len(qv), -1.0, np.float32)
    arg = np.full(len(qv), -1, np.int64)
    if not len(base):
        return best, arg
    owner_groups = None if query_groups is None else np.asarray(ref_groups)[owner]
    q_img = band_pass(query_grey)
    for i in range(len(qv)):
        wins = np.flatnonzero(qm[i])
        if not len(wins):
            continue

        def skip(start, stop, i=i):
            return None if owner_groups is None else owner_groups[start:stop] == query_groups[i]

        s, b = _candidates(torch.from_numpy(qv[i][wins]), base, skip)
        qi = np.repeat(wins, s.shape[1])
        s, b = s.ravel(), b.ravel()
        ok = np.isfinite(s)
        if not ok.any():
            continue
        s, b, qi = s[ok], b[ok], qi[ok]
        # one pair per (reference image, displacement rounded to the reference stride)
        qy, qx = window_origin(qi, QUERY_STRIDE)
        ry, rx = window_origin(where[b], REF_STRIDE)
        span = 2 * PATCH_GRID // REF_STRIDE + 2
        key = (owner[b] * span + (ry - qy + PATCH_GRID) // REF_STRIDE) * span + (rx - qx + PATCH_GRID) // REF_STRIDE
        order = np.argsort(-s, kind="stable")
        _, first = np.unique(key[order], return_index=True)
        keep = order[np.sort(first)][:PATCH_CANDIDATES]
        owners = owner[b[keep]]
        fine = refine_patches(q_img, np.full(len(keep), i), qi[keep], ref["patch_band"], owners, where[b[keep]])
        j = int(np.argmax(fine))
        best[i] = fine[j]
        if fine[j] > -1:  # -1: no candidate window had detail enough to compare
            arg[i] = int(owners[j])
    return best, arg
