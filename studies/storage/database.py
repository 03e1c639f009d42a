"""The reader-study database: schema, migrations, connections and write transactions.

One SQLite file per deployment (many studies), opened through sqlite-utils. Every
thread/request opens its own connection with `open_db` (Python's sqlite3 refuses to share
one across threads, and a fresh connection is cheap). WAL mode lets readers proceed while
one writer commits. Every write takes the write lock up front (`BEGIN IMMEDIATE`, so two
writers never deadlock upgrading a read lock).

Waiting for the write lock: SQLite's default busy handler sleeps in growing steps (1, 2, 5
... 25, 50, 100 ms), so with many writers the waits cluster at 33, 53, 78 ... ms although a
commit takes milliseconds. Instead (`_begin_immediate`) the busy timeout is 0 while taking
the lock, and we retry with short jittered sleeps (0.25-4 ms) up to `WRITE_DEADLINE_S`.
Within one process, `write(...)` goes further and commits concurrent writes together
(group commit): callers queue their transaction function; whichever caller gets the
process's writer slot runs every queued function in one `BEGIN IMMEDIATE` transaction,
each inside its own SAVEPOINT (one failing function rolls back only itself), commits once
(`synchronous` unchanged, so one durable fsync covers the batch) and only then acknowledges
each caller. Other processes still meet at SQLite's lock, as before; the studio's answers
go to a writer process of their own (`studies.storage.writer_process`, which commits what reaches
it together through `commit_together`). The batch runs on
a connection kept open for the next batch (`MAX_KEPT_WRITERS` databases at most, LRU; it
is re-opened when the file at the path is no longer the one it opened): opening a
connection costs ~1 ms, and closing the last one checkpoints and deletes the WAL, which
cost ~10 ms per answer with one client.

Stimulus PNGs live as files under `<db dir>/<db stem>.stimuli/<stimulus_id>.png`
(`stimuli_dir`): the database stays small, and the only files ever served are those
opaque-named, metadata-free PNGs.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import pathlib
import random
import secrets
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlite_utils import Database

from studies.errors import DatabaseNotFound, NotAStudyDatabase, StudyNotFound

SCHEMA_VERSION = 10
BUSY_TIMEOUT_MS = 5_000  # for reads and schema set-up (WAL readers rarely wait at all)
WRITE_ATTEMPTS = 12  # retry_busy: with backoff capped at 2 s plus the busy timeout
WRITE_DEADLINE_S = 30.0  # longest wait for the write lock before giving up ("locked")
RETRY_SLEEP_S = (0.00025, 0.004)  # jittered sleep between lock attempts: first, cap
MAX_BATCH = 64  # most queued writes committed together in one transaction
MAX_KEPT_WRITERS = 8  # databases whose writer connection this process keeps open
CHECKPOINT_EVERY = 200  # batches between the kept writer's WAL checkpoints (see write)
# The WAL is truncated to this size when it restarts from the beginning (after a complete
# checkpoint): without it a WAL that grew under load keeps its size on disk for good.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024

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


def _migration_3(db: Database) -> None:
    # 1 where the browser's time on case was implausibly short (< 50 ms) and the server's
    # figure was stored instead (studio.reader.view.answer_duration_ms). Existing rows were
    # never replaced: 0. ADD COLUMN is not an UPDATE, so the append-only triggers allow it.
    db.execute("ALTER TABLE responses ADD COLUMN duration_flagged INTEGER NOT NULL DEFAULT 0")


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


def _migration_6(db: Database) -> None:
    """Going back and per-case remarks (issue 13 item 6). responses: the reader's optional
    comment and 'non-diagnostic image' flag, sent with the answer (existing answers: none,
    0). assignments.reopened_after: when a reader went back to a read, the id of its last
    response then; only later responses count towards re-completing it (NULL: never
    reopened). studies.allow_back: readers may go back to the previous case. New studies
    allow it (the issue's default); studies that already exist keep the protocol they
    started with (no going back) until a coordinator allows it."""
    # ADD COLUMN is not an UPDATE: the append-only triggers on responses allow it.
    db.execute("ALTER TABLE responses ADD COLUMN comment TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE responses ADD COLUMN non_diagnostic INTEGER NOT NULL DEFAULT 0")
    db["assignments"].add_column("reopened_after", int)
    db.execute("ALTER TABLE studies ADD COLUMN allow_back INTEGER NOT NULL DEFAULT 1")
    db.execute("UPDATE studies SET allow_back = 0")
    # next_case looks for a reopened read first: a partial index keeps that lookup to the
    # (few, usually no) reopened reads instead of every open slot of the reader.
    db.execute("CREATE INDEX assignments_reopened ON assignments (reader_id) "
               "WHERE reopened_after IS NOT NULL AND completed_at IS NULL")


def _migration_8(db: Database) -> None:
    """The reader's own profile form (issue 13 item 7): `studies.ask_profile` (1: the reader
    page asks for the profile before the first case) and `readers.profile_completed_at`
    (when the reader submitted it). Existing studies do not ask (as before); existing
    readers have not submitted one."""
    db.execute("ALTER TABLE studies ADD COLUMN ask_profile INTEGER NOT NULL DEFAULT 0")
    db["readers"].add_column("profile_completed_at", str)


def _migration_9(db: Database) -> None:
    """One current answer per read and task: `responses.read_round` is the read's
    `reopened_after` (0 before any going back) when the answer was stored, and a unique
    index over (assignment, task, round) lets the database itself refuse a second answer to
    a question already answered in that round (two tabs, or an answer sent again after a
    reload). Existing rows keep NULL (append-only: they cannot be filled in, and may
    already hold such pairs): the index leaves them out."""
    db.execute("ALTER TABLE responses ADD COLUMN read_round INTEGER")
    db.execute("CREATE UNIQUE INDEX responses_one_per_round ON responses "
               "(assignment_id, task, read_round) WHERE read_round IS NOT NULL")


def _migration_10(db: Database) -> None:
    """`studies.reader_title`: the title readers see on the reader page, set by the study
    team (NULL: a neutral "Reader study"), so that the internal study name, which may
    describe the design, never reaches a reader."""
    db["studies"].add_column("reader_title", str)


# Ordered list of (version, migration). Append new ones; never edit an applied one.
MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (5, _migration_5),
    (6, _migration_6),
    (8, _migration_8),
    (9, _migration_9),
    (10, _migration_10),
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


def check_database_file(path: str | pathlib.Path) -> None:
    """Refuse a file at `path` that cannot be a study database, before anything is written:
    a folder, or a zero-byte file (a truncated copy, or made by `touch`: treating it as new
    would write a fresh schema and invalidate every reader link). A path with no file is
    fine: that is how a new database is asked for. (A file that is not SQLite is refused by
    `open_db` from SQLite's own answer: never open the file here, because closing any other
    descriptor of a database file drops this process's SQLite locks on it.)"""
    path = pathlib.Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise NotAStudyDatabase(f"{path} is a folder, not a study database file")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise NotAStudyDatabase(
            f"{path} is an empty file (0 bytes), not a study database; delete it to start a "
            "new database there, or give a path that does not exist yet")


def _not_sqlite(exc: sqlite3.DatabaseError, path) -> NotAStudyDatabase | None:
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
        return NotAStudyDatabase(f"{path} is not a study database (not an SQLite file)")
    return None


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


def open_db(path: str | pathlib.Path, *, migrate: bool = True, create: bool = True,
            _shared: bool = False) -> Database:
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
    check_database_file(path)
    # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
    # (`_shared`: the writer connection used by one thread at a time, but not always the same.)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=not _shared)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys=ON")
        _refuse_foreign(conn, path)
        retry_busy(lambda: _ensure_wal(conn))
        db = Database(conn)
        if migrate:
            retry_busy(lambda: _migrate(db))
    except BaseException:
        conn.close()
        raise
    return db


def _refuse_foreign(conn: sqlite3.Connection, path: pathlib.Path) -> None:
    """Never add our tables to (or switch the journal of) another program's SQLite file."""
    try:
        version = _current_version(conn)
    except sqlite3.DatabaseError as exc:
        raise (_not_sqlite(exc, path) or exc) from None
    if version == 0 and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND name != 'schema_version'").fetchone():
        raise NotAStudyDatabase(f"{path} is an SQLite database but not a study database")


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


def _begin_immediate(conn: sqlite3.Connection, deadline: float) -> None:
    """`BEGIN IMMEDIATE`, retried with short jittered sleeps until `deadline` (monotonic)
    instead of SQLite's busy handler, whose sleeps grow to 100 ms."""
    conn.execute("PRAGMA busy_timeout=0")
    try:
        delay = RETRY_SLEEP_S[0]
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))  # jitter: colliders spread out
            delay = min(RETRY_SLEEP_S[1], delay * 1.5)
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """One write transaction that holds the write lock from its first statement
    (waiting, with short jittered retries, while another connection holds it)."""
    _begin_immediate(db.conn, time.monotonic() + WRITE_DEADLINE_S)
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


