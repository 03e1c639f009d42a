"""A fault campaign against `medisyn studio`: readers answer while the server and its
writer process are killed and stopped at random; is every acknowledged answer stored,
once, and the one exported?

Starts `medisyn studio` (loopback only) on a temporary study database, and runs reader
threads in a separate process that behave like people at browser tabs: Start, then answer
case after case (think time Exp(mean `--think`)), every event posted to Gradio's queue as
the frontend does. A reader whose answer gets no reply within `--patience` seconds gives
up on it (half of the tabs; the others wait a minute), reloads the page (a new session)
and answers the question now shown — with a different value, so an abandoned answer that was stored after all is told apart from the
acknowledged one. A storage screen is followed by Try again; a refused connection by a
retry. Meanwhile the injector, at Exp(mean `--fault-every`) intervals, does one of (each
once per round, in random order): kill
the server (SIGKILL; it is started again at once), kill the writer process (SIGKILL),
stop the writer (SIGSTOP for U(2, 15) s), stop the server (SIGSTOP for U(1, 5) s), or
stop the writer and kill the server (the orphaned writer must go by itself).

Counted at the end, from the database and the readers' records:
- acknowledged: answers whose reply moved the reader on (the next case, or the end);
- stored: response rows;
- lost: acknowledged answers with no stored row of that value;
- duplicated: rows beyond the first for one reader, case and task;
- superseded by an abandoned answer: acknowledged answers whose exported value
  (`studies.export.long_table`, the latest row wins) is not the acknowledged one;
plus `PRAGMA integrity_check`, writer processes left behind, and the largest WAL seen.

    .venv/bin/python benchmarks/bench_faults.py --readers 12 --duration 150
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import random
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the shipped-image study fixtures
sys.path.insert(0, str(ROOT))

OUT_OF_DATE = "This page was out of date"
SCREEN = re.compile(r'data-screen="(\w+)"')
POSITION = re.compile(r"Case (\d+) of (\d+)")


class Gone(Exception):
    """No reply: the server is down, stopped or too slow (the reader gives up)."""


def event(client, fn_index: int, data: list, token: str, session: str) -> dict:
    """One event as the browser sends it; its `process_completed` message."""
    import httpx

    try:
        r = client.post(f"/gradio_api/queue/join?token={token}", json={
            "data": data, "event_data": None, "fn_index": fn_index, "trigger_id": None,
            "session_hash": session})
        if r.status_code != 200:
            raise Gone(f"join {r.status_code}")
        event_id = r.json()["event_id"]
        with client.stream("GET", f"/gradio_api/queue/data?session_hash={session}") as s:
            for line in s.iter_lines():
                if line.startswith("data:"):
                    msg = json.loads(line[5:])
                    if msg.get("event_id") == event_id and msg.get("msg") == "process_completed":
                        return msg
    except (httpx.HTTPError, OSError, ValueError) as exc:
        raise Gone(type(exc).__name__) from None
    raise Gone("stream ended")


def screen_of(msg: dict) -> tuple[str, int | None, str]:
    """(screen kind, case position on it, message) of an event's outputs."""
    if not msg.get("success"):
        return "error", None, str(msg.get("output", {}).get("error", ""))
    data = msg["output"]["data"]
    kind = SCREEN.search(str(data[0]))
    pos = POSITION.search(str(data[3]))
    kind = kind.group(1) if kind else "?"
    message = data[10] if kind == "finished" else (data[4] or data[12])
    return kind, int(pos.group(1)) if pos else None, str(message or "")


