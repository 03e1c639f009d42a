"""The reader-study database: schema, migrations, connections and write transactions.

One SQLite file per deployment (many studies), opened through sqlite-utils. Every
thread/request opens its own connection with `open_db` (Python's sqlite3 refuses to share
one across threads, and a fresh connection is cheap). WAL mode lets readers proceed while
one writer commits; every write goes through `write(...)`, which takes the write lock up
front (`BEGIN IMMEDIATE`, so two writers never deadlock upgrading a read lock) and retries
with jittered backoff when another process holds it longer than the busy timeout.

Stimulus PNGs live as files under `<db dir>/<db stem>.stimuli/<stimulus_id>.png`
(`stimuli_dir`): the database stays small, and the only files ever served are those
opaque-named, metadata-free PNGs.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import pathlib
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlite_utils import Database

from studies.errors import DatabaseNotFound, StudyNotFound

SCHEMA_VERSION = 5
BUSY_TIMEOUT_MS = 5_000
WRITE_ATTEMPTS = 12  # with backoff capped at 2 s plus the busy timeout: ~80 s worst case

T = TypeVar("T")


def utc_now() -> str:
    """ISO-8601 UTC timestamp with milliseconds (sorts lexically = chronologically)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stimuli_dir(db_path: str | pathlib.Path) -> pathlib.Path:
    """Folder holding a database's stimulus PNGs (`<db dir>/<db stem>.stimuli`)."""
    p = pathlib.Path(db_path)
    return p.parent / f"{p.stem}.stimuli"


# --------------------------------------------------------------------------- schema
def _migration_1(db: Database) -> None:
    db["studies"].create(
        {
            "id": int, "name": str, "created_at": str, "size": int, "tasks": str,
            "options": str, "seed": int, "audit_report": str, "audit_text": str,
        },
        pk="id", not_null={"name", "created_at", "size", "tasks", "options", "seed"},
    )
    db["studies"].create_index(["name"], unique=True)
    db["stimuli"].create(
        {
            "id": str, "study_id": int, "sha256": str, "width": int, "height": int,
            "original_format": str, "original_width": int, "original_height": int,
            "original_mode": str, "original_bit_depth": int, "original_bytes": int,
        },
        pk="id", foreign_keys=[("study_id", "studies", "id")],
        not_null={"study_id", "sha256", "width", "height"},
    )
    db["stimuli"].create_index(["study_id"])
    db["cases"].create(
        {
            "id": int, "study_id": int, "case_key": str, "stimulus_id": str, "source": str,
            "modality": str, "prompt": str, "generator": str, "group_name": str,
            "original_path": str, "decode_options": str, "role": str, "manifest_row": int,
        },
        pk="id",
        foreign_keys=[("study_id", "studies", "id"), ("stimulus_id", "stimuli", "id")],
        not_null={"study_id", "case_key", "stimulus_id", "source", "role"},
    )
    db["cases"].create_index(["study_id", "case_key"], unique=True)
    db["cases"].create_index(["stimulus_id"], unique=True)
    db["readers"].create(
        {"id": int, "study_id": int, "name": str, "token_hash": str, "ordinal": int,
         "created_at": str, "token_issued_at": str},
        pk="id", foreign_keys=[("study_id", "studies", "id")],
        not_null={"study_id", "name", "token_hash", "ordinal", "created_at"},
    )
    db["readers"].create_index(["study_id", "name"], unique=True)
    db["readers"].create_index(["token_hash"], unique=True)
    db["assignments"].create(
        {
            "id": int, "reader_id": int, "case_id": int, "position": int, "kind": str,
            "tasks": str, "n_tasks": int, "expected": str, "view_id": str,
            "completed_at": str,
        },
        pk="id",
        foreign_keys=[("reader_id", "readers", "id"), ("case_id", "cases", "id")],
        not_null={"reader_id", "case_id", "position", "kind", "tasks", "n_tasks", "view_id"},
    )
    db["assignments"].create_index(["reader_id", "position"], unique=True)
    db["assignments"].create_index(["view_id"], unique=True)
    db["assignments"].create_index(["reader_id", "completed_at", "position"])
    db["responses"].create(
        {
            "id": int, "client_id": str, "reader_id": int, "assignment_id": int,
            "case_id": int, "task": str, "answer": str, "rating": int, "duration_ms": int,
            "shown_at": str, "answered_at": str,
        },
        pk="id",
        foreign_keys=[
            ("reader_id", "readers", "id"), ("assignment_id", "assignments", "id"),
            ("case_id", "cases", "id"),
        ],
        not_null={"client_id", "reader_id", "assignment_id", "case_id", "task", "answer",
                  "rating", "duration_ms", "answered_at"},
    )
    db["responses"].create_index(["client_id"], unique=True)
    db["responses"].create_index(["assignment_id", "task"])
    db["responses"].create_index(["reader_id"])
    db["audit_log"].create(
        {"id": int, "at": str, "actor": str, "action": str, "study_id": int, "detail": str},
        pk="id", foreign_keys=[("study_id", "studies", "id")],
        not_null={"at", "actor", "action"},
    )
    db["audit_log"].create_index(["study_id", "at"])
    # Append-only responses: the database itself refuses edits and deletes.
    db.execute(
        "CREATE TRIGGER responses_no_update BEFORE UPDATE ON responses "
        "BEGIN SELECT RAISE(ABORT, 'responses are append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER responses_no_delete BEFORE DELETE ON responses "
        "BEGIN SELECT RAISE(ABORT, 'responses are append-only'); END"
    )


