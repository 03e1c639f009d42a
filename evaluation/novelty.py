"""Memorisation / novelty: is any synthetic image a near-copy of a reference (training) image?

`run_novelty(synthetic, reference, out_dir, holdout=...)` is what `medisyn eval novelty` runs:

1. Both sets (and the held-out set) are decoded and normalised as a study ingests them
   (`evaluation.images`) and reduced to descriptors (`evaluation.descriptors`), chunk by chunk
   into memory-mapped arrays in a cache folder, so memory does not grow with the sets.
2. Groups: images of one patient or volume form a group — the manifest's `group` column, else
   the DICOM StudyInstanceUID (SeriesInstanceUID when absent), else the file (one NIfTI volume,
   one multi-frame file). An image is never compared with its own group.
3. Candidates: for each query image its `k` nearest references by the `pixel` grid (as is and
   mirrored), by a coarse 8 x 8 grid (tolerant to small rotations, shifts and crops), by pHash
   and, with a features model, by feature cosine. On the candidates, `pixel` is the best
   correlation over a transform search (rotations ±10°, mirror images, 80-100 % crops, shifts
   ±12.5 %); `patch` searches every reference window for a region of the query (partial copies).
4. Calibration on held-out real images: each held-out image (`holdout`, or when none is given,
   every sampled reference image against the reference images of *other* groups) is matched
   exactly as a synthetic image is. Per measure the threshold is the split-conformal quantile
   of these held-out values at level alpha * min_votes / len(measures) (Bonferroni / Markov over
   the measures), so a new real image unrelated to the training set is flagged with
   probability at most `alpha` (default 5 %).
5. Flag: a synthetic image is flagged when at least `min_votes` measures (default 1) are closer
   than their threshold. The held-out flag rate is measured leaving each held-out group out of
   its own calibration, and reported with the synthetic flag rate (Wilson 95 % CIs).
6. Memorisation question: per modality, are the synthetic images' nearest-neighbour values
   closer to the reference than the held-out real images' are? One-sided Mann-Whitney U.
7. Exact duplicates (identical normalised pixels) and near-duplicates (pixel ≥ 0.995, other
   group) inside the reference set are listed: ungrouped neighbouring slices or copies make
   the leave-one-group-out calibration too strict.

Outputs in `out_dir`: `novelty.csv`, `holdout.csv`, `summary.json`, `report.html`.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import pathlib
import shutil
import sys
import threading
from collections.abc import Callable, Sequence

import numpy as np

from evaluation import descriptors as D
from evaluation.errors import EvaluationCancelled, EvaluationError
from evaluation.images import ImageRef, iter_chunks, list_images

__all__ = ["ALPHA", "DEFAULT_MEASURES", "NoveltyResult", "group_keys", "parse_thresholds", "run_novelty"]

DEFAULT_MEASURES = ("pixel", "patch")
ALPHA = 0.05
"""Target rate of flagged real images unrelated to the training set (held-out calibration)."""
CALIBRATION_SAMPLE = 1000
"""At most this many held-out (or reference) images calibrate the thresholds."""
NEAR_DUPLICATE = 0.995
"""Reference pairs of different groups at least this `pixel`-close are reported as near-duplicates."""
DEFAULT_SIZE = 256
DEFAULT_K = 5
_CACHE_VERSION = 2
_BLOCK = 8192  # reference vectors per search block


@dataclasses.dataclass
class NoveltyResult:
    """What `run_novelty` found. `rows`: one dict per synthetic image (the CSV row: `synthetic`,
    `nearest_reference`, one value per measure, `votes`, `flagged_by`, `flagged`).
    `flagged`: the names of the flagged synthetic images."""

    rows: list[dict]
    thresholds: dict[str, float]
    threshold_rules: dict[str, str]
    calibration: dict[str, np.ndarray]   # held-out-to-reference nearest-neighbour values per measure
    min_votes: int
    n_reference: int
    out_dir: pathlib.Path | None = None
    measures: list[str] = dataclasses.field(default_factory=list)
    alpha: float = ALPHA
    holdout: dict = dataclasses.field(default_factory=dict)        # source, n, groups, rows
    synthetic_rate: dict = dataclasses.field(default_factory=dict)  # x, n, value, ci_wilson
    holdout_rate: dict = dataclasses.field(default_factory=dict)
    memorisation: list[dict] = dataclasses.field(default_factory=list)
    duplicates: dict = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    timings: dict = dataclasses.field(default_factory=dict)

    @property
    def n_flagged(self) -> int:
        return sum(r["flagged"] for r in self.rows)

    @property
    def fraction_flagged(self) -> float:
        return self.n_flagged / len(self.rows) if self.rows else 0.0

    @property
    def flagged(self) -> list[str]:
        return [r["synthetic"] for r in self.rows if r["flagged"]]


def parse_thresholds(text: str | None, measures: Sequence[str]) -> dict[str, float]:
    """'auto' / None -> {}; 'pixel=0.9,phash=8' -> per measure; a bare number only with one measure."""
    if text is None or text.strip().lower() in ("", "auto"):
        return {}
    out = {}
    for part in text.split(","):
        part = part.strip()
        if "=" in part:
            name, value = (s.strip() for s in part.split("=", 1))
        elif len(measures) == 1:
            name, value = measures[0], part
        else:
            raise EvaluationError(f"--threshold {text!r}: with several measures give MEASURE=VALUE "
                                  f"pairs, e.g. {measures[0]}=0.9")
        if name not in measures:
            raise EvaluationError(f"--threshold: {name!r} is not one of the measures used "
                                  f"({', '.join(measures)})")
        try:
            out[name] = float(value)
        except ValueError:
            raise EvaluationError(f"--threshold: {value!r} is not a number") from None
        if not math.isfinite(out[name]):
            raise EvaluationError(f"--threshold: {value!r} is not a finite number")
    return out


def check_measures(measures: Sequence[str], features) -> list[str]:
    measures = list(dict.fromkeys(m.strip() for m in measures if m.strip()))
    unknown = [m for m in measures if m not in D.MEASURES]
    if unknown:
        raise EvaluationError(f"unknown measure {unknown[0]!r} (choose from {', '.join(D.MEASURES)})")
    if not measures:
        raise EvaluationError("no measures chosen")
    if "features" in measures and features is None:
        raise EvaluationError("the 'features' measure needs a features model (--features PATH)")
    if features is not None and "features" not in measures:
        measures.append("features")
    return measures


# ---------------------------------------------------------------------------------------
# groups

def group_keys(refs: Sequence[ImageRef]) -> list[str]:
    """One key per image: images with the same key come from one patient / volume.

    The manifest's `group`, else the DICOM StudyInstanceUID (else SeriesInstanceUID), else the
    file itself (all slices of one NIfTI file, all frames of one multi-frame file)."""
    keys, dicom_cache = [], {}
    for r in refs:
        if r.patient_group:
            keys.append("group:" + r.patient_group)
            continue
        path = pathlib.Path(r.path)
        key = dicom_cache.get(path)
        if key is None:
            key = "file:" + str(path.resolve())
            name = path.name.lower()
            if name.endswith((".dcm", ".dicom")) or "." not in name:
                try:
                    import pydicom

                    ds = pydicom.dcmread(path, stop_before_pixels=True,
                                         specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
                    uid = str(ds.get("StudyInstanceUID", "") or ds.get("SeriesInstanceUID", "") or "")
                    if uid:
                        key = "dicom:" + uid
                except Exception:  # not DICOM after all, or no header: the file is the group
                    pass
            dicom_cache[path] = key
        keys.append(key)
    return keys


def _group_ids(*key_lists: Sequence[str]) -> list[np.ndarray]:
    table: dict[str, int] = {}
    return [np.array([table.setdefault(k, len(table)) for k in keys], np.int64) for keys in key_lists]


# ---------------------------------------------------------------------------------------
# descriptors, cached as memory-mapped arrays

def _cache_key(refs: Sequence[ImageRef], size: int, features) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION} size={size} features={getattr(features, 'name', None)}".encode())
    for r in refs:
        try:
            st = r.path.stat()
            h.update(f"{r.path}|{st.st_size}|{st.st_mtime_ns}|{r.options}\n".encode())
        except OSError:
            h.update(f"{r.path}|missing\n".encode())
    return h.hexdigest()[:24]


def describe_set(refs: Sequence[ImageRef], size: int, cache_dir: pathlib.Path, *, flips: bool,
                 features=None, chunk: int = 256, progress=None, cancel=None) -> dict[str, np.ndarray]:
    """Memory-mapped descriptors of a set (cached under cache_dir/<key>; reused when unchanged).

    flips=True also stores the pHashes of the two mirrored versions ('hash_h', 'hash_v').
    'digest' is a 16-byte hash of the normalised pixels (exact duplicates).
    """
    key = _cache_key(refs, size, features) + ("f" if flips else "")
    folder = cache_dir / key
    names = (["vec", "struct", "hash", "digest"] + (["hash_h", "hash_v"] if flips else [])
             + (["feat"] if features else []))
    if (folder / "done").is_file():
        return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    n = len(refs)
    shapes = {"vec": ((n, D.SEARCH_SIZE ** 2), np.float32), "struct": ((n, D.STRUCT_SIZE, D.STRUCT_SIZE), np.uint8),
              "hash": ((n, 8), np.uint8), "hash_h": ((n, 8), np.uint8), "hash_v": ((n, 8), np.uint8),
              "digest": ((n, 16), np.uint8)}
    if features is not None:
        shapes["feat"] = ((n, features.dim), np.float32)
    arrays = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=shapes[name][1],
                                              shape=shapes[name][0]) for name in names}
    for start, images in iter_chunks(refs, size, chunk=chunk, cancel=cancel):
        d = D.describe(images)
        end = start + len(images)
        for name in ("vec", "struct", "hash"):
            arrays[name][start:end] = d[name]
        for j, im in enumerate(images):
            arrays["digest"][start + j] = np.frombuffer(hashlib.blake2b(im.tobytes(), digest_size=16).digest(),
                                                        np.uint8)
        if flips:
            grey = np.rint(D.to_grey(images) * 255).astype(np.uint8)
            arrays["hash_h"][start:end] = D.phash_bits(grey[:, :, ::-1])
            arrays["hash_v"][start:end] = D.phash_bits(grey[:, ::-1])
        if features is not None:
            arrays["feat"][start:end] = _unit(features.from_normalised(images))
        if progress is not None:
            progress(len(images))
    for a in arrays.values():
        a.flush()
    (folder / "done").write_text("ok\n")
    return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def _vec_variants(vec: np.ndarray) -> list[np.ndarray]:
    g = np.asarray(vec).reshape(-1, D.SEARCH_SIZE, D.SEARCH_SIZE)
    return [np.ascontiguousarray(g.reshape(len(g), -1)),
            np.ascontiguousarray(g[:, :, ::-1].reshape(len(g), -1)),
            np.ascontiguousarray(g[:, ::-1].reshape(len(g), -1))]


def _coarse(vec: np.ndarray) -> np.ndarray:
    """8 x 8 zero-mean unit vectors from the 32 x 32 search grids: blurred enough that a few
    degrees of rotation, a 10 % shift or a 90 % crop barely change them (candidate search)."""
    g = np.asarray(vec, np.float32).reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)).reshape(-1, 64)
    g = g - g.mean(axis=1, keepdims=True)
    return np.ascontiguousarray(g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-6), np.float32)


def _struct_variant(struct: np.ndarray, variant: np.ndarray) -> np.ndarray:
    out = np.array(struct)
    out[variant == 1] = out[variant == 1][:, :, ::-1]
    out[variant == 2] = out[variant == 2][:, ::-1]
    return out


def _prepare_reference(ref: dict, measures) -> None:
    """In-memory search structures of the reference set, built once per run."""
    if "grid" not in ref:
        struct = np.asarray(ref["struct"])
        ref["grid"] = D.reference_grids(struct)
        ref["coarse"] = _coarse(ref["vec"])
    if "patch" in measures and "patch_vec" not in ref:
        vec, mask = [], []
        struct = ref["struct"]
        for s in range(0, len(struct), 512):
            v, m = D.patch_vectors(np.asarray(struct[s:s + 512]), D.REF_STRIDE)
            vec.append(v)
            mask.append(m)
        vec, mask = np.concatenate(vec), np.concatenate(mask)
        owner = np.repeat(np.arange(len(vec)), vec.shape[1]).reshape(mask.shape)
        window = np.tile(np.arange(vec.shape[1]), len(vec)).reshape(mask.shape)
        ref["patch_vec"] = np.ascontiguousarray(vec[mask])
        ref["patch_owner"] = owner[mask]
        ref["patch_window"] = window[mask]


# ---------------------------------------------------------------------------------------
# streamed exact k-NN search

def _merge_topk(best_d, best_i, d, i, k, largest: bool):
    if best_d is None:
        dd, ii = d, i
    else:
        dd, ii = np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1)
    order = np.argsort(-dd if largest else dd, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dd, order, 1), np.take_along_axis(ii, order, 1)


def _excluded(exclude, base_groups, start, stop):
    """query x block mask of base rows a query must not match (its own group, or itself)."""
    bg = np.arange(start, stop) if base_groups is None else np.asarray(base_groups[start:stop])
    return np.asarray(exclude)[:, None] == bg[None, :]


def knn_inner_product(queries: np.ndarray, base: np.ndarray, k: int, exclude=None, base_groups=None):
    """Exact top-k by inner product, streamed over blocks of `base` (memory: one block).

    exclude: optional array, one value per query: the base row (or, with `base_groups`, the group
    id) the query must never be matched with — itself, or its own patient / volume.
    """
    import faiss

    q = np.ascontiguousarray(queries, np.float32)
    best_d = best_i = None
    for start in range(0, len(base), _BLOCK):
        block = np.ascontiguousarray(base[start:start + _BLOCK], dtype=np.float32)
        kk = min(k, len(block))
        if exclude is None:
            d, i = faiss.knn(q, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            sims = q @ block.T
            sims[_excluded(exclude, base_groups, start, start + len(block))] = -np.inf
            i = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            d = np.take_along_axis(sims, i, 1)
        best_d, best_i = _merge_topk(best_d, best_i, d, i + start, k, largest=True)
    best_i = np.where(np.isfinite(best_d), best_i, -1)
    return best_d, best_i


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def knn_hamming(queries: np.ndarray, base: np.ndarray, k: int, exclude=None, base_groups=None):
    """Exact top-k by Hamming distance of packed 64-bit codes, streamed over blocks."""
    import faiss

    q = np.ascontiguousarray(queries, np.uint8)
    best_d = best_i = None
    for start in range(0, len(base), _BLOCK):
        block = np.ascontiguousarray(base[start:start + _BLOCK], dtype=np.uint8)
        kk = min(k, len(block))
        if exclude is None:
            index = faiss.IndexBinaryFlat(64)
            index.add(block)
            d, i = index.search(q, kk)
            d = d.astype(np.float32)
        else:
            d = np.empty((len(q), len(block)), np.float32)
            for s in range(0, len(q), 256):
                d[s:s + 256] = _POPCOUNT[q[s:s + 256, None, :] ^ block[None]].sum(axis=2)
            d[_excluded(exclude, base_groups, start, start + len(block))] = np.inf
            i = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            d = np.take_along_axis(d, i, 1)
        best_d, best_i = _merge_topk(best_d, best_i, d, i + start, k, largest=False)
    best_i = np.where(np.isfinite(best_d), best_i, -1)
    return best_d, best_i


def _best_k(results, k, largest: bool) -> np.ndarray:
    """Indices of the k best distinct references over several (distances, indices) results."""
    d = np.concatenate([r[0] for r in results], 1)
    i = np.concatenate([r[1] for r in results], 1)
    order = np.argsort(-d if largest else d, axis=1, kind="stable")
    d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    out = np.full((len(i), k), -1, np.int64)
    for row in range(len(i)):
        valid = i[row][i[row] >= 0]
        _, first = np.unique(valid, return_index=True)
        keep = valid[np.sort(first)][:k]
        out[row, :len(keep)] = keep
    return out


PATCH_CANDIDATES = 64
"""Window pairs per query refined at full resolution by the patch search."""


def patch_search(query_struct: np.ndarray, ref: dict, query_groups=None, ref_groups=None):
    """Partial copies: every structured window of each query against every reference window
    (10 x 10 cosine, exact search), then the PATCH_CANDIDATES best window pairs re-matched at
    128 px with a ±8 px shift search (`descriptors.refine_patches`). Returns the best refined
    correlation per query and the reference it came from; the query's own group is skipped."""
    query_struct = np.asarray(query_struct)
    qv, qm = D.patch_vectors(query_struct, D.QUERY_STRIDE)
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
        fine = D.refine_patches(np.repeat(query_struct[i:i + 1], len(top_q), 0), top_q,
                                np.asarray(ref["struct"][np.sort(np.unique(owners))])[
                                    np.searchsorted(np.sort(np.unique(owners)), owners)], where[top_b])
        j = int(np.argmax(fine))
        best[i], arg[i] = fine[j], int(owners[j])
    return best, arg


