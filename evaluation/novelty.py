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

import dataclasses
import json
import math
import pathlib
import sys
import threading
from collections.abc import Callable, Sequence

import numpy as np

from evaluation import descriptors as D
from evaluation.errors import EvaluationCancelled, EvaluationError
from evaluation.images import ImageRef, list_images

# the public names of the sibling modules stay importable from here (the CLI, studio and
# benchmarks import them from evaluation.novelty)
from evaluation.novelty_calibration import (
    conformal_threshold,
    format_rate,
    group_ids,
    group_keys,
    memorisation_answer,
    memorisation_tests,
    passes,
    vote_flags,
    wilson,
)
from evaluation.novelty_patch import patch_search
from evaluation.novelty_search import (
    describe_set,
    knn_hamming,
    knn_inner_product,
    match,
)

__all__ = ["ALPHA", "DEFAULT_MEASURES", "NoveltyResult", "conformal_threshold", "describe_set", "format_rate",
           "group_keys", "knn_hamming", "knn_inner_product", "match", "memorisation_answer", "parse_thresholds",
           "patch_search", "run_novelty", "wilson"]

DEFAULT_MEASURES = ("pixel", "patch")
ALPHA = 0.05
"""Target rate of flagged real images unrelated to the training set (held-out calibration)."""
CALIBRATION_SAMPLE = 1000
"""At most this many held-out (or reference) images calibrate the thresholds."""
NEAR_DUPLICATE = 0.995
"""Reference pairs of different groups at least this `pixel`-close are reported as near-duplicates."""
DEFAULT_SIZE = 256
DEFAULT_K = 5

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
    ref_g, hold_g = group_ids(ref_keys, hold_keys)
    warnings: list[str] = []
    if hold is None and len(set(ref_g.tolist())) < 2:
        raise EvaluationError("reference: all images are one group (one patient / volume), so no held-out "
                              "comparison is possible; give --holdout real images of other patients")
    if hold is not None:
        shared = sum(k in set(ref_keys) for k in hold_keys)
        if shared:
            # they are matched only with other groups, but they are not images of other patients:
            # the thresholds promise a rate for real images unrelated to the training set
            warnings.append(f"{shared} held-out images share a group (patient / volume / file) with the "
                            "reference; they are compared only with other groups, but they are the same "
                            "patients — hold out images of other patients")
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
            passed, flags = vote_flags({m: calibration[m][inside] for m in measures}, t, measures, min_votes)
            hold_flag[inside] = flags
            hold_votes[inside] = np.sum([passed[m] for m in measures], axis=0)
        bar.stage("matching synthetic images")
        rows = []
        for start in range(0, len(syn), chunk):
            q = np.arange(start, min(start + chunk, len(syn)))
            best, nearest = match(sd, q, rd, measures, k)
            for j, i in enumerate(q):
                passed = [m for m in measures
                          if passes(best[m][j], used[m], D.MEASURES[m].higher_is_closer)]
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




def write_outputs(result: NoveltyResult, syn: Sequence[ImageRef], ref: Sequence[ImageRef], *,
                  size: int = DEFAULT_SIZE, gallery: int = 24) -> None:
    from evaluation import report
    from studies.cells import write_csv  # file names are text a spreadsheet could run as a formula

    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    columns = ["synthetic", "nearest_reference", *result.measures, "votes", "flagged_by", "flagged"]
    write_csv(out / "novelty.csv", [{**r, "flagged": int(r["flagged"])} for r in result.rows], columns)
    write_csv(out / "holdout.csv", [{**r, "flagged": int(r["flagged"])} for r in result.holdout.get("rows", [])],
              ["holdout", "group", "nearest_reference", *result.measures, "votes", "flagged"])
    summary = summary_dict(result)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    first = result.measures[0]
    sign = -1 if D.MEASURES[first].higher_is_closer else 1
    closest = sorted(result.rows, key=lambda r: (-r["votes"], sign * r[first]))[:gallery]
    report.write_novelty_report(out / "report.html", summary, closest, syn, ref, size=min(size, 192))
