"""Obuchowski–Rockette MRMC against RJafroc's published Van Dyke results, and the fast jackknife."""
import numpy as np
import pytest

from studies.stats import mrmc
from analysis_fixtures import null_without_reason, oracle_csv


@pytest.fixture(scope="module")
def van_dyke():
    df = oracle_csv("van_dyke_long.csv")
    wide = df.pivot_table(index=["modality", "reader"], columns="case", values="rating")
    T, R = df.modality.nunique(), df.reader.nunique()
    scores = wide.to_numpy().reshape(T, R, -1)
    truth = df.drop_duplicates("case").set_index("case").loc[wide.columns, "truth"].to_numpy() == 1
    return scores, truth


@pytest.fixture(scope="module")
def vd_result(van_dyke):
    scores, truth = van_dyke
    return mrmc.mrmc_auc(scores, truth, treatments=["0", "1"], readers=range(5))


def test_van_dyke_reader_aucs_and_means(vd_result):
    published = {"0": [0.9196, 0.8588, 0.9039, 0.9731, 0.8298], "1": [0.9478, 0.9053, 0.9217, 0.9994, 0.9300]}
    for t, values in published.items():
        assert [round(v, 4) for v in vd_result["auc_per_reader"][t].values()] == values
    comp = vd_result["comparison"]
    assert round(comp["auc_per_treatment"]["0"], 4) == 0.8970
    assert round(comp["auc_per_treatment"]["1"], 4) == 0.9408
    assert round(comp["random_readers"]["differences"]["0 - 1"]["difference"], 4) == -0.0438


def test_van_dyke_variance_components(vd_result):
    vc = vd_result["comparison"]["variance_components"]
    assert f"{vc['ms_t']:.5g}" == "0.0047962"
    assert f"{vc['ms_tr']:.5g}" == "0.00055103"
    assert f"{vc['cov1']:.4e}" == "3.4661e-04"
    assert f"{vc['cov2']:.4e}" == "3.4407e-04"
    assert f"{vc['cov3']:.4e}" == "2.3903e-04"
    assert f"{vc['var']:.4e}" == "8.0229e-04"


def test_van_dyke_random_readers_random_cases(vd_result):
    rr = vd_result["comparison"]["random_readers"]
    assert round(rr["f"], 3) == 4.456
    assert round(rr["ddf"], 2) == 15.26
    assert round(rr["p"], 5) == 0.05167
    d = rr["differences"]["0 - 1"]
    assert round(d["ci"][0], 5) == -0.08796
    assert round(d["ci"][1], 6) == 0.000359
    assert d["p"] == pytest.approx(rr["p"]) and d["f"] == pytest.approx(rr["f"])


def test_van_dyke_fixed_readers_random_cases(vd_result):
    fr = vd_result["comparison"]["fixed_readers"]
    assert round(fr["chi2"], 3) == 5.476
    assert round(fr["p"], 5) == 0.01928
    d = vd_result["comparison"]["random_readers"]["differences"]["0 - 1"]["fixed_readers"]
    assert round(d["ci"][0], 5) == -0.08049
    assert round(d["ci"][1], 6) == -0.007115


def _split_plot(seed=0, R=3, n_real=9, per_gen=(6, 7)):
    """Scores (T, R, K) of a Turing design: real cases shared, each generator's images its own."""
    rng = np.random.default_rng(seed)
    K = n_real + sum(per_gen)
    truth = np.r_[np.zeros(n_real, bool), np.ones(sum(per_gen), bool)]
    ratings = rng.integers(1, 7, (R, K)).astype(float) + truth * rng.integers(0, 2, (R, K))
    member = np.zeros((len(per_gen), K), bool)
    member[:, :n_real] = True
    start = n_real
    for t, n in enumerate(per_gen):
        member[t, start:start + n] = True
        start += n
    return np.broadcast_to(ratings, (len(per_gen), R, K)).copy(), truth, member


def test_placement_jackknife_equals_naive_jackknife_fully_crossed(van_dyke):
    scores, truth = van_dyke
    sub = np.r_[np.flatnonzero(~truth)[:12], np.flatnonzero(truth)[:10]]
    fast = mrmc.jackknife_auc(scores[:, :3, sub], truth[sub])
    slow = mrmc.jackknife_auc_naive(scores[:, :3, sub], truth[sub])
    assert np.allclose(fast[0], slow[0], atol=1e-14) and np.allclose(fast[1], slow[1], atol=1e-14)


