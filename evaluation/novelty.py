"""Memorisation / novelty: is any synthetic image a near-copy of a reference (training) image?

`run_novelty(synthetic, reference, out_dir)` is what `medisyn eval novelty` runs:

1. Both sets are decoded and normalised as a study ingests them (`evaluation.images`) and
   reduced to descriptors (`evaluation.descriptors`), chunk by chunk into memory-mapped arrays
   in a cache folder, so memory does not grow with the sets.
2. Candidates: for each synthetic image (as is and mirrored both ways) its `k` nearest
   references by the `pixel` measure (exact inner-product search with faiss, streamed over
   reference blocks), by pHash Hamming distance (faiss binary search) and, with a features
   model, by feature cosine. Every measure is then computed on every candidate pair and the
   best value per measure kept; `nearest_reference` is the best candidate by the first measure.
3. Calibration (Dar et al.): the same search is run for a sample of reference images against
   the *other* references; each measure's threshold is the 95th percentile of those
   real-to-real nearest-neighbour similarities (5th percentile of distances). A synthetic image
   is closer to a reference than 95 % of real images are to their own nearest neighbour — the
   usual spread of a real data set — on that measure.
4. Flag: a synthetic image is flagged when at least `min_votes` measures (default: a majority)
   pass their threshold. `thresholds` overrides any measure's threshold.

Outputs in `out_dir`: `novelty.csv`, `summary.json`, `report.html` (see `write_outputs`).
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

__all__ = ["DEFAULT_MEASURES", "NoveltyResult", "PERCENTILE", "parse_thresholds", "run_novelty"]

DEFAULT_MEASURES = ("pixel", "tiled_l2", "ssim", "phash")
PERCENTILE = 95.0
"""Calibrated threshold: this percentile of real-to-real nearest-neighbour similarity."""
CALIBRATION_SAMPLE = 2000
"""At most this many reference images are matched against the others to calibrate."""
DEFAULT_SIZE = 256
DEFAULT_K = 5
_CACHE_VERSION = 1
_BLOCK = 8192  # reference vectors per search block


@dataclasses.dataclass
class NoveltyResult:
    rows: list[dict]                 # one per synthetic image (the CSV rows)
    thresholds: dict[str, float]
    threshold_rules: dict[str, str]
    calibration: dict[str, np.ndarray]   # real-to-real nearest-neighbour values per measure
    min_votes: int
    n_reference: int
    out_dir: pathlib.Path | None = None

    @property
    def n_flagged(self) -> int:
        return sum(r["flagged"] for r in self.rows)

    @property
    def fraction_flagged(self) -> float:
        return self.n_flagged / len(self.rows) if self.rows else 0.0


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
    """
    key = _cache_key(refs, size, features) + ("f" if flips else "")
    folder = cache_dir / key
    names = ["vec", "struct", "hash"] + (["hash_h", "hash_v"] if flips else []) + (["feat"] if features else [])
    if (folder / "done").is_file():
        return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    n = len(refs)
    shapes = {"vec": ((n, D.SEARCH_SIZE ** 2), np.float32), "struct": ((n, D.STRUCT_SIZE, D.STRUCT_SIZE), np.uint8),
              "hash": ((n, 8), np.uint8), "hash_h": ((n, 8), np.uint8), "hash_v": ((n, 8), np.uint8)}
    if features is not None:
        shapes["feat"] = ((n, features.dim), np.float32)
    arrays = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=shapes[name][1],
                                              shape=shapes[name][0]) for name in names}
    for start, images in iter_chunks(refs, size, chunk=chunk, cancel=cancel):
        d = D.describe(images)
        end = start + len(images)
        for name in ("vec", "struct", "hash"):
            arrays[name][start:end] = d[name]
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


def _struct_variant(struct: np.ndarray, variant: np.ndarray) -> np.ndarray:
    out = np.array(struct)
    out[variant == 1] = out[variant == 1][:, :, ::-1]
    out[variant == 2] = out[variant == 2][:, ::-1]
    return out


