"""studies.readers + studies.session: tokens, resume from the database, idempotent and
append-only recording, authorisation of images, progress."""
import dataclasses
import json
import uuid

import pytest

from studies.storage.connections import open_db, stimuli_dir
from studies.design import StudyOptions, reader_order, seeded_order_secret
from studies.errors import NotAuthorised, ReaderError, SessionError, StudyNotFound
from studies.readers import invite, list_readers, reader_for_token, reader_link, token_hash
from studies.session import AlreadyAnswered, next_case, submit
from studies.monitoring import progress
from studies.serving import stimulus_png
from study_fixtures import copy_study, make_study


@pytest.fixture(scope="module")
def study_template(tmp_path_factory):
    """One ingested study, copied per test (ingest is the slow part)."""
    tmp = tmp_path_factory.mktemp("tpl")
    opts = StudyOptions(tasks=("turing", "alignment"), training_cases=2, repeat_fraction=0.25,
                        attention_checks=2, seed=11)
    db_path, summary = make_study(tmp, "pilot", options=opts, tasks=("turing", "alignment"))
    return db_path


@pytest.fixture()
def study(study_template, tmp_path):
    return copy_study(study_template, tmp_path)


def _cid():
    return str(uuid.uuid4())


def _answer_all(db_path, reader_id, value=lambda q: q["scale"][0]["value"]):
    n = 0
    while (view := next_case(db_path, reader_id)) is not None:
        q = view.pending[0]
        submit(db_path, reader_id, view.assignment_id, q["task"], value(q), 900, _cid())
        n += 1
    return n


def test_invite_stores_only_a_hash(study):
    token = invite(study, "pilot", "dr-a")
    assert len(token) >= 43
    assert reader_link(token) == f"http://127.0.0.1:7860/?token={token}"
    assert reader_link(token, "https://x.org/study/") == f"https://x.org/study/?token={token}"
    db = open_db(study)
    try:
        dump = "\n".join(db.conn.iterdump())
        stored = db.execute("SELECT token_hash FROM readers").fetchone()[0]
    finally:
        db.close()
    assert token not in dump
    assert stored == token_hash(token)
    ref = reader_for_token(study, token)
    assert (ref.study, ref.name) == ("pilot", "dr-a")
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), "", None, "x" * 10_000, stored):
        assert reader_for_token(study, bad) is None


def test_reader_names_unique_and_reissue(study):
    old = invite(study, "pilot", "dr-a")
    with pytest.raises(ReaderError, match="already invited"):
        invite(study, "pilot", "dr-a")
    with pytest.raises(ReaderError, match="no reader"):
        invite(study, "pilot", "dr-z", reissue=True)
    with pytest.raises(StudyNotFound, match="no study named 'nope'"):
        invite(study, "nope", "dr-b")
    with pytest.raises(ReaderError, match="empty"):
        invite(study, "pilot", "  ")
    ref = reader_for_token(study, old)
    submit(study, ref.reader_id, next_case(study, ref.reader_id).assignment_id, "turing", 1, 10, _cid())
    new = invite(study, "pilot", "dr-a", reissue=True)
    assert reader_for_token(study, old) is None
    assert reader_for_token(study, new).reader_id == ref.reader_id
    # answers kept: the training read's real/synthetic answer stands (the fixture's prompt
    # audit says "ok", so its text question comes next)
    view = next_case(study, ref.reader_id)
    assert view.position == 1 and "turing" not in [t["task"] for t in view.pending]
    assert [r.name for r in list_readers(study, "pilot")] == ["dr-a"]


