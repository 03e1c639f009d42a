"""Opening the study database: file checks, connections, write transactions and read snapshots.

One SQLite file per deployment (many studies), opened through sqlite-utils. Every
thread/request opens its own connection with `open_db` (Python's sqlite3 refuses to share
one across threads, and a fresh connection is cheap). WAL mode lets readers proceed while
one writer commits. Every write takes the write lock up front (`BEGIN IMMEDIATE`, so two
writers never deadlock upgrading a read lock).

Waiting for the write lock: SQLite's default busy handler sleeps in growing steps (1, 2, 5
... 25, 50, 100 ms), so with many writers the waits cluster at 33, 53, 78 ... ms although a
commit takes milliseconds. Instead (`begin_immediate`) the busy timeout is 0 while taking
the lock, and we retry with short jittered sleeps (0.25-4 ms) up to `WRITE_DEADLINE_S`.

Reads go through `reading`, which keeps each thread's read-only connection to the last few
databases (`open_readonly`: it never writes, so read-only commands work on a read-only file).

Stimulus PNGs live as files under `<db dir>/<db stem>.stimuli/<stimulus_id>.png`
(`stimuli_dir`): the database stays small, and the only files ever served are those
opaque-named, metadata-free PNGs.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import random
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TypeVar

from sqlite_utils import Database

from studies.errors import DatabaseNotFound, NotAStudyDatabase
from studies.storage import schema
from studies.storage.schema import current_version, utc_now

BUSY_TIMEOUT_MS = 5_000  # for reads and schema set-up (WAL readers rarely wait at all)
WRITE_ATTEMPTS = 12  # retry_busy: with backoff capped at 2 s plus the busy timeout
WRITE_DEADLINE_S = 30.0  # longest wait for the write lock before giving up ("locked")
RETRY_SLEEP_S = (0.00025, 0.004)  # jittered sleep between lock attempts: first, cap

T = TypeVar("T")


def stimuli_dir(db_path: str | pathlib.Path) -> pathlib.Path:
    """Folder holding a database's stimulus PNGs (`<db dir>/<db stem>.stimuli`)."""
    p = pathlib.Path(db_path)
    return p.parent / f"{p.stem}.stimuli"



def is_busy(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


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
    if current_version(db.conn) >= schema.SCHEMA_VERSION:
        return

    with transaction(db):
        current = current_version(db.conn)  # re-read under the write lock
        if current == 0 and not db["schema_version"].exists():
            db["schema_version"].create({"version": int, "applied_at": str}, pk="version")
        for version, migration in schema.MIGRATIONS:
            if version > current:
                migration(db)
                db["schema_version"].insert({"version": version, "applied_at": utc_now()})


def open_db(path: str | pathlib.Path, *, migrate: bool = True, create: bool = True,
            _shared: bool = False) -> Database:
    """A fresh connection to the study database at `path` (created if missing, unless
    `create=False`, which raises DatabaseNotFound instead).

    WAL journal, foreign keys ON, busy timeout, schema migrated to `schema.SCHEMA_VERSION`.
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
        version = current_version(conn)
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
            if not is_busy(exc) or attempt == attempts - 1:
                raise
            # Jittered exponential backoff so colliding writers spread out.
            time.sleep(min(2.0, 0.01 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def begin_immediate(conn: sqlite3.Connection, deadline: float) -> None:
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
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))  # jitter: colliders spread out
            delay = min(RETRY_SLEEP_S[1], delay * 1.5)
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """One write transaction that holds the write lock from its first statement
    (waiting, with short jittered retries, while another connection holds it)."""
    begin_immediate(db.conn, time.monotonic() + WRITE_DEADLINE_S)
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
        version = current_version(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise (_not_sqlite(exc, path) or exc) from None
    if version < schema.SCHEMA_VERSION:
        conn.close()
        if version == 0:
            raise NotAStudyDatabase(f"{path} is an SQLite database but not a study database")
        try:  # an older schema: upgrade it first, as any other command would
            open_db(path, create=False).close()
        except sqlite3.OperationalError as exc:
            if not (cannot_open_for_writing(exc) or "readonly" in str(exc).lower()):
                raise
            raise NotAStudyDatabase(
                f"{path} has schema version {version}, older than this version of the "
                f"software ({schema.SCHEMA_VERSION}), and cannot be upgraded here because it is "
                "read-only; open it once with write access to upgrade it") from None
        return _open_readonly(path)
    return db, shared


def _connect_readonly(path: pathlib.Path, base: str) -> tuple[sqlite3.Connection, bool]:
    try:
        # The usual case: a shared WAL index with the writers (mode=ro readers cannot
        # recover a WAL index a crashed writer left, so they are only the fallback).
        return retry_busy(lambda: _connect_ro(f"{base}?mode=rw")), True
    except sqlite3.OperationalError as exc:
        if not cannot_open_for_writing(exc):
            raise
        try:
            return retry_busy(lambda: _connect_ro(f"{base}?mode=ro")), False
        except sqlite3.OperationalError as exc:
            if not cannot_open_for_writing(exc):
                raise
            wal = pathlib.Path(f"{path}-wal")
            if wal.is_file() and wal.stat().st_size > 0:
                raise NotAStudyDatabase(
                    f"cannot read {path}: its write-ahead log {wal.name} holds changes not "
                    f"yet in the database file, and they cannot be read here ({exc}); open "
                    "the database once with write access, or copy it with its -wal file to "
                    "a writable folder") from None
            return _connect_ro(f"{base}?immutable=1"), False


def cannot_open_for_writing(exc: sqlite3.OperationalError) -> bool:
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
