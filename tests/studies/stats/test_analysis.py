"""analyze(): data rules, JSON schema and conventions, edge cases, and agreement with the method modules."""
import json

import numpy as np
import pandas as pd
import pytest

from studies.stats import agreement, mrmc
from studies.export import analyze_db
from studies.stats.analysis import analyze
from studies.stats.simulate import simulate_long
from analysis_fixtures import assert_json_clean
from paths import ROOT

BINARY_KEYS = ("n", "accuracy", "sensitivity", "specificity", "fool_rate", "ci_wilson", "ci_clopper_pearson",
               "p_binomial")
RATE_CI_KEYS = tuple(f"{rate}_ci_{method}" for rate in ("sensitivity", "specificity", "fool_rate")
                     for method in ("wilson", "clopper_pearson"))


@pytest.fixture(scope="module")
def study():
    return simulate_long(6, 80, tasks=("turing", "alignment", "quality"), generators=("gen-a", "gen-b"),
                         modalities=("CXR", "CT"), groups=("adult", "child"), repeat_fraction=0.2,
                         training_cases=6, seed=3)


@pytest.fixture(scope="module")
def result(study):
    return analyze(study)


def test_required_keys(result):
    t = result["turing"]
    for key in BINARY_KEYS:
        assert key in t["pooled"]
    for entry in t["per_reader"].values():
        for key in (*BINARY_KEYS, "auc", "auc_ci"):
            assert key in entry
    assert isinstance(t["fleiss_kappa"]["kappa"], float)
    assert isinstance(t["krippendorff_alpha"]["alpha"], float)
    for key in ("auc", "f", "ddf", "p", "ci"):
        assert t["mrmc"][key] is not None
    assert set(t["mrmc"]["comparison"]["differences"]) == {"gen-a - gen-b"}
    for task in ("alignment", "quality"):
        s = result[task]
        assert set(s["icc"]) == {"ICC1", "ICC2", "ICC3", "ICC1k", "ICC2k", "ICC3k"}
        for form in s["icc"].values():
            assert {"icc", "f", "df1", "df2", "p", "ci"} <= set(form)
        assert s["krippendorff_alpha_ordinal"]["alpha"] is not None
        assert s["krippendorff_alpha_interval"]["alpha"] is not None
        assert s["cohen_kappa_weighted"]["pairs"]
    assert set(t["by_modality"]) == {"CT", "CXR"} and set(t["by_group"]) == {"adult", "child"}
    assert set(t["by_generator"]) == {"gen-a", "gen-b"}
    assert len(t["cohen_kappa"]["pairs"]) == 15


