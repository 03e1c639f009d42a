"""Blinding on the reader's side: nothing but the pixels tells a reader real from
synthetic — not the text shown after the real/synthetic answer (the answer is final once
it was shown; Back revises only later answers), not training feedback that pairs text and
truth, not page attributes only one source has, not how often a case is read, and not how
long a handler takes (counted in SQLite virtual-machine steps, not timed)."""
from __future__ import annotations

import collections
import json
import uuid

import pytest

from studies import back_rule, readers, serving, session
from studies.storage.connections import open_db
from studies.design import (
    StudyOptions, choose_subset, make_pairs, pair_unit, reader_order, seeded_order_secret,
)
from studies.session import go_back, next_case, submit
from studies.back_rule import CannotGoBack
from study_fixtures import make_study, study, template  # noqa: F401 (fixtures)


def _reader(db, name="dr-a", study="pilot"):
    return readers.reader_for_token(
        db, readers.invite(db, study, name, acknowledge_leak=True)).reader_id


def _answer(db, rid, value=None):
    view = next_case(db, rid)
    q = view.pending[0]
    value = q["scale"][0]["value"] if value is None else value
    ack = submit(db, rid, view.assignment_id, q["task"], value, 900, str(uuid.uuid4()))
    return view, ack


# ----------------------------------------------------------------------- read counts
def _reads_per_source(slot_lists, source_of, kinds=("main",)):
    reads = collections.Counter()
    for slots in slot_lists:
        for slot in slots:
            if slot.kind in kinds:
                reads[slot.case_id] += 1
                if slot.pair_case_id is not None:
                    reads[slot.pair_case_id] += 1
    by_source = collections.defaultdict(list)
    for cid, source in source_of.items():
        by_source[source].append(reads[cid])
    return {s: sum(v) / len(v) for s, v in by_source.items()}, reads


@pytest.mark.parametrize("n_real,n_syn,per_reader", [(60, 20, 16), (15, 45, 10), (30, 31, 7)])
def test_expected_reads_of_a_case_do_not_depend_on_its_source(n_real, n_syn, per_reader):
    secret = seeded_order_secret(7)
    source_of = {f"r{i:03d}": "real" for i in range(n_real)}
    source_of |= {f"s{i:03d}": "synthetic" for i in range(n_syn)}
    units = list(source_of.items())
    opts = StudyOptions(cases_per_reader=per_reader, repeat_fraction=0.25, attention_checks=3)
    reads: dict = {}
    sessions = []
    n_readers = 60
    for r in range(n_readers):
        chosen = choose_subset(units, reads, per_reader, secret, f"reader-{r}")
        assert len(chosen) == per_reader
        for cid in chosen:
            reads[cid] = reads.get(cid, 0) + 1
        sessions.append(reader_order(secret, f"reader-{r}", chosen, opts, reader_index=r))
    # main reads: every case floor or ceil of R*n/M, whatever its source
    mean, counts = _reads_per_source(sessions, source_of)
    expected = n_readers * per_reader / len(units)
    assert abs(mean["real"] - expected) < 0.2 and abs(mean["synthetic"] - expected) < 0.2
    assert max(counts[c] for c in source_of) - min(counts[c] for c in source_of) <= 1
    # repeats and attention checks are drawn from the reader's main cases alike
    for kinds in (("repeat",), ("attention",), ("main", "repeat", "attention")):
        m, _ = _reads_per_source(sessions, source_of, kinds)
        assert m["real"] == pytest.approx(m["synthetic"], rel=0.25), (kinds, m)


def test_pairs_read_one_real_and_one_synthetic_case_each():
    secret = seeded_order_secret(3)
    meta = [(f"r{i}", "real", "CT", "") for i in range(30)]
    meta += [(f"s{i}", "synthetic", "CT", "") for i in range(12)]
    pairs, unpaired = make_pairs(meta, secret)
    assert len(pairs) == 12 and len(unpaired) == 18
    by_unit = {pair_unit(r, s): (r, s) for r, s in pairs}
    reads: dict = {}
    sessions = []
    for k in range(20):
        units = [(u, "pair") for u in by_unit]
        chosen = choose_subset(units, reads, 5, secret, f"p{k}")
        for u in chosen:
            reads[u] = reads.get(u, 0) + 1
        sessions.append(reader_order(secret, f"p{k}", [], StudyOptions(tasks=("pair",)),
                                     pairs=[by_unit[u] for u in chosen]))
    paired = {c: s for c, s, _, _ in meta if any(c in p for p in pairs)}
    mean, _ = _reads_per_source(sessions, paired)
    assert mean["real"] == mean["synthetic"]