# ---------------------------------------------------------------------------------------
# streamed exact k-NN search with faiss

def _merge_topk(best_d, best_i, d, i, k, largest: bool):
    if best_d is None:
        dd, ii = d, i
    else:
        dd, ii = np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1)
    order = np.argsort(-dd if largest else dd, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dd, order, 1), np.take_along_axis(ii, order, 1)


def knn_inner_product(queries: np.ndarray, base: np.ndarray, k: int, exclude=None):
    """Exact top-k by inner product, streamed over blocks of `base` (memory: one block).

    exclude: optional array of base indices, one per query, never returned (the query itself).
    """
    import faiss

    best_d = best_i = None
    kk = k + (1 if exclude is not None else 0)
    for start in range(0, len(base), _BLOCK):
        block = np.ascontiguousarray(base[start:start + _BLOCK], dtype=np.float32)
        d, i = faiss.knn(np.ascontiguousarray(queries, np.float32), block, min(kk, len(block)),
                         metric=faiss.METRIC_INNER_PRODUCT)
        best_d, best_i = _merge_topk(best_d, best_i, d, i + start, kk, largest=True)
    return _drop_self(best_d, best_i, exclude, k, -np.inf)


def knn_hamming(queries: np.ndarray, base: np.ndarray, k: int, exclude=None):
    """Exact top-k by Hamming distance of packed 64-bit codes, streamed over blocks."""
    import faiss

    best_d = best_i = None
    kk = k + (1 if exclude is not None else 0)
    for start in range(0, len(base), _BLOCK):
        block = np.ascontiguousarray(base[start:start + _BLOCK], dtype=np.uint8)
        index = faiss.IndexBinaryFlat(64)
        index.add(block)
        d, i = index.search(np.ascontiguousarray(queries, np.uint8), min(kk, len(block)))
        best_d, best_i = _merge_topk(best_d, best_i, d.astype(np.float32), i + start, kk, largest=False)
    return _drop_self(best_d, best_i, exclude, k, np.inf)