def test_headline_values_match_independent_computations(study, result):
    """The values behind those keys, recomputed from the long table with pandas, scikit-learn,
    statsmodels and krippendorff (main reads only: training and repeat reads excluded)."""
    import krippendorff
    from sklearn.metrics import roc_auc_score
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    main = study[~study["training"].astype(bool) & ~study["repeat"].astype(bool)]
    tur = main[main["task"] == "turing"]
    truth = tur["truth"] == "synthetic"
    call = tur["response"] == "synthetic"
    t = result["turing"]
    assert t["pooled"]["n"] == len(tur)
    assert t["pooled"]["accuracy"] == pytest.approx((call == truth).mean(), abs=1e-12)
    assert t["pooled"]["sensitivity"] == pytest.approx(call[truth].mean(), abs=1e-12)
    assert t["pooled"]["specificity"] == pytest.approx((~call[~truth]).mean(), abs=1e-12)
    for reader, rows in tur.groupby("reader"):
        entry = t["per_reader"][reader]
        r_truth = rows["truth"] == "synthetic"
        assert entry["accuracy"] == pytest.approx(((rows["response"] == "synthetic") == r_truth).mean(), abs=1e-12)
        assert entry["auc"] == pytest.approx(roc_auc_score(r_truth, rows["rating"]), abs=1e-12)
    calls = tur.assign(v=call.astype(int)).pivot(index="case", columns="reader", values="v")
    assert not calls.isna().any().any()  # every reader read every main case: no block trimming
    table, _ = aggregate_raters(calls.to_numpy())
    assert t["fleiss_kappa"]["kappa"] == pytest.approx(fleiss_kappa(table, method="fleiss"), abs=1e-9)
    assert t["krippendorff_alpha"]["alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=calls.T.to_numpy(float), level_of_measurement="nominal"), abs=1e-9)
    for task in ("alignment", "quality"):
        ratings = main[main["task"] == task].pivot(index="case", columns="reader", values="rating")
        for level in ("ordinal", "interval"):
            assert result[task][f"krippendorff_alpha_{level}"]["alpha"] == pytest.approx(krippendorff.alpha(
                reliability_data=ratings.T.to_numpy(float), level_of_measurement=level), abs=1e-9)


def test_json_is_clean(result):
    assert_json_clean(result)
    assert json.loads(json.dumps(result)) == result


def test_training_rows_excluded_and_counted(study, result):
    assert result["input"]["rows_training_excluded"] == int(study["training"].sum())
    poisoned = study.copy()
    train = poisoned["training"]
    poisoned.loc[train, "response"] = "real"
    poisoned.loc[train, "rating"] = 1
    again = analyze(poisoned)
    assert again["turing"]["pooled"] == result["turing"]["pooled"]
    assert again["alignment"]["summary"] == result["alignment"]["summary"]


def test_pooled_counts_match_a_crosstab(study, result):
    rows = study[(study.task == "turing") & ~study.training & ~study.repeat]
    tab = pd.crosstab(rows.truth, rows.response)
    conf = result["turing"]["pooled"]["confusion"]
    assert conf["synthetic"]["real"] == tab.loc["synthetic", "real"]
    assert conf["real"]["synthetic"] == tab.loc["real", "synthetic"]
    assert result["turing"]["pooled"]["accuracy"] == pytest.approx(np.trace(tab.to_numpy()) / len(rows))


def test_latest_answer_wins():
    df = simulate_long(3, 20, seed=1)
    first = df.iloc[[0]].copy()
    later = first.copy()
    first["answered_at"] = "2024-01-01T00:00:00Z"
    flipped = "real" if later["response"].iloc[0] == "synthetic" else "synthetic"
    later["response"] = flipped
    later["rating"] = 1 if flipped == "real" else 6
    later["answered_at"] = "2030-01-01T00:00:00Z"
    combined = pd.concat([later, df.iloc[1:], first], ignore_index=True)  # table order must not matter
    expected = pd.concat([later, df.iloc[1:]], ignore_index=True)
    got, want = analyze(combined), analyze(expected)
    assert got["turing"]["pooled"] == want["turing"]["pooled"]
    assert got["input"]["rows_superseded"] == 1


def test_repeats_only_feed_intra_reader_kappa(study, result):
    no_repeats = analyze(study[~study["repeat"]])
    assert no_repeats["turing"]["pooled"] == result["turing"]["pooled"]
    assert no_repeats["turing"]["intra_reader_kappa"]["pooled"] is None
    # intra-reader κ equals Cohen's κ of (first, repeat) calls pooled over readers
    t = study[(study.task == "turing") & ~study.training]
    pairs = t[t.repeat].merge(t[~t.repeat], on=["reader", "case"], suffixes=("_r", "_f"))
    tab = pd.crosstab(pairs.response_f, pairs.response_r).reindex(index=["real", "synthetic"],
                                                                  columns=["real", "synthetic"], fill_value=0)
    ref = agreement.cohen_kappa(tab.to_numpy())
    intra = result["turing"]["intra_reader_kappa"]
    assert intra["n_pairs"] == len(pairs)
    assert intra["pooled"]["kappa"] == pytest.approx(ref["kappa"])
    assert set(intra["per_reader"]) <= set(result["input"]["readers"])


def test_mrmc_matches_direct_computation(study, result):
    rows = study[(study.task == "turing") & ~study.training & ~study.repeat]
    wide = rows.pivot(index="reader", columns="case", values="rating")
    truth = rows.drop_duplicates("case").set_index("case").loc[wide.columns, "truth"].eq("synthetic").to_numpy()
    direct = mrmc.mrmc_auc(wide.to_numpy(float), truth, treatments=["all"])
    m = result["turing"]["mrmc"]
    assert m["auc"] == pytest.approx(direct["single"]["all"]["auc"])
    assert m["p"] == pytest.approx(direct["single"]["all"]["random_readers"]["p"])
    assert m["ddf"] == pytest.approx(direct["single"]["all"]["random_readers"]["ddf"])
    # per-reader AUC in per_reader equals the MRMC reader AUC (complete design)
    for r, a in m["auc_per_reader"].items():
        assert result["turing"]["per_reader"][r]["auc"] == pytest.approx(a)


def test_fleiss_and_icc_match_the_method_modules(study, result):
    rows = study[(study.task == "alignment") & ~study.training & ~study.repeat]
    wide = rows.pivot(index="case", columns="reader", values="rating").to_numpy(float)
    ref = agreement.icc(wide)
    for form, entry in result["alignment"]["icc"].items():
        assert entry["icc"] == pytest.approx(ref[form]["icc"])
    t = study[(study.task == "turing") & ~study.training & ~study.repeat]
    calls = t.pivot(index="case", columns="reader", values="response").eq("synthetic").astype(int).to_numpy()
    assert result["turing"]["fleiss_kappa"]["kappa"] == pytest.approx(
        agreement.fleiss_kappa(agreement.category_counts(calls, 2))["kappa"])


# --- edge cases -------------------------------------------------------------------------

def test_one_reader():
    res = analyze(simulate_long(1, 30, tasks=("turing", "alignment"), seed=2))
    assert_json_clean(res)
    t = res["turing"]
    assert t["pooled"]["accuracy"] is not None and t["per_reader"]["reader001"]["auc"] is not None
    assert t["fleiss_kappa"]["kappa"] is None and "one reader" in t["fleiss_kappa"]["kappa_reason"]
    assert t["krippendorff_alpha"]["alpha"] is None
    assert t["cohen_kappa"]["pairs"] == [] and t["cohen_kappa"]["mean_kappa"] is None
    assert t["mrmc"]["p"] is None and "one reader" in t["mrmc"]["p_reason"]
    assert t["mrmc"]["fixed_readers"]["p"] is not None
    assert res["alignment"]["icc"]["ICC2"]["icc"] is None


def test_reader_with_the_same_answer_to_everything():
    df = simulate_long(4, 40, tasks=("turing",), seed=5)
    lazy = df.reader == "reader002"
    df.loc[lazy, "response"] = "synthetic"
    df.loc[lazy, "rating"] = 6
    res = analyze(df)
    assert_json_clean(res)
    r = res["turing"]["per_reader"]["reader002"]
    assert r["sensitivity"] == 1.0 and r["specificity"] == 0.0
    assert r["auc"] == 0.5 and r["auc_ci"] is None and "same rating" in r["auc_ci_reason"]
    pairs = [p for p in res["turing"]["cohen_kappa"]["pairs"] if "reader002" in (p["reader_a"], p["reader_b"])]
    assert all(p["kappa"] == pytest.approx(0.0) for p in pairs)
    assert res["turing"]["mrmc"]["p"] is not None


def test_missing_cells():
    df = simulate_long(5, 60, tasks=("turing", "alignment"), missing_fraction=0.15, seed=6)
    partial = df[~((df.reader == "reader005") & (df.index % 3 != 0))]  # reader005 rated ~1/3 of the cases
    res = analyze(partial)
    assert_json_clean(res)
    m = res["turing"]["mrmc"]
    assert m["readers_excluded"] == ["reader005"]
    assert m["n_readers"] == 4 and m["cases_excluded"] > 0 and m["auc"] is not None
    assert res["turing"]["krippendorff_alpha"]["n_raters"] == 5  # α uses every rating
    pair = next(p for p in res["turing"]["cohen_kappa"]["pairs"]
                if (p["reader_a"], p["reader_b"]) == ("reader001", "reader005"))
    assert 0 < pair["n"] < 60
    assert res["alignment"]["icc"]["ICC1"]["n_judges"] == 4


def test_all_correct():
    df = simulate_long(3, 30, tasks=("turing",), seed=7)
    df["response"] = df["truth"]
    df["rating"] = np.where(df["truth"] == "synthetic", 6, 1)
    res = analyze(df)
    assert_json_clean(res)
    t = res["turing"]
    assert t["pooled"]["accuracy"] == 1.0 and t["pooled"]["fool_rate"] == 0.0
    assert t["fleiss_kappa"]["kappa"] == pytest.approx(1.0)
    assert t["mrmc"]["auc"] == 1.0 and t["mrmc"]["p"] is None and t["mrmc"]["p_reason"]
    assert all(r["auc"] == 1.0 and r["auc_ci"] is None for r in t["per_reader"].values())


def test_empty_breakdown_group():
    df = simulate_long(3, 30, tasks=("turing", "alignment"), modalities=("CXR", "CT"), seed=8,
                       training_cases=2)
    # a modality seen only in training rows: listed, with n = 0 and reasons
    df.loc[df.training, "modality"] = "MRI"
    res = analyze(df)
    assert_json_clean(res)
    mri = res["turing"]["by_modality"]["MRI"]
    assert mri["n"] == 0 and mri["accuracy"] is None and mri["accuracy_reason"] == "no responses"
    assert res["alignment"]["by_modality"]["MRI"]["n"] == 0
    assert res["alignment"]["mann_whitney_by_modality"]["MRI"]["u"] is None


def test_task_with_no_responses_yet():
    res = analyze(simulate_long(3, 20, tasks=("turing",), seed=9))
    assert res["alignment"] is None and "no responses" in res["alignment_reason"]
    assert res["quality"] is None
    empty = analyze(simulate_long(3, 20, seed=9).iloc[0:0])
    assert empty["turing"] is None and empty["turing_reason"]
    assert_json_clean(empty)


def test_no_group_column_is_explained():
    res = analyze(simulate_long(3, 20, tasks=("turing", "quality"), seed=10))
    assert res["turing"]["by_group"] is None and "group" in res["turing"]["by_group_reason"]
    assert res["quality"]["by_group"] is None


def test_call_from_rating_when_response_missing_and_string_flags():
    df = simulate_long(3, 30, seed=11)
    ref = analyze(df)
    df2 = df.assign(response=None, training=df.training.map({True: "true", False: "false"}),
                    repeat=df.repeat.astype(int))
    assert analyze(df2)["turing"]["pooled"] == ref["turing"]["pooled"]


def test_other_tasks_ignored_and_missing_columns_rejected():
    df = simulate_long(2, 10, seed=12)
    extra = df.iloc[:3].assign(task="attention")
    res = analyze(pd.concat([df, extra]))
    assert res["input"]["rows_other_tasks_ignored"] == 3
    with pytest.raises(ValueError, match="reader"):
        analyze(df.drop(columns="reader"))


def test_unspecified_generator_is_its_own_treatment():
    df = simulate_long(3, 40, generators=("g1",), seed=13)
    syn = df.index[df.source == "synthetic"][:10]
    df.loc[df.case.isin(df.loc[syn, "case"]), "generator"] = None
    res = analyze(df)
    assert "unspecified" in res["turing"]["by_generator"]
    assert res["turing"]["mrmc"]["comparison"] is not None


def test_analyze_db_reads_the_long_table(monkeypatch):
    from studies import export

    df = simulate_long(2, 12, seed=14)
    monkeypatch.setattr(export, "long_table", lambda db, name: df[df.study == name])
    assert analyze_db("x.db", "sim")["turing"]["pooled"] == analyze(df)["turing"]["pooled"]


def test_analyze_db_end_to_end(tmp_path):
    """A real study database: readers answer through the session API, analysis reads the export."""
    import uuid

    from studies.design import StudyOptions
    from studies.readers import invite, reader_for_token
    from studies.session import next_case, submit
    from study_fixtures import make_study

    opts = StudyOptions(tasks=("turing", "quality"), training_cases=2, repeat_fraction=0.2,
                        attention_checks=1, seed=3)
    db, _ = make_study(tmp_path, "e2e", options=opts, tasks=opts.tasks, generators=("gen-a", "gen-b"))
    rng = np.random.default_rng(0)
    for name in ("dr-a", "dr-b", "dr-c"):
        ref = reader_for_token(db, invite(db, "e2e", name))
        while (view := next_case(db, ref.reader_id)) is not None:
            q = view.pending[0]
            value = int(rng.integers(1, 7 if q["task"] == "turing" else 6))
            if q["task"] == "attention":
                value = q["scale"][0]["value"]
            submit(db, ref.reader_id, view.assignment_id, q["task"], value, 900, str(uuid.uuid4()))
    res = analyze_db(db, "e2e")
    assert_json_clean(res)
    assert res["input"]["study"] == "e2e"
    assert res["input"]["rows_training_excluded"] > 0 and res["input"]["rows_other_tasks_ignored"] > 0
    t = res["turing"]
    assert t["n_readers"] == 3 and t["pooled"]["n"] == 3 * t["n_cases"]
    assert set(t["by_generator"]) == {"gen-a", "gen-b"}
    assert res["quality"]["n"] == 3 * res["quality"]["n_cases"]
    assert res["alignment"] is None


def test_finalise_replaces_non_finite_values_with_reasons():
    from studies.stats.analysis import _finalise

    out = _finalise({"a": float("nan"), "b": np.int64(3), "c": [np.float64(1.5)], "d": np.inf,
                     "d_reason": "given", "e": (1, 2)})
    assert out == {"a": None, "a_reason": "not finite", "b": 3, "c": [1.5], "d": None, "d_reason": "given",
                   "e": [1, 2]}


# keys whose children are data-dependent names (readers, levels, generators, rating values)
_DYNAMIC_PARENTS = {"per_reader", "by_modality", "by_generator", "by_group", "by_source", "auc_per_reader",
                    "distribution", "proportions", "differences", "mann_whitney_by_modality",
                    "auc_per_treatment", "confusion", "tasks"}


def _static_keys(obj, parent=None, out=None):
    out = set() if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            if parent in _DYNAMIC_PARENTS:
                _static_keys(v, None, out)
                continue
            if not k.endswith("_reason"):
                out.add(k)
            _static_keys(v, k, out)
    elif isinstance(obj, list):
        for v in obj:
            _static_keys(v, parent, out)
    return out


def test_every_result_key_is_documented(result):
    from pathlib import Path

    doc = (ROOT / "docs" / "statistics.md").read_text(encoding="utf-8")
    section = doc.split("## The analysis JSON", 1)[1].split("\n## ", 1)[0]
    undocumented = sorted(k for k in _static_keys(result) if f"`{k}`" not in section and f"`{k}." not in section)
    assert undocumented == []


def test_study_filter_and_missing_study_column():
    a = simulate_long(3, 20, seed=15, study="alpha")
    b = simulate_long(2, 20, seed=16, study="beta")
    both = pd.concat([a, b], ignore_index=True)
    res = analyze(both, study="beta")
    assert res["input"]["study"] == "beta" and res["turing"]["n_readers"] == 2
    assert analyze(both)["input"]["study"] == ["alpha", "beta"]
    anon = analyze(a.drop(columns="study"))
    assert anon["input"]["study"] is None and anon["input"]["study_reason"]


def test_likert_rating_from_response_when_rating_missing():
    df = simulate_long(3, 20, tasks=("alignment",), seed=17)
    res = analyze(df.assign(rating=np.nan))
    assert res["alignment"]["summary"] == analyze(df)["alignment"]["summary"]


def test_random_readers_accuracy_test(result):
    from scipy.stats import ttest_1samp

    accs = [e["accuracy"] for e in result["turing"]["per_reader"].values()]
    ref = ttest_1samp(accs, 0.5)
    got = result["turing"]["accuracy_random_readers"]
    assert got["t"] == pytest.approx(ref.statistic) and got["p"] == pytest.approx(ref.pvalue)
    assert got["ci"][0] < got["mean"] < got["ci"][1] and got["df"] == len(accs) - 1
    one = analyze(simulate_long(1, 20, seed=18))["turing"]["accuracy_random_readers"]
    assert one["p"] is None and "one reader" in one["p_reason"]


# --- both intervals for every rate ------------------------------------------------------

def _exact_ci(x, n):
    from scipy.stats import binomtest

    ci = binomtest(int(x), int(n)).proportion_ci(confidence_level=0.95, method="exact")
    return [ci.low, ci.high]


def _rate_counts(entry):
    c = entry["confusion"]
    tp, fn = c["synthetic"]["synthetic"], c["synthetic"]["real"]
    fp, tn = c["real"]["synthetic"], c["real"]["real"]
    return {"sensitivity": (tp, tp + fn), "specificity": (tn, fp + tn), "fool_rate": (fn, tp + fn)}


def test_rates_have_clopper_pearson_everywhere(result):
    """pooled, per reader and every breakdown: Wilson and Clopper–Pearson CIs for each rate,
    the latter equal to scipy's exact interval for the entry's own counts."""
    t = result["turing"]
    entries = [("pooled", t["pooled"])]
    entries += [(f"per_reader.{k}", v) for k, v in t["per_reader"].items()]
    for by in ("by_modality", "by_generator", "by_group"):
        entries += [(f"{by}.{k}", v) for k, v in t[by].items()]
    assert len(entries) == 1 + 6 + 2 + 2 + 2
    for name, entry in entries:
        for key in RATE_CI_KEYS:
            assert key in entry, (name, key)
        for rate, (x, n) in _rate_counts(entry).items():
            assert entry[f"{rate}_ci_clopper_pearson"] == pytest.approx(_exact_ci(x, n), abs=1e-9), (name, rate)
            assert entry[f"{rate}_ci_wilson"] != entry[f"{rate}_ci_clopper_pearson"], (name, rate)


def test_empty_breakdown_level_has_null_rate_intervals_with_reasons():
    df = simulate_long(3, 30, tasks=("turing",), modalities=("CXR",), seed=8, training_cases=2)
    df.loc[df.training, "modality"] = "MRI"
    mri = analyze(df)["turing"]["by_modality"]["MRI"]
    for key in RATE_CI_KEYS:
        assert mri[key] is None and mri[f"{key}_reason"], key


# --- reasons that say what is actually missing ------------------------------------------

def test_turing_rows_without_truth_say_so():
    df = simulate_long(3, 20, tasks=("turing",), seed=19).assign(truth=None, source=None)
    res = analyze(df)
    assert res["input"]["tasks"]["turing"] > 0
    assert res["turing"] is None
    assert res["turing_reason"] != "no responses to the turing task yet"
    assert "truth" in res["turing_reason"] and "source" in res["turing_reason"]
    assert str(res["input"]["tasks"]["turing"]) in res["turing_reason"]


def test_turing_rows_without_response_or_rating_say_so():
    df = simulate_long(3, 20, tasks=("turing",), seed=20).assign(response=None, rating=np.nan)
    res = analyze(df)
    assert res["input"]["tasks"]["turing"] == 60
    assert res["turing"] is None
    assert res["turing_reason"] != "no responses to the turing task yet"
    assert "response" in res["turing_reason"] and "rating" in res["turing_reason"]
    assert "60" in res["turing_reason"]


def test_likert_rows_without_rating_say_so():
    df = simulate_long(3, 20, tasks=("turing", "quality"), seed=21)
    q = df.task == "quality"
    df.loc[q, "rating"] = np.nan
    df.loc[q, "response"] = None
    res = analyze(df)
    assert res["input"]["tasks"]["quality"] > 0 and res["quality"] is None
    assert "rating" in res["quality_reason"] and "no responses" not in res["quality_reason"]
    assert res["turing"] is not None


def test_analyze_db_names_a_study_without_answers(tmp_path):
    from studies.design import StudyOptions
    from study_fixtures import make_study

    opts = StudyOptions(tasks=("turing",), seed=3)
    db, _ = make_study(tmp_path, "silent", options=opts, tasks=opts.tasks)
    res = analyze_db(db, "silent")
    assert_json_clean(res)
    assert res["input"]["study"] == "silent" and "study_reason" not in res["input"]
    assert res["input"]["rows_analysed"] == 0
    assert res["turing"] is None and res["turing_reason"] == "no responses to the turing task yet"


def test_empty_table_with_a_study_column_does_not_blame_the_column():
    empty = analyze(simulate_long(2, 10, seed=22).iloc[0:0])
    assert empty["input"]["study"] is None and empty["input"]["study_reason"] != "no study column"
