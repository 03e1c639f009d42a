"""The writer process (studies.storage.writer_process): writes sent to a process of its own, its
failures, its lifetime and who may talk to it. The functions it runs are this module's,
found by name through PYTHONPATH, as the library's own are."""
from __future__ import annotations

import os
import pathlib
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid

import pytest
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

from studies.storage import writer_process
from studies.storage.group_commit import commit_together
from studies.storage.connections import open_db
from studies.errors import NotAuthorised, SessionError, StudyError
from studies.readers import invite, reader_for_token
from studies.session import next_case, submit
from study_fixtures import copy_study, template  # noqa: F401
from paths import ROOT, TESTS

HERE = pathlib.Path(__file__).resolve().parent


# ---------------------------------------------------------------- run by the writer
def where(db) -> int:
    return os.getpid()


def add_study(db, name: str) -> int:
    if name == "bad":
        raise SessionError("refused: bad")
    return db["studies"].insert({"name": name, "created_at": "t", "size": 8, "tasks": "[]",
                                 "options": "{}", "seed": 1}).last_pk


class TwoPartError(Exception):
    def __init__(self, a, b):  # pickles as TwoPartError(message): cannot be rebuilt
        super().__init__(f"{a} and {b}")


def fail_oddly(db):
    raise TwoPartError("one", "two")


def unsendable(db):
    add_study(db, "kept")
    return lambda: None  # a result pickle cannot carry


def die_unless_in(db, pid: int) -> str:
    """Kills the writer mid-request; runs normally in the process `pid`."""
    if os.getpid() != pid:
        os._exit(3)
    return "ran in the caller"


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def db(template, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), str(TESTS)]))  # so the writer finds this module's functions
    path = copy_study(template, tmp_path)
    yield path
    writer_process.stop()