class _Job:
    __slots__ = ("fn", "result", "exc", "done")

    def __init__(self, fn):
        self.fn, self.result, self.exc, self.done = fn, None, None, False


class _WriteQueue:
    """The writes of this process to one database file waiting to be committed."""

    def __init__(self) -> None:
        self.slot = threading.Lock()   # held by the thread committing a batch
        self.mutex = threading.Lock()  # guards `pending` and `running`
        # Waiters sleep here until their job is done (by whichever thread committed it) or
        # the slot is free: a job committed in someone else's batch returns at once instead
        # of queueing for the slot behind the next batch and its fsync.
        self.wake = threading.Condition(self.mutex)
        self.running = False  # a thread has taken the batch in hand
        self.pending: list[_Job] = []
        self.db: Database | None = None  # kept writer connection (used under `slot`)
        self.file_id: tuple[int, int] | None = None  # (st_dev, st_ino) it opened
        self.pid = os.getpid()
        self.batches = 0  # committed since the last checkpoint
        self.checkpointing = threading.Lock()


_in_write = threading.local()  # set while this thread runs write functions


_queues: dict[str, _WriteQueue] = {}
_kept: list[str] = []  # keys of queues holding a connection, least recently used first
_queues_mutex = threading.Lock()


def _queue_for(db_path: str | pathlib.Path) -> tuple[str, _WriteQueue]:
    key = os.path.realpath(db_path)
    with _queues_mutex:
        queue = _queues.get(key)
        if queue is None or queue.pid != os.getpid():
            # New, or inherited through fork(): a connection must never cross a fork (and
            # the locks may have been copied held), so a child starts its own. The parent's
            # connection is abandoned, not closed, in the child.
            queue = _queues[key] = _WriteQueue()
            if key in _kept:
                _kept.remove(key)
        return key, queue


