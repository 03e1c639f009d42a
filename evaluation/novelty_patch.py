"""Partial copies: a region of a reference (training) image inside a synthetic image.

The `patch` measure of `evaluation.novelty`: every structured window of the query against every
window of every reference (exact search), the best window pairs re-matched at 128 px.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evaluation import descriptors as D

__all__ = ["patch_search", "prepare_reference"]


PATCH_GRID = 64
PATCH = 20          # window side on the 64 grid (31 % of the image side)
PATCH_DIM = 20      # windows searched at full 64-grid resolution (20 x 20)
REF_STRIDE = 4
QUERY_STRIDE = 4
PATCH_MIN_STD = 0.35
"""Windows whose standardised values vary less than this (background, flat regions) are skipped."""
FINE_SHIFT = 8
"""Refinement: the query window is matched at 128 px within ±8 px of the reference window found."""


def patch_vectors(struct: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of the PATCH x PATCH windows of each image (64 grid, `stride`) and a mask of
    the windows with enough structure: (N x W x 100 float32, N x W bool)."""
    with torch.no_grad():
        x = D._pool(D._struct_float(struct), PATCH_GRID)
        z = (x - 0.5) / D._STD_SPREAD
        win = F.unfold(z, PATCH, stride=stride)                         # N x P^2 x W
        n, _, nw = win.shape
        win = win.transpose(1, 2).reshape(n * nw, 1, PATCH, PATCH)
        small = F.avg_pool2d(win, PATCH // PATCH_DIM).flatten(1)
        std = win.flatten(1).std(dim=1)
        v = small - small.mean(dim=1, keepdim=True)
        v = v / (v.norm(dim=1, keepdim=True) + 1e-6)
    return v.numpy().reshape(n, nw, -1).astype(np.float32), (std.numpy() >= PATCH_MIN_STD).reshape(n, nw)


def window_origin(index: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corner (64 grid) of window `index` of `patch_vectors(..., stride)`."""
    per_side = (PATCH_GRID - PATCH) // stride + 1
    index = np.asarray(index)
    return (index // per_side) * stride, (index % per_side) * stride


def refine_patches(q_struct: np.ndarray, q_win: np.ndarray, r_struct: np.ndarray, r_win: np.ndarray) -> np.ndarray:
    """Pearson correlation, at 128 px, of query window q_win[i] of q_struct[i] with the best-placed
    window (±FINE_SHIFT px) around reference window r_win[i] of r_struct[i]: a pasted region
    matches at near 1, a merely similar-looking one does not."""
    scale = D.STRUCT_SIZE // PATCH_GRID
    side = PATCH * scale
    qy, qx = window_origin(q_win, QUERY_STRIDE)
    ry, rx = window_origin(r_win, REF_STRIDE)
    n = len(q_win)
    if not n:
        return np.zeros(0, np.float32)
    with torch.no_grad():
        q = D._struct_float(q_struct)
        r = F.pad(D._struct_float(r_struct), (FINE_SHIFT,) * 4, mode="replicate")
        ys = torch.arange(side)
        span = torch.arange(side + 2 * FINE_SHIFT)
        idx = torch.arange(n)[:, None, None]
        qy_, qx_ = torch.from_numpy(qy * scale), torch.from_numpy(qx * scale)
        ry_, rx_ = torch.from_numpy(ry * scale), torch.from_numpy(rx * scale)
        kernels = q[:, 0][idx, (qy_[:, None] + ys)[:, :, None], (qx_[:, None] + ys)[:, None, :]]      # n x s x s
        regions = r[:, 0][idx, (ry_[:, None] + span)[:, :, None], (rx_[:, None] + span)[:, None, :]]  # n x s+2f
        k = D._zero_mean_unit(kernels)[:, None]
        reg = regions[:, None]
        corr = F.conv2d(reg.transpose(0, 1), k, groups=n)[0]                  # n x o x o
        mu = F.avg_pool2d(reg, side, stride=1)[:, 0]
        sq = F.avg_pool2d(reg * reg, side, stride=1)[:, 0]
        norm = ((sq - mu * mu).clamp_min(0) * side * side).sqrt()
        ncc = torch.where(norm > 0.05 * side, corr / (norm + 1e-3), torch.full_like(corr, -1.0))
        return ncc.flatten(1).max(1).values.numpy().astype(np.float32)


def prepare_reference(ref: dict) -> None:
    """The reference windows of the patch search ('patch_vec', 'patch_owner', 'patch_window'), once per run."""
    if "patch_vec" in ref:
        return
    vec, mask = [], []
    struct = ref["struct"]
    for s in range(0, len(struct), 512):
        v, m = patch_vectors(np.asarray(struct[s:s + 512]), REF_STRIDE)
        vec.append(v)
        mask.append(m)
    vec, mask = np.concatenate(vec), np.concatenate(mask)
    owner = np.repeat(np.arange(len(vec)), vec.shape[1]).reshape(mask.shape)
    window = np.tile(np.arange(vec.shape[1]), len(vec)).reshape(mask.shape)
    ref["patch_vec"] = np.ascontiguousarray(vec[mask])
    ref["patch_owner"] = owner[mask]
    ref["patch_window"] = window[mask]


PATCH_CANDIDATES = 64
"""Window pairs per query refined at full resolution by the patch search."""


def patch_search(query_struct: np.ndarray, ref: dict, query_groups=None, ref_groups=None):
    """Partial copies: every structured window of each query against every reference window
    (10 x 10 cosine, exact search), then the PATCH_CANDIDATES best window pairs re-matched at
    128 px with a ±8 px shift search (`descriptors.refine_patches`). Returns the best refined
    correlation per query and the reference it came from; the query's own group is skipped."""
    query_struct = np.asarray(query_struct)
    qv, qm = patch_vectors(query_struct, QUERY_STRIDE)
    base, owner, where = ref["patch_vec"], ref["patch_owner"], ref["patch_window"]
    best = np.full(len(qv), -1.0, np.float32)
    arg = np.full(len(qv), -1, np.int64)
    if not len(base):
        return best, arg
    T = PATCH_CANDIDATES
    for i in range(len(qv)):
        wins = np.flatnonzero(qm[i])
        if not len(wins):
            continue
        w = qv[i][wins]
        top_s = np.full((0,), -np.inf, np.float32)
        top_q = top_b = np.zeros(0, np.int64)
        for start in range(0, len(base), 32768):
            sims = w @ base[start:start + 32768].T
            if query_groups is not None:
                own = np.asarray(ref_groups)[owner[start:start + 32768]] == query_groups[i]
                sims[:, own] = -np.inf
            flat = sims.ravel()
            kk = min(T, flat.size)
            pick = np.argpartition(-flat, kk - 1)[:kk]
            top_s = np.concatenate([top_s, flat[pick]])
            top_q = np.concatenate([top_q, wins[pick // sims.shape[1]]])
            top_b = np.concatenate([top_b, start + pick % sims.shape[1]])
            keep = np.argsort(-top_s)[:T]
            top_s, top_q, top_b = top_s[keep], top_q[keep], top_b[keep]
        ok = np.isfinite(top_s)
        if not ok.any():
            continue
        top_q, top_b = top_q[ok], top_b[ok]
        owners = owner[top_b]
        fine = refine_patches(np.repeat(query_struct[i:i + 1], len(top_q), 0), top_q,
                                np.asarray(ref["struct"][np.sort(np.unique(owners))])[
                                    np.searchsorted(np.sort(np.unique(owners)), owners)], where[top_b])
        j = int(np.argmax(fine))
        best[i], arg[i] = fine[j], int(owners[j])
    return best, arg