# ---------------------------------------------------------------------------------------
# matching one block of queries against the reference set

def match(query: dict, qidx: np.ndarray, ref: dict, measures: Sequence[str], k: int,
          exclude_self: bool = False, k_struct: int = 1, query_groups=None,
          ref_groups=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Best value per measure and the nearest reference (by measures[0]) for query rows qidx.

    query/ref: descriptor dicts; query needs 'hash_h'/'hash_v'. exclude_self: qidx indexes the
    reference set itself and a query never matches its own row. query_groups (one group id per
    row of qidx) with ref_groups (one per reference): a query never matches its own group.
    """
    _prepare_reference(ref, measures)
    if query_groups is not None:
        exclude, base_groups = np.asarray(query_groups), np.asarray(ref_groups)
    elif exclude_self:
        exclude, base_groups = np.asarray(qidx), None
    else:
        exclude = base_groups = None
    vec = np.asarray(query["vec"][qidx])
    variants = _vec_variants(vec)
    coarse = [_coarse(v) for v in variants]
    # k candidates per measure, each the best over the three orientations
    cand = [_best_k([knn_inner_product(v, ref["vec"], k, exclude, base_groups) for v in variants], k, largest=True),
            _best_k([knn_inner_product(c, ref["coarse"], k, exclude, base_groups) for c in coarse], k, largest=True)]
    hashes = [np.asarray(query[h][qidx]) for h in ("hash", "hash_h", "hash_v")]
    if "phash" in measures:
        cand.append(_best_k([knn_hamming(h, ref["hash"], k, exclude, base_groups) for h in hashes], k, largest=False))
    if "features" in measures:
        cand.append(knn_inner_product(np.asarray(query["feat"][qidx]), ref["feat"], k, exclude, base_groups)[1])
    cand = np.concatenate(cand, 1)
    nq = len(qidx)
    # unique candidate pairs
    pairs_q = np.repeat(np.arange(nq), cand.shape[1])
    pairs_r = cand.reshape(-1)
    keep = pairs_r >= 0
    pq, pr = np.unique(np.stack([pairs_q[keep], pairs_r[keep]], 1), axis=0).T if keep.any() else \
        (np.zeros(0, np.int64), np.zeros(0, np.int64))
    q_struct_all = np.asarray(query["struct"][qidx])
    values: dict[str, np.ndarray] = {}
    if len(pq):
        uniq = np.sort(np.unique(pr))
        lookup = {r: j for j, r in enumerate(uniq)}
        at = np.array([lookup[r] for r in pr])
        rv = np.asarray(ref["vec"][uniq])[at]
        sims = np.stack([np.einsum("ij,ij->i", v[pq], rv) for v in variants], 1)
        variant = sims.argmax(1)
        values["pixel"] = D.transform_ncc(D.query_kernels(q_struct_all), ref["grid"], pq, pr)
        if any(m in measures for m in ("tiled_l2", "ssim", "ms_ssim")):
            ref_struct = np.asarray(ref["struct"][uniq])[at]
            q_struct = _struct_variant(q_struct_all[pq], variant)
            framed = D.pair_measures(q_struct, ref_struct, measures, groups=pq, top=k_struct)
            values["pixel"] = np.maximum(values["pixel"], framed["pixel"])
            values.update({m: framed[m] for m in ("tiled_l2", "ssim", "ms_ssim") if m in framed})
        if "phash" in measures:
            rh = np.asarray(ref["hash"][uniq])[at]
            values["phash"] = np.min(np.stack([D.hamming(h[pq], rh) for h in hashes], 1), 1).astype(np.float32)
        if "features" in measures:
            rf = np.asarray(ref["feat"][uniq])[at]
            values["features"] = np.einsum("ij,ij->i", np.asarray(query["feat"][qidx])[pq], rf)
    best = {}
    nearest = np.full(nq, -1)
    for m in measures:
        higher = D.MEASURES[m].higher_is_closer
        if m == "patch":
            qg = None if exclude is None else exclude
            rg = base_groups
            if rg is None and exclude is not None:  # exclude_self: each reference is its own group
                rg = np.arange(len(ref["vec"]))
            best[m], arg = patch_search(q_struct_all, ref, qg, rg)
            if m == measures[0]:
                nearest = arg
            continue
        if not len(pq):
            best[m] = np.full(nq, -np.inf if higher else np.inf)
            continue
        v = np.nan_to_num(values[m] if higher else -values[m], nan=-np.inf)
        out = np.full(nq, -np.inf)
        arg = np.full(nq, -1)
        order = np.lexsort((-v, pq))  # by query, best first
        first = np.ones(len(order), bool)
        first[1:] = pq[order][1:] != pq[order][:-1]
        out[pq[order][first]] = v[order][first]
        arg[pq[order][first]] = pr[order][first]
        best[m] = out if higher else -out
        if m == measures[0]:
            nearest = arg
    return best, nearest


def _passes(value, threshold, higher):
    # as Python floats: a float32 value against a float64 threshold would round the threshold
    value, threshold = float(value), float(threshold)
    return value >= threshold if higher else value <= threshold


# ---------------------------------------------------------------------------------------
# calibration

def conformal_threshold(values: np.ndarray, level: float, higher: bool) -> tuple[float, bool]:
    """Threshold that a value must reach to be flagged so that a new value exchangeable with the
    calibration `values` passes with probability at most `level` (split-conformal quantile):
    strictly closer than the r-th closest calibration value, r = floor(level (n + 1)).

    Returns (threshold, attainable); attainable is False when n + 1 < 1 / level: then the
    threshold is "closer than every calibration value" and the guarantee is only 1 / (n + 1).
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v)] if v.size else v
    n = len(v)
    if n == 0:
        return (math.inf if higher else -math.inf), False
    closeness = np.sort(v)[::-1] if higher else np.sort(v)
    r = int(math.floor(level * (n + 1) + 1e-9))
    attainable = r >= 1
    c = float(closeness[max(r, 1) - 1])
    integer = bool(np.all(v == np.round(v)))
    if integer:  # pHash bits: "strictly closer" is one bit closer
        return (c + 1 if higher else c - 1), attainable
    return float(np.nextafter(c, math.inf if higher else -math.inf)), attainable