def _drop_writer(queue: _WriteQueue) -> None:
    if queue.db is not None:
        with contextlib.suppress(Exception):
            queue.db.close()
    queue.db = queue.file_id = None


def release_writers() -> None:
    """Close the writer connections this process keeps open (see the module docstring),
    and the read connections this thread keeps (`reading`), e.g. before handing the
    database file over; the next write or read opens a new one."""
    release_readers()
    with _queues_mutex:
        queues = [_queues[k] for k in _kept]
        _kept.clear()
    for queue in queues:
        with queue.slot:
            _drop_writer(queue)


def _writer_db(key: str, queue: _WriteQueue, db_path) -> Database:
    """The queue's kept connection if it still points at the file at `db_path`; else a new
    one (closing the least recently used kept connection of another database if needed)."""
    try:
        st = os.stat(db_path)
        file_id = (st.st_dev, st.st_ino)
    except OSError:
        file_id = None
    if queue.db is not None and file_id != queue.file_id:
        _drop_writer(queue)  # deleted or replaced since: never write to the old inode
    if queue.db is None:
        queue.db = open_db(db_path, create=False, _shared=True)
        queue.db.execute("PRAGMA wal_autocheckpoint=0")  # done by _checkpoint instead
        queue.db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        st = os.stat(db_path)
        queue.file_id = (st.st_dev, st.st_ino)
    with _queues_mutex:
        if key in _kept:
            _kept.remove(key)
        _kept.append(key)
        for old in list(_kept[:-MAX_KEPT_WRITERS]):
            other = _queues[old]
            if other.slot.acquire(blocking=False):  # never close one in use
                try:
                    _drop_writer(other)
                    _kept.remove(old)
                finally:
                    other.slot.release()
    return queue.db


