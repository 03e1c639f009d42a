"""studies.storage: schema, pragmas, migrations, append-only responses, write retries."""
import sqlite3
import threading

import pytest

from studies import records
from studies.storage import connections, group_commit, schema
from studies.storage.schema import MIGRATIONS, SCHEMA_VERSION
from studies.storage.connections import open_db, transaction
from studies.storage.group_commit import write

TABLES = {"studies", "stimuli", "cases", "readers", "assignments", "responses", "audit_log",
          "schema_version"}


def test_open_db_creates_schema_with_wal_and_foreign_keys(tmp_path):
    db = open_db(tmp_path / "s.db")
    try:
        assert TABLES <= set(db.table_names())
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == connections.BUSY_TIMEOUT_MS
        versions = [r["version"] for r in db.query("SELECT version FROM schema_version")]
        assert versions == [v for v, _ in MIGRATIONS] and versions[-1] == SCHEMA_VERSION
    finally:
        db.close()


def test_reopening_does_not_reapply_migrations(tmp_path):
    path = tmp_path / "s.db"
    open_db(path).close()
    db = open_db(path)
    try:
        assert db.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        db.close()


def test_new_migration_is_applied_once(tmp_path, monkeypatch):
    path = tmp_path / "s.db"
    open_db(path).close()

    def add_note(db):
        db["studies"].add_column("note", str)

    monkeypatch.setattr(schema, "MIGRATIONS", MIGRATIONS + [(SCHEMA_VERSION + 1, add_note)])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    for _ in range(2):
        db = open_db(path)
        try:
            assert "note" in db["studies"].columns_dict
            assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION + 1
        finally:
            db.close()


def test_foreign_keys_are_enforced(tmp_path):
    db = open_db(tmp_path / "s.db")
    try:
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO readers (study_id, name, token_hash, ordinal, created_at) "
                       "VALUES (999, 'x', 'h', 0, 'now')")
    finally:
        db.close()


def _seed_response(db):
    sid = db["studies"].insert({"name": "s", "created_at": "t", "size": 8, "tasks": "[]",
                                "options": "{}", "seed": 1}).last_pk
    db["stimuli"].insert({"id": "stim", "study_id": sid, "sha256": "x", "width": 8, "height": 8})
    cid = db["cases"].insert({"study_id": sid, "case_key": "c", "stimulus_id": "stim",
                              "source": "real", "role": "main"}).last_pk
    rid = db["readers"].insert({"study_id": sid, "name": "r", "token_hash": "h", "ordinal": 0,
                                "created_at": "t"}).last_pk
    aid = db["assignments"].insert({"reader_id": rid, "case_id": cid, "position": 1,
                                    "kind": "main", "tasks": '["turing"]', "n_tasks": 1,
                                    "view_id": "v"}).last_pk
    db["responses"].insert({"client_id": "c1", "reader_id": rid, "assignment_id": aid,
                            "case_id": cid, "task": "turing", "answer": "real", "rating": 1,
                            "duration_ms": 5, "answered_at": "t"})
    return aid


def test_responses_are_append_only_and_client_id_unique(tmp_path):
    db = open_db(tmp_path / "s.db")
    try:
        aid = _seed_response(db)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE responses SET rating = 6")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM responses")
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO responses (client_id, reader_id, assignment_id, case_id, task, "
                       "answer, rating, duration_ms, answered_at) "
                       "SELECT client_id, reader_id, assignment_id, case_id, task, answer, rating, "
                       "duration_ms, answered_at FROM responses")
        assert db.execute("SELECT count(*), max(rating) FROM responses WHERE assignment_id = ?",
                          [aid]).fetchone() == (1, 1)
    finally:
        db.close()


def test_transaction_rolls_back_on_error(tmp_path):
    path = tmp_path / "s.db"
    db = open_db(path)
    try:
        with pytest.raises(RuntimeError):
            with transaction(db):
                db["studies"].insert({"name": "gone", "created_at": "t", "size": 8, "tasks": "[]",
                                      "options": "{}", "seed": 1})
                raise RuntimeError("boom")
        assert db.execute("SELECT count(*) FROM studies").fetchone()[0] == 0
    finally:
        db.close()


