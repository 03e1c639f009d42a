"""Paired 2AFC task, library side: pairing, stored left/right, export,
analysis verified against scipy/statsmodels and published values, report section."""
import uuid

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.inter_rater import cohens_kappa, fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

from studies.stats import pairs

from studies import readers
from studies.export import analyze_db
from studies.stats.analysis import analyze
from studies.storage.connections import open_db
from studies.design import StudyOptions, make_pairs, seeded_order_secret
from studies.errors import StudyError
from studies.export import long_table
from studies.stats.report import render_html
from studies.session import next_case, submit
from study_fixtures import make_study


def test_pairs_match_modality_and_group_and_list_the_leftovers():
    cases = [("r1", "real", "CT", "g1"), ("r2", "real", "CT", "g2"), ("r3", "real", "MRI", ""),
             ("s1", "synthetic", "ct", "g1"), ("s2", "synthetic", "CT", "g2"),
             ("s3", "synthetic", "MRI", ""), ("s4", "synthetic", "MRI", ""),
             ("s5", "synthetic", "xray", "")]
    got, unpaired = make_pairs(cases, seeded_order_secret(1))
    assert sorted(got) == [("r1", "s1"), ("r2", "s2"), ("r3", "s3")] or \
        sorted(got) == [("r1", "s1"), ("r2", "s2"), ("r3", "s4")]
    assert len(unpaired) == 2 and "s5" in unpaired
    assert make_pairs(cases, seeded_order_secret(1)) == (got, unpaired)


def test_pair_task_option_checks():
    with pytest.raises(StudyError, match="cannot be combined"):
        StudyOptions(tasks=("pair", "turing")).validated()
    with pytest.raises(StudyError, match="not available for the pair task"):
        StudyOptions(tasks=("pair",), training_cases=2).validated()


@pytest.fixture()
def pair_study(tmp_path):
    db, _ = make_study(tmp_path, "duo", tasks=("pair",), options=StudyOptions(seed=5))
    return db


def _pairs_of(db, reader_id):
    with open_db(db) as conn:
        return conn.execute(
            "SELECT a.id, c.case_key, c.source, p.case_key, p.source, a.view_id, a.pair_view_id "
            "FROM assignments a JOIN cases c ON c.id = a.case_id "
            "JOIN cases p ON p.id = a.pair_case_id WHERE a.reader_id = ? ORDER BY a.position",
            [reader_id]).fetchall()


def test_pair_assignments_store_both_images_with_sides_drawn_per_reader(pair_study):
    refs = [readers.reader_for_token(pair_study, readers.invite(pair_study, "duo", f"r{i}"))
            for i in range(6)]
    sides = {}
    for ref in refs:
        rows = _pairs_of(pair_study, ref.reader_id)
        assert len(rows) == 6  # 6 real + 6 synthetic of matching modality -> 6 pairs
        for _, left, lsrc, right, rsrc, view, pview in rows:
            assert {lsrc, rsrc} == {"real", "synthetic"} and view != pview
            unit = tuple(sorted((left, right)))
            sides.setdefault(unit, set()).add(lsrc)
    assert len(sides) == 6  # every reader reads the same pairs
    assert any(s == {"real", "synthetic"} for s in sides.values())  # sides vary by reader


def test_pair_reads_export_and_analysis_end_to_end(pair_study, tmp_path):
    truth_left = {}
    for i in range(3):
        ref = readers.reader_for_token(pair_study, readers.invite(pair_study, "duo", f"r{i}"))
        truth_left[f"r{i}"] = sum(lsrc == "synthetic" for _, _, lsrc, *_ in
                                  _pairs_of(pair_study, ref.reader_id))
        while (view := next_case(pair_study, ref.reader_id)) is not None:
            assert [q["task"] for q in view.pending] == ["pair"]
            submit(pair_study, ref.reader_id, view.assignment_id, "pair", 2, 900,
                   str(uuid.uuid4()))  # "probably left" every time
    df = long_table(pair_study, "duo")
    assert len(df) == 18 and set(df.source) == {"pair"} and set(df.response) == {"left"}
    assert (df.pair_case != "").all() and (df.case != df.pair_case).all()
    assert set(df.truth) <= {"left", "right"}
    result = analyze_db(pair_study, "duo")
    p = result["pair"]
    assert (p["n"], p["n_readers"], p["n_pairs"]) == (18, 3, 6)
    for reader, n_left in truth_left.items():
        assert p["per_reader"][reader]["correct"] == n_left
    assert p["pooled"]["correct"] == sum(truth_left.values())
    assert result["turing"] is None  # the single-image sections ignore pair rows
    html = render_html(result)
    assert "Paired 2AFC: which image is synthetic?" in html and "Proportion correct per reader" in html