def wilson(x: int, n: int, alpha: float = 0.05) -> dict:
    """{x, n, value, ci_wilson} (Wilson score interval without continuity correction)."""
    if n <= 0:
        return {"x": int(x), "n": 0, "value": None, "ci_wilson": None, "value_reason": "no images"}
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(int(x), int(n), alpha=alpha, method="wilson")
    return {"x": int(x), "n": int(n), "value": x / n, "ci_wilson": [float(lo), float(hi)]}


def _flags(values: dict[str, np.ndarray], thresholds: dict[str, float], measures, min_votes):
    passed = {m: np.array([_passes(v, thresholds[m], D.MEASURES[m].higher_is_closer) for v in values[m]], bool)
              for m in measures}
    votes = np.sum([passed[m] for m in measures], axis=0) if measures else np.zeros(0)
    return passed, votes >= min_votes


def memorisation_tests(syn_values: dict, syn_modality: Sequence[str], hold_values: dict,
                       hold_modality: Sequence[str], measures) -> list[dict]:
    """Per modality (and all together): one-sided Mann-Whitney U of synthetic vs held-out
    nearest-neighbour values — are synthetic images closer to the reference than real images
    of other patients are?"""
    from scipy.stats import mannwhitneyu

    syn_modality, hold_modality = np.asarray(syn_modality, object), np.asarray(hold_modality, object)
    strata = [("all", np.ones(len(syn_modality), bool), np.ones(len(hold_modality), bool))]
    for mod in sorted(set(syn_modality) & set(hold_modality) - {""}):
        strata.append((mod, syn_modality == mod, hold_modality == mod))
    out = []
    for name, sm, hm in strata:
        for m in measures:
            higher = D.MEASURES[m].higher_is_closer
            a = np.asarray(syn_values[m], float)[sm]
            b = np.asarray(hold_values[m], float)[hm]
            a, b = a[np.isfinite(a)], b[np.isfinite(b)]
            row = {"modality": name, "measure": m, "n_synthetic": int(len(a)), "n_holdout": int(len(b)),
                   "median_synthetic": float(np.median(a)) if len(a) else None,
                   "median_holdout": float(np.median(b)) if len(b) else None}
            if len(a) and len(b):
                res = mannwhitneyu(a, b, alternative="greater" if higher else "less")
                row["u"] = float(res.statistic)
                row["p_one_sided"] = float(res.pvalue)
                # probability that a synthetic image is closer than a held-out one (ties half)
                row["p_synthetic_closer"] = float(res.statistic / (len(a) * len(b))) if higher else \
                    float(1 - res.statistic / (len(a) * len(b)))
            else:
                row["u"] = row["p_one_sided"] = row["p_synthetic_closer"] = None
                row["p_one_sided_reason"] = "no images in one of the two sets"
            out.append(row)
    return out


