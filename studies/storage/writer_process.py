"""The writer process: a process of its own that commits a study database's answers.

Why: in one process, the thread committing a batch of answers (group commit,
`group_commit.write`) gives up Python's interpreter lock at every SQLite call — a dozen per
answer — and waits to get it back from the threads preparing the next reads. With 32 busy
readers an answer took ~1 ms inside its batch instead of 0.15 ms, and `submit` waited
~30 ms (docs/benchmarks.md). A separate process has its own interpreter lock, so the
batch runs at full speed on the other core while this process serves reads.

How: `start(db_path)` launches `python -m studies.storage.writer_process`, which listens on a Unix
socket in a private (0700) temporary folder; a random key from `secrets`, sent on its
standard input (never on the command line), authenticates every connection
(multiprocessing's HMAC handshake). `call(db_path, fn, *args)` sends `(fn, args)` — `fn`
a module-level function, pickled by name — over the calling thread's own connection and
waits. The writer commits every request that reached it together in one transaction
(`group_commit.commit_together`, each in its own SAVEPOINT) and only then replies to each.

Guarantees:
- An acknowledged write is committed (the reply comes after COMMIT; `synchronous` as for
  any write), and the write lock is SQLite's, so other processes are safe.
- Without a writer — none started, in a forked child, or after it stopped — `call` runs
  `group_commit.write` in this process: the same result, only slower under load.
- If the writer dies between a request and its reply, `call` cannot know whether it
  committed: an `idempotent=True` call (e.g. `submit`, on its client_id) is run again in
  this process; any other raises `WriterLost`. Either way later calls run in-process
  until a new writer is up (below).
- Every call has a deadline (`deadline_s`, `CALL_DEADLINE_S` by default): the writer does
  not start a request whose deadline has passed, and the caller stops waiting a little
  after it (`REPLY_GRACE_S`) and raises `WriteTimeout` — so a stopped or stalled writer
  costs a caller a bounded wait, never an unbounded one. A write is one transaction:
  stored whole or not at all.
- The writer heals: its death is logged, and a new one is started (in the background;
  meanwhile, or if that fails, writes run in this process, which is logged too).
- The writer exits when the process that started it ends (end of its standard input), also
  when it was stopped (SIGSTOP) at that moment: on Linux the kernel sends it SIGCONT when
  its parent dies (`PR_SET_PDEATHSIG`), and it checks `getppid()` while idle.
- While idle, the writer empties the write-ahead log (`group_commit.checkpoint_truncate`), so
  it stays small under sustained load.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import logging
import os
import pathlib
import pickle
import queue
import secrets
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import (Connection, Listener, answer_challenge,
                                        deliver_challenge, wait)

from studies.storage import connections, group_commit
from studies.errors import StudyError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
CALL_DEADLINE_S = 10.0  # a write not started by then is refused (WriteTimeout)
REPLY_GRACE_S = 2.0     # the caller waits this much longer for a write started in time
BACKLOG = 128           # connections waiting for the writer's accept
IDLE_S = 1.0            # idle this long: the writer checks on its parent, empties the WAL
RESTART_PAUSE_S = 5.0   # a writer that died this soon after starting is replaced after this


class WriterLost(StudyError):
    """The writer process stopped between a request and its reply: the write may or may
    not have been committed."""


class WriteTimeout(StudyError):
    """The write did not finish within its deadline (the writer is stopped or stalled).
    Nothing of it is half-stored: it was either refused before it started or, when the
    writer stalled in the middle of it, committed whole later or never."""


@dataclasses.dataclass
class Writer:
    """A running writer process for one database file (`start`)."""
    db_path: str  # resolved path
    address: str  # its Unix socket
    authkey: bytes
    proc: subprocess.Popen
    folder: str  # private folder holding the socket
    owner_pid: int  # the process that started it (a forked child must not use it)
    local: threading.local = dataclasses.field(default_factory=threading.local)
    lost: bool = False
    stopping: bool = False  # stop() ends it: not a loss
    started_at: float = dataclasses.field(default_factory=time.monotonic)

    def connection(self, deadline: float) -> Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = _connect(self.address, self.authkey, deadline)
        return conn

    def drop_connection(self) -> None:
        """Forget this thread's connection (a reply may still be on its way on it)."""
        conn = getattr(self.local, "conn", None)
        self.local.conn = None
        if conn is not None:
            conn.close()


class _Bounded:
    """A connection whose reads wait until `deadline` at most (for the handshake)."""

    def __init__(self, conn: Connection, deadline: float):
        self.conn, self.deadline = conn, deadline

    def recv_bytes(self, maxlength=None):
        if not self.conn.poll(max(0.0, self.deadline - time.monotonic())):
            raise TimeoutError("the writer process did not answer")
        return self.conn.recv_bytes(maxlength)

    def send_bytes(self, buf):
        self.conn.send_bytes(buf)


