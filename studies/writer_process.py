"""The writer process: a process of its own that commits a study database's answers.

Why: in one process, the thread committing a batch of answers (group commit,
`database.write`) gives up Python's interpreter lock at every SQLite call — a dozen per
answer — and waits to get it back from the threads preparing the next reads. With 32 busy
readers an answer took ~1 ms inside its batch instead of 0.15 ms, and `submit` waited
~30 ms (docs/benchmarks.md). A separate process has its own interpreter lock, so the
batch runs at full speed on the other core while this process serves reads.

How: `start(db_path)` launches `python -m studies.writer_process`, which listens on a Unix
socket in a private (0700) temporary folder; a random key from `secrets`, sent on its
standard input (never on the command line), authenticates every connection
(multiprocessing's HMAC handshake). `call(db_path, fn, *args)` sends `(fn, args)` — `fn`
a module-level function, pickled by name — over the calling thread's own connection and
waits. The writer commits every request that reached it together in one transaction
(`database.commit_together`, each in its own SAVEPOINT) and only then replies to each.

Guarantees:
- An acknowledged write is committed (the reply comes after COMMIT; `synchronous` as for
  any write), and the write lock is SQLite's, so other processes are safe as before.
- Without a writer — none started, in a forked child, or after it stopped — `call` runs
  `database.write` in this process: the same result, only slower under load.
- If the writer dies between a request and its reply, `call` cannot know whether it
  committed: an `idempotent=True` call (e.g. `submit`, on its client_id) is run again in
  this process; any other raises `WriterLost`. Either way later calls run in-process.
- The writer exits when the process that started it ends (end of its standard input).
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import pathlib
import pickle
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener, wait

from studies import database
from studies.errors import StudyError

START_TIMEOUT_S = 60.0


class WriterLost(StudyError):
    """The writer process stopped between a request and its reply: the write may or may
    not have been committed."""


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

    def connection(self) -> Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
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
        folder = tempfile.mkdtemp(prefix="medisyn-writer-")  # mode 0700
        address = os.path.join(folder, "socket")
        authkey = secrets.token_bytes(32)
        env = dict(os.environ)
        root = str(pathlib.Path(__file__).resolve().parents[1])  # where `studies` lives
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "studies.writer_process", key, address],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
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
        return writer


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
         **kwargs):
    """`fn(db, *args, **kwargs)` in a write transaction, committed, and its result — by
    the writer process when one runs for this database (`start`), else `database.write`
    here. `fn` must be a module-level function and its arguments and result picklable;
    `idempotent` says running it twice does no harm (see the module docstring)."""
    here = lambda db: fn(db, *args, **kwargs)  # noqa: E731
    writer = writer_for(db_path)
    if writer is None:
        return database.write(db_path, here)
    try:
        conn = writer.connection()
        conn.send((fn, args, kwargs))
    except (OSError, EOFError):
        _lose(writer)  # nothing reached the writer whole: it ran nothing
        return database.write(db_path, here)
    try:
        ok, value = conn.recv()
    except (OSError, EOFError):
        _lose(writer)
        if idempotent:
            return database.write(db_path, here)
        raise WriterLost("the writer process stopped before confirming the write; it may "
                         "or may not have been saved") from None
    if ok:
        return value
    raise value


def _lose(writer: Writer) -> None:
    writer.lost = True
    with _lock:
        _end(writer.proc, writer.folder)


def stop(db_path: str | pathlib.Path | None = None) -> None:
    """Stop this process's writer for `db_path` (every writer when None); it finishes the
    batch in hand. Later calls run in this process."""
    with _lock:
        keys = list(_writers) if db_path is None else [os.path.realpath(db_path)]
        for key in keys:
            writer = _writers.pop(key, None)
            if writer is not None and writer.owner_pid == os.getpid():
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
def serve(db_path: str, address: str, authkey: bytes) -> None:
    """The writer's loop: wait for requests, commit all that arrived together, reply."""
    listener = Listener(address, family="AF_UNIX", authkey=authkey)
    wake_r, wake_w = os.pipe()
    arrived: list[Connection] = []
    arrived_lock = threading.Lock()

    def accept() -> None:  # its own thread: accept() blocks through the handshake
        while True:
            try:
                conn = listener.accept()
            except OSError:
                return  # listener closed
            except Exception:  # noqa: BLE001 - a failed handshake: refuse that one only
                continue
            with arrived_lock:
                arrived.append(conn)
            os.write(wake_w, b".")

    threading.Thread(target=accept, daemon=True).start()
    conns: list[Connection] = []
    stdin = sys.stdin.fileno()
    print("ready", flush=True)
    while True:
        ready = wait([*conns, wake_r, stdin])
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
                fn, args, kwargs = conn.recv()
            except (EOFError, OSError):
                conns.remove(conn)  # that client thread has gone
                conn.close()
                continue
            except Exception as exc:  # noqa: BLE001 - could not unpickle the request
                _reply(conn, conns, (False, StudyError(f"bad request to the writer: {exc}")))
                continue
            requests.append((conn, _bind(fn, args, kwargs)))
        if requests:
            outcomes = database.commit_together(db_path, [fn for _, fn in requests])
            for (conn, _), (result, exc) in zip(requests, outcomes):
                _reply(conn, conns, (True, result) if exc is None else (False, _portable(exc)))
    listener.close()
    database.release_writers()


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


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the parent stops, and the
    # writer ends when its standard input does, after the batch in hand.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    db_path, address = sys.argv[1], sys.argv[2]
    authkey = bytes.fromhex(sys.stdin.buffer.readline().decode().strip())
    try:
        database.open_db(db_path, create=False).close()  # refuse a missing or foreign file
    except (StudyError, OSError, database.sqlite3.Error) as exc:
        print(f"error: {exc}", flush=True)
        sys.exit(1)
    try:
        serve(db_path, address, authkey)
    finally:  # the private folder goes with the writer, even when its parent was killed
        shutil.rmtree(os.path.dirname(address), ignore_errors=True)


if __name__ == "__main__":
    main()
