"""Likert summaries and the Mann–Whitney comparison."""
import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from studies.stats import likert
from analysis_fixtures import null_without_reason


def test_summary_values():
    s = likert.summarise([1, 2, 2, 3, 5, 5])
    assert s["n"] == 6
    assert s["mean"] == pytest.approx(3.0)
    assert s["sd"] == pytest.approx(np.std([1, 2, 2, 3, 5, 5], ddof=1))
    assert s["median"] == 2.5
    assert s["distribution"] == {"1": 1, "2": 2, "3": 1, "4": 0, "5": 2}
    assert s["proportions"]["2"] == pytest.approx(2 / 6)


def test_summary_empty_and_single():
    empty = likert.summarise([])
    assert empty["n"] == 0 and empty["mean"] is None and empty["distribution"]["3"] == 0
    single = likert.summarise([4])
    assert single["mean"] == 4 and single["sd"] is None and "two" in single["sd_reason"]
    assert null_without_reason(empty) == [] and null_without_reason(single) == []


def test_summarise_by_matches_per_group_and_keeps_empty_levels():
    df = pd.DataFrame({"g": ["a", "a", "b", "b", "b"], "rating": [1, 3, 4, 5, 5]})
    out = likert.summarise_by(df, "g", ["a", "b", "c"])
    for level in ("a", "b"):
        ref = likert.summarise(df.loc[df.g == level, "rating"])
        for key in ("n", "mean", "sd", "median", "q1", "q3"):
            assert out[level][key] == pytest.approx(ref[key])
        assert out[level]["distribution"] == ref["distribution"]
    assert out["c"]["n"] == 0 and out["c"]["mean"] is None
    assert null_without_reason(out) == []


def test_mann_whitney_matches_scipy():
    rng = np.random.default_rng(0)
    syn, real = rng.integers(1, 6, 40), rng.integers(2, 6, 50)
    res = likert.mann_whitney(syn, real)
    ref = mannwhitneyu(syn, real, alternative="two-sided")
    assert res["u"] == ref.statistic and res["p"] == pytest.approx(ref.pvalue)
    psi = (syn[:, None] > real[None, :]) + 0.5 * (syn[:, None] == real[None, :])
    assert res["prob_superiority"] == pytest.approx(psi.mean())
    assert res["rank_biserial"] == pytest.approx(2 * psi.mean() - 1)
    assert "independent" in res["assumptions"] and "Mann–Whitney" in res["test"]


def test_mann_whitney_degenerate():
    same = likert.mann_whitney([3, 3], [3, 3, 3])
    assert same["p"] is None and same["prob_superiority"] == 0.5
    no_real = likert.mann_whitney([1, 2], [])
    assert no_real["u"] is None and "real" in no_real["u_reason"]
    assert null_without_reason(same) == [] and null_without_reason(no_real) == []


def test_count_based_statistics_equal_numpy():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"g": rng.choice(list("abcd"), 500), "rating": rng.choice([1, 2, 2.5, 3, 4, 5], 500)})
    out = likert.summarise_by(df, "g")
    for level, grp in df.groupby("g"):
        x = grp.rating.to_numpy()
        got = out[level]
        assert got["mean"] == pytest.approx(x.mean()) and got["sd"] == pytest.approx(x.std(ddof=1))
        assert got["median"] == pytest.approx(np.median(x))
        assert got["q1"] == pytest.approx(np.quantile(x, 0.25)) and got["q3"] == pytest.approx(np.quantile(x, 0.75))
        assert got["distribution"]["2.5"] == int((x == 2.5).sum())