def _migration_2(db: Database) -> None:
    """Per-study order secret (256 random bits; never printed, exported or shown): each
    reader's case order is derived from it, not from a seed a user typed. Existing studies
    get a fresh random secret (their invited readers keep their stored orders; their old
    seed no longer determines anything, so it is cleared from the options)."""
    db["studies"].add_column("order_secret", bytes)
    for sid, options in db.execute("SELECT id, options FROM studies").fetchall():
        try:
            opts = json.loads(options)
        except (TypeError, ValueError):
            opts = None
        if isinstance(opts, dict) and "seed" in opts:
            opts["seed"] = None
            options = json.dumps(opts)
        db.execute("UPDATE studies SET order_secret = ?, options = ? WHERE id = ?",
                   [secrets.token_bytes(32), options, sid])


def _migration_5(db: Database) -> None:
    """Study management (issue 13): study status (open | closed | archived) and the texts
    shown before the first case; reader profile, consent and deactivation; wash-out delays
    on repeat reads; the second case of a paired (2AFC) read; deployment settings (the
    studio's public address). Existing studies are open, existing readers active."""
    for col, typ in (("status", str), ("status_at", str), ("instructions", str),
                     ("consent_text", str), ("profile_fields", str)):
        db["studies"].add_column(col, typ)
    db.execute("UPDATE studies SET status = 'open', profile_fields = '[]'")
    for col, typ in (("profile", str), ("consented_at", str), ("deactivated_at", str)):
        db["readers"].add_column(col, typ)
    db.execute("UPDATE readers SET profile = '{}'")
    # min_delay_s: a repeat read becomes available this long after the first read of the
    # same case was completed. pair_case_id / pair_view_id: the right-hand image of a pair.
    for col, typ in (("min_delay_s", int), ("pair_case_id", int), ("pair_view_id", str)):
        db["assignments"].add_column(col, typ)
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx_assignments_pair_view_id "
               "ON assignments(pair_view_id)")
    db["settings"].create({"key": str, "value": str}, pk="key")


# Ordered list of (version, migration). Append new ones; never edit an applied one.
MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (5, _migration_5),
]
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


