"""studies.export: long table (latest wins, flags) and the iMRMC layout."""
import uuid

import pandas as pd
import pytest

from studies.design import StudyOptions
from studies.errors import StudyError, StudyNotFound
from studies.export import imrmc_table, long_table, write_export
from studies.stats.columns import IMRMC_COLUMNS, LONG_COLUMNS
from studies.readers import invite, reader_for_token
from studies.session import go_back, next_case, submit
from study_fixtures import make_study

OPTS = StudyOptions(tasks=("turing", "quality"), training_cases=2, repeat_fraction=0.2,
                    attention_checks=1, seed=5)


@pytest.fixture(scope="module")
def answered(tmp_path_factory):
    """Two generators, two readers who answered everything; dr-a changed one answer."""
    tmp = tmp_path_factory.mktemp("exp")
    db, summary = make_study(tmp, "exp", options=OPTS, tasks=OPTS.tasks,
                             generators=("gen-a", "gen-b"), synthetic_per_real=1)
    for name, rating in (("dr-a", 2), ("dr-b", 5)):
        ref = reader_for_token(db, invite(db, "exp", name))
        first = True
        while (view := next_case(db, ref.reader_id)) is not None:
            q = view.pending[0]
            value = rating if q["task"] != "quality" else 3
            if q["task"] == "attention":
                value = q["scale"][0]["value"]
            if first and q["task"] == "turing" and name == "dr-a" and not view.training:
                # answers the read, goes back to it and changes the call to the usual one
                submit(db, ref.reader_id, view.assignment_id, "turing", 6, 10, str(uuid.uuid4()))
                submit(db, ref.reader_id, view.assignment_id, "quality", 3, 10, str(uuid.uuid4()))
                assert go_back(db, ref.reader_id).assignment_id == view.assignment_id
                first = False
            submit(db, ref.reader_id, view.assignment_id, q["task"], value, 1000, str(uuid.uuid4()))
    return db


def test_long_table_columns_and_latest_wins(answered):
    df = long_table(answered, "exp")
    assert list(df.columns) == LONG_COLUMNS
    # per reader: (2 training + 10 main + 2 repeats) x 2 tasks + 1 attention check
    assert len(df) == 2 * (14 * 2 + 1)
    assert not df.duplicated(["reader", "case", "task", "repeat", "training"]).any()
    turing = df[df.task == "turing"]
    assert set(turing.truth) == {"real", "synthetic"}
    assert (turing.truth == turing.source).all()
    assert set(turing[turing.reader == "dr-a"].rating) == {2}  # the changed 6 is superseded
    assert set(turing[turing.reader == "dr-a"].response) == {"real"}
    assert set(turing[turing.reader == "dr-b"].response) == {"synthetic"}
    quality = df[df.task == "quality"]
    assert quality.truth.isna().all() and set(quality.rating) == {3}
    attention = df[df.task == "attention"]
    assert len(attention) == 2 and (attention.response == "1").all()
    assert attention.truth.isin([str(v) for v in range(1, 7)]).all()  # the instructed value
    assert df.groupby("reader").training.sum().tolist() == [4, 4]
    assert df.groupby("reader")["repeat"].sum().tolist() == [4, 4]
    assert set(df.generator[df.source == "synthetic"]) == {"gen-a", "gen-b"}
    assert set(df.generator[df.source == "real"]) == {""}
    assert (df.duration_ms == 1000).all()
    assert set(df.group) == {"site-0", "site-1"}  # the manifest's case group
    assert df.answered_at.str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$").all()
    assert df.study.unique().tolist() == ["exp"]


def test_long_table_groups_feed_the_analysis_breakdown(answered):
    from studies.stats.analysis import analyze

    result = analyze(long_table(answered, "exp"))
    by_group = result["turing"]["by_group"]
    assert set(by_group) == {"site-0", "site-1"}
    assert sum(g["n"] for g in by_group.values()) == result["turing"]["pooled"]["n"]


def test_long_table_with_superseded(answered):
    df = long_table(answered, "exp", include_superseded=True)
    assert list(df.columns) == LONG_COLUMNS + ["superseded"]
    old = df[df.superseded == 1]  # the read dr-a went back to: both of its first answers
    assert sorted(zip(old.task, old.rating)) == [("quality", 3), ("turing", 6)]
    assert set(old.reader) == {"dr-a"}
    assert len(df) == len(long_table(answered, "exp")) + 2


def test_imrmc_layout(answered):
    df = imrmc_table(answered, "exp")
    assert list(df.columns) == IMRMC_COLUMNS
    truth = df[df.readerID == "truth"]
    reads = df[df.readerID != "truth"]
    assert (truth.modalityID == "truth").all()
    assert truth.caseID.is_unique and len(truth) == 10  # the 10 analysed cases
    assert set(truth.score) == {0, 1}
    assert set(reads.modalityID) == {"gen-a", "gen-b"}
    assert set(reads.caseID) == set(truth.caseID)
    long = long_table(answered, "exp")
    main = long[(long.task == "turing") & (long.training == 0) & (long["repeat"] == 0)]
    src = dict(zip(main.case, main.source))
    gen = dict(zip(main.case, main.generator))
    assert all(s == int(src[c] == "synthetic") for c, s in zip(truth.caseID, truth.score))
    for modality, grp in reads.groupby("modalityID"):
        # every real case, plus only that generator's synthetic cases, once per reader
        expected = {c for c in src if src[c] == "real" or gen[c] == modality}
        assert set(grp.caseID) == expected
        assert len(grp) == 2 * len(expected)
    assert set(reads[reads.readerID == "dr-a"].score) == {2}
    assert set(reads[reads.readerID == "dr-b"].score) == {5}


def test_imrmc_single_generator_uses_study_name(tmp_path):
    db, _ = make_study(tmp_path, "solo", options=StudyOptions(seed=1))
    ref = reader_for_token(db, invite(db, "solo", "r1"))
    while (view := next_case(db, ref.reader_id)) is not None:
        submit(db, ref.reader_id, view.assignment_id, "turing", 4, 5, str(uuid.uuid4()))
    df = imrmc_table(db, "solo")
    assert set(df.modalityID) == {"truth", "solo"}
    assert len(df) == 12 + 12


def test_write_export_csv(answered, tmp_path):
    out = tmp_path / "long.csv"
    n = write_export(answered, "exp", "long", out)
    back = pd.read_csv(out, keep_default_na=False)
    assert n == len(back) and list(back.columns) == LONG_COLUMNS
    out2 = tmp_path / "mrmc.csv"
    n2 = write_export(answered, "exp", "imrmc", out2)
    back2 = pd.read_csv(out2)
    assert list(back2.columns) == IMRMC_COLUMNS and len(back2) == n2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(StudyError, match="unknown export format"):
        write_export(answered, "exp", "xlsx", tmp_path / "x")
    with pytest.raises(StudyError, match="output folder does not exist"):
        write_export(answered, "exp", "long", tmp_path / "no" / "x.csv")
    with pytest.raises(StudyNotFound):
        write_export(answered, "other", "long", tmp_path / "y.csv")


def test_empty_study_exports_headers(tmp_path):
    db, _ = make_study(tmp_path, "empty", options=StudyOptions(seed=1))
    assert list(long_table(db, "empty").columns) == LONG_COLUMNS
    assert imrmc_table(db, "empty").empty