# ---------------------------------------------------------------------------------------
# the whole run

def run_novelty(synthetic, reference, out_dir=None, *, holdout=None, measures: Sequence[str] = DEFAULT_MEASURES,
                thresholds: dict[str, float] | None = None, min_votes: int | None = None,
                alpha: float = ALPHA, size: int = DEFAULT_SIZE, k: int = DEFAULT_K,
                features=None, calibration_sample: int = CALIBRATION_SAMPLE, chunk: int = 256,
                cache_dir=None, seed: int = 0, progress: bool = True,
                on_progress: Callable[[float, str], None] | None = None,
                cancel: threading.Event | None = None, write: bool = True) -> NoveltyResult:
    """Nearest reference images of every synthetic image, flags calibrated on held-out real images.

    Args:
        synthetic, reference: a folder or manifest CSV (or a list of `ImageRef`). The reference is
            the training set.
        holdout: real images *not* used for training (folder, manifest or ImageRef list), from
            other patients / volumes; None: every sampled reference image is compared with the
            reference images of the other groups (leave-one-group-out). Groups: `group_keys`.
        measures: of `descriptors.MEASURES`; default ('pixel', 'patch'). features: an
            `evaluation.features.FeatureExtractor` (adds 'features': a vision network or a copy
            detection descriptor such as SSCD).
        thresholds: per-measure overrides. alpha: target rate of flagged held-out images
            (default 0.05). min_votes: measures that must pass (default 1).
        out_dir: where novelty.csv, holdout.csv, summary.json and report.html go (when `write`).

    Returns:
        `NoveltyResult`: `.flagged` (names of flagged synthetic images), `.rows` (one dict per
        synthetic image with its values, `nearest_reference`, `flagged`), `.synthetic_rate` and
        `.holdout_rate` ({x, n, value, ci_wilson}; the held-out rate leaves each held-out group
        out of its own calibration), `.memorisation` (per modality and measure: one-sided
        Mann-Whitney U of synthetic vs held-out nearest-neighbour values), `.thresholds`,
        `.threshold_rules`, `.duplicates` (exact / near-duplicate reference images), `.warnings`.
    """
    syn = synthetic if isinstance(synthetic, list) else list_images(synthetic, what="synthetic")
    ref = reference if isinstance(reference, list) else list_images(reference, what="reference")
    hold = None
    if holdout is not None:
        hold = holdout if isinstance(holdout, list) else list_images(holdout, what="holdout")
    measures = check_measures(measures, features)
    if len(ref) < 2:
        raise EvaluationError("reference: at least 2 images are needed (the thresholds are calibrated on "
                              "held-out images compared with the reference)")
    if not 0 < alpha < 1:
        raise EvaluationError("alpha must be between 0 and 1")
    thresholds = dict(thresholds or {})
    min_votes = min_votes or 1
    if not 1 <= min_votes <= len(measures):
        raise EvaluationError(f"min_votes must be between 1 and {len(measures)}")
    k = max(1, int(k))
    out_dir = pathlib.Path(out_dir) if out_dir is not None else None
    if cache_dir is None:
        if out_dir is None:
            raise EvaluationError("give out_dir or cache_dir")
        cache_dir = out_dir / ".cache"
    cache_dir = pathlib.Path(cache_dir)
    ref_keys = group_keys(ref)
    hold_keys = group_keys(hold) if hold is not None else []
    ref_g, hold_g = _group_ids(ref_keys, hold_keys)
    warnings: list[str] = []
    if hold is None and len(set(ref_g.tolist())) < 2:
        raise EvaluationError("reference: all images are one group (one patient / volume), so no held-out "
                              "comparison is possible; give --holdout real images of other patients")
    n_cal = min(len(hold) if hold is not None else len(ref), calibration_sample)
    total = len(syn) + len(ref) + (len(hold) if hold is not None else 0) + len(syn) + n_cal
    bar = _Progress(total, progress, on_progress, cancel)
    rng = np.random.default_rng(seed)
    try:
        bar.stage("describing reference images")
        rd = dict(describe_set(ref, size, cache_dir, flips=True, features=features, chunk=chunk,
                               progress=bar.update, cancel=cancel))
        bar.stage("describing synthetic images")
        sd = describe_set(syn, size, cache_dir, flips=True, features=features, chunk=chunk,
                          progress=bar.update, cancel=cancel)
        if hold is not None:
            bar.stage("describing held-out images")
            hd = describe_set(hold, size, cache_dir, flips=True, features=features, chunk=chunk,
                              progress=bar.update, cancel=cancel)
            cal_set, cal_refs, cal_groups = hd, hold, hold_g
            cal_source = f"held-out real images ({len(hold)} given with --holdout)"
        else:
            cal_set, cal_refs, cal_groups = rd, ref, ref_g
            cal_source = ("reference images, each against the reference images of other groups "
                          "(leave-one-group-out; no --holdout given)")
        cal_idx = np.sort(rng.choice(len(cal_refs), size=n_cal, replace=False))
        bar.stage("calibrating on held-out real images")
        calibration = {m: [] for m in measures}
        cal_nearest = []
        for start in range(0, len(cal_idx), chunk):
            q = cal_idx[start:start + chunk]
            best, nearest = match(cal_set, q, rd, measures, k, query_groups=cal_groups[q], ref_groups=ref_g)
            for m in measures:
                calibration[m].append(best[m])
            cal_nearest.append(nearest)
            bar.update(len(q))
        calibration = {m: np.concatenate(v).astype(np.float64) for m, v in calibration.items()}
        cal_nearest = np.concatenate(cal_nearest) if cal_nearest else np.zeros(0, np.int64)
        level = min(1.0, alpha * min_votes / len(measures))
        rules, used = {}, {}
        for m in measures:
            higher = D.MEASURES[m].higher_is_closer
            if m in thresholds:
                used[m] = float(thresholds[m])
                rules[m] = "given (--threshold)"
                continue
            used[m], attainable = conformal_threshold(calibration[m], level, higher)
            rules[m] = (f"{'above' if higher else 'below'} all but {level:.3g} of {len(cal_idx)} {cal_source} "
                        f"(split-conformal level alpha {alpha:g} x {min_votes}/{len(measures)} measures)")
            if not attainable:
                warnings.append(f"{m}: {len(cal_idx)} held-out images cannot calibrate a rate of {level:.3g} "
                                f"(that needs at least {math.ceil(1 / level) - 1}); the threshold is 'closer "
                                f"than every held-out image' and the guaranteed rate only 1/{len(cal_idx) + 1}")
        # held-out flag rate, each held-out group left out of its own calibration
        groups_cal = cal_groups[cal_idx]
        hold_flag = np.zeros(len(cal_idx), bool)
        hold_votes = np.zeros(len(cal_idx), int)
        for g in np.unique(groups_cal):
            inside = groups_cal == g
            t = dict(used)
            for m in measures:
                if m not in thresholds:
                    t[m] = conformal_threshold(calibration[m][~inside], level, D.MEASURES[m].higher_is_closer)[0]
            passed, flags = _flags({m: calibration[m][inside] for m in measures}, t, measures, min_votes)
            hold_flag[inside] = flags
            hold_votes[inside] = np.sum([passed[m] for m in measures], axis=0)
        bar.stage("matching synthetic images")
        rows = []
        for start in range(0, len(syn), chunk):
            q = np.arange(start, min(start + chunk, len(syn)))
            best, nearest = match(sd, q, rd, measures, k)
            for j, i in enumerate(q):
                passed = [m for m in measures
                          if _passes(best[m][j], used[m], D.MEASURES[m].higher_is_closer)]
                row = {"synthetic": syn[i].name, "nearest_reference": ref[nearest[j]].name if nearest[j] >= 0 else ""}
                row.update({m: float(best[m][j]) for m in measures})
                row["votes"] = len(passed)
                row["flagged_by"] = " ".join(passed)
                row["flagged"] = len(passed) >= min_votes
                row["_syn"] = int(i)
                row["_ref"] = int(nearest[j])
                rows.append(row)
            bar.update(len(q))
        bar.stage("reporting duplicates")
        duplicates = reference_duplicates(rd, ref, ref_g)
    finally:
        bar.close()
    hold_rows = [{"holdout": cal_refs[i].name, "group": (hold_keys if hold is not None else ref_keys)[i],
                  "nearest_reference": ref[cal_nearest[j]].name if cal_nearest[j] >= 0 else "",
                  **{m: float(calibration[m][j]) for m in measures},
                  "votes": int(hold_votes[j]), "flagged": bool(hold_flag[j])}
                 for j, i in enumerate(cal_idx)]
    if duplicates["near"] and hold is None:
        warnings.append(f"{len(duplicates['near'])} reference images have a near-duplicate in another group: "
                        "ungrouped neighbouring slices, frames or copies make the leave-one-group-out "
                        "calibration too strict; give a manifest `group` column or --holdout")
    syn_values = {m: [r[m] for r in rows] for m in measures}
    result = NoveltyResult(
        rows, used, rules, calibration, min_votes, len(ref), out_dir, measures=list(measures), alpha=alpha,
        holdout={"source": "holdout" if hold is not None else "reference (leave-one-group-out)",
                 "description": cal_source, "n": int(len(cal_idx)),
                 "n_groups": int(len(np.unique(groups_cal))), "rows": hold_rows},
        synthetic_rate=wilson(sum(r["flagged"] for r in rows), len(rows)),
        holdout_rate=wilson(int(hold_flag.sum()), len(hold_flag)),
        memorisation=memorisation_tests(syn_values, [s.modality for s in syn], calibration,
                                        [cal_refs[i].modality for i in cal_idx], measures),
        duplicates=duplicates, warnings=warnings, timings=bar.timings)
    if write and out_dir is not None:
        write_outputs(result, syn, ref, size=size)
    return result


