"""Agreement statistics against the published oracle values (tests/data/oracles/README.md)."""
import numpy as np
import pytest
from statsmodels.stats.inter_rater import cohens_kappa

from studies.stats import agreement
from analysis_fixtures import null_without_reason, oracle_csv


def test_fleiss_wikipedia_counts():
    counts = oracle_csv("fleiss_wikipedia_counts.csv").drop(columns="subject").to_numpy()
    res = agreement.fleiss_kappa(counts)
    assert round(res["kappa"], 3) == 0.210
    assert round(res["kappa"], 7) == 0.2099307


def test_fleiss_1971_diagnoses_kappa_and_z():
    ratings = oracle_csv("fleiss1971_diagnoses_sorted.csv").drop(columns="patient").to_numpy()
    counts = agreement.category_counts(ratings - 1, 5)
    res = agreement.fleiss_kappa(counts)
    assert round(res["kappa"], 7) == 0.4302445
    assert round(res["z"], 5) == 17.65183
    assert res["n_subjects"] == 30 and res["n_raters"] == 6


SAS = np.array([[0, 4, 1], [0, 8, 0], [0, 1, 5]])


def test_cohen_sas_simple_kappa():
    res = agreement.cohen_kappa(SAS)
    assert round(res["kappa"], 4) == 0.4842
    assert round(res["ase"], 4) == 0.1380
    assert [round(v, 4) for v in res["ci"]] == [0.2137, 0.7547]
    assert round(res["z"], 4) == 3.2626
    assert round(res["p"], 4) == 0.0011


def test_cohen_sas_weighted_kappa():
    res = agreement.cohen_kappa(SAS, weights="linear")
    assert round(res["kappa"], 4) == 0.4701
    assert [round(v, 4) for v in res["ci"]] == [0.1845, 0.7558]


def test_cohen_2x2():
    assert round(agreement.cohen_kappa([[20, 5], [10, 15]])["kappa"], 2) == 0.40


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_vectorised_kappa_equals_statsmodels(weights):
    rng = np.random.default_rng(0)
    tables = rng.integers(0, 12, (25, 4, 4)).astype(float)
    tables[3] = np.diag([5, 0, 0, 3])  # perfect agreement
    entries = agreement.kappa_entries(tables, [{} for _ in tables], weights=weights)
    for t, e in zip(tables, entries):
        ref = cohens_kappa(t, wt=weights) if weights else cohens_kappa(t)
        assert e["kappa"] == pytest.approx(ref.kappa, abs=1e-12)
        assert e["ase"] == pytest.approx(ref.std_kappa, abs=1e-12)
        assert e["ase0"] == pytest.approx(ref.std_kappa0, abs=1e-12)
        assert e["z"] == pytest.approx(ref.z_value, rel=1e-10)
        assert e["p"] == pytest.approx(ref.pvalue_two_sided, rel=1e-8, abs=1e-300)


def test_pair_tables_are_crosstabs_on_shared_cases():
    codes = np.array([[0, 1, 1, -1, 0, 1],
                      [0, 1, 0, 1, -1, 1],
                      [1, 1, 1, 1, 1, 1]])
    t = agreement.pair_tables(codes, 2)
    assert t[0, 1].tolist() == [[1, 0], [1, 2]]
    assert t[0, 1].sum() == 4  # cases 3 and 4 are missing for one of the two
    res = agreement.pairwise_cohen_kappa(codes, 2, ["a", "b", "c"])
    pair = {(p["reader_a"], p["reader_b"]): p for p in res["pairs"]}
    assert pair[("a", "b")]["kappa"] == pytest.approx(cohens_kappa(t[0, 1]).kappa)
    # reader c answers 'synthetic' to everything: κ with anyone is exactly 0 (observed = chance)
    assert pair[("a", "c")]["kappa"] == pytest.approx(0.0)
    assert null_without_reason(res) == []


def test_kappa_undefined_when_both_use_one_category():
    codes = np.array([[1, 1, 1], [1, 1, 1]])
    res = agreement.pairwise_cohen_kappa(codes, 2, ["a", "b"])
    assert res["pairs"][0]["kappa"] is None and "single" in res["pairs"][0]["kappa_reason"]
    assert res["mean_kappa"] is None
    assert null_without_reason(res) == []
    assert agreement.cohen_kappa([[0, 0], [0, 4]])["kappa"] is None


# Shrout & Fleiss (1979) Table 2, to 4 d.p. as listed in the oracle README
SF = {"ICC1": 0.1657, "ICC2": 0.2898, "ICC3": 0.7148, "ICC1k": 0.4428, "ICC2k": 0.6201, "ICC3k": 0.9093}
SF_PUBLISHED = {"ICC1": .17, "ICC2": .29, "ICC3": .71, "ICC1k": .44, "ICC2k": .62, "ICC3k": .91}
# psych::ICC (Revelle) on the same data: 95% limits to two decimals
PSYCH_CI = {"ICC1": (-0.13, 0.72), "ICC2": (0.02, 0.76), "ICC3": (0.34, 0.95),
            "ICC1k": (-0.88, 0.91), "ICC2k": (0.07, 0.93), "ICC3k": (0.68, 0.99)}


@pytest.fixture(scope="module")
def sf_icc():
    x = oracle_csv("shrout_fleiss_1979.csv").drop(columns="target").to_numpy(float)
    return agreement.icc(x)