def test_incomplete_pair_design_gives_each_reader_a_subset_of_pairs(tmp_path):
    db, _ = make_study(tmp_path, "duo", tasks=("pair",), options=StudyOptions(cases_per_reader=3))
    ids = [readers.reader_for_token(db, readers.invite(db, "duo", f"r{i}")).reader_id
           for i in range(2)]
    units = [{tuple(sorted((l, r))) for _, l, _, r, *_ in _pairs_of(db, rid)} for rid in ids]
    assert [len(u) for u in units] == [3, 3] and not units[0] & units[1]
    assert readers.coverage(db, "duo").min_assigned == 1


# ---------------------------------------------------------------- statistics, verified
def _long(calls: dict[str, list[int]]) -> pd.DataFrame:
    """A long table of pair reads: calls[reader][i] = 1 if pair i was called right."""
    rows = []
    for reader, row in calls.items():
        for i, right in enumerate(row):
            if right < 0:
                continue
            truth = "left" if i % 2 else "right"
            resp = truth if right else ("right" if truth == "left" else "left")
            rows.append({"study": "s", "reader": reader, "case": f"a{i}", "pair_case": f"b{i}",
                         "task": "pair", "source": "pair", "generator": "g", "modality": "CT",
                         "truth": truth, "response": resp, "rating": 2, "training": 0,
                         "repeat": 0, "answered_at": "2026-01-01T00:00:00Z"})
    return pd.DataFrame(rows)


def test_clopper_pearson_matches_published_and_statsmodels_values():
    out = pairs.proportion_correct(7, 10)
    # Clopper & Pearson exact 95% interval for 7/10: 0.3475-0.9333 (e.g. Newcombe 1998, table II)
    assert out["ci"] == pytest.approx([0.3475, 0.9333], abs=1e-4)
    assert out["p_binomial"] == pytest.approx(0.34375)
    lo, hi = proportion_confint(45, 60, method="beta")
    assert pairs.proportion_correct(45, 60)["ci"] == pytest.approx([lo, hi])


def test_pair_analysis_matches_scipy_and_statsmodels():
    rng = np.random.default_rng(0)
    calls = {f"r{j}": list((rng.random(20) < p).astype(int))
             for j, p in enumerate((0.55, 0.7, 0.8, 0.65))}
    calls["r3"][5] = -1  # one reader skipped one pair: Fleiss uses the 19 complete pairs
    res = analyze(_long(calls))["pair"]
    props = [np.mean([c for c in calls[r] if c >= 0]) for r in sorted(calls)]
    t = stats.ttest_1samp(props, 0.5)
    rr = res["random_readers"]
    assert rr["t"] == pytest.approx(t.statistic) and rr["p"] == pytest.approx(t.pvalue)
    ci = t.confidence_interval(0.95)
    assert rr["ci"] == pytest.approx([ci.low, min(1.0, ci.high)])
    full = np.array([[calls[r][i] for r in sorted(calls)] for i in range(20) if i != 5])
    table = np.stack([(full == 0).sum(1), (full == 1).sum(1)], axis=1)
    assert res["fleiss_kappa"]["kappa"] == pytest.approx(fleiss_kappa(table, method="fleiss"))
    assert res["fleiss_kappa"]["n_pairs"] == 19
    a, b = np.array(calls["r0"]), np.array(calls["r1"])
    ct = np.array([[np.sum((a == i) & (b == j)) for j in (0, 1)] for i in (0, 1)])
    first = res["cohen_kappa"]["pairs"][0]
    assert (first["reader_a"], first["reader_b"]) == ("r0", "r1")
    assert first["kappa"] == pytest.approx(cohens_kappa(ct).kappa)
    pooled = sum(c for r in calls.values() for c in r if c >= 0)
    assert res["pooled"]["correct"] == pooled and res["pooled"]["n"] == 79


def test_pair_random_readers_interval_is_clipped_and_one_reader_has_reasons():
    res = analyze(_long({"r0": [1] * 20, "r1": [1] * 18 + [0, 0]}))["pair"]
    assert res["random_readers"]["ci"][1] == 1.0 and "clipped" in res["random_readers"]["ci_note"]
    one = analyze(_long({"r0": [1, 0, 1, 1]}))["pair"]
    assert one["random_readers"]["t"] is None and one["random_readers"]["t_reason"] == "only one reader"
    assert one["fleiss_kappa"]["kappa"] is None and one["fleiss_kappa"]["kappa_reason"]
    assert analyze(_long({}).reindex(columns=["reader", "case", "task"]))["pair_reason"]
