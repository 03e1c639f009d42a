"""Power and sample size: analytic approximations checked against direct simulation."""
import numpy as np
import pytest
from scipy import stats

from studies.stats import power


@pytest.mark.parametrize("readers,cases,acc,sd", [(5, 100, 0.6, 0.3), (10, 50, 0.58, 0.5), (20, 30, 0.55, 0.3)])
def test_accuracy_power_analytic_matches_simulation(readers, cases, acc, sd):
    analytic = power.accuracy_power(readers, cases, acc, reader_sd=sd)["power"]
    simulated = power.accuracy_power(readers, cases, acc, reader_sd=sd, method="simulation", n_sim=20000)["power"]
    assert analytic == pytest.approx(simulated, abs=0.02)


def test_reader_model_mean_is_the_expected_accuracy():
    m = power.reader_accuracy_model(0.62, 0.5)
    draws = stats.logistic.cdf(m["mu"] + 0.5 * np.random.default_rng(0).standard_normal(400000))
    assert draws.mean() == pytest.approx(0.62, abs=0.002)
    assert np.sqrt(m["var_between"]) == pytest.approx(draws.std(), rel=0.02)


def test_between_reader_variability_lowers_power_below_the_binomial():
    res = power.accuracy_power(6, 200, 0.6, reader_sd=0.4)
    assert res["power"] < res["power_pooled_binomial"]
    assert power.accuracy_power(6, 200, 0.6, reader_sd=0.0)["power"] > res["power"]


def test_no_effect_gives_alpha():
    assert power.accuracy_power(10, 100, 0.5 + 1e-9, reader_sd=0.3)["power"] == pytest.approx(0.05, abs=1e-3)
    assert power.auc_power(8, 100, 0.5)["power"] == pytest.approx(0.05, abs=1e-9)
    assert power.auc_power(8, 100, 0.7, auc2=0.7)["power"] == pytest.approx(0.05, abs=1e-9)


def test_accuracy_sample_size_is_minimal():
    res = power.accuracy_sample_size(0.6, power=0.8, cases=100)
    r = res["readers"]
    assert power.accuracy_power(r, 100, 0.6)["power"] >= 0.8 > power.accuracy_power(r - 1, 100, 0.6)["power"]
    res = power.accuracy_sample_size(0.6, power=0.8, readers=12)
    k = res["cases"]
    assert power.accuracy_power(12, k, 0.6)["power"] >= 0.8 > power.accuracy_power(12, k - 1, 0.6)["power"]


def test_unreachable_power_says_why():
    res = power.accuracy_sample_size(0.6, power=0.9, readers=3, reader_sd=0.5)
    assert res["cases"] is None and "between-reader variability" in res["cases_reason"]
    one = power.accuracy_power(1, 100, 0.6)
    assert one["power"] is None and "two readers" in one["power_reason"]


def _or_single_sim(J, K, auc, sd, n=8000, seed=1):
    res = power.auc_power(J, K, auc, reader_sd=sd)
    var, cov2 = res["variance_components"]["var"], res["variance_components"]["cov2"]
    rng = np.random.default_rng(seed)
    cov = np.full((J, J), cov2) + np.eye(J) * (var - cov2)
    theta = auc + sd * rng.standard_normal((n, J)) + rng.multivariate_normal(np.zeros(J), cov, size=n)
    ms_r = theta.var(axis=1, ddof=1)
    den = ms_r + J * cov2
    ddf = den ** 2 / (ms_r ** 2 / (J - 1))
    t = (theta.mean(axis=1) - 0.5) / np.sqrt(den / J)
    return res["power"], (np.abs(t) > stats.t.ppf(0.975, ddf)).mean()


def _or_two_sim(J, K, a1, a2, sd, n=8000, seed=2):
    res = power.auc_power(J, K, a1, auc2=a2, reader_sd=sd)
    vc = res["variance_components"]
    var, c1, c2, c3 = vc["var"], vc["cov1"], vc["cov2"], vc["cov3"]
    same_t = np.kron(np.eye(2), np.ones((J, J)))
    same_r = np.kron(np.ones((2, 2)), np.eye(J))
    cov = np.where(same_t * same_r > 0, var, np.where(same_r > 0, c1, np.where(same_t > 0, c2, c3)))
    rng = np.random.default_rng(seed)
    eps = rng.multivariate_normal(np.zeros(2 * J), cov, size=n).reshape(n, 2, J)
    theta = np.array([a1, a2])[None, :, None] + sd * rng.standard_normal((n, 2, J)) + eps
    tm, rm, g = theta.mean(2), theta.mean(1), theta.mean((1, 2))
    ms_t = J * ((tm - g[:, None]) ** 2).sum(1)
    ms_tr = ((theta - tm[:, :, None] - rm[:, None, :] + g[:, None, None]) ** 2).sum((1, 2)) / (J - 1)
    den = ms_tr + J * max(c2 - c3, 0)
    ddf = den ** 2 / (ms_tr ** 2 / (J - 1))
    return res["power"], (ms_t / den > stats.f.ppf(0.95, 1, ddf)).mean()


@pytest.mark.parametrize("args", [(5, 100, 0.6, 0.05), (10, 60, 0.58, 0.03)])
def test_auc_power_matches_or_model_simulation(args):
    analytic, simulated = _or_single_sim(*args)
    assert analytic == pytest.approx(simulated, abs=0.03)


@pytest.mark.parametrize("args", [(5, 100, 0.7, 0.78, 0.03), (6, 80, 0.65, 0.75, 0.05)])
def test_auc_difference_power_matches_or_model_simulation(args):
    analytic, simulated = _or_two_sim(*args)
    assert analytic == pytest.approx(simulated, abs=0.03)


def test_hanley_mcneil_at_chance():
    m, n = 40, 60
    assert power.hanley_mcneil_var(0.5, m, n) == pytest.approx((0.25 + (m - 1) / 12 + (n - 1) / 12) / (m * n))


def test_auc_sample_size_and_pilot():
    res = power.auc_sample_size(0.6, power=0.8, cases=100)
    j = res["readers"]
    assert power.auc_power(j, 100, 0.6)["power"] >= 0.8 > power.auc_power(j - 1, 100, 0.6)["power"]
    pilot = {"var": 0.002, "cov1": None, "cov2": 0.001, "cov3": None, "n_cases": 100, "reader_var": 0.0004}
    a = power.auc_power(5, 100, 0.6, pilot=pilot)
    b = power.auc_power(5, 200, 0.6, pilot=pilot)
    assert a["variance_components"]["var"] == pytest.approx(0.002)
    assert b["variance_components"]["var"] == pytest.approx(0.001)  # scaled by K_pilot / K
    assert b["power"] > a["power"] and a["reader_sd"] == pytest.approx(0.02)


def test_components_from_mrmc_moment_estimates():
    mrmc = {"n_cases": 120, "variance_components": {"var": 0.003, "cov2": 0.001, "ms_r": 0.0025},
            "comparison": {"variance_components": {"var": 0.003, "cov1": 0.0015, "cov2": 0.001,
                                                   "cov3": 0.0008, "ms_tr": 0.0012}}}
    single = power.components_from_mrmc(mrmc)
    assert single["reader_var"] == pytest.approx(0.0025 - 0.002)
    comp = power.components_from_mrmc(mrmc, "comparison")
    assert comp["reader_var"] == pytest.approx(max(0.0012 - (0.003 - 0.0015 - 0.001 + 0.0008), 0))
    with pytest.raises(ValueError):
        power.components_from_mrmc({"n_cases": 10, "variance_components": {}})