def reference_duplicates(rd: dict, ref: Sequence[ImageRef], ref_g: np.ndarray) -> dict:
    """Exact duplicates (identical normalised pixels, any group) and near-duplicates (`pixel` grid
    cosine ≥ NEAR_DUPLICATE with a reference of another group) inside the reference set."""
    digests = np.asarray(rd["digest"])
    by_digest: dict[bytes, list[int]] = {}
    for i, d in enumerate(digests):
        by_digest.setdefault(d.tobytes(), []).append(i)
    exact = [[ref[i].name for i in idx] for idx in by_digest.values() if len(idx) > 1]
    near: dict[tuple[int, int], float] = {}
    vec = rd["vec"]
    if len(set(ref_g.tolist())) > 1:
        for start in range(0, len(vec), 1024):
            q = np.arange(start, min(start + 1024, len(vec)))
            d, i = knn_inner_product(np.asarray(vec[q]), vec, 1, exclude=ref_g[q], base_groups=ref_g)
            for j in np.flatnonzero(d[:, 0] >= NEAR_DUPLICATE):
                a, b = sorted((int(q[j]), int(i[j, 0])))
                near[(a, b)] = round(float(d[j, 0]), 5)
    return {"exact": exact, "near": [[ref[a].name, ref[b].name, v] for (a, b), v in sorted(near.items())]}