def test_write_waits_for_a_held_lock_and_retries(tmp_path, monkeypatch):
    """A writer that finds the database locked beyond the busy timeout retries instead of
    failing: the lock is held longer than the (shortened) timeout, and the write lands."""
    path = tmp_path / "s.db"
    open_db(path).close()
    monkeypatch.setattr(connections, "BUSY_TIMEOUT_MS", 50)
    locked, done = threading.Event(), threading.Event()

    def hold_lock():  # sqlite3 connections belong to their thread: lock and release here
        holder = open_db(path)
        holder.execute("BEGIN IMMEDIATE")
        locked.set()
        done.wait(0.4)
        holder.execute("COMMIT")
        holder.close()

    t = threading.Thread(target=hold_lock)
    t.start()
    locked.wait(5)
    calls = []

    def insert(db):
        calls.append(1)
        return db["studies"].insert({"name": "late", "created_at": "t", "size": 8,
                                     "tasks": "[]", "options": "{}", "seed": 1}).last_pk

    try:
        assert write(path, insert) == 1
    finally:
        done.set()
        t.join()
    assert len(calls) == 1  # the lock was waited for before the body ran, not mid-way
    db = open_db(path)
    try:
        assert [r["name"] for r in db.query("SELECT name FROM studies")] == ["late"]
    finally:
        db.close()


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_db(tmp_path / "nope" / "s.db")


def test_stimuli_dir_is_next_to_db(tmp_path):
    assert connections.stimuli_dir(tmp_path / "a" / "x.db") == tmp_path / "a" / "x.stimuli"


def test_migration_2_gives_existing_studies_a_fresh_random_order_secret(tmp_path):
    """A schema-1 database (studies with a typed seed and invited readers) upgrades: every
    study gets its own 256-bit secret, the old seed no longer counts, orders stay stored,
    and a new invitation works; study_row never returns the secret."""
    import json

    from sqlite_utils import Database

    from studies.readers import invite

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    db = Database(conn)
    db["schema_version"].create({"version": int, "applied_at": str}, pk="version")
    schema._migration_1(db)
    db["schema_version"].insert({"version": 1, "applied_at": "2026-01-01T00:00:00.000Z"})
    for name in ("a", "b"):
        sid = db["studies"].insert({
            "name": name, "created_at": "t", "size": 32, "tasks": '["turing"]',
            "options": json.dumps({"tasks": ["turing"], "seed": 42}), "seed": 42}).last_pk
        db["stimuli"].insert_all([{"id": f"{name}{i}", "study_id": sid, "sha256": "x",
                                   "width": 32, "height": 32} for i in range(4)])
        db["cases"].insert_all([{"study_id": sid, "case_key": f"c{i}", "stimulus_id": f"{name}{i}",
                                 "source": "real" if i < 2 else "synthetic", "role": "main"}
                                for i in range(4)])
    conn.commit()
    conn.close()

    db = open_db(path)
    try:
        rows = db.execute("SELECT name, order_secret, options FROM studies ORDER BY id").fetchall()
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == schema.SCHEMA_VERSION
        study = records.study_row(db, "a")
    finally:
        db.close()
    secrets_ = [r[1] for r in rows]
    assert all(isinstance(s, bytes) and len(s) == 32 for s in secrets_)
    assert secrets_[0] != secrets_[1]
    assert all(json.loads(r[2])["seed"] is None for r in rows)
    assert "order_secret" not in study and study["name"] == "a"
    assert invite(path, "a", "dr-new")


def _insert_study(name):
    def fn(db):
        if name == "bad":
            raise ValueError("refused")
        return db["studies"].insert({"name": name, "created_at": "t", "size": 8,
                                     "tasks": "[]", "options": "{}", "seed": 1}).last_pk
    return fn


def test_concurrent_writes_in_one_process_are_committed_together(tmp_path, monkeypatch):
    """Group commit: writes queued while another is being committed share one transaction
    (one durable commit), each still gets its own result, and a failing one rolls back only
    itself. Made deterministic by marking a batch as running while they queue."""
    path = tmp_path / "s.db"
    open_db(path).close()
    key, queue = group_commit._queue_for(path)
    begins = []
    real_begin = connections.begin_immediate
    monkeypatch.setattr(connections, "begin_immediate",
                        lambda conn, deadline: (begins.append(1), real_begin(conn, deadline)))
    names = [f"r{i}" for i in range(8)] + ["bad"]
    results, errors = {}, {}

    def call(name):
        try:
            results[name] = write(path, _insert_study(name))
        except ValueError as exc:
            errors[name] = str(exc)

    with queue.wake:
        queue.running = True  # as if another thread were committing a batch
    threads = [threading.Thread(target=call, args=(n,)) for n in names]
    for t in threads:
        t.start()
    while len(queue.pending) < len(names):  # all queued behind the running batch
        threading.Event().wait(0.01)
    with queue.wake:  # that batch ends: one waiter takes all nine
        queue.running = False
        queue.wake.notify_all()
    for t in threads:
        t.join(30)
    assert len(begins) == 1  # one transaction for all nine
    assert errors == {"bad": "refused"}
    db = open_db(path)
    try:
        stored = {r["name"]: r["id"] for r in db.query("SELECT id, name FROM studies")}
    finally:
        db.close()
    assert stored == results and set(stored) == set(names) - {"bad"}