def _is_busy(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


def _current_version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    return row[0] or 0


def _migrate(db: Database) -> None:
    if _current_version(db.conn) >= SCHEMA_VERSION:
        return
    with transaction(db):
        current = _current_version(db.conn)  # re-read under the write lock
        if current == 0 and not db["schema_version"].exists():
            db["schema_version"].create({"version": int, "applied_at": str}, pk="version")
        for version, migration in MIGRATIONS:
            if version > current:
                migration(db)
                db["schema_version"].insert({"version": version, "applied_at": utc_now()})


def open_db(path: str | pathlib.Path, *, migrate: bool = True, create: bool = True) -> Database:
    """A fresh connection to the study database at `path` (created if missing, unless
    `create=False`, which raises DatabaseNotFound instead).

    WAL journal, foreign keys ON, busy timeout, schema migrated to `SCHEMA_VERSION`.
    Open one per thread or request and close it when done (`with open_db(p) as db:`).
    """
    path = pathlib.Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"database folder does not exist: {path.parent}")
    if not create and not path.is_file():
        raise DatabaseNotFound(f"study database not found: {path}")
    # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        retry_busy(lambda: _ensure_wal(conn))
        db = Database(conn)
        if migrate:
            retry_busy(lambda: _migrate(db))
    except BaseException:
        conn.close()
        raise
    return db


def _ensure_wal(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode=WAL")


def retry_busy(fn: Callable[[], T], attempts: int = WRITE_ATTEMPTS) -> T:
    for attempt in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or attempt == attempts - 1:
                raise
            # Jittered exponential backoff so colliding writers spread out.
            time.sleep(min(2.0, 0.01 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """One write transaction that holds the write lock from its first statement
    (waiting, with backoff, while another connection holds it)."""
    retry_busy(lambda: db.conn.execute("BEGIN IMMEDIATE"))
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    else:
        try:
            db.conn.execute("COMMIT")
        except BaseException:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            raise


def write(db_path: str | pathlib.Path, fn: Callable[[Database], T]) -> T:
    """Run `fn(db)` in one `BEGIN IMMEDIATE` transaction on a fresh connection, retrying
    the whole transaction if SQLite reports the database busy/locked. `fn` must be safe to
    re-run (it is: a rolled-back attempt leaves nothing behind)."""

    def attempt() -> T:
        with contextlib.closing(open_db(db_path, create=False)) as db:
            with transaction(db):
                return fn(db)

    return retry_busy(attempt)


@contextlib.contextmanager
def reading(db_path: str | pathlib.Path) -> Iterator[Database]:
    """A short-lived connection for reads (closed on exit); the database must exist."""
    db = open_db(db_path, create=False)
    try:
        yield db
    finally:
        db.close()


_SECRET_COLUMNS = ("order_secret",)


def study_row(db: Database, name: str) -> dict:
    """The studies row called `name` (without its order secret, so no caller can print or
    export it by accident; see `order_secret`); StudyNotFound otherwise."""
    rows = [{k: v for k, v in r.items() if k not in _SECRET_COLUMNS}
            for r in db.query("SELECT * FROM studies WHERE name = ?", [name])]
    if not rows:
        known = [r["name"] for r in db.query("SELECT name FROM studies ORDER BY name")]
        hint = f" (studies in this database: {', '.join(known)})" if known else " (no studies yet)"
        raise StudyNotFound(f"no study named {name!r}{hint}")
    return rows[0]


def order_secret(db: Database, study_id: int) -> bytes:
    """The study's order secret (readers.invite derives each reader's order from it).
    A study without one (should not happen after migration 2) gets a fresh random one."""
    row = db.execute("SELECT order_secret FROM studies WHERE id = ?", [study_id]).fetchone()
    secret = row[0] if row else None
    if not isinstance(secret, bytes) or len(secret) < 16:
        secret = secrets.token_bytes(32)
        db.execute("UPDATE studies SET order_secret = ? WHERE id = ?", [secret, study_id])
    return secret


def log_action(db: Database, actor: str, action: str, study_id: int | None = None,
               **detail: object) -> None:
    """Append to audit_log (who did what when); call inside the write transaction."""
    db["audit_log"].insert({
        "at": utc_now(), "actor": actor, "action": action, "study_id": study_id,
        "detail": json.dumps(detail, sort_keys=True, default=str),
    })