def _study_names(path) -> set[str]:
    conn = open_db(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM studies")}
    finally:
        conn.close()


# ---------------------------------------------------------------- tests
def test_writes_run_in_the_writer_process_and_here_without_one(db):
    assert writer_process.call(db, where) == os.getpid()  # none started: in this process
    writer = writer_process.start(db)
    assert writer_process.start(db) is writer  # one per database
    pid = writer_process.call(db, where)
    assert pid == writer.proc.pid != os.getpid()
    assert writer_process.call(db, add_study, "via-writer") > 0
    assert "via-writer" in _study_names(db)  # committed before the reply
    writer_process.stop(db)
    assert writer.proc.returncode == 0  # it ended cleanly
    assert not pathlib.Path(writer.folder).exists()
    assert writer_process.call(db, where) == os.getpid()


def test_submit_through_the_writer(db):
    writer_process.start(db)
    ref = reader_for_token(db, invite(db, "pilot", "ann"))
    view = next_case(db, ref.reader_id)
    cid = uuid.uuid4().hex
    ack = submit(db, ref.reader_id, view.assignment_id, "turing", 5, 900, cid)
    again = submit(db, ref.reader_id, view.assignment_id, "turing", 5, 900, cid)
    assert (ack.duplicate, again.duplicate, again.response_id) == (False, True, ack.response_id)
    assert ack.assignment_complete
    assert next_case(db, ref.reader_id).position == view.position + 1
    # the library's errors arrive as themselves
    with pytest.raises(SessionError, match="different answer"):
        submit(db, ref.reader_id, view.assignment_id, "turing", 1, 900, cid)
    other = reader_for_token(db, invite(db, "pilot", "bob"))
    with pytest.raises(NotAuthorised, match="no such assignment"):
        submit(db, other.reader_id, view.assignment_id, "turing", 5, 900, uuid.uuid4().hex)
    assert writer_process.writer_for(db) is not None  # all of it went through the writer


def test_concurrent_requests_commit_together_and_fail_alone(db):
    writer_process.start(db)
    names = [f"s{i}" for i in range(12)] + ["bad"]
    results, errors = {}, {}

    def send(name):
        try:
            results[name] = writer_process.call(db, add_study, name)
        except SessionError as exc:
            errors[name] = str(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == {"bad": "refused: bad"}
    assert set(results) == set(names) - {"bad"}
    assert _study_names(db) >= set(results) and "bad" not in _study_names(db)


def test_commit_together_rolls_back_only_the_failing_function(db):
    outcomes = commit_together(db, [lambda d: add_study(d, "x1"), lambda d: add_study(d, "bad"),
                                    lambda d: add_study(d, "x2")])
    assert [type(e).__name__ if e else "ok" for _, e in outcomes] == ["ok", "SessionError", "ok"]
    assert {"x1", "x2"} <= _study_names(db)


def test_an_error_that_cannot_travel_arrives_in_words(db):
    writer_process.start(db)
    with pytest.raises(StudyError, match="TwoPartError: one and two"):
        writer_process.call(db, fail_oddly)
    assert writer_process.call(db, add_study, "after") > 0  # the writer carries on


def test_a_result_that_cannot_travel_is_reported_and_the_write_kept(db):
    writer_process.start(db)
    with pytest.raises(StudyError, match="saved, but its result could not be sent back"):
        writer_process.call(db, unsendable)
    assert "kept" in _study_names(db)
    assert writer_process.call(db, where) != os.getpid()  # the writer carries on


def test_writer_dying_mid_request(db):
    """It cannot be known whether the request committed: a non-idempotent call says so;
    an idempotent one runs again here. Later calls run here."""
    writer = writer_process.start(db)
    with pytest.raises(writer_process.WriterLost, match="may or may not"):
        writer_process.call(db, die_unless_in, os.getpid())
    assert writer.proc.returncode == 3
    assert writer_process.writer_for(db) is None
    assert writer_process.call(db, where) == os.getpid()
    writer_process.start(db)  # a new one
    assert writer_process.call(db, die_unless_in, os.getpid(),
                               idempotent=True) == "ran in the caller"


def test_answers_are_kept_when_the_writer_is_killed_between_them(db):
    writer = writer_process.start(db)
    ref = reader_for_token(db, invite(db, "pilot", "cy"))
    acks = []
    for i in range(4):
        if i == 2:
            writer.proc.send_signal(signal.SIGKILL)
            writer.proc.wait()
        view = next_case(db, ref.reader_id)
        acks.append(submit(db, ref.reader_id, view.assignment_id, "turing", 2, 500,
                           uuid.uuid4().hex))
    conn = open_db(db)
    try:
        stored = [r[0] for r in conn.execute(
            "SELECT id FROM responses WHERE reader_id = ? ORDER BY id", [ref.reader_id])]
    finally:
        conn.close()
    assert stored == [a.response_id for a in acks]  # every answer, once


def test_only_holders_of_the_key_may_connect(db):
    writer = writer_process.start(db)
    assert stat.S_IMODE(os.stat(writer.folder).st_mode) == 0o700
    with pytest.raises(AuthenticationError):
        Client(writer.address, family="AF_UNIX", authkey=b"guessed" * 4)
    assert writer_process.call(db, where) == writer.proc.pid  # still serving the rightful


def test_a_forked_child_does_not_use_the_parents_writer(db, monkeypatch):
    writer = writer_process.start(db)
    monkeypatch.setattr(writer, "owner_pid", writer.owner_pid + 1)  # as in a child
    assert writer_process.writer_for(db) is None
    assert writer_process.call(db, where) == os.getpid()


def test_start_refuses_what_is_not_a_study_database(tmp_path):
    bogus = tmp_path / "notes.db"
    bogus.write_text("not a database")
    with pytest.raises(StudyError) as info:
        writer_process.start(bogus)
    assert "\n" not in str(info.value) and str(info.value)
    assert writer_process.writer_for(bogus) is None


def test_the_writer_ends_with_the_process_that_started_it(db):
    code = ("import os, sys; from studies.storage import writer_process as w; wr = w.start(sys.argv[1]); "
            "print(wr.proc.pid, wr.folder, flush=True); os._exit(0)")  # no clean-up at exit
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    pid, folder = out.stdout.split()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (_alive(int(pid)) or os.path.exists(folder)):
        time.sleep(0.05)
    assert not _alive(int(pid))
    assert not os.path.exists(folder)  # its socket folder went with it


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has ended (its parent is gone)
    except FileNotFoundError:
        return False
