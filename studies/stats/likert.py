"""Likert ratings (alignment, quality): summaries and the real-vs-synthetic comparison.

The comparison is scipy's Mann–Whitney U test (two-sided; exact for small samples
without ties, otherwise the normal approximation with tie correction). Its assumptions
are stated in the output: independent observations in and between the groups, and an
ordinal scale. Several ratings by the same reader are not independent, so the p-value is
optimistic when readers differ systematically; the ICC and per-reader summaries show how
much they do.

Undefined values are None with a sibling `<key>_reason`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

SCALE = (1, 2, 3, 4, 5)
MWU_TEST = "Mann–Whitney U (Wilcoxon rank-sum), two-sided"
MWU_ASSUMPTIONS = ("independent observations within and between groups; ordinal ratings; "
                   "tests whether a synthetic image tends to be rated higher or lower than a "
                   "real one (P(X > Y) ≠ 1/2). Repeated ratings by one reader are not "
                   "independent: treat the p-value as descriptive when readers differ.")

_STATS = ("mean", "sd", "median", "q1", "q3")


def _empty(n: int = 0, reason: str = "no responses") -> dict:
    out: dict = {"n": n}
    for key in _STATS:
        out[key], out[f"{key}_reason"] = None, reason
    return out


def summarise(ratings, scale=SCALE) -> dict:
    """{n, mean, sd, median, q1, q3, distribution{level: count}, proportions{level: share}}."""
    x = pd.to_numeric(pd.Series(ratings), errors="coerce").dropna().to_numpy(dtype=float)
    levels, counts = np.unique(x, return_counts=True)
    return _summaries(counts[None, :], levels, scale)[0]


def _level_key(v) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else str(v)


def _order_stat(cum: np.ndarray, levels: np.ndarray, k: np.ndarray) -> np.ndarray:
    """k-th smallest value (0-based) per row, from cumulative counts per level."""
    idx = (cum <= k[:, None]).sum(axis=1)
    return levels[np.minimum(idx, levels.size - 1)]


def _quantile(cum, levels, n, q):
    """np.quantile's default (linear) method, from counts: exact for discrete ratings."""
    h = (n - 1) * q
    lo, hi = np.floor(h), np.ceil(h)
    x_lo = _order_stat(cum, levels, lo)
    x_hi = _order_stat(cum, levels, hi)
    return x_lo + (h - lo) * (x_hi - x_lo)


def _summaries(counts: np.ndarray, levels: np.ndarray, scale) -> list[dict]:
    """Summaries of G groups from a G × L table of counts per distinct rating value."""
    counts = np.atleast_2d(np.asarray(counts, dtype=np.int64))
    levels = np.asarray(levels, dtype=float)
    n = counts.sum(axis=1)
    safe = np.maximum(n, 1)
    mean = counts @ levels / safe
    ss = counts @ levels ** 2 - n * mean ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.maximum(ss, 0) / (n - 1))
    cum = np.cumsum(counts, axis=1)
    if levels.size:
        med, q1, q3 = (_quantile(cum, levels, n, q) for q in (0.5, 0.25, 0.75))
    else:
        med = q1 = q3 = np.zeros(len(n))
    all_levels = sorted(set(float(v) for v in scale) | set(levels.tolist()))
    col = {v: i for i, v in enumerate(levels.tolist())}
    out = []
    for g in range(len(n)):
        if n[g] == 0:
            row = _empty()
        else:
            row = {"n": int(n[g]), "mean": float(mean[g]), "median": float(med[g]),
                   "q1": float(q1[g]), "q3": float(q3[g])}
            if n[g] > 1:
                row["sd"] = float(sd[g])
            else:
                row["sd"], row["sd_reason"] = None, "needs at least two ratings"
        dist = {_level_key(v): int(counts[g, col[v]]) if v in col else 0 for v in all_levels}
        row["distribution"] = dist
        row["proportions"] = {k: (c / n[g] if n[g] else 0.0) for k, c in dist.items()}
        if not n[g]:
            row["proportions_reason"] = "no responses (all shares are 0)"
        out.append(row)
    return out


def summarise_by(df: pd.DataFrame, by: str, levels=None, *, value: str = "rating", scale=SCALE) -> dict:
    """summarise() per level of column `by`, from one table of counts. Levels without rows get n = 0."""
    values = pd.to_numeric(df[value], errors="coerce")
    ok = values.notna().to_numpy()
    table = (pd.crosstab(df.loc[ok, by], values[ok]) if ok.any()
             else pd.DataFrame(dtype=np.int64))
    keys = list(table.index) if levels is None else list(levels)
    table = table.reindex(keys, fill_value=0)
    rows = _summaries(table.to_numpy(), np.asarray(table.columns, dtype=float), scale)
    return {str(k): r for k, r in zip(keys, rows)}


def mann_whitney(synthetic, real) -> dict:
    """Two-sided Mann–Whitney U of synthetic vs real ratings.

    u is the statistic of the synthetic sample; prob_superiority = U/(n_s·n_r) is the
    probability that a synthetic image is rated higher than a real one (ties count 1/2);
    rank_biserial = 2·prob_superiority − 1.
    """
    x = np.asarray(synthetic, dtype=float)
    y = np.asarray(real, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    out: dict = {"test": MWU_TEST, "assumptions": MWU_ASSUMPTIONS,
                 "n_synthetic": int(x.size), "n_real": int(y.size)}
    keys = ("u", "p", "prob_superiority", "rank_biserial")
    if x.size == 0 or y.size == 0:
        reason = "no synthetic ratings" if x.size == 0 else "no real ratings"
        for key in keys:
            out[key], out[f"{key}_reason"] = None, reason
        return out
    if np.unique(np.concatenate([x, y])).size == 1:
        out["u"] = float(x.size * y.size / 2)
        out["prob_superiority"], out["rank_biserial"] = 0.5, 0.0
        out["p"], out["p_reason"] = None, "no variation: every rating is the same"
        return out
    res = mannwhitneyu(x, y, alternative="two-sided")
    out["u"] = float(res.statistic)
    out["p"] = float(res.pvalue)
    out["prob_superiority"] = float(res.statistic / (x.size * y.size))
    out["rank_biserial"] = 2 * out["prob_superiority"] - 1
    return out
