"""Does a login flood stall the studio for everyone else?

Starts the studio in-process on a free port (one small study, one reader with a case on
screen), then measures the latency of an unrelated request — that reader fetching their
current image, `GET /stimulus/<view id>?token=...` — every 20 ms from a probe process:
first with the server idle, then while a load process floods `POST /admin/login`. The load
and the probe are separate processes, so neither steals the server's GIL.

Floods (each `--attempts` wrong logins, `--concurrency` at a time):
- `rotate`: one client address, a new user name for every attempt (a per-name lockout
  never trips);
- `spread`: every attempt from its own client address (127.0.0.10, .11, … — all loopback
  on Linux), so no lockout applies and every attempt costs a full scrypt hash: this shows
  what the hash itself does to the event loop.

- `control`: the same number of requests from one address, but a cheap GET
  (`/admin/gradio_api/login_check`) instead of a login: what any burst of that many
  requests costs the server (and the load process costs the 2 cores), login or not.

Afterwards the real admin logs in from yet another address, which must succeed.

    .venv/bin/python benchmarks/bench_login.py
    .venv/bin/python benchmarks/bench_login.py --attempts 120 --concurrency 8 --repeats 3
"""
from __future__ import annotations

import argparse
import multiprocessing
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the study fixtures
sys.path.insert(0, str(ROOT))

PASSWORD = "bench-login-admin-pw"
PROBE_INTERVAL_S = 0.02


def pct(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def probe(url: str, path: str, stop, out) -> None:
    """GET `path` every PROBE_INTERVAL_S until `stop` is set; (start time, seconds) each."""
    import httpx

    samples = []
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            r = c.get(path)
            dt = time.monotonic() - t0
            if r.status_code != 200:
                samples.append((t0, float("nan")))
            else:
                samples.append((t0, dt))
            time.sleep(max(0.0, PROBE_INTERVAL_S - dt))
    out.put(samples)


def flood(url: str, mode: str, attempts: int, concurrency: int, out) -> None:
    """`attempts` wrong logins, `concurrency` threads; (t start, t end, {status: count}).
    The clients (one per source address) are made before the clock starts: making one
    costs more CPU than a refused login."""
    import concurrent.futures

    import httpx

    def address(i: int) -> str:
        return "127.0.0.2" if mode in ("rotate", "control") else f"127.0.{10 + i // 200}.{10 + i % 200}"

    clients = [httpx.Client(base_url=url, timeout=300,
                            transport=httpx.HTTPTransport(local_address=address(i)))
               for i in range(attempts)]

    def one(i: int) -> int:
        if mode == "control":
            return clients[i].get("/admin/gradio_api/login_check").status_code
        r = clients[i].post("/admin/login", data={"username": f"user{i}", "password": "wrong"})
        return r.status_code

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        codes = list(pool.map(one, range(attempts)))
    t1 = time.monotonic()
    for c in clients:
        c.close()
    out.put((t0, t1, {c: codes.count(c) for c in sorted(set(codes))}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attempts", type=int, default=120, help="logins per flood")
    ap.add_argument("--concurrency", type=int, default=8, help="logins in flight at once")
    ap.add_argument("--idle", type=float, default=3.0, help="seconds of idle probing first")
    ap.add_argument("--repeats", type=int, default=1, help="floods of each kind")
    args = ap.parse_args()

    import httpx

    from studio_fixtures import make_loud_study

    from studies import readers, session
    from studio.web import app as app_mod
    from studio.web import auth

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-login-"))
    db, _, tokens = make_loud_study(tmp, n_cases=4, size=256, readers=("dr-a",))
    token = tokens["dr-a"]
    view = session.next_case(db, readers.reader_for_token(db, token).reader_id)
    path = f"/stimulus/{view.stimulus_id}?token={token}"
    creds = auth.AdminCredentials.from_password("admin", PASSWORD, "env")
    ctx = multiprocessing.get_context("spawn")
    print(f"login flood: {args.attempts} wrong logins per flood, {args.concurrency} in flight; "
          f"probe: GET of a reader's current image every {PROBE_INTERVAL_S * 1000:.0f} ms "
          f"(load and probe in processes of their own)")
    for rep in range(args.repeats):
        for mode in ("control", "rotate", "spread"):
            # a fresh server for every flood: no lockout carried over from the last one
            app = app_mod.build_app(db, admin_auth=auth.AdminAuth(creds))
            server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
            try:
                stop, samples_q, flood_q = ctx.Event(), ctx.Queue(), ctx.Queue()
                p = ctx.Process(target=probe, args=(server.url, path, stop, samples_q))
                p.start()
                time.sleep(args.idle)
                flood_started = time.monotonic()
                f = ctx.Process(target=flood, args=(server.url, mode, args.attempts,
                                                    args.concurrency, flood_q))
                f.start()
                t0, t1, codes = flood_q.get()
                f.join()
                stop.set()
                samples = samples_q.get()
                p.join()
                with httpx.Client(base_url=server.url, timeout=60, transport=httpx.HTTPTransport(
                        local_address="127.0.0.250")) as admin:
                    ok = admin.post("/admin/login", data={"username": "admin",
                                                          "password": PASSWORD}).status_code
            finally:
                server.stop()
            idle = [dt for t, dt in samples if t < flood_started]
            busy = [dt for t, dt in samples if t0 <= t <= t1]
            failed = sum(1 for _, dt in samples if dt != dt)
            print(f"[{mode} #{rep + 1}] idle: p50 {statistics.median(idle) * 1000:.1f} ms, "
                  f"p95 {pct(idle, 0.95) * 1000:.1f} ms ({len(idle)} requests); during the "
                  f"flood ({t1 - t0:.2f} s, answers {codes}): p50 "
                  f"{statistics.median(busy) * 1000:.1f} ms, p95 {pct(busy, 0.95) * 1000:.1f} "
                  f"ms, max {max(busy) * 1000:.1f} ms ({len(busy)} requests); probe failures "
                  f"{failed}; admin from another address afterwards: HTTP {ok}", flush=True)

if __name__ == "__main__":
    main()