def _drop_self(d, i, exclude, k, fill):
    if exclude is None:
        return d[:, :k], i[:, :k]
    d = d.copy()
    d[i == np.asarray(exclude)[:, None]] = fill
    order = np.argsort(-d if fill == -np.inf else d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def _best_k(results, k, largest: bool) -> np.ndarray:
    """Indices of the k best distinct references over several (distances, indices) results."""
    d = np.concatenate([r[0] for r in results], 1)
    i = np.concatenate([r[1] for r in results], 1)
    order = np.argsort(-d if largest else d, axis=1, kind="stable")
    d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    out = np.full((len(i), k), -1, np.int64)
    for row in range(len(i)):
        _, first = np.unique(i[row], return_index=True)
        keep = i[row][np.sort(first)][:k]
        out[row, :len(keep)] = keep
    return out


# ---------------------------------------------------------------------------------------
# matching one block of queries against the reference set

def match(query: dict, qidx: np.ndarray, ref: dict, measures: Sequence[str], k: int,
          exclude_self: bool = False, k_struct: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Best value per measure and the nearest reference (by measures[0]) for query rows qidx.

    query/ref: descriptor dicts; query needs 'hash_h'/'hash_v'. exclude_self: qidx indexes the
    reference set itself and a query never matches its own row.
    """
    exclude = qidx if exclude_self else None
    vec = np.asarray(query["vec"][qidx])
    variants = _vec_variants(vec)
    # k candidates per measure, each the best over the three orientations
    cand = [_best_k([knn_inner_product(v, ref["vec"], k, exclude) for v in variants], k, largest=True)]
    hashes = [np.asarray(query[h][qidx]) for h in ("hash", "hash_h", "hash_v")]
    if "phash" in measures:
        cand.append(_best_k([knn_hamming(h, ref["hash"], k, exclude) for h in hashes], k, largest=False))
    if "features" in measures:
        cand.append(knn_inner_product(np.asarray(query["feat"][qidx]), ref["feat"], k, exclude)[1])
    cand = np.concatenate(cand, 1)
    nq = len(qidx)
    # unique candidate pairs
    pairs_q = np.repeat(np.arange(nq), cand.shape[1])
    pairs_r = cand.reshape(-1)
    keep = pairs_r >= 0
    if exclude is not None:
        keep &= pairs_r != np.repeat(qidx, cand.shape[1])
    pq, pr = np.unique(np.stack([pairs_q[keep], pairs_r[keep]], 1), axis=0).T
    ref_vec = np.asarray(ref["vec"][np.sort(np.unique(pr))])
    lookup = {r: j for j, r in enumerate(np.sort(np.unique(pr)))}
    rv = ref_vec[[lookup[r] for r in pr]]
    sims = np.stack([np.einsum("ij,ij->i", v[pq], rv) for v in variants], 1)
    variant = sims.argmax(1)
    ref_struct = np.asarray(ref["struct"][np.sort(np.unique(pr))])[[lookup[r] for r in pr]]
    q_struct = _struct_variant(np.asarray(query["struct"][qidx])[pq], variant)
    values = D.pair_measures(q_struct, ref_struct, measures, groups=pq, top=k_struct)
    if "phash" in measures:
        rh = np.asarray(ref["hash"][np.sort(np.unique(pr))])[[lookup[r] for r in pr]]
        values["phash"] = np.min(np.stack([D.hamming(h[pq], rh) for h in hashes], 1), 1).astype(np.float32)
    if "features" in measures:
        rf = np.asarray(ref["feat"][np.sort(np.unique(pr))])[[lookup[r] for r in pr]]
        values["features"] = np.einsum("ij,ij->i", np.asarray(query["feat"][qidx])[pq], rf)
    best = {}
    nearest = np.full(nq, -1)
    for m in measures:
        higher = D.MEASURES[m].higher_is_closer
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
    return value >= threshold if higher else value <= threshold


# ---------------------------------------------------------------------------------------
# the whole run

def run_novelty(synthetic, reference, out_dir=None, *, measures: Sequence[str] = DEFAULT_MEASURES,
                thresholds: dict[str, float] | None = None, min_votes: int | None = None,
                percentile: float = PERCENTILE, size: int = DEFAULT_SIZE, k: int = DEFAULT_K,
                features=None, calibration_sample: int = CALIBRATION_SAMPLE, chunk: int = 256,
                cache_dir=None, seed: int = 0, progress: bool = True,
                on_progress: Callable[[float, str], None] | None = None,
                cancel: threading.Event | None = None, write: bool = True) -> NoveltyResult:
    """Nearest reference images of every synthetic image under several measures, calibrated flags.

    synthetic, reference: folder or manifest CSV (or lists of ImageRef). features: an
    `evaluation.features.FeatureExtractor` (adds the 'features' measure). thresholds: per-measure
    overrides of the calibrated thresholds. min_votes: measures that must pass (default majority).
    Writes novelty.csv, summary.json and report.html to out_dir when `write` (see module doc).
    """
    syn = synthetic if isinstance(synthetic, list) else list_images(synthetic, what="synthetic")
    ref = reference if isinstance(reference, list) else list_images(reference, what="reference")
    measures = check_measures(measures, features)
    if len(ref) < 2:
        raise EvaluationError("reference: at least 2 images are needed (the threshold is calibrated "
                              "from reference-to-reference distances)")
    thresholds = dict(thresholds or {})
    min_votes = min_votes or (len(measures) + 1) // 2
    if not 1 <= min_votes <= len(measures):
        raise EvaluationError(f"min_votes must be between 1 and {len(measures)}")
    k = max(1, int(k))
    out_dir = pathlib.Path(out_dir) if out_dir is not None else None
    if cache_dir is None:
        if out_dir is None:
            raise EvaluationError("give out_dir or cache_dir")
        cache_dir = out_dir / ".cache"
    cache_dir = pathlib.Path(cache_dir)
    total = len(syn) + len(ref) + len(syn) + min(len(ref), calibration_sample)
    bar = _Progress(total, progress, on_progress, cancel)
    try:
        bar.stage("describing reference images")
        rd = describe_set(ref, size, cache_dir, flips=True, features=features, chunk=chunk,
                          progress=bar.update, cancel=cancel)
        bar.stage("describing synthetic images")
        sd = describe_set(syn, size, cache_dir, flips=True, features=features, chunk=chunk,
                          progress=bar.update, cancel=cancel)
        # calibration: a sample of references against the other references
        bar.stage("calibrating on reference-to-reference distances")
        rng = np.random.default_rng(seed)
        cal_idx = np.sort(rng.choice(len(ref), size=min(len(ref), calibration_sample), replace=False))
        calibration = {m: [] for m in measures}
        for start in range(0, len(cal_idx), chunk):
            q = cal_idx[start:start + chunk]
            best, _ = match(rd, q, rd, measures, k, exclude_self=True)
            for m in measures:
                calibration[m].append(best[m])
            bar.update(len(q))
        calibration = {m: np.concatenate(v) for m, v in calibration.items()}
        rules, used = {}, {}
        for m in measures:
            higher = D.MEASURES[m].higher_is_closer
            if m in thresholds:
                used[m] = float(thresholds[m])
                rules[m] = "given (--threshold)"
            else:
                p = percentile if higher else 100.0 - percentile
                used[m] = float(np.percentile(calibration[m], p))
                rules[m] = (f"{p:g}th percentile of reference-to-reference nearest-neighbour "
                            f"{'similarity' if higher else 'distance'} ({len(cal_idx)} reference images)")
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
    finally:
        bar.close()
    result = NoveltyResult(rows, used, rules, calibration, min_votes, len(ref), out_dir)
    result.measures = measures
    result.timings = bar.timings
    if write and out_dir is not None:
        write_outputs(result, syn, ref, size=size, percentile=percentile)
    return result


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

def summary_dict(result: NoveltyResult, percentile: float = PERCENTILE) -> dict:
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
        hist[m] = {"edges": edges.round(6).tolist(),
                   "synthetic_to_reference": np.histogram(syn_vals, edges)[0].tolist(),
                   "reference_to_reference": np.histogram(cal, edges)[0].tolist()}
    return {
        "n_synthetic": len(result.rows),
        "n_reference": result.n_reference,
        "n_flagged": result.n_flagged,
        "fraction_flagged": result.fraction_flagged,
        "measures": {m: {"description": D.MEASURES[m].description,
                         "higher_is_closer": D.MEASURES[m].higher_is_closer,
                         "n_passing": sum(m in r["flagged_by"].split() for r in result.rows)} for m in measures},
        "threshold": {m: {"value": result.thresholds[m], "rule": result.threshold_rules[m]} for m in measures},
        "flag_rule": f"flagged when at least {result.min_votes} of {len(measures)} measures pass their threshold",
        "min_votes": result.min_votes,
        "histogram": hist,
    }


def write_outputs(result: NoveltyResult, syn: Sequence[ImageRef], ref: Sequence[ImageRef], *,
                  size: int = DEFAULT_SIZE, percentile: float = PERCENTILE, gallery: int = 24) -> None:
    from evaluation import report
    from studies.export import spreadsheet_safe

    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    columns = ["synthetic", "nearest_reference", *result.measures, "votes", "flagged_by", "flagged"]
    with open(out / "novelty.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in result.rows:  # file names are text a spreadsheet could run as a formula
            w.writerow({k: spreadsheet_safe(v) for k, v in {**r, "flagged": int(r["flagged"])}.items()})
    summary = summary_dict(result, percentile)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    first = result.measures[0]
    sign = -1 if D.MEASURES[first].higher_is_closer else 1
    closest = sorted(result.rows, key=lambda r: (-r["votes"], sign * r[first]))[:gallery]
    report.write_novelty_report(out / "report.html", summary, closest, syn, ref, size=min(size, 192))