def test_an_unbalanced_pool_gives_each_reader_its_proportions(tmp_path):
    # 6 real + 18 synthetic: each reader's 8 cases are 2 real + 6 synthetic, not 4 + 4
    db, _ = make_study(tmp_path, "pilot", synthetic_per_real=3,
                       options=StudyOptions(cases_per_reader=8))
    for name in ("a", "b", "c"):
        readers.invite(db, "pilot", name)
    with open_db(db) as conn:
        per_reader = conn.execute(
            "SELECT sum(c.source = 'real'), sum(c.source = 'synthetic') FROM assignments a "
            "JOIN cases c ON c.id = a.case_id GROUP BY a.reader_id").fetchall()
        per_case = dict(conn.execute(
            "SELECT c.source, avg(n) FROM (SELECT c.id, c.source, count(a.id) n FROM cases c "
            "LEFT JOIN assignments a ON a.case_id = c.id GROUP BY c.id) c GROUP BY c.source"))
    assert per_reader == [(2, 6)] * 3
    assert per_case["real"] == per_case["synthetic"] == 1.0


# ------------------------------------------------------------------- page attributes
def _study_with_modalities(tmp_path, blank):
    """The fixture's images with the modality of the synthetic rows `blank` (their
    indices among the synthetic rows) left empty, as when generated images are imported
    without a modality column."""
    from studies.ingest import create_study
    from study_fixtures import write_images, write_manifest

    rows = write_images(tmp_path / "data")
    synthetic = [r for r in rows if r["source"] == "synthetic"]
    for i in blank:
        synthetic[i]["modality"] = ""
    db = tmp_path / "study.db"
    create_study(db, "pilot", manifest=write_manifest(tmp_path / "data" / "cases.csv", rows),
                 size=32, options=StudyOptions(training_cases=2, seed=1))
    return db


def _hints_by_source(db, rid):
    """The modality hint and the viewer's data-presets markup of every read, by source."""
    from studio.reader import handlers as reader_handlers
    from studio.reader import page as reader_page
    from studio.reader import texts as reader_texts

    with open_db(db) as conn:
        source = dict(conn.execute("SELECT a.id, c.source FROM assignments a JOIN cases c "
                                   "ON c.id = a.case_id WHERE a.reader_id = ?", [rid]))
    seen = collections.defaultdict(set)
    while (view := next_case(db, rid)) is not None:
        html = reader_page.stimulus_html("x", reader_handlers.preset_family(view.modality))
        seen[source[view.assignment_id]].add((view.modality, "data-presets" in html))
        _answer(db, rid)
    return seen


def test_no_modality_hint_when_part_of_one_source_has_none(tmp_path):
    # one of the two synthetic MRI images has no modality: the other MRI images (both
    # sources) would still have had the hint, and a case without it was synthetic
    db = _study_with_modalities(tmp_path, blank=[1])
    seen = _hints_by_source(db, _reader(db))
    assert seen["real"] == seen["synthetic"] == {("", False)}


def test_the_modality_hint_when_every_case_has_one_with_both_sources(tmp_path):
    db = _study_with_modalities(tmp_path, blank=[])
    seen = _hints_by_source(db, _reader(db))
    assert {m for m, _ in seen["real"]} == {m for m, _ in seen["synthetic"]}
    assert ("CT", True) in seen["real"] and ("CT", True) in seen["synthetic"]
    with open_db(db) as conn:
        sid = conn.execute("SELECT id FROM studies").fetchone()[0]
        assert session.modality_hint_allowed(conn, sid)
        # a modality only one source has turns the hint off for the whole study
        conn.execute("UPDATE cases SET modality = 'US' WHERE id = (SELECT min(id) FROM cases "
                     "WHERE source = 'real')")
        assert not session.modality_hint_allowed(conn, sid)