def reader_clients(url: str, tokens: list[str], ids: dict, threads: int, think: float,
                   patience: float, until: float, seed: int, results) -> None:
    """The readers, in their own process: `threads` tabs at a time work through `tokens`."""
    import httpx

    lock = threading.Lock()
    todo = list(tokens)
    out = {"acked": {}, "abandoned": [], "storage_screens": 0, "out_of_date": 0,
           "answered_elsewhere": 0, "errors": 0, "finished": 0, "other": []}

    def next_token():
        with lock:
            return todo.pop() if todo else None

    def tab(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        # Half the tabs give up after `patience` seconds and reload; the others wait (for
        # the storage screen when a write misses its deadline).
        wait = patience if i % 2 == 0 else 60.0
        client = httpx.Client(base_url=url, timeout=httpx.Timeout(wait, connect=2.0))

        def load(token):  # a page load (new session) and Start, retried until it answers
            while time.monotonic() < until:
                session = secrets.token_hex(8)
                try:
                    return session, screen_of(event(client, ids["on_start"], [], token, session))
                except Gone:
                    time.sleep(0.5)
            return None, ("timeout", None, "")

        try:
            while time.monotonic() < until and (token := next_token()) is not None:
                session, (kind, pos, message) = load(token)
                avoid: dict[int, set] = {}  # position -> values sent and not acknowledged
                while time.monotonic() < until:
                    if kind == "finished":
                        with lock:
                            out["finished"] += 1
                        break
                    if kind != "case" or pos is None:  # storage screen, error: Try again
                        with lock:
                            out["storage_screens" if kind == "unavailable" else "errors"] += 1
                        time.sleep(0.5)
                        session, (kind, pos, message) = load(token)
                        continue
                    time.sleep(rng.expovariate(1.0 / think))
                    value = rng.choice([v for v in range(1, 7) if v not in avoid.get(pos, ())]
                                       or [1])
                    try:
                        msg = event(client, ids["on_submit"], [None, value, None, "", False],
                                    token, session)
                    except Gone:  # no reply: give up on it, reload, answer what is shown
                        with lock:
                            out["abandoned"].append((token, pos, value))
                        avoid.setdefault(pos, set()).add(value)
                        session, (kind, pos, message) = load(token)
                        continue
                    new_kind, new_pos, new_message = screen_of(msg)
                    moved_on = ((new_kind == "finished" and new_message.startswith("All "))
                                or (new_kind == "case" and not new_message))
                    if moved_on:
                        with lock:
                            out["acked"][f"{token} {pos}"] = value
                    else:
                        avoid.setdefault(pos, set()).add(value)
                        with lock:
                            if OUT_OF_DATE in new_message:
                                out["out_of_date"] += 1
                            elif "already been answered" in new_message:
                                out["answered_elsewhere"] += 1
                            elif new_kind not in ("unavailable", "error", "case"):
                                out["other"].append(new_kind)
                    kind, pos, message = new_kind, new_pos, new_message
        finally:
            client.close()

    workers = [threading.Thread(target=tab, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    results.put(out)


# --------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: pathlib.Path, port: int, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEDISYN_ADMIN_PASSWORD": secrets.token_hex(8),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from studio.cli import main; main()",
                             "studio", "--db", str(db),
                             "--host", "127.0.0.1", "--port", str(port), "--no-demo"],
                            env=env, stdout=log, stderr=log, start_new_session=True)


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def children(pid: int, db: pathlib.Path) -> list[int]:
    """The writer processes of `db` whose parent is `pid`."""
    return [w for w in writer_pids(db) if parent_of(w) == pid]


def writer_pids(db: pathlib.Path) -> list[int]:
    """Every running writer process of this database (left-behind ones included)."""
    key = os.path.realpath(db)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if b"studies.storage.writer_process" in args and key.encode() in args:
            pids.append(int(entry))
    return pids


def signal_quietly(pid: int | None, sig) -> None:
    if pid is not None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", type=int, default=12, help="reader tabs at a time")
    ap.add_argument("--reader-pool", type=int, default=300, help="readers invited (10 cases each)")
    ap.add_argument("--duration", type=float, default=150.0, help="seconds of answering")
    ap.add_argument("--think", type=float, default=0.3, help="mean think time, seconds")
    ap.add_argument("--patience", type=float, default=4.0,
                    help="seconds a reader waits for a reply before reloading")
    ap.add_argument("--fault-every", type=float, default=5.0, help="mean seconds between faults")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    from studio_fixtures import make_loud_study

    from studies import readers as readers_mod
    from studies.export import long_table
    from studio.web import app as app_mod
    from studio.web import auth

    rng = random.Random(args.seed)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-faults-"))
    db, _, _ = make_loud_study(tmp, n_cases=10, size=64, readers=())
    tokens = [readers_mod.invite(db, "ten", f"r{i:04d}") for i in range(args.reader_pool)]
    names = {t: f"r{i:04d}" for i, t in enumerate(tokens)}
    creds = auth.AdminCredentials.from_password("admin", "x", "env")
    ids = {f.name: i for i, f in
           app_mod.build_app(db, admin_auth=auth.AdminAuth(creds)).state.reader_blocks.fns.items()}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "studio.log", "wb")
    server = start_server(db, port, log)
    if not wait_up(url, server):
        sys.exit(f"the studio did not start (log: {tmp / 'studio.log'})")

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    until = time.monotonic() + args.duration
    clients = ctx.Process(target=reader_clients, args=(url, tokens, ids, args.readers, args.think,
                                                       args.patience, until, args.seed, results))
    clients.start()
    faults = {"server killed": 0, "writer killed": 0, "writer stopped": 0, "server stopped": 0,
              "server killed while its writer was stopped": 0}
    stopped_s = {"writer": 0.0, "server": 0.0}
    plan: list[str] = []
    wal_max = 0
    wal = pathlib.Path(f"{db}-wal")
    next_fault = time.monotonic() + rng.expovariate(1.0 / args.fault_every)
    while time.monotonic() < until and clients.is_alive():
        time.sleep(0.2)
        if wal.exists():
            wal_max = max(wal_max, wal.stat().st_size)
        if server.poll() is not None:  # e.g. killed while stopped: start it again
            server = start_server(db, port, log)
            wait_up(url, server)
        if time.monotonic() < next_fault:
            continue
        if not plan:  # every kind of fault once per round, in a random order
            plan = rng.sample(list(faults), len(faults))
        kind = plan.pop()
        writer = next(iter(children(server.pid, db)), None)
        if kind.startswith("writer") and writer is None:
            kind = "server killed"  # no writer now (it is being replaced)
        faults[kind] += 1
        if kind.startswith("server killed"):
            if kind != "server killed":
                signal_quietly(writer, signal.SIGSTOP)  # then orphaned while stopped
            server.kill()
            server.wait()
            server = start_server(db, port, log)
            wait_up(url, server)
        elif kind == "writer killed":
            signal_quietly(writer, signal.SIGKILL)
        else:
            pid = writer if kind == "writer stopped" else server.pid
            pause = rng.uniform(2, 15) if kind == "writer stopped" else rng.uniform(1, 5)
            pause = min(pause, max(0.0, until - time.monotonic()))
            signal_quietly(pid, signal.SIGSTOP)
            time.sleep(pause)
            signal_quietly(pid, signal.SIGCONT)
            stopped_s[kind.split()[0]] += pause
        next_fault = time.monotonic() + rng.expovariate(1.0 / args.fault_every)
    res = results.get()
    clients.join()
    (tmp / "readers.json").write_text(json.dumps(res))  # the readers' records, to look into
    # writers whose server is gone (e.g. orphaned while stopped) and still there a moment
    # later (one whose server was just killed may be finishing its batch)
    time.sleep(5.0)
    orphans = [pid for pid in writer_pids(db) if parent_of(pid) != server.pid]
    for pid in orphans:  # for the record: its state (T: stopped) and parent
        try:
            with open(f"/proc/{pid}/stat") as fh:
                print("left behind:", pid, fh.read().rsplit(")", 1)[1].split()[:2])
        except OSError:
            pass
    for pid in writer_pids(db):
        signal_quietly(pid, signal.SIGCONT)
    time.sleep(1.0)
    server.send_signal(signal.SIGINT)  # a clean stop: the writer ends with it
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    time.sleep(2.0)
    left = sorted(set(writer_pids(db)) | set(orphans))  # after a clean stop: none expected
    for pid in left:
        signal_quietly(pid, signal.SIGKILL)

    # ------------------------------------------------------------------- the count
    conn = sqlite3.connect(db)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    rows = conn.execute(
        "SELECT rd.name, a.position, r.task, r.rating FROM responses r "
        "JOIN assignments a ON a.id = r.assignment_id JOIN readers rd ON rd.id = r.reader_id "
        "ORDER BY r.id").fetchall()
    case_of = {(n, p): c for n, p, c in conn.execute(
        "SELECT rd.name, a.position, c.case_key FROM assignments a "
        "JOIN readers rd ON rd.id = a.reader_id JOIN cases c ON c.id = a.case_id")}
    conn.close()
    stored: dict[tuple, list[int]] = {}
    for name, pos, task, rating in rows:
        stored.setdefault((name, pos, task), []).append(rating)
    exported = {(r.reader, r.case): int(r.rating)
                for r in long_table(db, "ten").itertuples() if r.task == "turing"}
    acked = {(names[k.split()[0]], int(k.split()[1])): v for k, v in res["acked"].items()}
    lost = sum(1 for key, v in acked.items() if v not in stored.get((*key, "turing"), []))
    duplicated = sum(len(v) - 1 for v in stored.values())
    superseded = sum(1 for (n, p), v in acked.items()
                     if (n, p, "turing") in stored and exported.get((n, case_of[(n, p)])) != v)
    abandoned = [(names[t], p, v) for t, p, v in res["abandoned"]]
    abandoned_stored = sum(1 for n, p, v in abandoned if v in stored.get((n, p, "turing"), []))
    unacked_stored = sum(1 for (n, p, _), v in stored.items() if (n, p) not in acked)

    print(f"campaign: {args.readers} reader tabs ({args.reader_pool} readers x 10 cases), "
          f"{args.duration:g} s, think Exp(mean {args.think:g} s), patience {args.patience:g} s, "
          f"a fault every Exp(mean {args.fault_every:g} s)")
    print("faults: " + ", ".join(f"{k} {v}" for k, v in faults.items())
          + f" (stopped: writer {stopped_s['writer']:.0f} s, server {stopped_s['server']:.0f} s)")
    print(f"acknowledged {len(acked)} / stored {len(rows)} / lost {lost} / duplicated "
          f"{duplicated} / superseded by an abandoned answer {superseded}")
    print(f"abandoned answers {len(abandoned)} (of which stored {abandoned_stored}); stored but "
          f"never acknowledged {unacked_stored}; storage screens {res['storage_screens']}; "
          f"out-of-date screens {res['out_of_date']}; refused as already answered "
          f"{res['answered_elsewhere']}; bare errors {res['errors']}; readers finished "
          f"{res['finished']}")
    print(f"integrity_check {integrity}; writer processes left behind {len(left)}; "
          f"largest WAL {wal_max / 1024:.0f} KiB; database {db.stat().st_size / 1024:.0f} KiB")
    print(f"(database, server log and the readers' records: {tmp})")
    if lost or duplicated or superseded or integrity != "ok" or left:
        sys.exit(1)


if __name__ == "__main__":
    main()
