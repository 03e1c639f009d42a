"""Fidelity and diversity of a synthetic set against a reference set.

`run_fidelity(synthetic, reference, features=...)` is what `medisyn eval fidelity` runs. Both
sets are decoded and normalised as a study ingests them, embedded with a local feature
extractor (`evaluation.features`), and compared:

- FID and KID by torchmetrics (`FrechetInceptionDistance`, `KernelInceptionDistance`) on the
  extracted features — the library's own statistics, fed through an identity "network" so any
  extractor works. KID is the mean over `kid_subsets` random subsets of `kid_subset_size`
  images (capped at the smaller set) with its standard deviation over subsets, as torchmetrics
  and Bińkowski et al. report it.
- Precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al. 2020)
  with k nearest neighbours (default 5), the formulas of Naeem et al.'s reference code
  (`prdc`; see `prdc()`), streamed over blocks of the distance matrix.
- Diversity: mean pairwise MS-SSIM within the group (lower = more diverse), over at most
  `diversity_pairs` random pairs, for the synthetic and for the reference images alike.

`by` ('modality', 'prompt' or 'generator', from a manifest) repeats every number per group of
synthetic images; a reference image joins the group with the same value when the reference
set has that column, else the whole reference set is used for each group. Caveats (FID is
biased upward below ~2,000 images per set; features of dimension above the sample size give a
singular covariance) are returned in `caveats` and printed, not hidden.
"""
from __future__ import annotations

import math
import sys
import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from evaluation.errors import EvaluationCancelled, EvaluationError
from evaluation.features import FeatureExtractor, load_extractor
from evaluation.images import ImageRef, iter_chunks, list_images, to_grey

__all__ = ["FID_MIN_IMAGES", "diversity_ms_ssim", "fid_kid", "prdc", "run_fidelity", "write_fidelity_outputs"]

FID_MIN_IMAGES = 2000
BY_KEYS = ("modality", "prompt", "generator")


class _Identity(torch.nn.Module):
    """Features in, features out: lets torchmetrics' FID/KID run on any extractor's output."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def fid_kid(real: np.ndarray, fake: np.ndarray, *, kid_subsets: int = 100, kid_subset_size: int = 1000,
            seed: int = 0) -> dict:
    """FID and KID (mean, std over subsets) of two feature arrays, computed by torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    dim = real.shape[1]
    r = torch.from_numpy(np.asarray(real, np.float64))
    f = torch.from_numpy(np.asarray(fake, np.float64))
    out: dict = {"fid": None, "kid_mean": None, "kid_std": None}
    if len(r) >= 2 and len(f) >= 2:
        fid = FrechetInceptionDistance(feature=_Identity(dim), normalize=True)
        fid.set_dtype(torch.float64)
        fid.update(r, real=True)
        fid.update(f, real=False)
        out["fid"] = float(fid.compute())
        size = min(kid_subset_size, len(r), len(f))
        torch.manual_seed(seed)
        with warnings.catch_warnings():  # "KID will save all extracted features": they are ours already
            warnings.simplefilter("ignore", UserWarning)
            kid = KernelInceptionDistance(feature=_Identity(dim), subsets=kid_subsets, subset_size=size,
                                          normalize=True)
        kid.set_dtype(torch.float64)
        kid.update(r, real=True)
        kid.update(f, real=False)
        mean, std = kid.compute()
        out.update(kid_mean=float(mean), kid_std=float(std), kid_subset_size=size, kid_subsets=kid_subsets)
    return out


