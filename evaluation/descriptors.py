"""Per-image descriptors and pairwise measures of image similarity, for the novelty check.

Every measure works on intensity-standardised grey images: each image's luminance is shifted
and scaled to zero mean and unit variance first, so a brighter, darker or contrast-stretched
copy still matches (the usual copy artefact "intensity change"). Then:

- `pixel`: cosine similarity of the standardised image downsampled to 32 x 32 (box average).
  Higher = closer, 1 = identical. The downsampling forgives re-encoding, noise and shifts of a
  few pixels. This is the search measure (nearest neighbours with faiss).
- `tiled_l2`: Carlini et al. 2023 ("Extracting training data from diffusion models", sec. 4.1)
  split both images into 4 x 4 tiles and take the *largest* per-tile L2 distance, so a copy must
  be close everywhere, not just on average; here the root-mean-square difference of the
  standardised 64 x 64 images per tile. Lower = closer, 0 = identical.
- `ssim`, `ms_ssim`: structural similarity (pytorch-msssim) of the standardised 128 x 128 images
  mapped to [0, 1]. Higher = closer.
- `phash`: Hamming distance between 64-bit perceptual hashes (imagehash.phash of the grey image).
  Lower = closer, 0 = same hash.
- `features`: cosine similarity of a local model's image embeddings (evaluation.features).
- `patch`: the best correlation between any window (37.5 % of the side) of the synthetic grey
  image and any window of a reference image, searched at 128 px (`evaluation.novelty_patch`): a
  reference region pasted into an otherwise new image. Windows without structure (background)
  are skipped. Higher = closer.

The `pixel` measure of a candidate pair is the best Pearson correlation over a transform
search (`transform_ncc`): rotations up to ±10°, mirror images, the query matched to an 80-100 %
window of the reference (crops, zoom) and shifts up to ±12.5 % (the reference padded with its
border), on 32 x 32 grids.

Flips: the synthetic image is compared as is and mirrored left-right and up-down; each pair
uses the orientation with the highest `pixel` similarity (pHash takes its own best).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.images import to_grey

__all__ = ["MEASURES", "Measure", "SEARCH_SIZE", "STRUCT_SIZE", "describe", "flip_variants",
           "pair_measures", "phash_bits"]

SEARCH_SIZE = 32     # pixel measure grid
TILE_SIZE = 64       # tiled L2 grid (4 x 4 tiles of 16 x 16)
TILES = 4
STRUCT_SIZE = 128    # SSIM / MS-SSIM grid
_STD_SPREAD = 0.2    # standardised value z is stored as 0.5 + 0.2 z (±2.5 SD fit in [0, 1])
SSIM_WIN = 7         # MS-SSIM at 128 px needs (win - 1) * 2**4 < 128


@dataclasses.dataclass(frozen=True)
class Measure:
    name: str
    higher_is_closer: bool
    description: str


MEASURES: dict[str, Measure] = {m.name: m for m in (
    Measure("pixel", True, "cosine similarity of intensity-standardised 32x32 grey images"),
    Measure("tiled_l2", False, "largest per-tile RMS difference of standardised 64x64 grey images, "
                               "4x4 tiles (Carlini et al. 2023)"),
    Measure("ssim", True, "SSIM of standardised 128x128 grey images (pytorch-msssim, window 7)"),
    Measure("ms_ssim", True, "MS-SSIM of standardised 128x128 grey images (pytorch-msssim, window 7)"),
    Measure("phash", False, "Hamming distance of 64-bit perceptual hashes (imagehash.phash), bits"),
    Measure("features", True, "cosine similarity of a local model's image embeddings"),
    Measure("patch", True, "best correlation between a 37.5 % window of the grey image and a window of "
                           "a reference, searched at 128 px (a region copied into another image)"),
)}


def _pool(x: torch.Tensor, size: int) -> torch.Tensor:
    n = x.shape[-1]
    if n == size:
        return x
    if n % size == 0:  # plain box average: much faster on CPU than the adaptive kernel
        return F.avg_pool2d(x, n // size)
    return F.adaptive_avg_pool2d(x, size)


def standardise(grey: np.ndarray) -> torch.Tensor:
    """N x H x W grey -> N x 1 x H x W tensor with zero mean and unit variance per image."""
    x = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[:, None]
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    return (x - mean) / (std + 1e-3)  # flat images stay ~0 instead of blowing up noise


def phash_bits(grey_u8: np.ndarray) -> np.ndarray:
    """N x 8 uint8 packed 64-bit pHashes of N x H x W uint8 grey images."""
    import imagehash
    from PIL import Image

    out = np.empty((len(grey_u8), 8), np.uint8)
    for i, g in enumerate(grey_u8):
        out[i] = np.packbits(imagehash.phash(Image.fromarray(g)).hash.reshape(-1))
    return out


def describe(images: np.ndarray) -> dict[str, np.ndarray]:
    """Descriptors of uint8 N x S x S x 3 images: 'vec' (N x 1024 unit vectors), 'struct'
    (N x 128 x 128 uint8 standardised grey), 'grey' (N x 128 x 128 uint8 grey as decoded, for
    the patch search) and 'hash' (N x 8 packed pHash bits)."""
    grey = to_grey(images)
    z = standardise(grey)
    z128 = _pool(z, STRUCT_SIZE)
    vec = _pool(z128, SEARCH_SIZE).flatten(1)
    vec = vec - vec.mean(dim=1, keepdim=True)
    vec = vec / (vec.norm(dim=1, keepdim=True) + 1e-6)
    struct = torch.clamp(0.5 + _STD_SPREAD * z128[:, 0], 0, 1).mul(255).round().to(torch.uint8)
    grey_u8 = np.rint(grey * 255).astype(np.uint8)
    g128 = _pool(torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[:, None], STRUCT_SIZE)[:, 0]
    return {"vec": vec.numpy().astype(np.float32), "struct": struct.numpy(), "hash": phash_bits(grey_u8),
            "grey": g128.mul(255).round().clamp(0, 255).to(torch.uint8).numpy()}


def flip_variants(images: np.ndarray) -> list[np.ndarray]:
    """The image as is, mirrored left-right and mirrored up-down (N x S x S x 3 each)."""
    return [images, images[:, :, ::-1], images[:, ::-1]]


def _struct_float(struct: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(struct, dtype=np.uint8)).float().div(255.0)[:, None]


def tiled_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Carlini et al.'s tiled distance of N x 1 x 128 x 128 standardised-[0,1] image pairs."""
    za = (_pool(a, TILE_SIZE) - 0.5) / _STD_SPREAD
    zb = (_pool(b, TILE_SIZE) - 0.5) / _STD_SPREAD
    sq = (za - zb) ** 2
    t = TILE_SIZE // TILES
    per_tile = sq.reshape(len(sq), TILES, t, TILES, t).mean(dim=(2, 4))
    return per_tile.flatten(1).max(dim=1).values.sqrt()