def _connect(address: str, authkey: bytes, deadline: float) -> Connection:
    """multiprocessing's `Client(address, authkey=...)`, bounded by `deadline`: the
    handshake needs the writer to answer, and a stopped writer never would."""
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.setblocking(False)
        while True:  # a full backlog answers EAGAIN at once: try again until the deadline
            try:
                sock.connect(address)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError("the writer process did not accept in time") from None
                time.sleep(0.002)
        sock.setblocking(True)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock.detach())
    try:
        answer_challenge(_Bounded(conn, deadline), authkey)
        deliver_challenge(_Bounded(conn, deadline), authkey)
    except BaseException:
        conn.close()
        raise
    return conn


_writers: dict[str, Writer] = {}  # resolved database path -> its writer
_resolved: dict[str, str] = {}  # path as given -> resolved (three lstat calls saved per call)
_lock = threading.Lock()


def start(db_path: str | pathlib.Path) -> Writer:
    """Start this process's writer for the study database at `db_path` (or return the one
    running); `call` sends it the writes from then on. Raises StudyError if the writer
    cannot open the database (e.g. not a study database)."""
    key = os.path.realpath(db_path)
    with _lock:
        running = _writers.get(key)
        if running is not None and _usable(running) and running.proc.poll() is None:
            return running
        _sweep_orphaned_folders()
        folder = tempfile.mkdtemp(prefix=FOLDER_PREFIX)  # mode 0700
        address = os.path.join(folder, "socket")
        with open(os.path.join(folder, "parent"), "w") as fh:  # for _sweep_orphaned_folders
            fh.write(str(os.getpid()))
        authkey = secrets.token_bytes(32)
        env = dict(os.environ)
        root = str(pathlib.Path(__file__).resolve().parent.parent.parent)  # where the `studies` package lives
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = _spawn([sys.executable, "-m", "studies.storage.writer_process", key, address,
                       str(os.getpid())], env)
        try:
            proc.stdin.write(authkey.hex().encode() + b"\n")
            proc.stdin.flush()
            line = _read_line(proc, START_TIMEOUT_S)
        except BaseException:
            _end(proc, folder)
            raise
        if line != "ready":
            _end(proc, folder)
            raise StudyError(line.removeprefix("error: ") or "the writer process did not start")
        proc.stdout.close()
        writer = _writers[key] = Writer(key, address, authkey, proc, folder, os.getpid())
        _resolved[os.fspath(db_path)] = key
        # Notices the writer's death even while no write is sent (then logs and replaces).
        threading.Thread(target=_watch, args=(writer,), daemon=True,
                         name="medisyn-writer-watch").start()
        return writer


FOLDER_PREFIX = "medisyn-writer-"


def _sweep_orphaned_folders() -> None:
    """Remove socket folders of writers whose parent process is gone (a writer killed
    outright, SIGKILL, cannot remove its own)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(tempfile.gettempdir()):
            if not entry.name.startswith(FOLDER_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                    continue
                with open(os.path.join(entry.path, "parent")) as fh:
                    parent = int(fh.read().strip())
            except (OSError, ValueError):
                continue
            if parent != os.getpid() and not pid_alive(parent):
                shutil.rmtree(entry.path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Popen runs on one long-lived thread (or the main thread): Linux's parent-death signal
# (PR_SET_PDEATHSIG, set by the writer) fires when the *thread* that started the child
# ends, so a writer started from a short-lived thread would be told its parent died.
_spawn_jobs: "queue.Queue" = None  # type: ignore[assignment]
_spawn_lock = threading.Lock()


def _spawn(cmd: list[str], env: dict) -> subprocess.Popen:
    def popen():
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    if threading.current_thread() is threading.main_thread():
        return popen()
    global _spawn_jobs
    with _spawn_lock:
        if _spawn_jobs is None:
            _spawn_jobs = queue.Queue()
            threading.Thread(target=_spawner, args=(_spawn_jobs,), daemon=True,
                             name="medisyn-writer-spawner").start()
    done: "queue.Queue" = queue.Queue()
    _spawn_jobs.put((popen, done))
    ok, value = done.get()
    if ok:
        return value
    raise value


def _spawner(jobs: "queue.Queue") -> None:
    while True:
        fn, done = jobs.get()
        try:
            done.put((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done.put((False, exc))


def _watch(writer: Writer) -> None:
    writer.proc.wait()
    if not writer.stopping:
        _lose(writer)


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise StudyError(f"the writer process did not start within {timeout:g} s")
    return proc.stdout.readline().decode(errors="replace").strip()


def _usable(writer: Writer) -> bool:
    # Not `proc.poll()`: a system call on every write; a dead writer shows as a broken
    # connection instead (`call` then marks it lost).
    return not writer.lost and writer.owner_pid == os.getpid()


def writer_for(db_path: str | pathlib.Path) -> Writer | None:
    """This process's running writer for the database at `db_path`, if any."""
    given = os.fspath(db_path)
    key = _resolved.get(given)
    if key is None:
        if not _writers:
            return None
        key = os.path.realpath(given)
        if len(_resolved) < 64:
            _resolved[given] = key
    writer = _writers.get(key)
    return writer if writer is not None and _usable(writer) else None


