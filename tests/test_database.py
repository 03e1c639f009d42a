"""studies.database: schema, pragmas, migrations, append-only responses, write retries."""
import sqlite3
import threading

import pytest

from studies import database
from studies.database import MIGRATIONS, SCHEMA_VERSION, open_db, transaction, write

TABLES = {"studies", "stimuli", "cases", "readers", "assignments", "responses", "audit_log",
          "schema_version"}


def test_open_db_creates_schema_with_wal_and_foreign_keys(tmp_path):
    db = open_db(tmp_path / "s.db")
    try:
        assert TABLES <= set(db.table_names())
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == database.BUSY_TIMEOUT_MS
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

    monkeypatch.setattr(database, "MIGRATIONS", MIGRATIONS + [(SCHEMA_VERSION + 1, add_note)])
    monkeypatch.setattr(database, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
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
    monkeypatch.setattr(database, "BUSY_TIMEOUT_MS", 50)
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
    assert database.stimuli_dir(tmp_path / "a" / "x.db") == tmp_path / "a" / "x.stimuli"


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
    database._migration_1(db)
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
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        study = database.study_row(db, "a")
    finally:
        db.close()
    secrets_ = [r[1] for r in rows]
    assert all(isinstance(s, bytes) and len(s) == 32 for s in secrets_)
    assert secrets_[0] != secrets_[1]
    assert all(json.loads(r[2])["seed"] is None for r in rows)
    assert "order_secret" not in study and study["name"] == "a"
    assert invite(path, "a", "dr-new")