# ---------------------------------------------------------------------------- timing
class _Steps:
    """Counts SQLite virtual-machine instructions run by `studies.session` on its read and
    write connections (a progress handler called every instruction): the work a handler
    does, without timing it."""

    def __init__(self, monkeypatch):
        import contextlib

        from studies.storage import connections, writer_process

        self.n = 0
        real_reading, real_call = connections.reading, writer_process.call

        def tick():
            self.n += 1
            return 0

        @contextlib.contextmanager
        def reading(db_path, **kw):
            with real_reading(db_path, **kw) as db:
                db.conn.set_progress_handler(tick, 1)
                try:
                    yield db
                finally:
                    db.conn.set_progress_handler(None, 1)

        def call(db_path, fn, *args, **kw):
            def counted(db, *a, **k):
                db.conn.set_progress_handler(tick, 1)
                try:
                    return fn(db, *a, **k)
                finally:
                    db.conn.set_progress_handler(None, 1)
            return real_call(db_path, counted, *args, **kw)

        monkeypatch.setattr(session, "reading", reading)
        monkeypatch.setattr(serving, "reading", reading)  # the image route reads there
        monkeypatch.setattr(session.writer_process, "call", call)

    def of(self, fn, *args, **kw):
        self.n = 0
        result = fn(*args, **kw)
        return self.n, result


def test_handler_work_does_not_depend_on_the_source(tmp_path, monkeypatch):
    # 6 real + 18 synthetic; case keys start with real/ or synthetic/ (index order)
    db, _ = make_study(tmp_path, "pilot", synthetic_per_real=3, size=32,
                       tasks=("turing", "quality"),
                       options=StudyOptions(tasks=("turing", "quality"), seed=3))
    rids = [_reader(db, f"r{i}") for i in range(12)]
    with open_db(db) as conn:
        source = dict(conn.execute("SELECT a.id, c.source FROM assignments a JOIN cases c "
                                   "ON c.id = a.case_id"))
    steps = _Steps(monkeypatch)
    next_case(db, rids[0])  # the study-wide modality rule is worked out once
    work = collections.defaultdict(lambda: collections.defaultdict(set))
    for rid in rids:
        n, view = steps.of(next_case, db, rid)
        src = source[view.assignment_id]
        work["next_case"][src].add(n)
        n, _ = steps.of(serving.stimulus_png, db, rid, view.stimulus_id, current_only=True)
        work["stimulus"][src].add(n)
        n, ack = steps.of(submit, db, rid, view.assignment_id, "turing", 2, 900,
                          str(uuid.uuid4()))
        work["submit"][src].add(n)
        submit(db, rid, view.assignment_id, "quality", 3, 900, str(uuid.uuid4()))
        _answer(db, rid)  # the next case's first question
        n, back = steps.of(go_back, db, rid)  # back to that case's first question
        work["go_back"][source[back.assignment_id]].add(n)
    for handler, by_source in work.items():
        assert set(by_source) == {"real", "synthetic"}, handler  # both were measured
        assert by_source["real"] == by_source["synthetic"], (handler, dict(by_source))
        assert len(by_source["real"]) == 1, (handler, dict(by_source))


# -------------------------------------------------------- no answer after the text
def _set_prompt_verdict(db, verdict):
    """The stored audit report's prompt entry, as the prompt audit writes it."""
    with open_db(db) as conn:
        conn.execute("UPDATE studies SET audit_report = json_set(coalesce(audit_report, '{}'),"
                     " '$.prompts', json(?))", [json.dumps({"verdict": verdict})])
        conn.conn.commit()


@pytest.fixture(scope="module")
def three_template(tmp_path_factory):
    opts = StudyOptions(tasks=("turing", "quality", "alignment"), training_cases=2, seed=4)
    db, _ = make_study(tmp_path_factory.mktemp("three"), "three", size=32,
                       tasks=opts.tasks, options=opts)
    # The fixture's synthetic prompts are the real captions, so the prompt audit says "ok";
    # these tests start from a study whose texts were not cleared.
    _set_prompt_verdict(db, "too few")
    return db