def call(db_path: str | pathlib.Path, fn: Callable, /, *args, idempotent: bool = False,
         deadline_s: float | None = None, **kwargs):
    """`fn(db, *args, **kwargs)` in a write transaction, committed, and its result — by
    the writer process when one runs for this database (`start`), else `group_commit.write`
    here. `fn` must be a module-level function and its arguments and result picklable;
    `idempotent` says running it twice does no harm (see the module docstring).
    WriteTimeout when the writer has not done it within `deadline_s` (default
    `CALL_DEADLINE_S`)."""
    here = lambda db: fn(db, *args, **kwargs)  # noqa: E731
    writer = writer_for(db_path)
    if writer is None:
        return group_commit.write(db_path, here)
    deadline = time.monotonic() + (CALL_DEADLINE_S if deadline_s is None else deadline_s)
    try:
        conn = writer.connection(deadline)
        conn.send((fn, args, kwargs, deadline))
    except TimeoutError:
        writer.drop_connection()
        raise WriteTimeout("the writer process did not answer in time; nothing was "
                           "saved") from None
    except (OSError, EOFError):
        writer.drop_connection()
        _lose(writer)  # nothing reached the writer whole: it ran nothing
        return group_commit.write(db_path, here)
    try:
        if not conn.poll(max(0.0, deadline + REPLY_GRACE_S - time.monotonic())):
            # Stopped or stalled: the reply (if any) would come on this connection later.
            writer.drop_connection()
            raise WriteTimeout("the writer process did not confirm the write in time; it "
                               "may or may not have been saved")
        ok, value = conn.recv()
    except (OSError, EOFError):
        writer.drop_connection()
        _lose(writer)
        if idempotent:
            return group_commit.write(db_path, here)
        raise WriterLost("the writer process stopped before confirming the write; it may "
                         "or may not have been saved") from None
    if ok:
        return value
    raise value


def _lose(writer: Writer) -> None:
    """The writer has died (or its connection broke): log it, end it, start a new one."""
    with _lock:
        if writer.lost or writer.stopping:
            return
        writer.lost = True
    try:  # a broken connection is usually seen a moment before the exit can be
        status = writer.proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        status = None
    log.error("the writer process for %s stopped (%s); starting a new one, and writing "
              "in this process meanwhile", writer.db_path,
              "still running: its connection broke" if status is None
              else f"exit status {status}")
    with _lock:
        _end(writer.proc, writer.folder)
    threading.Thread(target=_replace, args=(writer,), daemon=True,
                     name="medisyn-writer-restart").start()


def _replace(lost: Writer) -> None:
    if time.monotonic() - lost.started_at < RESTART_PAUSE_S:
        time.sleep(RESTART_PAUSE_S)  # it died at once: do not start one after another
    with _lock:
        if _writers.get(lost.db_path) is not lost or lost.owner_pid != os.getpid():
            return  # stopped, or already replaced
    try:
        new = start(lost.db_path)
    except (StudyError, OSError) as exc:
        log.error("could not start a new writer process for %s (%s): answers are written "
                  "by this process itself", lost.db_path, exc)
        return
    log.warning("a new writer process (pid %s) writes for %s", new.proc.pid, lost.db_path)


def stop(db_path: str | pathlib.Path | None = None) -> None:
    """Stop this process's writer for `db_path` (every writer when None); it finishes the
    batch in hand. Later calls run in this process."""
    with _lock:
        keys = list(_writers) if db_path is None else [os.path.realpath(db_path)]
        for key in keys:
            writer = _writers.pop(key, None)
            if writer is not None and writer.owner_pid == os.getpid():
                writer.stopping = True
                _end(writer.proc, writer.folder)
        _resolved.clear()


def _end(proc: subprocess.Popen, folder: str) -> None:
    try:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()  # the writer's signal to finish and exit
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    shutil.rmtree(folder, ignore_errors=True)


atexit.register(stop)


