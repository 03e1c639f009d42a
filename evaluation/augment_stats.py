"""The augmentation experiment's metrics and statistics: test metrics per arm (plain and
cluster-bootstrap weighted), Holm's correction, intervals and paired comparisons between arms.
Pure functions of arrays."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


def nanmean(x, axis=None):
    """np.nanmean without the warning for all-missing slices (AUROC of a one-class test set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


# --- metrics ---------------------------------------------------------------------------------

def test_metrics(y_true: np.ndarray, probabilities: np.ndarray, n_classes: int) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    predicted = probabilities.argmax(axis=1)
    present = np.unique(y_true)
    if len(present) < 2:
        auroc = float("nan")
    elif n_classes == 2:
        auroc = roc_auc_score(y_true, probabilities[:, 1])
    else:
        # one-vs-rest, macro over the classes present in the test set
        probs = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        auroc = roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=present) \
            if len(present) > 2 else roc_auc_score(y_true == present[1], probs[:, 1])
    return {"accuracy": float(accuracy_score(y_true, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, predicted)),
            "auroc": float(auroc)}


def _weighted_auc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties count one half) of every row of ``weights`` (B x n): the AUC of the data
    set in which image i appears weights[b, i] times."""
    values, inverse = np.unique(score, return_inverse=True)
    onehot = np.zeros((len(score), len(values)))
    onehot[np.arange(len(score)), inverse] = 1.0
    neg = (weights * ~positive) @ onehot                     # B x distinct scores
    below = np.cumsum(neg, axis=1) - neg
    credit = below[:, inverse] + 0.5 * neg[:, inverse]       # B x n
    num = (weights * positive * credit).sum(axis=1)
    den = (weights * positive).sum(axis=1) * (weights * ~positive).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_metrics(y_true: np.ndarray, probabilities: np.ndarray, n_classes: int,
                     weights: np.ndarray) -> dict[str, np.ndarray]:
    """``test_metrics`` for every row of ``weights`` (B x n; integer counts of a bootstrap resample) at
    once. Equal to ``test_metrics`` on the resampled set whenever it keeps the original's classes."""
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    correct = (probabilities.argmax(axis=1) == y_true).astype(float)
    total = weights.sum(axis=1)
    present = np.unique(y_true)
    accuracy = weights @ correct / total
    with np.errstate(invalid="ignore", divide="ignore"):  # a class absent from a replicate: no recall
        recalls = [weights[:, y_true == c] @ correct[y_true == c] / weights[:, y_true == c].sum(axis=1)
                   for c in present]
    balanced = nanmean(np.vstack(recalls), axis=0)
    if len(present) < 2:
        auroc = np.full(len(weights), np.nan)
    elif n_classes == 2:
        auroc = _weighted_auc(probabilities[:, 1], y_true == 1, weights)
    else:
        probs = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        if len(present) == 2:
            auroc = _weighted_auc(probs[:, 1], y_true == present[1], weights)
        else:
            auroc = nanmean(np.vstack([_weighted_auc(probs[:, j], y_true == c, weights)
                                        for j, c in enumerate(present)]), axis=0)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "auroc": auroc}


# --- statistics --------------------------------------------------------------------------------

def cluster_bootstrap_weights(groups: np.ndarray, labels: np.ndarray, replicates: int,
                              rng: np.random.Generator) -> np.ndarray:
    """B x n counts: each replicate draws the test set's clusters with replacement (within each label
    when every cluster has one label, so every class stays present), and an image counts as often
    as its cluster was drawn."""
    keys = sorted(set(groups.tolist()), key=str)
    index = {g: k for k, g in enumerate(keys)}
    cluster_of = np.array([index[g] for g in groups.tolist()])
    cluster_labels: list[set] = [set() for _ in keys]
    for k, label in zip(cluster_of.tolist(), labels.tolist()):
        cluster_labels[k].add(label)
    if all(len(s) == 1 for s in cluster_labels):
        strata = np.array([next(iter(s)) for s in cluster_labels])
    else:
        strata = np.zeros(len(keys), dtype=int)
    counts = np.zeros((replicates, len(keys)))
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)), size=replicates)
    return counts[:, cluster_of]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels' multipletests); missing p-values stay missing."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(p_values) if p is not None and np.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    if idx:
        adjusted = multipletests([p_values[i] for i in idx], alpha=0.05, method="holm")[1]
        for i, p in zip(idx, adjusted):
            out[i] = float(p)
    return out


def bootstrap_p(draws: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value for 'the difference is zero': twice the smaller tail share of the
    replicates at or beyond zero, with the +1 correction that keeps it above zero (Davison &
    Hinkley 1997, ch. 4); None when no replicate is defined."""
    d = draws[np.isfinite(draws)]
    if len(d) == 0:
        return None
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    return float(min(1.0, 2.0 * (tail + 1) / (len(d) + 1)))


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval across repeats (scipy's one-sample t CI); training spread only."""
    from scipy import stats

    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(x) < 2 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean()), float(x.mean())
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    return float(x.mean()), float(ci.low), float(ci.high)


def paired_comparison(arm: Sequence[float], baseline: Sequence[float]) -> dict:
    """Paired t-test over matched repeats (training spread only; ``summarise`` also resamples the
    test set): mean difference (arm - baseline), its 95 % CI, p-value; no CI below two pairs."""
    from scipy import stats

    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    diff = a - b
    if len(diff) < 2:
        d = float(diff.mean()) if len(diff) else float("nan")
        return {"difference": d, "ci_low": None, "ci_high": None, "p_value": None, "pairs": int(len(diff))}
    if np.all(diff == diff[0]):
        d = float(diff.mean())
        return {"difference": d, "ci_low": d, "ci_high": d, "p_value": None, "pairs": int(len(diff))}
    test = stats.ttest_rel(a, b)
    ci = test.confidence_interval(0.95)
    return {"difference": float(diff.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "p_value": float(test.pvalue), "pairs": int(len(diff))}
