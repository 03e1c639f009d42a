"""Empirical AUC via placement values, DeLong CI and ROC points."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from studies.stats.roc import auc, delong, placements, placements_batch, roc_points
from analysis_fixtures import null_without_reason, oracle_csv


def _data(seed=0, m=40, n=55):
    rng = np.random.default_rng(seed)
    pos = rng.integers(1, 7, m).astype(float) + (rng.random(m) < 0.5)
    neg = rng.integers(1, 6, n).astype(float)
    return neg, pos


def test_auc_matches_sklearn_with_ties():
    for seed in range(5):
        neg, pos = _data(seed)
        y = np.r_[np.zeros(neg.size), np.ones(pos.size)]
        assert auc(neg, pos) == pytest.approx(roc_auc_score(y, np.r_[neg, pos]), abs=1e-12)


def test_placements_match_the_pairwise_kernel():
    neg, pos = _data(3)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    a, v10, v01 = placements(neg, pos)
    assert np.allclose(v10, psi.mean(axis=1)) and np.allclose(v01, psi.mean(axis=0))
    assert a == pytest.approx(psi.mean())


def test_delong_variance_from_structural_components():
    neg, pos = _data(7)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    var = psi.mean(1).var(ddof=1) / pos.size + psi.mean(0).var(ddof=1) / neg.size
    d = delong(neg, pos)
    assert d["auc_se"] == pytest.approx(np.sqrt(var))
    assert d["auc_ci"] == pytest.approx([d["auc"] - 1.959963985 * d["auc_se"], d["auc"] + 1.959963985 * d["auc_se"]])


def test_van_dyke_reader_aucs():
    df = oracle_csv("van_dyke_long.csv")
    published = {0: [0.9196, 0.8588, 0.9039, 0.9731, 0.8298], 1: [0.9478, 0.9053, 0.9217, 0.9994, 0.9300]}
    for (mod, reader), g in df.groupby(["modality", "reader"]):
        a = auc(g.loc[g.truth == 0, "rating"], g.loc[g.truth == 1, "rating"])
        assert round(a, 4) == published[mod][reader]


def test_roc_points_match_sklearn():
    neg, pos = _data(1)
    y = np.r_[np.zeros(neg.size), np.ones(pos.size)]
    s = np.r_[neg, pos]
    pts = roc_points(y, s)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(pts["fpr"], fpr) and np.allclose(pts["tpr"], tpr)
    assert np.allclose(pts["thresholds"], thr[1:])
    assert pts["fpr"][-1] == 1.0 and pts["tpr"][-1] == 1.0


def test_degenerate_cases_have_reasons():
    same = delong(np.full(5, 3.0), np.full(6, 3.0))
    assert same["auc"] == 0.5 and same["auc_ci"] is None and "same rating" in same["auc_ci_reason"]
    perfect = delong(np.array([1.0, 2.0]), np.array([5.0, 6.0]))
    assert perfect["auc"] == 1.0 and "perfect separation" in perfect["auc_ci_reason"]
    one_class = delong(np.array([]), np.array([1.0, 2.0]))
    assert one_class["auc"] is None and "negative" in one_class["auc_reason"]
    pts = roc_points(np.array([True, True]), np.array([1.0, 2.0]))
    for d in (same, perfect, one_class, pts):
        assert null_without_reason(d) == []


def test_batched_placements_equal_per_reader():
    rng = np.random.default_rng(5)
    neg = rng.integers(1, 7, (6, 30)).astype(float)
    pos = rng.normal(3, 2, (6, 25)).round(1)
    a, v10, v01 = placements_batch(neg, pos)
    for r in range(6):
        ar, v10r, v01r = placements(neg[r], pos[r])
        assert a[r] == pytest.approx(ar) and np.allclose(v10[r], v10r) and np.allclose(v01[r], v01r)