# --------------------------------------------------------------------------- the process
def serve(db_path: str, address: str, authkey: bytes, parent_pid: int | None = None) -> None:
    """The writer's loop: wait for requests, commit all that arrived together, reply; when
    idle, check the parent is still there and empty the write-ahead log."""
    # A deep backlog: every server thread opens its own connection, often at once.
    listener = Listener(address, family="AF_UNIX", backlog=BACKLOG, authkey=authkey)
    wake_r, wake_w = os.pipe()
    arrived: list[Connection] = []
    arrived_lock = threading.Lock()

    closing = threading.Event()

    def accept() -> None:  # its own thread: accept() blocks through the handshake
        while True:
            try:
                conn = listener.accept()
            except Exception:  # noqa: BLE001 - a failed handshake: refuse that one only
                # (an OSError too: a client that gave up waiting has closed its end)
                if closing.is_set():
                    return  # listener closed
                continue
            with arrived_lock:
                arrived.append(conn)
            os.write(wake_w, b".")

    threading.Thread(target=accept, daemon=True).start()
    conns: list[Connection] = []
    stdin = sys.stdin.fileno()
    print("ready", flush=True)
    wal_dirty = False
    while True:
        ready = wait([*conns, wake_r, stdin], timeout=IDLE_S)
        if not ready:  # idle
            if parent_pid is not None and os.getppid() != parent_pid:
                break  # the parent is gone (its end of the pipe may live on elsewhere)
            if wal_dirty:
                wal_dirty = not group_commit.checkpoint_truncate(db_path)
            continue
        if stdin in ready and not os.read(stdin, 4096):
            break  # the parent has ended or called stop()
        if wake_r in ready:
            os.read(wake_r, 4096)
            with arrived_lock:
                conns.extend(arrived)
                arrived.clear()
        requests = []
        for conn in ready:
            if not isinstance(conn, Connection):
                continue
            try:
                fn, args, kwargs, deadline = conn.recv()
            except (EOFError, OSError):
                conns.remove(conn)  # that client thread has gone
                conn.close()
                continue
            except Exception as exc:  # noqa: BLE001 - could not unpickle the request
                _reply(conn, conns, (False, StudyError(f"bad request to the writer: {exc}")))
                continue
            if deadline is not None and time.monotonic() > deadline:
                # The caller has stopped waiting (or is about to): starting it now could
                # store what the reader was told was not saved.
                _reply(conn, conns, (False, WriteTimeout("the write was not started within "
                                                         "its deadline; nothing was saved")))
                continue
            requests.append((conn, _bind(fn, args, kwargs)))
        if requests:
            wal_dirty = True
            outcomes = group_commit.commit_together(db_path, [fn for _, fn in requests])
            for (conn, _), (result, exc) in zip(requests, outcomes):
                _reply(conn, conns, (True, result) if exc is None else (False, _portable(exc)))
    closing.set()
    listener.close()
    group_commit.release_writers()


def _bind(fn, args, kwargs):
    return lambda db: fn(db, *args, **kwargs)


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (it is re-raised in the caller), else a StudyError
    with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return StudyError(f"{type(exc).__name__}: {exc}")


def _reply(conn: Connection, conns: list[Connection], message) -> None:
    try:
        try:
            conn.send(message)
        except (OSError, EOFError):
            raise
        except Exception as exc:  # noqa: BLE001 - a result that cannot be pickled
            conn.send((False, StudyError(f"the write was saved, but its result could not "
                                         f"be sent back: {type(exc).__name__}: {exc}")))
    except (OSError, EOFError):
        if conn in conns:  # the client has gone; its write stays committed
            conns.remove(conn)
        conn.close()


def _follow_parent(parent_pid: int) -> None:
    """Linux: have the kernel send SIGCONT when the parent dies, so a writer stopped
    (SIGSTOP) at that moment runs again, finds its standard input ended and exits (SIGKILL
    would leave its socket folder behind)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            # 1 = PR_SET_PDEATHSIG
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGCONT), 0, 0, 0)
    if os.getppid() != parent_pid:  # it ended before the signal was asked for
        sys.exit(0)


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent stops, and the
    # writer ends when its standard input does, after the batch in hand.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    db_path, address = sys.argv[1], sys.argv[2]
    parent_pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
    if parent_pid is not None:
        _follow_parent(parent_pid)
    authkey = bytes.fromhex(sys.stdin.buffer.readline().decode().strip())
    try:
        connections.open_db(db_path, create=False).close()  # refuse a missing or foreign file
    except (StudyError, OSError, sqlite3.Error) as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(1)
    try:
        serve(db_path, address, authkey, parent_pid)
    finally:  # the private folder goes with the writer, even when its parent was killed
        shutil.rmtree(os.path.dirname(address), ignore_errors=True)


if __name__ == "__main__":
    main()