@pytest.fixture()
def three(three_template, tmp_path):
    from study_fixtures import copy_study

    return copy_study(three_template, tmp_path)


def _to_main(db, rid):
    while next_case(db, rid).training:
        _answer(db, rid)


def test_the_real_synthetic_answer_is_final_once_the_text_is_shown(three):
    rid = _reader(three, study="three")
    _to_main(three, rid)
    first = next_case(three, rid)
    assert [t["task"] for t in first.pending] == ["turing", "quality", "alignment"]
    _answer(three, rid, 2)  # turing: no text shown yet
    view = next_case(three, rid)
    assert view.pending[0]["task"] == "quality" and view.can_go_back and view.back_to_question
    # Back from the second question returns to this case's first question, not the
    # previous case
    back = go_back(three, rid)
    assert back.assignment_id == first.assignment_id and back.stimulus_id == first.stimulus_id
    assert back.pending[0]["task"] == "turing" and back.earlier == {"turing": 2}
    _answer(three, rid, 5)
    _answer(three, rid, 3)  # quality: the next question shows the text
    view = next_case(three, rid)
    assert view.pending[0]["task"] == "alignment" and view.prompt
    assert not view.can_go_back
    assert session.back_refused(three, rid) == back_rule.BACK_FINAL
    with pytest.raises(CannotGoBack, match="final"):
        go_back(three, rid)
    for task in ("turing", "quality"):  # not through the library either
        with pytest.raises(session.SessionError, match="final"):
            submit(three, rid, first.assignment_id, task, 1, 900, str(uuid.uuid4()))
    _answer(three, rid, 4)
    # from the next case: the previous case reopens at its question with the text only
    assert next_case(three, rid).can_go_back
    again = go_back(three, rid)
    assert again.assignment_id == first.assignment_id
    assert [t["task"] for t in again.pending] == ["alignment"]
    assert not again.can_go_back
    with pytest.raises(session.SessionError, match="final"):
        submit(three, rid, first.assignment_id, "turing", 1, 900, str(uuid.uuid4()))
    _, ack = _answer(three, rid, 1)
    assert ack.assignment_complete
    with open_db(three) as conn:
        rows = conn.execute("SELECT task, rating FROM responses WHERE assignment_id = ? "
                            "ORDER BY id", [first.assignment_id]).fetchall()
    # the turing answer changed only before the text; after it, only alignment changed
    assert rows == [("turing", 2), ("turing", 5), ("quality", 3), ("alignment", 4),
                    ("alignment", 1)]


def test_back_within_a_case_follows_the_asking_order_with_counterbalancing(tmp_path):
    opts = StudyOptions(tasks=("turing", "alignment", "quality"), counterbalance=True, seed=2)
    db, _ = make_study(tmp_path, "cb", size=32, tasks=opts.tasks, options=opts)
    seen = set()
    for name in ("a", "b"):
        rid = _reader(db, name, study="cb")
        order = [t["task"] for t in next_case(db, rid).pending]
        seen.add(tuple(order))
        _answer(db, rid, 2)  # turing
        view = next_case(db, rid)
        if order[1] == "alignment":  # the text is on screen: turing is final
            assert not view.can_go_back
            _answer(db, rid, 3)
            view = next_case(db, rid)  # quality, after the text: alignment may change
            assert view.can_go_back and view.back_to_question
            back = go_back(db, rid)
            assert [t["task"] for t in back.pending] == ["alignment", "quality"]
        else:
            assert view.can_go_back and view.back_to_question
            assert go_back(db, rid).pending[0]["task"] == "turing"
    assert len(seen) == 2