def write(db_path: str | pathlib.Path, fn: Callable[[Database], T]) -> T:
    """Run `fn(db)` inside a `BEGIN IMMEDIATE` write transaction and return its result
    once it is committed; exceptions from `fn` propagate and leave nothing behind.

    Concurrent calls in this process are committed together (see the module docstring):
    each `fn` runs in its own SAVEPOINT, so `fn` must not commit or open a transaction
    itself, must not call `write` (it runs while the writer slot is held), and may run
    in another thread; it must be safe to re-run (a batch whose transaction is destroyed
    by an error re-runs the functions that had succeeded)."""
    if getattr(_in_write, "active", False):
        raise RuntimeError("write() called from inside a write function: do both in one")
    key, queue = _queue_for(db_path)
    job = _Job(fn)
    with queue.wake:
        queue.pending.append(job)
        while not job.done and queue.running:
            queue.wake.wait()
        batch = []
        if not job.done:  # the slot is free: commit this job and whatever else waits
            queue.running = True
            others = [j for j in queue.pending if j is not job][:MAX_BATCH - 1]
            batch = [job] + others
            taken = set(map(id, batch))
            queue.pending = [j for j in queue.pending if id(j) not in taken]
    if batch:
        try:
            with queue.slot:
                _commit_batch(key, queue, db_path, batch)
                queue.batches += 1
        finally:
            with queue.wake:
                queue.running = False
                queue.wake.notify_all()
    _checkpoint_if_due(db_path, queue)
    if job.exc is not None:
        raise job.exc
    return job.result


def commit_together(db_path: str | pathlib.Path,
                    fns: list[Callable[[Database], T]]) -> list[tuple[T | None, BaseException | None]]:
    """Run every `fn(db)` of `fns` in one `BEGIN IMMEDIATE` transaction, each in its own
    SAVEPOINT (a failing one rolls back only itself), commit once, and return each one's
    `(result, None)` or `(None, exception)`, in order — after the commit. The same rules
    as for `write` apply to each function. This is how the writer process
    (`studies.storage.writer_process`) commits the requests that reached it together."""
    key, queue = _queue_for(db_path)
    batch = [_Job(fn) for fn in fns]
    with queue.slot:
        _commit_batch(key, queue, db_path, batch)
        queue.batches += 1
    _checkpoint_if_due(db_path, queue)
    return [(job.result, job.exc) for job in batch]


def _wal_bytes(db_path) -> int:
    try:
        return os.stat(f"{os.path.realpath(db_path)}-wal").st_size
    except OSError:
        return 0


def _checkpoint_if_due(db_path, queue: _WriteQueue) -> None:
    due = queue.batches >= CHECKPOINT_EVERY or _wal_bytes(db_path) > JOURNAL_SIZE_LIMIT
    if due and queue.checkpointing.acquire(blocking=False):
        queue.batches = 0
        threading.Thread(target=_checkpoint, args=(db_path, queue), daemon=True).start()


def _checkpoint(db_path, queue: _WriteQueue) -> None:
    """Copy the WAL back into the database file (PASSIVE: never waits for or blocks
    readers or writers) on a connection of its own, off the writers' path: the kept writer
    connection has automatic checkpoints turned off, because one running inside COMMIT
    (fsyncing the database file) held up every writer queued behind it. When the WAL has
    grown past JOURNAL_SIZE_LIMIT anyway (readers kept it from restarting under sustained
    load: 12 MB beside a 1 MB database was seen), it is truncated (TRUNCATE, waiting
    at most 100 ms for readers and writers)."""
    try:
        uri = "file:" + urllib.parse.quote(os.path.realpath(db_path)) + "?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)  # never creates a file
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            if _wal_bytes(db_path) > JOURNAL_SIZE_LIMIT:
                conn.execute("PRAGMA busy_timeout=100")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except Exception:
        pass  # best effort: the next one, or closing the last connection, checkpoints
    finally:
        queue.checkpointing.release()


def checkpoint_truncate(db_path: str | pathlib.Path) -> bool:
    """Copy the whole WAL into the database file and truncate it to zero bytes
    (`wal_checkpoint(TRUNCATE)`) on this process's kept writer connection, waiting at most
    a moment for readers; True when it did. For idle moments (the writer process calls it
    when no write has come for a while): under sustained load a PASSIVE checkpoint cannot
    restart the WAL while readers use it, and the file kept growing."""
    key, queue = _queue_for(db_path)
    if not queue.slot.acquire(blocking=False):
        return False  # a batch is being committed: not idle after all
    try:
        if queue.db is None:
            return True  # nothing written through this process
        conn = queue.db.conn
        conn.execute("PRAGMA busy_timeout=50")
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return busy == 0
    except sqlite3.Error:
        return False
    finally:
        queue.slot.release()