@pytest.mark.parametrize("form", agreement.ICC_FORMS)
def test_shrout_fleiss_icc(sf_icc, form):
    assert round(sf_icc[form]["icc"], 4) == SF[form]
    assert round(sf_icc[form]["icc"], 2) == SF_PUBLISHED[form]
    lo, hi = sf_icc[form]["ci"]
    assert (round(lo, 2), round(hi, 2)) == PSYCH_CI[form]
    assert lo < sf_icc[form]["icc"] < hi


def test_shrout_fleiss_f_tests(sf_icc):
    assert round(sf_icc["ICC1"]["f"], 3) == 1.795
    assert (sf_icc["ICC1"]["df1"], sf_icc["ICC1"]["df2"]) == (5, 18)
    for form in ("ICC2", "ICC3"):
        assert round(sf_icc[form]["f"], 3) == 11.027
        assert (sf_icc[form]["df1"], sf_icc[form]["df2"]) == (5, 15)
    assert 0 < sf_icc["ICC3"]["p"] < 0.001 < sf_icc["ICC1"]["p"]


def test_icc_degenerate_inputs():
    one = agreement.icc(np.ones((5, 1)))
    assert all(v["icc"] is None and "one reader" in v["icc_reason"] for v in one.values())
    flat = agreement.icc(np.full((4, 3), 2.0))
    assert all(v["icc"] is None for v in flat.values())
    assert null_without_reason(one) == [] and null_without_reason(flat) == []


def _coders(name):
    return oracle_csv(name).drop(columns="coder").to_numpy(float)


@pytest.mark.parametrize("level,value", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                         ("ratio", 0.797)])
def test_krippendorff_4_coders(level, value):
    assert round(agreement.krippendorff_alpha(_coders("krippendorff_4coders_12units.csv"), level)["alpha"], 3) == value


@pytest.mark.parametrize("level,value", [("nominal", 0.691358), ("interval", 0.810845)])
def test_krippendorff_wikipedia(level, value):
    data = _coders("krippendorff_wikipedia_3coders_15units.csv")
    assert round(agreement.krippendorff_alpha(data, level)["alpha"], 6) == value


def test_krippendorff_binary_two_coders():
    a = [int(c) for c in "0100000010"]
    b = [int(c) for c in "1110010000"]
    assert round(agreement.krippendorff_alpha(np.array([a, b], float), "nominal")["alpha"], 4) == 0.0952


def test_krippendorff_degenerate():
    assert "one reader" in agreement.krippendorff_alpha(np.array([[1.0, 2.0]]))["alpha_reason"]
    assert "same" in agreement.krippendorff_alpha(np.ones((3, 4)))["alpha_reason"]
    sparse = np.array([[1.0, np.nan], [np.nan, 2.0]])
    assert "two or more" in agreement.krippendorff_alpha(sparse)["alpha_reason"]


def test_fleiss_degenerate():
    assert "one reader" in agreement.fleiss_kappa(np.array([[1, 0], [0, 1]]))["kappa_reason"]
    assert "same category" in agreement.fleiss_kappa(np.array([[3, 0], [3, 0]]))["kappa_reason"]
    assert agreement.fleiss_kappa(np.zeros((0, 2)))["kappa"] is None


ONE_ANSWER_TABLES = [
    [[3, 7], [0, 0]],          # the first reader said "0" to everything (rounding: +3e-18)
    [[7, 3], [0, 0]],          # (rounding: -6e-17)
    [[0, 4], [0, 9]],          # the second reader said "1" to everything
    [[1, 2, 3], [0, 0, 0], [0, 0, 0]],
    [[13, 17], [0, 0]],        # exact zero in floating point
]


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
@pytest.mark.parametrize("table", ONE_ANSWER_TABLES, ids=lambda t: str(t))
def test_one_answer_reader_gets_null_se_consistently_in_both_paths(table, weights):
    """κ is exactly 0 when one reader gives one answer to everything, and its variances
    are exactly 0; floating-point noise used to make SE/z/p a number, 0 or null depending
    on its sign, differently in the scalar and vectorised paths."""
    from analysis_fixtures import null_without_reason
    from studies.stats.agreement import ONE_ANSWER, cohen_kappa, kappa_entries

    table = np.asarray(table, float)
    scalar = cohen_kappa(table, weights=weights)
    vector = kappa_entries(table[None], [{}], weights=weights)[0]
    for entry in (scalar, vector):
        assert entry["kappa"] == pytest.approx(0.0, abs=1e-12)
        for key in ("ase", "ci", "ase0", "z", "p"):
            assert entry[key] is None and entry[f"{key}_reason"] == ONE_ANSWER
        assert null_without_reason(entry) == []


def test_variance_rounding_noise_is_zero_in_both_paths():
    """Perfect agreement: the asymptotic variance is exactly 0 in theory; both paths give
    an SE of exactly 0 (not 1e-9 from rounding), and the null SE stays positive."""
    from studies.stats.agreement import cohen_kappa, kappa_entries

    table = np.array([[5.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 3.0]])
    for weights in (None, "linear", "quadratic"):
        scalar = cohen_kappa(table, weights=weights)
        vector = kappa_entries(table[None], [{}], weights=weights)[0]
        assert scalar["ase"] == vector["ase"] == 0.0
        assert scalar["ase0"] == pytest.approx(vector["ase0"]) and scalar["ase0"] > 0