def test_write_gives_up_after_the_deadline_without_the_default_busy_handler(tmp_path, monkeypatch):
    """Another connection (as another process would) keeps the write lock: the writer
    retries with short sleeps (busy timeout 0 while it waits) and reports 'locked' at the
    deadline; nothing is stored."""
    path = tmp_path / "s.db"
    open_db(path).close()
    monkeypatch.setattr(connections, "WRITE_DEADLINE_S", 0.3)
    holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    seen_timeouts = []

    def spy(db):
        seen_timeouts.append(db.execute("PRAGMA busy_timeout").fetchone()[0])
        return 1

    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            write(path, _insert_study("never"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert write(path, spy) == 1
    assert seen_timeouts == [connections.BUSY_TIMEOUT_MS]  # restored for reads after BEGIN
    db = open_db(path)
    try:
        assert db.execute("SELECT count(*) FROM studies").fetchone()[0] == 0
    finally:
        db.close()


def test_kept_writer_connection_follows_a_replaced_database_file(tmp_path):
    """The writer connection kept between batches must never write into a file that is no
    longer at the path (deleted, or replaced by a rename)."""
    path = tmp_path / "s.db"
    open_db(path).close()
    write(path, _insert_study("first"))
    other = tmp_path / "other.db"
    open_db(other).close()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"s.db{suffix}").unlink(missing_ok=True)
    import os
    os.replace(other, path)
    write(path, _insert_study("second"))
    db = open_db(path)
    try:
        assert [r["name"] for r in db.query("SELECT name FROM studies")] == ["second"]
    finally:
        db.close()


def test_write_inside_a_write_function_is_refused_not_a_deadlock(tmp_path):
    """The writer slot is held while write functions run; a nested write would wait for
    itself forever, so it is refused, and the outer write rolls back."""
    path = tmp_path / "s.db"
    open_db(path).close()

    def outer(db):
        _insert_study("outer")(db)
        return write(path, _insert_study("inner"))

    with pytest.raises(RuntimeError, match="inside a write function"):
        write(path, outer)
    assert write(path, _insert_study("after")) == 1  # the slot was released


def test_kept_writer_checkpoints_off_the_commit_path(tmp_path, monkeypatch):
    """The kept writer connection does not checkpoint inside COMMIT; every
    CHECKPOINT_EVERY batches a background PASSIVE checkpoint copies the WAL into the file
    (seen by reading the file alone, `immutable=1`, which ignores the WAL)."""
    path = tmp_path / "s.db"
    open_db(path).close()
    monkeypatch.setattr(group_commit, "CHECKPOINT_EVERY", 4)

    def in_file_alone():
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return conn.execute("SELECT count(*) FROM studies").fetchone()[0]
        finally:
            conn.close()

    for i in range(3):
        write(path, _insert_study(f"s{i}"))
    assert in_file_alone() == 0  # all three still only in the WAL
    write(path, _insert_study("s3"))  # the 4th batch starts a checkpoint
    _, queue = group_commit._queue_for(path)
    with queue.checkpointing:  # wait for it to finish
        pass
    assert in_file_alone() == 4


def _names(path):
    with connections.reading(path) as db:
        return [r[0] for r in db.execute("SELECT name FROM studies ORDER BY id")]


def test_reading_reuses_its_connection_but_follows_the_file_at_the_path(tmp_path):
    """`reading` keeps each thread's connection (opening one was a third of an answer's
    database CPU), but a replaced, deleted or emptied database is never read through it."""
    import os

    from studies.errors import DatabaseNotFound, NotAStudyDatabase

    path = tmp_path / "s.db"
    open_db(path).close()
    write(path, _insert_study("first"))
    with connections.reading(path) as a:
        conn = a.conn
    with connections.reading(path) as b:
        assert b.conn is conn  # kept
        with connections.reading(path) as nested:  # the kept one is busy: its own connection
            assert nested.conn is not conn
    write(path, _insert_study("second"))
    assert _names(path) == ["first", "second"]  # a kept connection sees new commits
    other = tmp_path / "other.db"
    open_db(other).close()
    write(other, _insert_study("elsewhere"))
    group_commit.release_writers()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"s.db{suffix}").unlink(missing_ok=True)
    os.replace(other, path)
    assert _names(path) == ["elsewhere"]  # the new file, not the kept connection's
    os.unlink(path)
    with pytest.raises(DatabaseNotFound):
        _names(path)
    path.write_bytes(b"")
    with pytest.raises(NotAStudyDatabase):
        _names(path)