def test_training_hides_the_text_unless_the_prompt_audit_cleared_it(three):
    rid = _reader(three, study="three")
    view = next_case(three, rid)
    assert view.training
    # no prompt verdict stored (or one that is not "ok"): the text never shows in training
    assert [t["task"] for t in view.tasks] == ["turing", "quality"]
    assert view.skipped == ["alignment"] and view.prompt is None
    _answer(three, rid, 1)
    with pytest.raises(session.SessionError, match="not asked"):
        submit(three, rid, view.assignment_id, "alignment", 3, 900, str(uuid.uuid4()))
    _, ack = _answer(three, rid, 2)
    assert ack.assignment_complete and ack.feedback["truth"] in ("real", "synthetic")
    for verdict in ("flagged", "too few", "no prompts"):
        _set_prompt_verdict(three, verdict)
        assert next_case(three, rid).prompt is None
    # the audit found the texts indistinguishable: training asks as the main cases do
    _set_prompt_verdict(three, "ok")
    view = next_case(three, rid)
    assert view.training and [t["task"] for t in view.tasks] == ["turing", "quality",
                                                                   "alignment"]
    _answer(three, rid)
    _, ack = _answer(three, rid)
    assert not ack.assignment_complete
    assert next_case(three, rid).prompt


def test_training_feedback_on_the_page_names_no_text(three):
    from studio.reader import handlers as reader_handlers
    from studio.reader import page as reader_page
    from studio.reader import texts as reader_texts

    token = readers.invite(three, "three", "dr-t")
    screen = reader_handlers.start(three, token)
    texts = []
    while screen.kind in ("case", "feedback") and len(texts) < 10:
        if screen.kind == "feedback":
            texts.append(screen.feedback)
            assert screen.prompt is None
            screen = reader_handlers.continue_after_feedback(three, token)
            continue
        if not screen.training:
            break
        assert screen.prompt is None  # no text in a training case
        screen = reader_handlers.submit_answer(three, token, screen.state, screen.choices[0][1])
    assert len(texts) == 2 and all("This image is" in t for t in texts)
    with open_db(three) as conn:
        prompts = [p for (p,) in conn.execute("SELECT prompt FROM cases")]
    assert not any(p in t for p in prompts for t in texts)


def test_the_reader_page_states_the_rule_and_backs_within_the_case(three):
    from studio.reader import handlers as reader_handlers
    from studio.reader import page as reader_page
    from studio.reader import texts as reader_texts

    token = readers.invite(three, "three", "dr-p")
    intro = reader_handlers.open_page(three, token)
    assert intro.kind == "intro"
    assert reader_texts.TEXT_RULE in intro.intro and reader_texts.TRAINING_TEXT in intro.intro
    assert "3 questions about each" in intro.intro and "match the text" in intro.intro
    screen = reader_handlers.start(three, token)
    while screen.training or screen.kind == "feedback":
        screen = (reader_handlers.continue_after_feedback(three, token) if screen.kind == "feedback"
                  else reader_handlers.submit_answer(three, token, screen.state, 1))
    position = screen.position
    screen = reader_handlers.submit_answer(three, token, screen.state, 2)  # turing
    assert screen.kind == "case" and screen.can_go_back and screen.prompt is None
    screen = reader_handlers.go_back(three, token)
    assert screen.position == position and screen.message == reader_handlers.BACK_DONE_QUESTION
    assert screen.selected == 2 and "Is this image real" in screen.question
    screen = reader_handlers.submit_answer(three, token, screen.state, 5)
    screen = reader_handlers.submit_answer(three, token, screen.state, 3)  # quality
    assert screen.prompt and not screen.can_go_back  # the text is on screen
    screen = reader_handlers.go_back(three, token)
    assert "not possible" in screen.message and "final" in screen.message
    assert screen.prompt and screen.position == position


def test_a_training_read_open_when_the_verdict_changes_can_still_be_completed(three):
    _set_prompt_verdict(three, "ok")
    rid = _reader(three, study="three")
    view, _ = _answer(three, rid)
    _answer(three, rid)  # turing and quality: the question with the text is next
    _set_prompt_verdict(three, "flagged")  # e.g. cases added, audit recomputed
    again = next_case(three, rid)
    assert again.assignment_id == view.assignment_id
    assert [t["task"] for t in again.pending] == ["alignment"]
    _, ack = _answer(three, rid)
    assert ack.assignment_complete
    nxt = next_case(three, rid)
    assert nxt.training and nxt.skipped == ["alignment"]