def _commit_batch(key: str, queue: _WriteQueue, db_path: str | pathlib.Path,
                  batch: list[_Job]) -> None:
    """Run every job of `batch` in one transaction (a SAVEPOINT each), commit once, and
    leave each job's result or exception on it. Called with `queue.slot` held."""
    try:
        _run_batch(_writer_db(key, queue, db_path), batch)
    except BaseException as exc:  # lock, I/O or connection failure: nothing committed
        if queue.db is not None:
            with contextlib.suppress(Exception):
                if queue.db.conn.in_transaction:
                    queue.db.conn.execute("ROLLBACK")
        _drop_writer(queue)  # start afresh next time (e.g. the file went away)
        for job in batch:
            if not job.done:
                job.result, job.exc, job.done = None, exc, True


def _run_batch(db: Database, batch: list[_Job]) -> None:
    todo = list(batch)
    while todo:
        _begin_immediate(db.conn, time.monotonic() + WRITE_DEADLINE_S)
        ran: list[_Job] = []
        for job in todo:
            job.result, job.exc = None, None
            db.conn.execute("SAVEPOINT write_job")
            _in_write.active = True
            try:
                job.result = job.fn(db)
            except BaseException as exc:
                job.exc = exc
                if not db.conn.in_transaction:
                    # The error ended the whole transaction: that job has its answer; the
                    # jobs that had run are undone too, so they and the rest run again.
                    job.done = True
                    todo = ran + todo[len(ran) + 1:]
                    break
                db.conn.execute("ROLLBACK TO SAVEPOINT write_job")
            finally:
                _in_write.active = False
            db.conn.execute("RELEASE SAVEPOINT write_job")
            ran.append(job)
        else:
            db.conn.execute("COMMIT")
            for job in todo:
                job.done = True
            return


def open_readonly(path: str | pathlib.Path) -> Database:
    return _open_readonly(path)[0]


def _open_readonly(path: str | pathlib.Path) -> tuple[Database, bool]:
    """A connection for reads only (`PRAGMA query_only`: it cannot write, and it never
    migrates or changes the journal), so read-only commands work on a database in a
    read-only folder or file system. There SQLite cannot create the WAL index (`-shm`), so
    the file is opened `mode=ro` (SQLite then reads the WAL without a shared index), and
    failing that `immutable=1`, but only if no write-ahead log with content sits next to
    it (its changes would be ignored: refused instead). Also returns whether the
    connection shares the WAL index with the writers (the usual case; `reading` keeps only
    such connections: a `mode=ro` or `immutable` one could go stale)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatabaseNotFound(f"study database not found: {path}")
    check_database_file(path)
    base = "file:" + urllib.parse.quote(str(path.resolve()))
    try:
        conn, shared = _connect_readonly(path, base)
    except sqlite3.DatabaseError as exc:
        raise (_not_sqlite(exc, path) or exc) from None
    db = Database(conn)
    try:
        version = _current_version(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise (_not_sqlite(exc, path) or exc) from None
    if version < SCHEMA_VERSION:
        conn.close()
        if version == 0:
            raise NotAStudyDatabase(f"{path} is an SQLite database but not a study database")
        try:  # an older schema: upgrade it first, as any other command would
            open_db(path, create=False).close()
        except sqlite3.OperationalError as exc:
            if not (_cannot_open_for_writing(exc) or "readonly" in str(exc).lower()):
                raise
            raise NotAStudyDatabase(
                f"{path} has schema version {version}, older than this version of the "
                f"software ({SCHEMA_VERSION}), and cannot be upgraded here because it is "
                "read-only; open it once with write access to upgrade it") from None
        return _open_readonly(path)
    return db, shared


def _connect_readonly(path: pathlib.Path, base: str) -> tuple[sqlite3.Connection, bool]:
    try:
        # The usual case: a shared WAL index with the writers (mode=ro readers cannot
        # recover a WAL index a crashed writer left, so they are only the fallback).
        return retry_busy(lambda: _connect_ro(f"{base}?mode=rw")), True
    except sqlite3.OperationalError as exc:
        if not _cannot_open_for_writing(exc):
            raise
        try:
            return retry_busy(lambda: _connect_ro(f"{base}?mode=ro")), False
        except sqlite3.OperationalError as exc:
            if not _cannot_open_for_writing(exc):
                raise
            wal = pathlib.Path(f"{path}-wal")
            if wal.is_file() and wal.stat().st_size > 0:
                raise NotAStudyDatabase(
                    f"cannot read {path}: its write-ahead log {wal.name} holds changes not "
                    f"yet in the database file, and they cannot be read here ({exc}); open "
                    "the database once with write access, or copy it with its -wal file to "
                    "a writable folder") from None
            return _connect_ro(f"{base}?immutable=1"), False


def _cannot_open_for_writing(exc: sqlite3.OperationalError) -> bool:
    """The errors a read-only folder, file or file system gives (never 'busy': a busy
    database is waited for, not opened another way)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM",
                            "SQLITE_IOERR_SHMOPEN"))