def test_reading_sees_one_snapshot_per_block(tmp_path):
    """The reads of one `reading` block agree with each other (one read transaction),
    even while a writer commits in between; the next block sees the commit."""
    path = tmp_path / "s.db"
    open_db(path).close()
    write(path, _insert_study("first"))
    with connections.reading(path) as db:
        before = db.execute("SELECT count(*) FROM studies").fetchone()[0]
        t = threading.Thread(target=write, args=(path, _insert_study("second")))
        t.start()
        t.join()
        assert db.execute("SELECT count(*) FROM studies").fetchone()[0] == before == 1
    assert _names(path) == ["first", "second"]


def test_reading_without_snapshot_holds_no_read_transaction(tmp_path):
    """`snapshot=False` (next_case's one statement): each statement sees the latest commit,
    and after a single-row read nothing pins the WAL — a full checkpoint can complete."""
    path = tmp_path / "s.db"
    open_db(path).close()
    write(path, _insert_study("first"))
    with connections.reading(path, snapshot=False) as db:
        assert db.execute("SELECT name FROM studies LIMIT 1").fetchone() == ("first",)
        write(path, _insert_study("second"))
        assert db.execute("SELECT count(*) FROM studies").fetchone()[0] == 2
        other = sqlite3.connect(str(path))
        try:
            busy, log, done = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            other.close()
        assert busy == 0 and log == done


def test_a_checkpoint_keeps_reading_connections_but_not_their_pages(tmp_path):
    """A checkpoint changes the database file's size and mtime: `reading` keeps its
    connection (reopening made every thread of a busy server open one after each
    checkpoint) but drops its cached pages, so a file copied over the database in place is
    read afresh, as a new connection would."""
    path = tmp_path / "s.db"
    open_db(path).close()
    write(path, _insert_study("first"))
    with connections.reading(path) as a:
        conn = a.conn
        assert [r[0] for r in a.execute("SELECT name FROM studies")] == ["first"]
    write(path, _insert_study("second"))
    before = path.stat()
    other = sqlite3.connect(str(path))
    try:
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    finally:
        other.close()
    assert (path.stat().st_size, path.stat().st_mtime_ns) != (before.st_size, before.st_mtime_ns)
    with connections.reading(path) as b:
        assert b.conn is conn  # kept across the checkpoint
        assert [r[0] for r in b.execute("SELECT name FROM studies ORDER BY id")] == ["first", "second"]
    # another study database copied over it in place (same inode), its log empty
    elsewhere = tmp_path / "elsewhere.db"
    open_db(elsewhere).close()
    write(elsewhere, _insert_study("elsewhere"))
    group_commit.release_writers()  # (this thread's readers too: take a fresh one to keep)
    with connections.reading(path) as c:
        kept = c.conn
        assert c.execute("SELECT count(*) FROM studies").fetchone()[0] == 2
    inode = path.stat().st_ino
    path.write_bytes(elsewhere.read_bytes())
    assert path.stat().st_ino == inode
    with connections.reading(path) as d:
        assert d.conn is kept
        assert [r[0] for r in d.execute("SELECT name FROM studies")] == ["elsewhere"]


def test_reader_title_column_is_added_to_an_existing_database(tmp_path, monkeypatch):
    """A database made before the reader-facing title gains `studies.reader_title` (NULL:
    readers see the neutral default) when it is next opened."""
    path = tmp_path / "s.db"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", [mg for mg in MIGRATIONS if mg[0] < 10])
        m.setattr(schema, "SCHEMA_VERSION", 9)
        db = open_db(path)
        assert "reader_title" not in db["studies"].columns_dict
        db.close()
    db = open_db(path)
    try:
        assert "reader_title" in db["studies"].columns_dict
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 10
    finally:
        db.close()