def test_stored_order_is_the_design_order(study):
    ref = reader_for_token(study, invite(study, "pilot", "dr-a"))
    db = open_db(study)
    try:
        srow = next(db.query("SELECT * FROM studies"))
        cases = list(db.query("SELECT id, case_key, role FROM cases ORDER BY id"))
        stored = list(db.query("SELECT case_id, kind FROM assignments WHERE reader_id = ? "
                               "ORDER BY position", [ref.reader_id]))
    finally:
        db.close()
    opts = StudyOptions.from_dict(json.loads(srow["options"]))
    # the study was made with --seed 11: its secret is the seeded one, and the order follows
    assert srow["order_secret"] == seeded_order_secret(11)
    ids = {c["case_key"]: c["id"] for c in cases}
    slots = reader_order(srow["order_secret"], "dr-a",
                         [c["case_key"] for c in cases if c["role"] == "main"], opts,
                         training_ids=[c["case_key"] for c in cases if c["role"] == "training"])
    assert [(ids[s.case_id], s.kind) for s in slots] == [(r["case_id"], r["kind"]) for r in stored]
    kinds = [r["kind"] for r in stored]
    assert kinds[:2] == ["training", "training"]
    assert kinds.count("repeat") == 2 and kinds.count("attention") == 2 and kinds.count("main") == 10


def test_flow_resume_and_case_view(study):
    # training reads ask the question with the text only when the prompt audit found the
    # texts indistinguishable (else they skip it: test_reader_blinding)
    db = open_db(study)
    try:
        db.execute("UPDATE studies SET audit_report = json_set(coalesce(audit_report, '{}'), "
                   "'$.prompts', json('{\"verdict\": \"ok\"}'))")
        db.conn.commit()
    finally:
        db.close()
    ref = reader_for_token(study, invite(study, "pilot", "dr-a"))
    first = next_case(study, ref.reader_id)
    assert first.position == 1 and first.total == 16 and first.training
    assert [q["task"] for q in first.tasks] == ["turing", "alignment"]
    assert first.prompt  # alignment shows the prompt ...
    assert [q["shows_prompt"] for q in first.tasks] == [False, True]  # ... only with its question
    shown = dataclasses.asdict(first)
    assert not {"source", "truth", "generator", "path", "original_path"} & set(shown)
    assert next_case(study, ref.reader_id) == first  # pure read: same answer twice
    ack = submit(study, ref.reader_id, first.assignment_id, "turing", "probably real", 1500, _cid())
    assert not ack.assignment_complete
    assert ack.feedback["truth"] in ("real", "synthetic")
    assert ack.feedback["correct"] == (ack.feedback["truth"] == "real")
    # "refresh": the same slot comes back with turing marked answered
    again = next_case(study, ref.reader_id)
    assert again.assignment_id == first.assignment_id
    assert [q["answered"] for q in again.tasks] == [True, False]
    cid = _cid()
    ack = submit(study, ref.reader_id, first.assignment_id, "alignment", 4, 2000, cid)
    assert ack.assignment_complete
    # The read's last answer is graded on the stored real/synthetic call, so the verdict
    # does not depend on the page remembering the first answer (lost on a reload); a
    # retry of that answer gets the same verdict.
    truth = ack.feedback["truth"]
    assert ack.feedback["correct"] == (truth == "real")
    assert ack.feedback["message"] == (f"This image is {truth}. You answered real: "
                                       f"{'correct' if truth == 'real' else 'incorrect'}.")
    assert submit(study, ref.reader_id, first.assignment_id, "alignment", 4, 2000,
                  cid).feedback == ack.feedback
    assert next_case(study, ref.reader_id).position == 2
    assert _answer_all(study, ref.reader_id) > 0
    assert next_case(study, ref.reader_id) is None


def test_submit_is_idempotent_and_append_only(study):
    ref = reader_for_token(study, invite(study, "pilot", "dr-a"))
    view = next_case(study, ref.reader_id)
    cid = _cid()
    a1 = submit(study, ref.reader_id, view.assignment_id, "turing", 2, 700, cid)
    a2 = submit(study, ref.reader_id, view.assignment_id, "turing", 2, 700, cid)  # retry
    assert not a1.duplicate and a2.duplicate and a1.response_id == a2.response_id
    # The same id with another answer is not a retry: refused, never acknowledged-and-dropped.
    with pytest.raises(SessionError, match="different answer"):
        submit(study, ref.reader_id, view.assignment_id, "turing", 6, 900, cid)
    # Another id for the answered question (a second tab, a reload) is refused: one current
    # answer per read and task, the acknowledged one.
    with pytest.raises(AlreadyAnswered):
        submit(study, ref.reader_id, view.assignment_id, "turing", 6, 900, _cid())
    # (Changing an answer takes going back: tests/studies/test_export.py, test_go_back.py.)
    db = open_db(study)
    try:
        rows = list(db.query("SELECT rating, answer, duration_ms, shown_at, answered_at "
                             "FROM responses ORDER BY id"))
    finally:
        db.close()
    assert [(r["rating"], r["answer"]) for r in rows] == [(2, "real")]
    assert all(r["shown_at"] < r["answered_at"] for r in rows)
    other = reader_for_token(study, invite(study, "pilot", "dr-b"))
    with pytest.raises(SessionError, match="client_id already used"):
        submit(study, other.reader_id, next_case(study, other.reader_id).assignment_id,
               "turing", 1, 1, cid)