def _connect_ro(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA query_only=ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the WAL index
    except BaseException:
        conn.close()
        raise
    return conn


READ_POOL_SIZE = 4  # databases whose read connection each thread keeps open


class _ReadPool(threading.local):
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.dbs: dict[str, tuple[Database, tuple]] = {}  # oldest first


_read_pool = _ReadPool()


@contextlib.contextmanager
def reading(db_path: str | pathlib.Path, *, snapshot: bool = True) -> Iterator[Database]:
    """A read-only connection (`open_readonly`) for one block of reads, which all see one
    snapshot of the database (the block is one read transaction, rolled back on exit).
    `snapshot=False` skips that transaction (two statements fewer, for a hot path): each
    statement then sees the database as of its own start — right for a block of one
    statement, or one that issues `BEGIN` before it needs a second.

    Each thread keeps its connection to the last few databases and reuses it: opening one
    (checks, WAL index, schema version) was a third of the database CPU of an answer. A
    kept connection is used only while the path still names the file it opened, unchanged
    in size and modification time — a deleted, replaced, overwritten or emptied database
    is opened afresh, with every check of
    `open_readonly` — and never after a fork or inside another `reading` of the same
    database on the same thread (that one gets its own connection)."""
    key = os.fspath(db_path)
    pool = _read_pool
    if pool.pid != os.getpid():  # a connection must never cross a fork: abandon them
        pool.dbs, pool.pid = {}, os.getpid()
    try:
        st = os.stat(key)
        # Size and mtime too: a file copied over the database in place keeps its inode.
        # (Commits go to the WAL, so only a checkpoint changes them: see below.)
        file_id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) if st.st_size else None
    except OSError:
        file_id = None
    kept = pool.dbs.pop(key, None)
    if kept is not None and kept[1] == file_id:
        db, shared = kept[0], True
    elif kept is not None and file_id is not None and kept[1][:2] == file_id[:2] \
            and _forget_pages(kept[0]):
        # The same file, changed in size or mtime: a checkpoint (the usual case), or a file
        # copied over it in place. The connection stays, without its cached pages, so it
        # reads the file afresh as a new one would: reopening instead made every thread of
        # a busy server open a connection (~1-2 ms each) after each checkpoint.
        db, shared = kept[0], True
    else:
        if kept is not None:
            with contextlib.suppress(Exception):
                kept[0].close()
        db, shared = _open_readonly(db_path)
    keep = shared and file_id is not None
    try:
        if snapshot:
            db.conn.execute("BEGIN")  # deferred: the snapshot is taken at the first read
        yield db
    finally:
        try:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
        except sqlite3.Error:
            keep = False
        if keep and key not in pool.dbs:
            pool.dbs[key] = (db, file_id)
            while len(pool.dbs) > READ_POOL_SIZE:
                old = next(iter(pool.dbs))
                with contextlib.suppress(Exception):
                    pool.dbs.pop(old)[0].close()
        else:
            db.close()


def _forget_pages(db: Database) -> bool:
    """Drop a kept read connection's page cache (False if that fails: reopen instead)."""
    try:
        db.conn.execute("PRAGMA shrink_memory")
        return True
    except sqlite3.Error:
        with contextlib.suppress(Exception):
            db.close()
        return False


def release_readers() -> None:
    """Close the read connections this thread keeps (`reading`), e.g. before deleting or
    handing over a database file."""
    for db, _ in _read_pool.dbs.values():
        with contextlib.suppress(Exception):
            db.close()
    _read_pool.dbs = {}


def write_if_writable(db_path: str | pathlib.Path, fn: Callable[[Database], T]) -> bool:
    """`write(db_path, fn)` for a record that is nice to have (e.g. logging an export):
    False instead of an error when the database cannot be written (read-only)."""
    try:
        write(db_path, fn)
    except sqlite3.OperationalError as exc:
        msg = str(exc).lower()
        if _cannot_open_for_writing(exc) or "readonly" in msg or "unable to open" in msg:
            return False
        raise
    return True


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
