"""Binomial proportions against Newcombe (1998) Table I and exact binomial p-values."""
import numpy as np
import pytest
from scipy.stats import binomtest

from studies.stats.proportions import (binary_summaries, binary_summary, binomial_p, clopper_pearson_ci,
                                 proportion, wilson_ci)
from analysis_fixtures import null_without_reason

# Newcombe RG (1998) Stat Med 17:857, Table I: x, n, Wilson 95%, Clopper–Pearson 95%
NEWCOMBE = [
    (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
    (0, 20, (0.0000, 0.1611), (0.0000, 0.1684)),
    (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
]


@pytest.mark.parametrize("x,n,wilson,cp", NEWCOMBE)
def test_newcombe_table_1(x, n, wilson, cp):
    assert np.round(wilson_ci(x, n), 4).tolist() == pytest.approx(list(wilson), abs=1e-12)
    assert np.round(clopper_pearson_ci(x, n), 4).tolist() == pytest.approx(list(cp), abs=1e-12)


def test_intervals_vectorised_match_scalar():
    x = np.array([r[0] for r in NEWCOMBE])
    n = np.array([r[1] for r in NEWCOMBE])
    lo, hi = wilson_ci(x, n)
    for i, (xi, ni, w, _) in enumerate(NEWCOMBE):
        assert (round(lo[i], 4), round(hi[i], 4)) == w


def test_exact_binomial_p_values():
    assert round(binomial_p(60, 100), 6) == 0.056888
    assert round(binomial_p(0, 10), 6) == 0.001953


def test_binary_summary_counts_and_rates():
    s = binary_summary(tp=30, fn=10, fp=15, tn=45)
    assert s["n"] == 100 and s["correct"] == 75
    assert s["accuracy"] == 0.75
    assert s["sensitivity"] == 0.75 and s["fool_rate"] == 0.25
    assert s["specificity"] == 0.75
    assert s["confusion"] == {"real": {"real": 45, "synthetic": 15}, "synthetic": {"real": 10, "synthetic": 30}}
    assert s["ci_wilson"] == pytest.approx(list(wilson_ci(75, 100)))
    assert s["ci_clopper_pearson"] == pytest.approx(list(clopper_pearson_ci(75, 100)))
    assert s["p_binomial"] == pytest.approx(binomial_p(75, 100))


def test_binary_summary_empty_and_one_class_give_reasons():
    empty = binary_summary(0, 0, 0, 0)
    assert empty["accuracy"] is None and empty["p_binomial"] is None
    assert empty["accuracy_reason"] == "no responses"
    only_real = binary_summary(0, 0, 3, 7)
    assert only_real["specificity"] == 0.7
    assert only_real["sensitivity"] is None and "synthetic" in only_real["sensitivity_reason"]
    assert null_without_reason(empty) == [] and null_without_reason(only_real) == []


def test_all_correct_is_defined():
    s = binary_summary(tp=10, fn=0, fp=0, tn=10)
    assert s["accuracy"] == 1.0 and s["fool_rate"] == 0.0
    assert s["ci_wilson"][1] == pytest.approx(1.0) and s["ci_wilson"][0] < 1
    assert s["p_binomial"] == pytest.approx(2 * 0.5 ** 20)


def test_batch_equals_single():
    rows = [(3, 4, 5, 6), (0, 0, 0, 0), (10, 0, 0, 10)]
    assert binary_summaries(rows) == [binary_summary(*r) for r in rows]


def test_proportion_empty():
    p = proportion(0, 0, empty_reason="nothing")
    assert p["value"] is None and p["value_reason"] == "nothing"


def _exact(x, n):
    ci = binomtest(int(x), int(n)).proportion_ci(confidence_level=0.95, method="exact")
    return [ci.low, ci.high]


@pytest.mark.parametrize("tp,fn,fp,tn", [(30, 10, 15, 45), (7, 0, 2, 1), (0, 5, 9, 0), (1, 28, 81, 182)])
def test_every_rate_has_both_intervals_against_scipy_exact(tp, fn, fp, tn):
    """Sensitivity, specificity and fool rate carry Clopper–Pearson limits, equal to scipy's exact CI."""
    s = binary_summary(tp, fn, fp, tn)
    for key, x, n in (("sensitivity", tp, tp + fn), ("specificity", tn, fp + tn), ("fool_rate", fn, tp + fn)):
        assert s[f"{key}_ci_clopper_pearson"] == pytest.approx(_exact(x, n), abs=1e-9), key
        assert s[f"{key}_ci_wilson"] == pytest.approx(list(wilson_ci(x, n)), abs=1e-12), key
        lo, hi = s[f"{key}_ci_clopper_pearson"]
        assert lo <= s[key] <= hi
    assert s["ci_clopper_pearson"] == pytest.approx(_exact(tp + tn, tp + fn + fp + tn), abs=1e-9)


def test_rate_intervals_differ_by_method_and_by_rate():
    """Guards against copying one interval into the other key (or across rates)."""
    s = binary_summary(tp=1, fn=28, fp=81, tn=182)  # sensitivity 1/29, specificity 182/263
    assert s["fool_rate_ci_clopper_pearson"] != s["fool_rate_ci_wilson"]
    assert s["sensitivity_ci_clopper_pearson"] != s["fool_rate_ci_clopper_pearson"]
    # Newcombe (1998) Table I, 1/29: Clopper–Pearson 0.0009–0.1776 (the sensitivity here)
    assert np.round(s["sensitivity_ci_clopper_pearson"], 4).tolist() == [0.0009, 0.1776]


def test_rate_intervals_null_with_reason_when_a_class_is_missing():
    only_real = binary_summary(0, 0, 3, 7)
    for key in ("sensitivity", "fool_rate"):
        for k in (f"{key}_ci_wilson", f"{key}_ci_clopper_pearson"):
            assert only_real[k] is None and "synthetic" in only_real[f"{k}_reason"]
    assert only_real["specificity_ci_clopper_pearson"] == pytest.approx(_exact(7, 10), abs=1e-9)
    only_syn = binary_summary(4, 2, 0, 0)
    assert only_syn["specificity_ci_clopper_pearson"] is None
    assert only_syn["specificity_ci_clopper_pearson_reason"] == "no real cases"
