"""Binomial proportions: confidence intervals, the exact test, and the Turing-test summary.

Intervals come from statsmodels (`proportion_confint`: 'wilson' = Wilson score without
continuity correction, 'beta' = Clopper–Pearson exact), the test from scipy
(`binomtest`, two-sided exact, Clopper–Pearson-consistent p-value). Reference values:
Newcombe (1998) Stat Med 17:857, Table I (tests/studies/stats/test_proportions.py).

Undefined values follow the package convention (docs/statistics.md): the value is None
and a sibling key `<key>_reason` says why.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from statsmodels.stats.proportion import proportion_confint

CI_METHODS = {"wilson": "wilson", "clopper_pearson": "beta"}


def wilson_ci(x, n, alpha: float = 0.05):
    """Wilson score interval (no continuity correction); arrays are vectorised."""
    lo, hi = proportion_confint(x, n, alpha=alpha, method="wilson")
    return lo, hi


def clopper_pearson_ci(x, n, alpha: float = 0.05):
    """Clopper–Pearson exact interval; arrays are vectorised."""
    lo, hi = proportion_confint(x, n, alpha=alpha, method="beta")
    return lo, hi


def binomial_p(x: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test of x successes in n trials against p."""
    return float(binomtest(int(x), int(n), p).pvalue)


def set_value(out: dict, key: str, value, reason: str | None = None) -> None:
    """Store value under key, or None plus `<key>_reason` when it is undefined."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        out[key] = None
        out[f"{key}_reason"] = reason or "undefined"
    else:
        out[key] = value


def proportion(x: int, n: int, *, alpha: float = 0.05, empty_reason: str = "no responses") -> dict:
    """{value, ci_wilson, ci_clopper_pearson} for x/n; nulls with reasons when n == 0."""
    out: dict = {"x": int(x), "n": int(n)}
    if n <= 0:
        for key in ("value", "ci_wilson", "ci_clopper_pearson"):
            set_value(out, key, None, empty_reason)
        return out
    out["value"] = x / n
    out["ci_wilson"] = [float(v) for v in wilson_ci(x, n, alpha)]
    out["ci_clopper_pearson"] = [float(v) for v in clopper_pearson_ci(x, n, alpha)]
    return out


def binary_summary(tp: int, fn: int, fp: int, tn: int, *, alpha: float = 0.05, chance: float = 0.5) -> dict:
    """Turing-test summary of a 2x2 table, positive class = synthetic.

    tp: synthetic called synthetic, fn: synthetic called real (fooled),
    fp: real called synthetic, tn: real called real.
    """
    return binary_summaries([(tp, fn, fp, tn)], alpha=alpha, chance=chance)[0]


def _intervals(x: np.ndarray, n: np.ndarray, alpha: float):
    """Wilson and Clopper–Pearson limits for arrays, NaN where n == 0."""
    safe = np.where(n > 0, n, 1)
    wl, wh = wilson_ci(x, safe, alpha)
    cl, ch = clopper_pearson_ci(x, safe, alpha)
    empty = n == 0
    return [np.where(empty, np.nan, v) for v in (wl, wh, cl, ch)]


def binary_summaries(counts, *, alpha: float = 0.05, chance: float = 0.5) -> list[dict]:
    """binary_summary() for many (tp, fn, fp, tn) rows; the intervals are computed at once."""
    c = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    tp, fn, fp, tn = c.T
    n_syn, n_real = tp + fn, fp + tn
    n = n_syn + n_real
    correct = tp + tn
    acc = _intervals(correct, n, alpha)
    # sensitivity, specificity and fool rate get both intervals, like accuracy
    props = {key: (x, m, _intervals(x, m, alpha), reason) for key, x, m, reason in (
        ("sensitivity", tp, n_syn, "no synthetic cases"),
        ("specificity", tn, n_real, "no real cases"),
        ("fool_rate", fn, n_syn, "no synthetic cases"),
    )}
    out = []
    for i in range(c.shape[0]):
        row = {"n": int(n[i]), "n_real": int(n_real[i]), "n_synthetic": int(n_syn[i]),
               "correct": int(correct[i]),
               "confusion": {"real": {"real": int(tn[i]), "synthetic": int(fp[i])},
                             "synthetic": {"real": int(fn[i]), "synthetic": int(tp[i])}}}
        if n[i] > 0:
            row["accuracy"] = float(correct[i] / n[i])
            row["ci_wilson"] = [float(acc[0][i]), float(acc[1][i])]
            row["ci_clopper_pearson"] = [float(acc[2][i]), float(acc[3][i])]
            row["p_binomial"] = binomial_p(correct[i], n[i], chance)
        else:
            for key in ("accuracy", "ci_wilson", "ci_clopper_pearson", "p_binomial"):
                set_value(row, key, None, "no responses")
        for key, (x, m, (wl, wh, cl, ch), reason) in props.items():
            if m[i] > 0:
                row[key] = float(x[i] / m[i])
                row[f"{key}_ci_wilson"] = [float(wl[i]), float(wh[i])]
                row[f"{key}_ci_clopper_pearson"] = [float(cl[i]), float(ch[i])]
            else:
                for k in (key, f"{key}_ci_wilson", f"{key}_ci_clopper_pearson"):
                    set_value(row, k, None, reason)
        out.append(row)
    return out


def clip_ci(out: dict, low: float, high: float, *, lo: float = 0.0, hi: float = 1.0,
            key: str = "ci") -> dict:
    """Store the interval [low, high] under `key`, clipped to the parameter's range
    [lo, hi] (an AUC or a proportion lies in [0, 1], an AUC difference in [-1, 1]). A
    symmetric t or normal interval can cross the bound with few readers; when it does, the
    clipped interval is stored and `<key>_note` says so and gives the unclipped one."""
    clipped = [max(lo, float(low)), min(hi, float(high))]
    out[key] = clipped
    if clipped != [float(low), float(high)]:
        out[f"{key}_note"] = (f"clipped to [{lo:g}, {hi:g}]: the symmetric interval "
                              f"{float(low):.3f} to {float(high):.3f} crossed the bound")
    return out


def null_fields(out: dict, keys, reason: str) -> dict:
    """Set each of `keys` to None with a sibling `<key>_reason` (the package convention for a
    statistic that cannot be computed)."""
    for key in keys:
        out[key], out[f"{key}_reason"] = None, reason
    return out


def readers_t_test(values, *, alpha: float = 0.05, measure: str = "accuracy") -> dict:
    """Two-sided one-sample t-test of per-reader `measure` (a proportion) against 0.5,
    readers as the sample: the random-readers test that generalises to new readers, unlike
    the pooled binomial test (`studies.stats.power.accuracy_power` plans for it). The t interval
    is clipped to [0, 1] (`clip_ci`), as it can pass 1 with few readers."""
    from scipy import stats

    x = np.asarray(list(values), dtype=float)
    out: dict = {"test": f"one-sample t-test of per-reader {measure} against 0.5",
                 "n_readers": int(x.size)}
    if x.size < 2:
        return null_fields(out, ("mean", "sd", "t", "df", "p", "ci"),
                           "only one reader" if x.size == 1 else "no readers")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    out.update(mean=mean, sd=sd, df=int(x.size - 1))
    if sd == 0:
        return null_fields(out, ("t", "p", "ci"), f"every reader has the same {measure}")
    res = stats.ttest_1samp(x, 0.5)
    half = float(stats.t.ppf(1 - alpha / 2, x.size - 1) * sd / np.sqrt(x.size))
    out.update(t=float(res.statistic), p=float(res.pvalue))
    return clip_ci(out, mean - half, mean + half)
