"""Group commit: concurrent writes of one process committed together in one transaction.

Callers of `write` queue their transaction function; whichever caller gets the process's
writer slot runs every queued function in one `BEGIN IMMEDIATE` transaction, each inside
its own SAVEPOINT (one failing function rolls back only itself), commits once
(`synchronous` unchanged, so one durable fsync covers the batch) and only then acknowledges
each caller. Other processes meet at SQLite's lock; the studio's answers go to a writer
process of their own (`studies.storage.writer_process`, which commits what reaches it
together through `commit_together`). The batch runs on a connection kept open for the next
batch (`MAX_KEPT_WRITERS` databases at most, LRU; it is re-opened when the file at the path
is no longer the one it opened): opening a connection costs ~1 ms, and closing the last one
checkpoints and deletes the WAL, which cost ~10 ms per answer with one client.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TypeVar

from sqlite_utils import Database

from studies.storage import connections
from studies.storage.connections import cannot_open_for_writing, open_db, release_readers

MAX_BATCH = 64  # most queued writes committed together in one transaction
MAX_KEPT_WRITERS = 8  # databases whose writer connection this process keeps open
CHECKPOINT_EVERY = 200  # batches between the kept writer's WAL checkpoints (see write)
# The WAL is truncated to this size when it restarts from the beginning (after a complete
# checkpoint): without it a WAL that grew under load keeps its size on disk for good.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024

T = TypeVar("T")


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
            conn.execute(f"PRAGMA busy_timeout={connections.BUSY_TIMEOUT_MS}")
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
        connections.begin_immediate(db.conn, time.monotonic() + connections.WRITE_DEADLINE_S)
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


def write_if_writable(db_path: str | pathlib.Path, fn: Callable[[Database], T]) -> bool:
    """`write(db_path, fn)` for a record that is nice to have (e.g. logging an export):
    False instead of an error when the database cannot be written (read-only)."""
    try:
        write(db_path, fn)
    except sqlite3.OperationalError as exc:
        msg = str(exc).lower()
        if cannot_open_for_writing(exc) or "readonly" in msg or "unable to open" in msg:
            return False
        raise
    return True