def test_placement_jackknife_equals_naive_jackknife_split_plot():
    scores, truth, member = _split_plot()
    fast_theta, fast_jk = mrmc.jackknife_auc(scores, truth, member)
    slow_theta, slow_jk = mrmc.jackknife_auc_naive(scores, truth, member)
    assert np.allclose(fast_theta, slow_theta) and np.allclose(fast_jk, slow_jk, atol=1e-14)
    # a generator's image leaves the other treatment's AUC unchanged
    assert np.allclose(fast_jk[0][:, ~member[0]], fast_theta[0][:, None])


def test_split_plot_covariance_comes_from_shared_negatives_only():
    scores, truth, member = _split_plot(seed=4)
    theta, jk = mrmc.jackknife_auc(scores, truth, member)
    K = truth.size
    cov = mrmc.jackknife_covariance(jk).reshape(2, 3, 2, 3)
    d = jk - jk.mean(axis=2, keepdims=True)
    negatives_only = (d[0, 0, ~truth] * d[1, 0, ~truth]).sum() * (K - 1) / K
    assert cov[0, 0, 1, 0] == pytest.approx(negatives_only)


def test_null_hypothesis_type_one_error_is_near_alpha():
    """Ratings independent of truth: the pooled random-readers test rejects about 5% of the time."""
    rng = np.random.default_rng(11)
    rejections, runs = 0, 300
    for _ in range(runs):
        truth = np.r_[np.zeros(30, bool), np.ones(30, bool)]
        case = rng.normal(0, 1, 60)
        scores = np.digitize(case + rng.normal(0, 1, (5, 60)), [-1, -0.3, 0, 0.3, 1]).astype(float)
        res = mrmc.mrmc_auc(scores, truth)
        rejections += res["single"]["0"]["random_readers"]["p"] < 0.05
    assert 0.01 <= rejections / runs <= 0.10


def test_one_reader_has_fixed_but_no_random_reader_analysis():
    scores, truth, member = _split_plot(R=1)
    res = mrmc.mrmc_auc(scores, truth, member, treatments=["a", "b"])
    single = res["single"]["a"]
    assert single["random_readers"]["p"] is None
    assert "one reader" in single["random_readers"]["p_reason"]
    assert single["fixed_readers"]["p"] is not None
    comp = res["comparison"]
    assert comp["random_readers"]["f"] is None and comp["fixed_readers"]["chi2"] is not None
    assert null_without_reason(res) == []


def test_perfect_readers_have_no_variance_and_say_so():
    truth = np.r_[np.zeros(5, bool), np.ones(5, bool)]
    scores = np.tile(np.where(truth, 6.0, 1.0), (3, 1))
    res = mrmc.mrmc_auc(scores, truth)
    single = res["single"]["0"]
    assert single["auc"] == 1.0
    assert single["random_readers"]["p"] is None and "no variance" in single["random_readers"]["p_reason"]
    assert null_without_reason(res) == []


def test_rejects_incomplete_block():
    truth = np.r_[np.zeros(3, bool), np.ones(3, bool)]
    scores = np.ones((2, 6))
    scores[0, 0] = np.nan
    with pytest.raises(ValueError, match="fully crossed"):
        mrmc.mrmc_auc(scores, truth)


def test_per_treatment_results_equal_separate_single_treatment_runs():
    scores, truth, member = _split_plot(seed=8, R=4, n_real=12, per_gen=(8, 10))
    joint = mrmc.mrmc_auc(scores, truth, member, treatments=["a", "b"])
    for i, name in enumerate(["a", "b"]):
        keep = member[i]
        alone = mrmc.mrmc_auc(scores[i][:, keep], truth[keep], treatments=[name])["single"][name]
        both = joint["single"][name]
        assert both["auc"] == pytest.approx(alone["auc"])
        for key in ("var", "cov2"):
            assert both["variance_components"][key] == pytest.approx(alone["variance_components"][key])
        for key in ("se", "ddf", "p"):
            assert both["random_readers"][key] == pytest.approx(alone["random_readers"][key])
        assert both["fixed_readers"]["p"] == pytest.approx(alone["fixed_readers"]["p"])