class _Progress:
    """tqdm on stderr plus an optional (fraction, text) callback and a cancel check."""

    def __init__(self, total, show, callback, cancel):
        from tqdm import tqdm

        self.total, self.done, self.callback, self.cancel = total, 0, callback, cancel
        self.text = ""
        self.timings: dict[str, float] = {}  # seconds per stage (benchmarks/bench_novelty.py)
        self._t = None
        self.bar = tqdm(total=total, disable=not show, file=sys.stderr, unit="img", leave=False)

    def stage(self, text):
        import time

        now = time.perf_counter()
        if self._t is not None:
            self.timings[self.text] = now - self._t
        self._t = now
        self.text = text
        self.bar.set_description(text)
        self._report()

    def update(self, n):
        self.done += n
        self.bar.update(n)
        self._report()

    def _report(self):
        if self.cancel is not None and self.cancel.is_set():
            raise EvaluationCancelled("evaluation cancelled")
        if self.callback is not None:
            self.callback(min(1.0, self.done / max(1, self.total)), self.text)

    def close(self):
        import time

        if self._t is not None and self.text not in self.timings:
            self.timings[self.text] = time.perf_counter() - self._t
        self.bar.close()


# ---------------------------------------------------------------------------------------
# outputs

def summary_dict(result: NoveltyResult) -> dict:
    measures = result.measures
    hist = {}
    for m in measures:
        syn_vals = np.array([r[m] for r in result.rows], float)
        cal = np.asarray(result.calibration[m], float)
        both = np.concatenate([syn_vals, cal])
        both = both[np.isfinite(both)]
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1e-6
        edges = np.linspace(lo, hi, 31)
        held = np.histogram(cal[np.isfinite(cal)], edges)[0].tolist()
        hist[m] = {"edges": edges.round(6).tolist(),
                   "synthetic_to_reference": np.histogram(syn_vals[np.isfinite(syn_vals)], edges)[0].tolist(),
                   "holdout_to_reference": held,
                   "reference_to_reference": held}  # the report's second series (held-out now)
    memo = [r for r in result.memorisation if r["measure"] == measures[0]]
    return {
        "n_synthetic": len(result.rows),
        "n_reference": result.n_reference,
        "n_flagged": result.n_flagged,
        "fraction_flagged": result.fraction_flagged,
        "alpha": result.alpha,
        "synthetic_flag_rate": result.synthetic_rate,
        "holdout_flag_rate": result.holdout_rate,
        "holdout": {k: v for k, v in result.holdout.items() if k != "rows"},
        "memorisation": result.memorisation,
        "memorisation_answer": memorisation_answer(memo),
        "duplicates": result.duplicates,
        "warnings": result.warnings,
        "measures": {m: {"description": D.MEASURES[m].description,
                         "higher_is_closer": D.MEASURES[m].higher_is_closer,
                         "n_passing": sum(m in r["flagged_by"].split() for r in result.rows)} for m in measures},
        "threshold": {m: {"value": result.thresholds[m], "rule": result.threshold_rules[m]} for m in measures},
        "flag_rule": f"flagged when at least {result.min_votes} of {len(measures)} measures pass their threshold",
        "min_votes": result.min_votes,
        "histogram": hist,
    }


