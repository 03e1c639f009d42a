"""Empirical ROC: Wilcoxon AUC through placement values, DeLong CI, curve points.

Placement values (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837; Hanley &
Hajian-Tilaki 1997): for a positive case i, V10_i is the fraction of negatives it
out-scores (ties count 1/2); for a negative j, V01_j is the fraction of positives that
out-score it. AUC = mean(V10) = mean(V01). They give the DeLong variance and, in
`studies.stats.mrmc`, every jackknife AUC in O(1). Computed with sorted search, O(n log n).

Scores are oriented so that higher = more likely positive (synthetic for the Turing task).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm


def placements(neg, pos) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUC, V10 per positive, V01 per negative); needs at least one of each."""
    neg = np.asarray(neg, dtype=float)
    pos = np.asarray(pos, dtype=float)
    neg_sorted = np.sort(neg)
    pos_sorted = np.sort(pos)
    # positives: (#neg below + half #neg tied) / n_neg
    below = np.searchsorted(neg_sorted, pos, side="left")
    tied = np.searchsorted(neg_sorted, pos, side="right") - below
    v10 = (below + 0.5 * tied) / neg.size
    # negatives: (#pos above + half #pos tied) / n_pos
    above = pos.size - np.searchsorted(pos_sorted, neg, side="right")
    tied = np.searchsorted(pos_sorted, neg, side="right") - np.searchsorted(pos_sorted, neg, side="left")
    v01 = (above + 0.5 * tied) / pos.size
    return float(v10.mean()), v10, v01


def placements_batch(neg, pos) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """placements() for R readers at once: neg (R, n), pos (R, m) → AUC (R,), V10 (R, m), V01 (R, n).

    Scores are replaced by their dense ranks over the whole array and each reader's ranks
    shifted into a disjoint integer range, so one sorted search serves every reader (exact:
    no floating-point offsets).
    """
    neg = np.asarray(neg, dtype=float)
    pos = np.asarray(pos, dtype=float)
    R, n = neg.shape
    m = pos.shape[1]
    _, inv = np.unique(np.concatenate([neg.ravel(), pos.ravel()]), return_inverse=True)
    shift = (np.arange(R, dtype=np.int64) * (int(inv.max()) + 2))[:, None]
    rn = inv[: R * n].reshape(R, n) + shift
    rp = inv[R * n:].reshape(R, m) + shift
    sn = np.sort(rn, axis=1).ravel()
    sp = np.sort(rp, axis=1).ravel()
    base_n = (np.arange(R) * n)[:, None]
    base_m = (np.arange(R) * m)[:, None]
    below = np.searchsorted(sn, rp.ravel(), side="left").reshape(R, m) - base_n
    upto = np.searchsorted(sn, rp.ravel(), side="right").reshape(R, m) - base_n
    v10 = (below + 0.5 * (upto - below)) / n
    lo = np.searchsorted(sp, rn.ravel(), side="left").reshape(R, n) - base_m
    hi = np.searchsorted(sp, rn.ravel(), side="right").reshape(R, n) - base_m
    v01 = ((m - hi) + 0.5 * (hi - lo)) / m
    return v10.mean(axis=1), v10, v01


def auc(neg, pos) -> float:
    """Empirical (Wilcoxon–Mann–Whitney) AUC."""
    return placements(neg, pos)[0]


def delong(neg, pos, *, alpha: float = 0.05) -> dict:
    """AUC with DeLong standard error and CI (AUC ± z·SE clipped to [0, 1], as pROC).

    Returns {auc, auc_se, auc_ci, n_pos, n_neg}; undefined entries are None with a
    sibling `<key>_reason`.
    """
    neg = np.asarray(neg, dtype=float)
    pos = np.asarray(pos, dtype=float)
    out: dict = {"n_pos": int(pos.size), "n_neg": int(neg.size)}
    if pos.size == 0 or neg.size == 0:
        reason = "no synthetic (positive) cases" if pos.size == 0 else "no real (negative) cases"
        for key in ("auc", "auc_se", "auc_ci"):
            out[key], out[f"{key}_reason"] = None, reason
        return out
    a, v10, v01 = placements(neg, pos)
    out["auc"] = a
    if pos.size < 2 or neg.size < 2:
        reason = "DeLong variance needs at least two cases of each class"
        out["auc_se"], out["auc_se_reason"] = None, reason
        out["auc_ci"], out["auc_ci_reason"] = None, reason
        return out
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    if var <= 0:
        reason = ("DeLong variance is zero: "
                  + ("perfect separation" if a in (0.0, 1.0) else "every case got the same rating"))
        out["auc_se"], out["auc_se_reason"] = None, reason
        out["auc_ci"], out["auc_ci_reason"] = None, reason
        return out
    se = float(np.sqrt(var))
    z = norm.ppf(1 - alpha / 2)
    out["auc_se"] = se
    out["auc_ci"] = [max(0.0, a - z * se), min(1.0, a + z * se)]
    return out


def roc_points(truth, score) -> dict:
    """Empirical ROC operating points, one per distinct score (rating ≥ threshold = positive).

    fpr/tpr start at the origin (0, 0); thresholds[i] gives point i + 1. Returns None
    values with reasons when a class is missing.
    """
    truth = np.asarray(truth, dtype=bool)
    score = np.asarray(score, dtype=float)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        reason = "no synthetic (positive) cases" if n_pos == 0 else "no real (negative) cases"
        return {"fpr": None, "fpr_reason": reason, "tpr": None, "tpr_reason": reason,
                "thresholds": None, "thresholds_reason": reason}
    levels, inverse = np.unique(score, return_inverse=True)
    pos_at = np.bincount(inverse, weights=truth, minlength=levels.size)[::-1]
    neg_at = np.bincount(inverse, weights=~truth, minlength=levels.size)[::-1]
    tpr = np.concatenate([[0.0], np.cumsum(pos_at) / n_pos])
    fpr = np.concatenate([[0.0], np.cumsum(neg_at) / n_neg])
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": levels[::-1].tolist()}