def _ssim_pairs(a: torch.Tensor, b: torch.Tensor, multiscale: bool) -> torch.Tensor:
    """Per-pair SSIM / MS-SSIM of P x 1 x H x W pairs with pytorch-msssim's own kernel (`_ssim`).

    The pairs are laid out as channels of one image so its grouped convolution runs once for all
    of them (3-4x faster on CPU than a batch of 1-channel images); values equal
    `pytorch_msssim.ssim/ms_ssim(..., size_average=False)` per pair (tested)."""
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    x, y = a.transpose(0, 1), b.transpose(0, 1)  # 1 x P x H x W
    win = _fspecial_gauss_1d(SSIM_WIN, 1.5).repeat(x.shape[1], 1, 1, 1)
    if not multiscale:
        return _ssim(x, y, data_range=1.0, win=win, size_average=False)[0][0]
    weights = x.new_tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])  # pytorch-msssim's defaults
    mcs = []
    for level in range(len(weights)):
        s, cs = _ssim(x, y, data_range=1.0, win=win, size_average=False)
        if level < len(weights) - 1:
            mcs.append(torch.relu(cs))
            pad = [n % 2 for n in x.shape[2:]]
            x, y = F.avg_pool2d(x, kernel_size=2, padding=pad), F.avg_pool2d(y, kernel_size=2, padding=pad)
    stacked = torch.stack(mcs + [torch.relu(s)], dim=0)
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0)[0]


CROP = 0.9
"""Alignment: one image may be a crop of this fraction of the other (or the same framing)."""


ALIGN_GRID = 64   # alignment is searched on 64 x 64 images (crops of 58 px)