def _kth_nn_radius(x: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Distance of each row to its k-th nearest other row (Euclidean)."""
    from sklearn.metrics import pairwise_distances

    radii = np.empty(len(x))
    for s in range(0, len(x), block):
        d = pairwise_distances(x[s:s + block], x)
        # k+1: the row itself is at distance 0 (the reference code does the same)
        radii[s:s + block] = np.partition(d, k, axis=1)[:, k]
    return radii


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, block: int = 2048) -> dict:
    """Precision, recall (Kynkäänniemi et al.), density, coverage (Naeem et al.) with k-NN balls.

    As in Naeem et al.'s reference implementation (github.com/clovaai/generative-evaluation-prdc):
    r_i = distance of real i to its k-th nearest real, s_j likewise within fake;
    precision = share of fakes inside some real ball; recall = share of reals inside some fake
    ball; density = (1/k) mean over fakes of the number of real balls containing it;
    coverage = share of reals whose nearest fake lies inside their ball.
    """
    from sklearn.metrics import pairwise_distances

    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if len(real) <= k or len(fake) <= k:
        raise EvaluationError(f"precision/recall need more than k={k} images in each set")
    r_rad = _kth_nn_radius(real, k, block)
    f_rad = _kth_nn_radius(fake, k, block)
    in_real_ball = np.zeros(len(fake), bool)
    balls_per_fake = np.zeros(len(fake))
    real_in_fake_ball = np.zeros(len(real), bool)
    nearest_fake = np.full(len(real), np.inf)
    for s in range(0, len(real), block):
        d = pairwise_distances(real[s:s + block], fake)      # reals x fakes
        inside = d < r_rad[s:s + block, None]
        in_real_ball |= inside.any(axis=0)
        balls_per_fake += inside.sum(axis=0)
        real_in_fake_ball[s:s + block] = (d < f_rad[None, :]).any(axis=1)
        nearest_fake[s:s + block] = d.min(axis=1)
    return {
        "precision": float(in_real_ball.mean()),
        "recall": float(real_in_fake_ball.mean()),
        "density": float(balls_per_fake.mean() / k),
        "coverage": float((nearest_fake < r_rad).mean()),
        "nearest_k": k,
    }


def diversity_ms_ssim(grey: np.ndarray, pairs: np.ndarray) -> float | None:
    """Mean MS-SSIM (pytorch-msssim) over index pairs of grey 256 x 256 images in [0, 1]."""
    from pytorch_msssim import ms_ssim

    if not len(pairs):
        return None
    vals = []
    for s in range(0, len(pairs), 64):
        p = pairs[s:s + 64]
        a = torch.from_numpy(np.ascontiguousarray(grey[p[:, 0]]))[:, None]
        b = torch.from_numpy(np.ascontiguousarray(grey[p[:, 1]]))[:, None]
        with torch.no_grad():
            vals.append(ms_ssim(a, b, data_range=1.0, size_average=False).numpy())
    return float(np.concatenate(vals).mean())


def _pairs(indices: np.ndarray, max_pairs: int, rng) -> np.ndarray:
    n = len(indices)
    if n < 2:
        return np.zeros((0, 2), int)
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, 1)
    else:
        i = rng.integers(0, n, max_pairs * 2)
        j = rng.integers(0, n, max_pairs * 2)
        keep = i != j
        i, j = i[keep][:max_pairs], j[keep][:max_pairs]
    return np.stack([indices[i], indices[j]], 1)


def _extract(refs: Sequence[ImageRef], extractor: FeatureExtractor, size: int, need_grey: set[int],
             chunk: int, bar, cancel) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    feats, grey = [], {}
    for start, images in iter_chunks(refs, size, chunk=chunk, cancel=cancel):
        feats.append(extractor.from_normalised(images))
        wanted = [i for i in range(start, start + len(images)) if i in need_grey]
        if wanted:
            small = images if images.shape[1] == 256 else None
            g = to_grey(small if small is not None else _resize(images, 256))
            for i in wanted:
                grey[i] = g[i - start]
        bar(len(images))
    return np.concatenate(feats), grey


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def caveats_for(n_syn: int, n_ref: int, dim: int) -> list[str]:
    notes = []
    if min(n_syn, n_ref) < FID_MIN_IMAGES:
        notes.append(f"FID is biased upward below ~{FID_MIN_IMAGES:,} images per set (here {n_syn:,} "
                     f"synthetic, {n_ref:,} reference; Chong & Forsyth 2020): compare FIDs only at equal "
                     "sample sizes and treat absolute values with caution.")
    if min(n_syn, n_ref) <= dim:
        notes.append(f"fewer images than feature dimensions ({dim}): the covariance in FID is singular; "
                     "KID (unbiased) is the safer number here.")
    return notes


def run_fidelity(synthetic, reference, *, features: str | FeatureExtractor = "pixels", weights=None,
                 by: str | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000, nearest_k: int = 5,
                 diversity_pairs: int = 200, chunk: int = 128, seed: int = 0, progress: bool = True,
                 on_progress: Callable[[float, str], None] | None = None,
                 cancel: threading.Event | None = None) -> dict:
    """Fidelity (FID, KID, precision/recall/density/coverage) and diversity, overall and per `by` group.

    Returns {'features', 'by', 'caveats', 'groups': [{group, n_synthetic, n_reference, fid, ...}]};
    the first group is 'all'.
    """
    from tqdm import tqdm

    if by is not None and by not in BY_KEYS:
        raise EvaluationError(f"--by must be one of {', '.join(BY_KEYS)}")
    syn = synthetic if isinstance(synthetic, list) else list_images(synthetic, what="synthetic")
    ref = reference if isinstance(reference, list) else list_images(reference, what="reference")
    extractor = features if isinstance(features, FeatureExtractor) else load_extractor(features, weights=weights)
    rng = np.random.default_rng(seed)
    groups = [("all", np.arange(len(syn)), np.arange(len(ref)))]
    if by:
        ref_has = any(r.group(by) for r in ref)
        for value in sorted({s.group(by) for s in syn}):
            si = np.array([i for i, s in enumerate(syn) if s.group(by) == value])
            ri = np.array([i for i, r in enumerate(ref) if r.group(by) == value]) if ref_has else np.arange(len(ref))
            groups.append((value or "(none)", si, ri))
    syn_pairs = {g: _pairs(si, diversity_pairs, rng) for g, si, _ in groups}
    ref_pairs = {g: _pairs(ri, diversity_pairs, rng) for g, _, ri in groups}
    need_syn = {int(i) for p in syn_pairs.values() for i in p.reshape(-1)}
    need_ref = {int(i) for p in ref_pairs.values() for i in p.reshape(-1)}

    bar = tqdm(total=len(syn) + len(ref), disable=not progress, file=sys.stderr, unit="img", leave=False)
    done = [0]

    def tick(n):
        if cancel is not None and cancel.is_set():
            raise EvaluationCancelled("evaluation cancelled")
        done[0] += n
        bar.update(n)
        if on_progress:
            on_progress(done[0] / (len(syn) + len(ref)), "extracting features")

    try:
        size = extractor.input_size
        f_ref, g_ref = _extract(ref, extractor, size, need_ref, chunk, tick, cancel)
        f_syn, g_syn = _extract(syn, extractor, size, need_syn, chunk, tick, cancel)
    finally:
        bar.close()
    if not (np.isfinite(f_ref).all() and np.isfinite(f_syn).all()):
        raise EvaluationError("the features model returned NaN or infinite values")
    dim = f_ref.shape[1]

    def grey_stack(store, pairs):
        if not len(pairs):
            return np.zeros((0, 256, 256), np.float32), pairs
        idx = sorted(store)
        pos = {i: j for j, i in enumerate(idx)}
        return np.stack([store[i] for i in idx]), np.vectorize(pos.get)(pairs)

    out_groups = []
    for name, si, ri in groups:
        g = {"group": name, "n_synthetic": int(len(si)), "n_reference": int(len(ri))}
        g.update(fid_kid(f_ref[ri], f_syn[si], kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed))
        try:
            g.update(prdc(f_ref[ri], f_syn[si], k=nearest_k))
        except EvaluationError as exc:
            g["prdc_note"] = str(exc)
        gs, ps = grey_stack(g_syn, syn_pairs[name])
        gr, pr = grey_stack(g_ref, ref_pairs[name])
        g["diversity_ms_ssim_synthetic"] = diversity_ms_ssim(gs, ps)
        g["diversity_ms_ssim_reference"] = diversity_ms_ssim(gr, pr)
        g["caveats"] = caveats_for(len(si), len(ri), dim)
        out_groups.append(g)
    return {"features": extractor.name, "feature_dim": dim, "by": by,
            "caveats": caveats_for(len(syn), len(ref), dim), "groups": out_groups}


def write_fidelity_outputs(result: dict, out_dir) -> dict:
    """``fidelity.json`` (the whole result), ``fidelity.csv`` (one row per group) and ``report.html``
    in ``out_dir`` — what ``medisyn eval fidelity --out`` writes, as ``eval novelty --out`` does."""
    import csv
    import json
    import pathlib

    from evaluation.report import write_fidelity_report

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "fidelity.json", "csv": out / "fidelity.csv", "html": out / "report.html"}
    files["json"].write_text(json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    rows = [{k: ("; ".join(v) if isinstance(v, list) else v) for k, v in g.items()} for g in result["groups"]]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(files["csv"], "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    write_fidelity_report(files["html"], result)
    return files


def format_fidelity(result: dict) -> str:
    """Plain-text summary for the terminal (one line per group, then the caveats)."""
    def f(v, d=4):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}g}"

    lines = [f"features: {result['features']} ({result['feature_dim']} dimensions)"]
    for g in result["groups"]:
        lines.append(
            f"{g['group']}: {g['n_synthetic']} synthetic vs {g['n_reference']} reference — FID {f(g['fid'])}, "
            f"KID {f(g['kid_mean'])} ± {f(g['kid_std'])}, precision {f(g.get('precision'), 3)}, recall "
            f"{f(g.get('recall'), 3)}, density {f(g.get('density'), 3)}, coverage {f(g.get('coverage'), 3)}; "
            f"diversity MS-SSIM synthetic {f(g['diversity_ms_ssim_synthetic'], 3)}, real "
            f"{f(g['diversity_ms_ssim_reference'], 3)}")
    for c in result["caveats"]:
        lines.append(f"Caveat: {c}")
    return "\n".join(lines)
