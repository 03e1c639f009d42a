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
    x = np.asarray(pd.to_numeric(pd.Series(ratings), errors="coerce").dropna(), dtype=float)
    return _summary_from(x.size, *(_stats_of(x) if x.size else (None,) * 5),
                         counts=pd.Series(x).value_counts(), scale=scale)


def _stats_of(x: np.ndarray):
    return (float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else None, float(np.median(x)),
            float(np.quantile(x, 0.25)), float(np.quantile(x, 0.75)))


def _level_key(v) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() else str(v)


def _summary_from(n, mean, sd, median, q1, q3, *, counts: pd.Series, scale) -> dict:
    if n == 0:
        out = _empty()
    else:
        out = {"n": int(n), "mean": mean, "median": median, "q1": q1, "q3": q3}
        if sd is None or not np.isfinite(sd):
            out["sd"], out["sd_reason"] = None, "needs at least two ratings"
        else:
            out["sd"] = sd
    levels = sorted(set(float(s) for s in scale) | set(float(v) for v in counts.index))
    dist = {_level_key(v): int(counts.get(v, 0)) for v in levels}
    out["distribution"] = dist
    out["proportions"] = {k: (c / n if n else 0.0) for k, c in dist.items()}
    if not n:
        out["proportions_reason"] = "no responses (all shares are 0)"
    return out


def summarise_by(df: pd.DataFrame, by: str, levels=None, *, value: str = "rating", scale=SCALE) -> dict:
    """summarise() per level of column `by`, in one groupby. Levels without rows get n = 0."""
    groups = {}
    if len(df):
        g = df.groupby(by, sort=True, observed=True)[value]
        agg = g.agg(["count", "mean", "std", "median"])
        q = g.quantile([0.25, 0.75]).unstack()
        counts = df.groupby([by, value], observed=True).size()
        for level, row in agg.iterrows():
            n = int(row["count"])
            groups[level] = _summary_from(
                n, float(row["mean"]), float(row["std"]) if n > 1 else None, float(row["median"]),
                float(q.loc[level, 0.25]), float(q.loc[level, 0.75]),
                counts=counts.loc[level], scale=scale)
    keys = list(groups) if levels is None else list(levels)
    out = {}
    for level in keys:
        out[str(level)] = groups.get(level) or _summary_from(0, None, None, None, None, None,
                                                             counts=pd.Series(dtype=float), scale=scale)
    return out


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
