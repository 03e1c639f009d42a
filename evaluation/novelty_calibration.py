"""Calibration of the novelty flags on held-out real images: patient / volume groups,
split-conformal thresholds, Wilson intervals and the memorisation test.

A held-out image is only ever compared with reference images of other groups (`group_keys`),
so the thresholds describe real images unrelated to the training set, and each held-out group
is left out of its own calibration when the held-out flag rate is measured (`evaluation.novelty`).
"""
from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import numpy as np

from evaluation import descriptors as D
from evaluation.images import ImageRef

__all__ = ["conformal_threshold", "format_rate", "group_keys", "memorisation_answer", "memorisation_tests",
           "wilson"]


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


def group_ids(*key_lists: Sequence[str]) -> list[np.ndarray]:
    table: dict[str, int] = {}
    return [np.array([table.setdefault(k, len(table)) for k in keys], np.int64) for keys in key_lists]


def passes(value, threshold, higher):
    # as Python floats: a float32 value against a float64 threshold would round the threshold
    value, threshold = float(value), float(threshold)
    return value >= threshold if higher else value <= threshold


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


def vote_flags(values: dict[str, np.ndarray], thresholds: dict[str, float], measures, min_votes):
    passed = {m: np.array([passes(v, thresholds[m], D.MEASURES[m].higher_is_closer) for v in values[m]], bool)
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