def memorisation_answer(rows: Sequence[dict], alpha: float = 0.05) -> str:
    """One sentence per stratum: are synthetic images closer to the reference than held-out ones?"""
    parts = []
    for r in rows:
        if r.get("p_one_sided") is None:
            parts.append(f"{r['modality']}: not testable ({r.get('p_one_sided_reason', 'no data')})")
            continue
        verdict = "yes" if r["p_one_sided"] < alpha else "no evidence"
        parts.append(f"{r['modality']}: {verdict} (median {r['measure']} {r['median_synthetic']:.3g} synthetic vs "
                     f"{r['median_holdout']:.3g} held-out, one-sided Mann-Whitney p = {r['p_one_sided']:.3g}, "
                     f"n = {r['n_synthetic']} / {r['n_holdout']})")
    return "; ".join(parts)


def format_rate(rate: dict) -> str:
    if rate.get("value") is None:
        return "n/a (no images)"
    lo, hi = rate["ci_wilson"]
    return f"{rate['x']} of {rate['n']} ({rate['value']:.1%}, 95% CI {lo:.1%}-{hi:.1%})"


def write_outputs(result: NoveltyResult, syn: Sequence[ImageRef], ref: Sequence[ImageRef], *,
                  size: int = DEFAULT_SIZE, gallery: int = 24) -> None:
    from evaluation import report
    from studies.cells import spreadsheet_safe

    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    columns = ["synthetic", "nearest_reference", *result.measures, "votes", "flagged_by", "flagged"]
    with open(out / "novelty.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in result.rows:  # file names are text a spreadsheet could run as a formula
            w.writerow({k: spreadsheet_safe(v) for k, v in {**r, "flagged": int(r["flagged"])}.items()})
    with open(out / "holdout.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["holdout", "group", "nearest_reference", *result.measures, "votes",
                                           "flagged"], extrasaction="ignore")
        w.writeheader()
        for r in result.holdout.get("rows", []):
            w.writerow({k: spreadsheet_safe(v) for k, v in {**r, "flagged": int(r["flagged"])}.items()})
    summary = summary_dict(result)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    first = result.measures[0]
    sign = -1 if D.MEASURES[first].higher_is_closer else 1
    closest = sorted(result.rows, key=lambda r: (-r["votes"], sign * r[first]))[:gallery]
    report.write_novelty_report(out / "report.html", summary, closest, syn, ref, size=min(size, 192))