def test_submit_rejects_bad_requests(study):
    a = reader_for_token(study, invite(study, "pilot", "dr-a"))
    b = reader_for_token(study, invite(study, "pilot", "dr-b"))
    va = next_case(study, a.reader_id)
    with pytest.raises(NotAuthorised):
        submit(study, b.reader_id, va.assignment_id, "turing", 1, 10, _cid())
    with pytest.raises(NotAuthorised):
        submit(study, a.reader_id, 10**9, "turing", 1, 10, _cid())
    with pytest.raises(SessionError, match="not asked"):
        submit(study, a.reader_id, va.assignment_id, "quality", 1, 10, _cid())
    with pytest.raises(SessionError, match="not on the turing scale"):
        submit(study, a.reader_id, va.assignment_id, "turing", 7, 10, _cid())
    with pytest.raises(SessionError, match="duration_ms"):
        submit(study, a.reader_id, va.assignment_id, "turing", 1, -5, _cid())
    with pytest.raises(SessionError, match="client_id"):
        submit(study, a.reader_id, va.assignment_id, "turing", 1, 5, "")
    db = open_db(study)
    try:
        assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == 0
    finally:
        db.close()


def test_stimulus_png_is_authorised_per_reader(study):
    a = reader_for_token(study, invite(study, "pilot", "dr-a"))
    b = reader_for_token(study, invite(study, "pilot", "dr-b"))
    va, vb = next_case(study, a.reader_id), next_case(study, b.reader_id)
    png = stimulus_png(study, a.reader_id, va.stimulus_id)
    assert png.startswith(b"\x89PNG")
    db = open_db(study)
    try:
        stim = db.execute("SELECT c.stimulus_id FROM assignments a JOIN cases c ON c.id = a.case_id "
                          "WHERE a.view_id = ?", [va.stimulus_id]).fetchone()[0]
        all_views = [r[0] for r in db.execute("SELECT view_id FROM assignments")]
    finally:
        db.close()
    assert png == (stimuli_dir(study) / f"{stim}.png").read_bytes()
    assert len(set(all_views)) == len(all_views)  # one id per read: repeats look new
    for bad in (vb.stimulus_id, stim, "../study.db", "", "x" * 500):
        with pytest.raises(NotAuthorised):
            stimulus_png(study, a.reader_id, bad)


def test_progress_and_attention_checks(study):
    a = reader_for_token(study, invite(study, "pilot", "dr-a"))
    invite(study, "pilot", "dr-b")

    def obey_checks(q):
        if q["task"] == "attention":  # the question names the label to pick
            label = q["question"].split("«")[1].split("»")[0]
            return next(s["value"] for s in q["scale"] if s["label"] == label)
        return q["scale"][0]["value"]

    _answer_all(study, a.reader_id, obey_checks)
    pa, pb = progress(study, "pilot")
    assert (pa.reader, pa.completed, pa.total, pa.finished) == ("dr-a", 16, 16, True)
    assert (pa.training_completed, pa.training_total) == (2, 2)
    assert (pa.attention_total, pa.attention_answered, pa.attention_passed) == (2, 2, 2)
    assert pa.median_duration_ms == 900 and pa.last_answered_at
    assert (pb.completed, pb.finished, pb.attention_answered) == (0, False, 0)
