"""One answer per question whatever the tabs, stalls and restarts; bounded waits on a
stalled writer; a writer that heals (studies.session, studies.storage.writer_process,
studio.reader.handlers)."""
from __future__ import annotations

import json
import logging
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from studies.storage import writer_process
from studies.storage.group_commit import commit_together
from studies.storage.connections import open_db
from studies.records import study_row
from studies.export import long_table
from studies.readers import invite, reader_for_token
from studies.session import AlreadyAnswered, _record_answer, next_case, submit
from study_fixtures import copy_study, template  # noqa: F401
from paths import ROOT
from reader_fixtures import queue_message

HERE = pathlib.Path(__file__).resolve().parent
GUARD_S = 90  # only a hang guard: a wait that old code never ends


@pytest.fixture
def db(template, tmp_path):
    path = copy_study(template, tmp_path)
    yield path
    writer_process.stop()


def _rows(db, reader_id):
    conn = open_db(db)
    try:
        return conn.execute("SELECT assignment_id, task, rating, client_id FROM responses "
                            "WHERE reader_id = ? ORDER BY id", [reader_id]).fetchall()
    finally:
        conn.close()


def _run(fn, *args):
    """fn(*args) in a thread; returns a function that waits for (result, exception)."""
    out = {}

    def go():
        try:
            out["r"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001
            out["e"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()

    def result():
        t.join(GUARD_S)
        assert not t.is_alive(), "still waiting"
        return out.get("r"), out.get("e")
    return result


# ------------------------------------------------------------ one answer per question
@pytest.mark.parametrize("with_writer", [False, True], ids=["in-process", "writer-process"])
def test_two_concurrent_submits_of_one_task_store_one_row(db, with_writer):
    """Two tabs press Submit on the same question at once (different client ids)."""
    if with_writer:
        writer_process.start(db)
    ref = reader_for_token(db, invite(db, "pilot", "two-tabs"))
    view = next_case(db, ref.reader_id)
    barrier = threading.Barrier(2)

    def tab(value):
        barrier.wait(timeout=30)
        return submit(db, ref.reader_id, view.assignment_id, "turing", value, 800,
                      uuid.uuid4().hex)

    waits = [_run(tab, v) for v in (2, 5)]
    outcomes = dict(zip((2, 5), (w() for w in waits)))
    acked = [v for v, (r, e) in outcomes.items() if e is None]
    refused = [e for r, e in outcomes.values() if e is not None]
    assert len(acked) == 1 and len(refused) == 1 and isinstance(refused[0], AlreadyAnswered)
    rows = _rows(db, ref.reader_id)
    assert [(r[0], r[2]) for r in rows] == [(view.assignment_id, acked[0])]
    kept = long_table(db, "pilot")
    assert kept[kept.reader == "two-tabs"].rating.tolist() == acked


@pytest.mark.parametrize("order", ["first-wins", "second-wins"])
def test_one_batch_keeps_the_first_answer_whatever_the_order(db, order):
    """The writer commits what reached it together, in arrival order: the rule holds inside
    one transaction too."""
    ref = reader_for_token(db, invite(db, "pilot", f"batch-{order}"))
    view = next_case(db, ref.reader_id)
    values = (2, 5) if order == "first-wins" else (5, 2)
    fns = [lambda d, v=v: _record_answer(d, ref.reader_id, view.assignment_id, "turing", v,
                                         700, uuid.uuid4().hex, None, False, "", 0)
           for v in values]
    (ack, e1), (none, e2) = commit_together(db, fns)
    assert e1 is None and none is None and isinstance(e2, AlreadyAnswered)
    assert [(r[2]) for r in _rows(db, ref.reader_id)] == [values[0]]


def test_stall_reload_answer_exports_the_acknowledged_value(db):
    """Submit hangs (the writer is stopped), the reader reloads and answers the same
    question again with another value: one of the two is acknowledged, the other refused
    with the current case shown, and the export holds the acknowledged value."""
    from studio.reader import handlers as reader_handlers

    token = invite(db, "pilot", "reloader")
    writer = writer_process.start(db)
    first = reader_handlers.start(db, token)
    assert first.kind == "case"
    os.kill(writer.proc.pid, signal.SIGSTOP)
    try:
        stalled = _run(reader_handlers.submit_answer, db, token, first.state, 2)
        time.sleep(0.3)  # the first answer is on its way; the reader gives up and reloads
        again = reader_handlers.start(db, token)  # reload: the intro, then Start
        assert again.kind == "case" and again.state.assignment_id == first.state.assignment_id
        second = _run(reader_handlers.submit_answer, db, token, again.state, 5)
        time.sleep(0.3)
    finally:
        os.kill(writer.proc.pid, signal.SIGCONT)
    screens = {2: stalled(), 5: second()}
    for value, (screen, exc) in screens.items():
        assert exc is None, exc
    acked = [v for v, (s, _) in screens.items()
             if s.message != reader_handlers.ANSWERED_ELSEWHERE]
    refused = [v for v, (s, _) in screens.items()
               if s.message == reader_handlers.ANSWERED_ELSEWHERE]
    assert len(acked) == 1 and len(refused) == 1
    ref = reader_for_token(db, token)
    assert [r[2] for r in _rows(db, ref.reader_id)] == acked  # one row: the acknowledged one
    table = long_table(db, "pilot")
    assert table[table.reader == "reloader"].rating.tolist() == acked
    # the refused tab shows the reader's real current state: the next case
    refused_screen = screens[refused[0]][0]
    assert refused_screen.kind == "case"
    assert refused_screen.state.assignment_id == next_case(db, ref.reader_id).assignment_id


def test_the_last_case_answered_twice_tells_the_refused_tab_so(db):
    """At the last case the refused answer leads to the finish screen: it says the answer
    on that page was not the one kept, so it is not taken for an acknowledgement."""
    from studio.reader import handlers as reader_handlers

    token = invite(db, "pilot", "last-case")
    ref = reader_for_token(db, token)
    while (view := next_case(db, ref.reader_id)).position < view.total:
        submit(db, ref.reader_id, view.assignment_id, "turing", 3, 500, uuid.uuid4().hex)
    writer = writer_process.start(db)
    tabs = [reader_handlers.start(db, token), reader_handlers.start(db, token)]
    os.kill(writer.proc.pid, signal.SIGSTOP)
    try:
        waits = [_run(reader_handlers.submit_answer, db, token, t.state, v)
                 for t, v in zip(tabs, (2, 5))]
        time.sleep(0.3)
    finally:
        os.kill(writer.proc.pid, signal.SIGCONT)
    screens = dict(zip((2, 5), (w()[0] for w in waits)))
    assert {s.kind for s in screens.values()} == {"finished"}
    kept = [v for v, s in screens.items() if s.message.startswith("All ")]
    told = [v for v, s in screens.items() if s.message.startswith(reader_handlers.OUT_OF_DATE_FINISHED)]
    assert len(kept) == 1 and len(told) == 1
    assert _rows(db, ref.reader_id)[-1][2] == kept[0]
    # and a page answered after the end gets the same words
    late = reader_handlers.submit_answer(db, token, tabs[0].state, 4)
    assert late.kind == "finished" and late.message.startswith(reader_handlers.OUT_OF_DATE_FINISHED)


# ------------------------------------------------------------ bounded waits

def test_a_stalled_writer_reaches_its_deadline_and_other_readers_pages_load(
        template, tmp_path, monkeypatch):
    """The writer is stopped: answers end at the storage screen (Try again) once their
    deadline passes, nothing of them is stored, and meanwhile another reader's page loads
    even with every reader slot of old taken by waiting answers."""
    import httpx

    from studio.web import app as app_mod
    from studio.reader import page as reader_page
    from studio_fixtures import serve_studio

    db = copy_study(template, tmp_path)
    monkeypatch.setattr(app_mod, "READER_CONCURRENCY", 2)
    monkeypatch.setattr(reader_page, "ANSWER_CONCURRENCY", 2)
    monkeypatch.setattr(writer_process, "CALL_DEADLINE_S", 2.0)
    monkeypatch.setattr(writer_process, "REPLY_GRACE_S", 1.0)
    tokens = {n: invite(db, "pilot", n) for n in ("slow-a", "slow-b", "other")}
    with serve_studio(db) as (url, ids):
        writer = writer_process.writer_for(db)
        sessions = {n: secrets.token_hex(6) for n in tokens}
        with httpx.Client(base_url=url, timeout=GUARD_S) as c:
            for n in ("slow-a", "slow-b"):
                queue_message(c, ids["on_load"], [], tokens[n], sessions[n])
                assert queue_message(c, ids["on_start"], [], tokens[n], sessions[n])["success"]
        os.kill(writer.proc.pid, signal.SIGSTOP)
        try:
            def answer(n):
                with httpx.Client(base_url=url, timeout=GUARD_S) as c:
                    return queue_message(c, ids["on_submit"], [None, 3, None, "", False], tokens[n],
                                  sessions[n])
            waiting = [_run(answer, n) for n in ("slow-a", "slow-b")]
            time.sleep(0.5)  # both answers are waiting on the stopped writer
            with httpx.Client(base_url=url, timeout=GUARD_S) as c:
                page = queue_message(c, ids["on_load"], [], tokens["other"], sessions["other"])
            assert page["success"] and 'data-screen="intro"' in page["output"]["data"][0]
            for w in waiting:
                msg, exc = w()
                assert exc is None and msg["success"]
                assert 'data-screen="unavailable"' in msg["output"]["data"][0]
                assert "may not have been saved" in json.dumps(msg["output"])
        finally:
            os.kill(writer.proc.pid, signal.SIGCONT)
        _through_the_writer(db)  # the waiting answers have reached it by now
        assert _count_responses(db) == 0  # nothing half-stored


def _through_the_writer(db) -> None:
    """A write request through the writer (a function it has imported already: the
    writer would import a test module first, slowly): the requests sent before it have
    been handled when it returns."""
    assert writer_process.writer_for(db) is not None
    writer_process.call(db, study_row, "pilot")


def _count_responses(db) -> int:
    conn = open_db(db)
    try:
        return conn.execute("SELECT count(*) FROM responses").fetchone()[0]
    finally:
        conn.close()


def test_a_late_request_is_refused_by_the_writer_not_stored(db, monkeypatch):
    """A request that reaches a stopped writer is not started once it is resumed after the
    request's deadline: the reader was told it was not saved, and it is not."""
    monkeypatch.setattr(writer_process, "CALL_DEADLINE_S", 0.5)
    monkeypatch.setattr(writer_process, "REPLY_GRACE_S", 0.2)
    writer = writer_process.start(db)
    ref = reader_for_token(db, invite(db, "pilot", "late"))
    view = next_case(db, ref.reader_id)
    os.kill(writer.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(writer_process.WriteTimeout):
            submit(db, ref.reader_id, view.assignment_id, "turing", 4, 500, uuid.uuid4().hex)
    finally:
        os.kill(writer.proc.pid, signal.SIGCONT)
    monkeypatch.setattr(writer_process, "CALL_DEADLINE_S", 30.0)
    _through_the_writer(db)
    assert _count_responses(db) == 0
    assert writer_process.writer_for(db) is writer  # not mistaken for a dead one


# ------------------------------------------------------------ stale pages
def test_a_page_from_before_a_restart_gets_the_out_of_date_screen(template, tmp_path):
    """After a restart the server has no memory of the page (its session, the answer
    scale it sent): the answer must lead to the out-of-date screen, never a bare Error."""
    import httpx

    from studio_fixtures import serve_studio

    db = copy_study(template, tmp_path)
    token = invite(db, "pilot", "stale")
    with serve_studio(db) as (url, ids):
        with httpx.Client(base_url=url, timeout=GUARD_S) as c:
            queue_message(c, ids["on_load"], [], token, secrets.token_hex(6))
            assert queue_message(c, ids["on_start"], [], token, secrets.token_hex(6))["success"]
    with serve_studio(db) as (url, ids):  # restarted
        with httpx.Client(base_url=url, timeout=GUARD_S) as c:
            msg = queue_message(c, ids["on_submit"], [None, 3, None, "", False], token,
                         secrets.token_hex(6))
    assert msg["success"], msg
    assert "This page was out of date" in json.dumps(msg["output"])
    assert _rows(db, reader_for_token(db, token).reader_id) == []


# ------------------------------------------------------------ a writer that heals
def test_a_killed_writer_is_logged_and_replaced(db, monkeypatch, caplog):
    monkeypatch.setattr(writer_process, "RESTART_PAUSE_S", 0.0)
    writer = writer_process.start(db)
    caplog.set_level(logging.WARNING, logger="studies.storage.writer_process")
    writer.proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        new = writer_process.writer_for(db)
        if new is not None and new is not writer:
            break
        time.sleep(0.05)
    assert new is not None and new is not writer and new.proc.poll() is None
    lost = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert lost and "stopped" in lost[0].getMessage()
    assert any("new writer process" in r.getMessage() for r in caplog.records)
    ref = reader_for_token(db, invite(db, "pilot", "after-kill"))
    view = next_case(db, ref.reader_id)
    submit(db, ref.reader_id, view.assignment_id, "turing", 3, 500, uuid.uuid4().hex)
    assert writer_process.writer_for(db) is new  # the answer went through the new writer
    assert not pathlib.Path(writer.folder).exists()


def test_a_stopped_writer_exits_when_its_parent_dies(db):
    """A writer stopped (SIGSTOP) when its parent is killed does not stay behind."""
    code = ("import sys, time; from studies.storage import writer_process as w; "
            "wr = w.start(sys.argv[1]); print(wr.proc.pid, wr.folder, flush=True); "
            "time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid = None
    try:
        pid, folder = parent.stdout.readline().split()
        pid = int(pid)
        os.kill(pid, signal.SIGSTOP)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + GUARD_S
        while time.monotonic() < deadline and (_alive(pid) or os.path.exists(folder)):
            time.sleep(0.05)
        assert not _alive(pid)
        assert not os.path.exists(folder)
    finally:
        parent.kill()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------ the write-ahead log
def test_the_wal_is_emptied_when_the_writer_is_idle(db):
    writer_process.start(db)
    ref = reader_for_token(db, invite(db, "pilot", "wal"))
    for _ in range(3):
        view = next_case(db, ref.reader_id)
        submit(db, ref.reader_id, view.assignment_id, "turing", 3, 500, uuid.uuid4().hex)
    wal = pathlib.Path(f"{db}-wal")
    assert wal.stat().st_size > 0
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline and wal.stat().st_size > 0:
        time.sleep(0.1)
    assert wal.stat().st_size == 0
    assert len(_rows(db, ref.reader_id)) == 3  # all in the database file


def test_the_admin_is_warned_when_disk_space_runs_low(db, monkeypatch):
    import shutil

    from studio.admin import readers_tab

    assert readers_tab.disk_warning(db) == "" or shutil.disk_usage(db.parent).free < 1024**3
    usage = shutil.disk_usage(db.parent)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: usage._replace(free=200 * 1024**2))
    text = readers_tab.faults_markdown(db, "pilot")
    assert "Low disk space" in text and "200 MB free" in text