def _alignments(n: int = ALIGN_GRID) -> list[tuple[str, int, int, int]]:
    c = int(round(n * CROP))
    m = n - c
    boxes = [(0, 0), (0, m), (m, 0), (m, m), (m // 2, m // 2)]  # the corners and the centre
    return [("none", 0, 0, n)] + [(side, t, l, c) for side in ("ref", "query") for t, l in boxes]


def _crop_resize(x: torch.Tensor, t: int, l: int, c: int, size: int) -> torch.Tensor:
    part = x[..., t:t + c, l:l + c]
    if c == size:
        return part
    # bilinear with antialiasing: fast on CPU (adaptive pooling to a non-divisor size is not)
    return F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False, antialias=size < c)


def _unit_vec(x: torch.Tensor) -> torch.Tensor:
    v = x.flatten(1)
    v = v - v.mean(dim=1, keepdim=True)
    return v / (v.norm(dim=1, keepdim=True) + 1e-6)


def align(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best framing of each pair: as is, or one image matched to a 90 % crop of the other at one of
    5 positions (corners, centre) (a copy that was cropped or shifted a little). Searched on 64 x 64 versions; returns
    the aligned full-size pairs and their `pixel` similarity (cosine of the 32 x 32 standardised
    grids) under the chosen framing."""
    n = a.shape[-1]
    a64, b64 = _pool(a, ALIGN_GRID), _pool(b, ALIGN_GRID)
    qa_plain, rb_plain = _unit_vec(_pool(a64, SEARCH_SIZE)), _unit_vec(_pool(b64, SEARCH_SIZE))
    sims, options = [], _alignments()
    for side, t, l, c in options:
        qa = _unit_vec(_crop_resize(a64, t, l, c, SEARCH_SIZE)) if side == "query" else qa_plain
        rb = _unit_vec(_crop_resize(b64, t, l, c, SEARCH_SIZE)) if side == "ref" else rb_plain
        sims.append((qa * rb).sum(1))
    sims = torch.stack(sims, 1)
    best, which = sims.max(1)
    out_a, out_b = a.clone(), b.clone()
    scale = n / ALIGN_GRID
    for j, (side, t, l, c) in enumerate(options):
        sel = which == j
        if side == "none" or not bool(sel.any()):
            continue
        T, L, C = int(round(t * scale)), int(round(l * scale)), int(round(c * scale))
        if side == "query":
            out_a[sel] = _crop_resize(a[sel], T, L, C, n)
        else:
            out_b[sel] = _crop_resize(b[sel], T, L, C, n)
    return out_a, out_b, best


def pair_measures(a_struct: np.ndarray, b_struct: np.ndarray, measures, *, groups=None,
                  top: int | None = None) -> dict[str, np.ndarray]:
    """Measures of candidate pairs of 'struct' descriptors (N x 128 x 128 uint8, same orientation).

    Each pair is aligned first (`align`); returns 'pixel' (aligned) and whichever of tiled_l2 /
    ssim / ms_ssim are asked for. SSIM and MS-SSIM, the costly ones, are computed only for the
    `top` pairs of each group (query) by aligned pixel similarity (NaN elsewhere); default all.
    """
    n = len(a_struct)
    if not n:
        return {m: np.zeros(0, np.float32) for m in ("pixel", "tiled_l2", "ssim", "ms_ssim")}
    out: dict[str, np.ndarray] = {"pixel": np.empty(n, np.float32)}
    if "tiled_l2" in measures:
        out["tiled_l2"] = np.empty(n, np.float32)
    aligned = {}
    with torch.no_grad():
        for s in range(0, n, 1024):  # bounded memory: 1,024 pairs of 128 x 128 floats at a time
            a, b, pix = align(_struct_float(a_struct[s:s + 1024]), _struct_float(b_struct[s:s + 1024]))
            out["pixel"][s:s + len(a)] = pix.numpy()
            if "tiled_l2" in measures:
                out["tiled_l2"][s:s + len(a)] = tiled_l2(a, b).numpy()
            aligned[s] = (a, b)
        mask = np.ones(n, bool)
        if top is not None and groups is not None:
            groups = np.asarray(groups)
            order = np.lexsort((-out["pixel"], groups))
            rank = np.empty(n, int)
            starts = np.r_[0, np.flatnonzero(groups[order][1:] != groups[order][:-1]) + 1]
            pos = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
            rank[order] = pos
            mask = rank < top
        idx = np.flatnonzero(mask)
        wanted = [(m, multi) for m, multi in (("ssim", False), ("ms_ssim", True)) if m in measures]
        for m, _ in wanted:
            out[m] = np.full(n, np.nan, np.float32)
        for s, (a, b) in aligned.items():
            j = idx[(idx >= s) & (idx < s + len(a))]
            if not len(j):
                continue
            jj = torch.from_numpy(j - s)
            for m, multi in wanted:
                out[m][j] = _ssim_pairs(a[jj], b[jj], multi).numpy()
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances of row pairs of packed hashes (N x 8 each)."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=1).sum(axis=1)


# ---------------------------------------------------------------------------------------
# transform search: rotations, shifts with padding, crops

NCC_GRID = 32
"""Transform search runs on 32 x 32 versions of the standardised images."""
ANGLES = (-10.0, -6.5, -3.25, 0.0, 3.25, 6.5, 10.0)
"""Rotations tried (degrees): a copy rotated by up to ±10° is at most 1.6° from one of them."""
SCALES = (1.0, 0.93, 0.86, 0.8)
"""The query matched to a window of this fraction of the reference (crops down to 80 %)."""
SHIFT = 4
"""Shifts of up to ±4 px of 32 (±12.5 %) are searched; the reference is padded with its border."""


def _rotations(x: torch.Tensor, angles) -> torch.Tensor:
    """N x 1 x H x W -> N x len(angles) x H x W, each rotated about the centre (border padding)."""
    n = len(x)
    th = torch.tensor(angles, dtype=torch.float32) * (np.pi / 180)
    cos, sin = torch.cos(th), torch.sin(th)
    zero = torch.zeros_like(cos)
    mats = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # A x 2 x 3
    grid = F.affine_grid(mats, (len(angles), 1, *x.shape[-2:]), align_corners=False)
    out = F.grid_sample(x.repeat_interleave(len(angles), 0), grid.repeat(n, 1, 1, 1), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out.view(n, len(angles), *x.shape[-2:])


def _zero_mean_unit(k: torch.Tensor) -> torch.Tensor:
    k = k - k.mean(dim=(-2, -1), keepdim=True)
    return k / (k.flatten(-2).norm(dim=-1)[..., None, None] + 1e-6)


def query_kernels(struct: np.ndarray) -> dict[float, torch.Tensor]:
    """Per scale, N x V x w x w zero-mean unit-norm kernels of every rotation (and, at angle 0,
    both mirror images) of each query image (w = round(32 * scale))."""
    x = _pool(_struct_float(struct), 64)
    rot = _rotations(x, ANGLES)                                         # N x A x 64 x 64
    variants = torch.cat([rot, x.flip(-1), x.flip(-2)], 1)             # + mirrored
    out = {}
    for s in SCALES:
        w = int(round(NCC_GRID * s))
        v = F.interpolate(variants, size=(w, w), mode="bilinear", align_corners=False, antialias=True)
        out[s] = _zero_mean_unit(v)
    return out


def reference_grids(struct: np.ndarray) -> torch.Tensor:
    """N x 1 x (32 + 2 SHIFT)^2 reference grids, border-padded for the shift search."""
    x = _pool(_pool(_struct_float(struct), 64), NCC_GRID)
    return F.pad(x, (SHIFT,) * 4, mode="replicate")


def window_norms(grids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per kernel width w of `query_kernels`, N x 1 x o x o: each w x w window's norm about its
    mean, of every reference grid. They depend on the reference alone, so a search computes
    them once rather than once per candidate pair (most of `transform_ncc`'s time otherwise)."""
    out = {}
    with torch.no_grad():
        for s in SCALES:
            w = int(round(NCC_GRID * s))
            mu = F.avg_pool2d(grids, w, stride=1)
            sq = F.avg_pool2d(grids * grids, w, stride=1)
            out[w] = ((sq - mu * mu).clamp_min(0) * (w * w)).sqrt()
    return out


def transform_ncc(kernels: dict[float, torch.Tensor], grids: torch.Tensor, pq: np.ndarray,
                  pr: np.ndarray, norms: dict[int, torch.Tensor] | None = None) -> np.ndarray:
    """Best normalised cross-correlation of each pair (query pq[i] vs reference pr[i]) over the
    rotations, mirror images, crop scales and shifts searched (`query_kernels`, `reference_grids`).

    The kernel is the whole query (rotated, shrunk to the scale); it slides over the padded
    reference, and each window is normalised by its own mean and norm (Pearson correlation).
    norms: `window_norms(grids)`, computed here when not given."""
    pq, pr = np.asarray(pq), np.asarray(pr)
    norms = window_norms(grids) if norms is None else norms
    best = np.full(len(pq), -1.0, np.float32)
    with torch.no_grad():
        for s0 in range(0, len(pq), 512):
            q, r = pq[s0:s0 + 512], pr[s0:s0 + 512]
            g = grids[torch.from_numpy(r)]                              # P x 1 x G x G
            p = len(q)
            inp = g.transpose(0, 1)                                     # 1 x P x G x G
            out = torch.full((p,), -1.0)
            for s, k in kernels.items():
                kk = k[torch.from_numpy(q)]                             # P x V x w x w
                v, w = kk.shape[1], kk.shape[-1]
                corr = F.conv2d(inp, kk.reshape(p * v, 1, w, w), groups=p)[0]   # (P V) x o x o
                norm = norms[w][torch.from_numpy(r)]                    # P x 1 x o x o
                ncc = corr.view(p, v, *corr.shape[-2:]) / (norm + 1e-3)
                # windows with (almost) no structure are not evidence of a copy
                ncc = torch.where(norm.expand_as(ncc) > 0.05 * w, ncc, torch.full_like(ncc, -1.0))
                out = torch.maximum(out, ncc.flatten(1).max(1).values)
            best[s0:s0 + p] = out.numpy()
    return np.clip(best, -1.0, 1.0)
