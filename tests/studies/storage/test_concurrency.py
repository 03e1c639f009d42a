"""Many readers at once: threads and several processes writing to one database file, with
the answers committed by the threads themselves or by each process's writer process
(`studies.storage.writer_process`). Every acknowledged response must be stored exactly once;
nothing acknowledged is lost."""
import multiprocessing
import threading
import uuid

import pytest

from studies.storage.connections import open_db
from studies.design import StudyOptions
from studies.readers import invite, reader_for_token
from studies.storage import writer_process
from studies.session import next_case, submit
from study_fixtures import make_study

THREADS_MAIN = 20          # writer threads in this process
PROCESSES = 4              # worker processes ...
THREADS_PER_PROCESS = 10   # ... each with this many writer threads
PER_WRITER = 5             # answers per writer, each submitted twice (a retry)


def _writer(db_path, token, barrier, acks, errors):
    """One reader answering PER_WRITER cases, re-sending each answer (a retry)."""
    try:
        ref = reader_for_token(db_path, token)
        barrier.wait(timeout=120)
        for _ in range(PER_WRITER):
            view = next_case(db_path, ref.reader_id)
            cid = str(uuid.uuid4())
            first = submit(db_path, ref.reader_id, view.assignment_id, "turing", 3, 100, cid)
            again = submit(db_path, ref.reader_id, view.assignment_id, "turing", 3, 100, cid)
            acks.append((cid, first.response_id, first.duplicate, again.response_id, again.duplicate))
    except BaseException as exc:  # reported to the test, which fails on any
        errors.append(f"{type(exc).__name__}: {exc}")


def _process_main(db_path, tokens, barrier, queue, with_writer):
    acks, errors = [], []
    if with_writer:
        writer_process.start(db_path)
    threads = [threading.Thread(target=_writer, args=(db_path, t, barrier, acks, errors))
               for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if with_writer and writer_process.writer_for(db_path) is None:
        errors.append("the writer process was lost")  # the answers went another way
    writer_process.stop()
    queue.put((acks, errors))


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crowd")
    db, _ = make_study(tmp, "crowd", options=StudyOptions(seed=2))
    # Each test answers as readers of its own, so no test sees another's rows whatever
    # order they run in.
    return db


@pytest.mark.slow
@pytest.mark.parametrize("with_writer", [False, True], ids=["threads-commit", "writer-process"])
def test_concurrent_writers_threads_and_processes(crowd, with_writer):
    db = crowd
    n_writers = THREADS_MAIN + PROCESSES * THREADS_PER_PROCESS
    prefix = f"{'w' if with_writer else 't'}-reader-"
    tokens = [invite(db, "crowd", f"{prefix}{i:03d}") for i in range(n_writers)]
    assert n_writers >= 50
    ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
    barrier = ctx.Barrier(THREADS_MAIN + PROCESSES * THREADS_PER_PROCESS)
    queue = ctx.Queue()
    proc_tokens = tokens[THREADS_MAIN:]
    procs = [ctx.Process(target=_process_main, args=(
        str(db), proc_tokens[i * THREADS_PER_PROCESS:(i + 1) * THREADS_PER_PROCESS], barrier, queue,
        with_writer)) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    acks, errors = [], []
    if with_writer:  # then five writer processes meet at SQLite's lock
        writer_process.start(db)
    try:
        threads = [threading.Thread(target=_writer, args=(str(db), t, barrier, acks, errors))
                   for t in tokens[:THREADS_MAIN]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not with_writer or writer_process.writer_for(db) is not None  # still in use
    finally:
        writer_process.stop()
    for _ in procs:
        more_acks, more_errors = queue.get(timeout=300)
        acks += more_acks
        errors += more_errors
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert errors == []
    assert len(acks) == n_writers * PER_WRITER
    # the first send is new, the retry is recognised and returns the same row
    assert all(not d1 and d2 and r1 == r2 for _, r1, d1, r2, d2 in acks)
    conn = open_db(db)
    try:
        writers = f"(SELECT id FROM readers WHERE name LIKE '{prefix}%')"
        stored = conn.execute(f"SELECT client_id, id FROM responses WHERE reader_id IN {writers}").fetchall()
        per_reader = conn.execute(
            "SELECT count(*) FROM assignments WHERE completed_at IS NOT NULL "
            f"AND reader_id IN {writers} GROUP BY reader_id").fetchall()
    finally:
        conn.close()
    assert len(stored) == len({c for c, _ in stored})  # no duplicates at all
    assert sorted(stored) == sorted((cid, rid) for cid, rid, *_ in acks)  # exactly the acked ones
    assert sorted(c for (c,) in per_reader) == [PER_WRITER] * n_writers


@pytest.mark.parametrize("with_writer", [False, True], ids=["threads-commit", "writer-process"])
def test_simultaneous_double_click_stores_one_row(crowd, with_writer):
    """Ten threads send the same client_id for the same answer at the same moment."""
    db = crowd
    token = invite(db, "crowd", f"double-clicker-{with_writer}")
    if with_writer:
        writer_process.start(db)
    ref = reader_for_token(db, token)
    view = next_case(db, ref.reader_id)
    cid = str(uuid.uuid4())
    barrier = threading.Barrier(10)
    acks, errors = [], []

    def click():
        try:
            barrier.wait(timeout=30)
            acks.append(submit(db, ref.reader_id, view.assignment_id, "turing", 5, 50, cid))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=click) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = writer_process.writer_for(db) is not None
    writer_process.stop()
    assert used == with_writer
    assert errors == []
    assert len({a.response_id for a in acks}) == 1
    assert sum(not a.duplicate for a in acks) == 1
    conn = open_db(db)
    try:
        assert conn.execute("SELECT count(*) FROM responses WHERE client_id = ?", [cid]).fetchone()[0] == 1
    finally:
        conn.close()
