"""The app's routes through HTTP, without a browser: who may reach what, the stimulus
route, stimulus faults, and the web hardening (`studio.web`)."""
from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from reader_fixtures import repeat_study
from studio_fixtures import make_loud_study, serve_studio

from studies import monitoring, session

from studies.imaging import stimuli
from studies.storage.connections import stimuli_dir
from studies.export import long_table
from studio.admin import readers_tab
from studio.web import auth
from studio.reader import handlers as reader_handlers


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The whole studio app on a free port (no browser): (base url, db, rows, tokens)."""
    tmp = tmp_path_factory.mktemp("served")
    db, rows, tokens = make_loud_study(tmp)
    with serve_studio(db) as (url, _):
        yield url, db, rows, tokens


def test_routes_admin_needs_login_reader_does_not(served):
    import httpx

    url, db, rows, tokens = served
    with httpx.Client(base_url=url, timeout=20) as c:
        assert c.get("/").status_code == 200
        assert c.get("/config").status_code == 200  # the reader app is public (token inside)
        assert c.get("/admin/config").status_code == 401
        join = c.post("/admin/gradio_api/queue/join",
                      json={"data": [], "fn_index": 0, "session_hash": "x"})
        assert join.status_code in (401, 403)
        assert c.post("/admin/login", data={"username": "admin", "password": "no"}).status_code == 400
        ok = c.post("/admin/login", data={"username": "admin", "password": "pw-test"})
        assert ok.status_code == 200
        assert c.get("/admin/config").status_code == 200
        # Admin components never appear in the reader app's config.
        reader_cfg = c.get("/config").text
        assert "studies-table" not in reader_cfg and "gen-model" not in reader_cfg
        assert "studies-table" in c.get("/admin/config").text
        # No API descriptions at all, on either side, logged in or not.
        for route in ("/gradio_api/info", "/gradio_api/openapi.json", "/openapi.json", "/docs",
                      "/admin/gradio_api/info", "/admin/gradio_api/openapi.json",
                      "/admin/openapi.json", "/admin/docs", "/gradio_api//info"):
            assert c.get(route).status_code == 404, route


@pytest.fixture
def cache_files():
    """An admin export and a stimulus-like PNG in Gradio's shared cache, as the running
    studio leaves them there; removed afterwards."""
    import secrets
    import shutil

    from gradio import utils as gr_utils

    cache = pathlib.Path(gr_utils.get_upload_folder()).resolve()
    csv_dir, png_dir = cache / secrets.token_hex(16), cache / secrets.token_hex(16)
    csv_dir.mkdir(parents=True)
    png_dir.mkdir(parents=True)
    export = csv_dir / "ten-long.csv"
    export.write_text("reader,case,truth\ndr-a,LEAKREAL_00,real\n")
    png = png_dir / "image.png"
    png.write_bytes(stimuli.encode_png(np.zeros((4, 4, 3), np.uint8)))
    yield export, png
    shutil.rmtree(csv_dir, ignore_errors=True)
    shutil.rmtree(png_dir, ignore_errors=True)


def test_routes_reader_side_serves_no_files_and_takes_no_uploads(served, cache_files):
    import httpx

    url, db, rows, tokens = served
    export, png = cache_files
    secret = export.read_text()
    stim = next(stimuli_dir(db).glob("*.png"))
    rel = os.path.relpath(export, os.getcwd())
    with httpx.Client(base_url=url, timeout=20) as c:
        for target in (stim, db, auth.config_path(db), pathlib.Path("/etc/passwd")):
            assert c.get(f"/gradio_api/file={target}").status_code == 404
        # Every spelling of Gradio's file routes: `file=` and the `file/` alias (absolute
        # path after a double slash, or relative to the server's cwd).
        for route in (f"/gradio_api/file={export}", f"/gradio_api/file/{export}",
                      f"/gradio_api/file/{rel}", f"/gradio_api/file={rel}",
                      f"/gradio_api//file/{export}"):
            r = c.get(route)
            assert r.status_code in (403, 404), route
            assert "LEAKREAL" not in r.text and "reader,case" not in r.text, route
        assert secret  # the export exists and would have been served without the guard
        # Not even Gradio's cached image copies: stimuli come from /stimulus/<id> only.
        for route in (f"/gradio_api/file={png}", f"/gradio_api/file/{png}"):
            assert c.get(route).status_code == 404, route
        # No uploads, recordings or streams; no proxy or run history.
        for route in ("/gradio_api/upload", "/gradio_api/upload/", "/gradio_api//upload",
                      "/gradio_api/process_recording", "/gradio_api/stream/x",
                      "/gradio_api/stream/x/close"):
            r = c.post(route, files={"files": ("a.png", b"x" * 10)})
            assert r.status_code == 404, route
        for route in ("/gradio_api/upload_progress?upload_id=x", "/gradio_api/proxy=http://x/",
                      "/gradio_api/run-history/records", "/gradio_api/runs",
                      "/gradio_api/stream/s/r/1/playlist-file", "/monitoring"):
            assert c.get(route).status_code == 404, route
        # The admin side: file and upload routes need the admin session ...
        for route in (f"/admin/gradio_api/file={export}", f"/admin/gradio_api/file/{export}"):
            r = c.get(route)
            assert r.status_code in (401, 403), route
            assert "LEAKREAL" not in r.text
        assert c.post("/admin/gradio_api/upload",
                      files={"files": ("a.zip", b"x")}).status_code in (401, 403)
        assert c.get("/admin/gradio_api/stream/s/r/1/playlist-file").status_code == 404
        c.post("/admin/login", data={"username": "admin", "password": "pw-test"})
        # ... with it, the admin downloads their export; Gradio's blocked_paths still apply.
        assert c.get(f"/admin/gradio_api/file={export}").text == secret
        assert c.get(f"/admin/gradio_api/file={stim}").status_code == 403
        assert c.post("/admin/gradio_api/process_recording").status_code == 404

@pytest.fixture(scope="module")
def served_repeats(tmp_path_factory):
    db, tokens = repeat_study(tmp_path_factory.mktemp("served-rep"))
    with serve_studio(db) as (url, _):
        yield url, db, tokens


def test_stimulus_route_per_read_per_reader_token_only(served_repeats):
    """Each read has its own URL (a repeat or attention check too, never shared between
    readers), which works only with its reader's token and only until it is answered; the
    bytes are the stored PNG's, unchanged, no-store."""
    import httpx

    from studies.storage.connections import open_db

    url, db, tokens = served_repeats
    a, b = tokens["dr-a"], tokens["dr-b"]
    urls_a, urls_b, reads = [], [], []
    with httpx.Client(base_url=url, timeout=20) as c:
        s_b = reader_handlers.start(db, b)
        urls_b.append(s_b.image_url)
        s = reader_handlers.start(db, a)
        while s.kind == "case":
            view_url = s.image_url
            view_id = view_url.split("/")[1].split("?")[0]
            r = c.get(f"/{view_url}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["referrer-policy"] == "no-referrer"
            reads.append((view_id, r.content))
            # no token, an empty one, reader B's token: the same 404 as an unknown id
            for bad in ("", "?token=", f"?token={b}", f"?token={a[:-2]}"):
                assert c.get(f"/stimulus/{view_id}{bad}").status_code == 404, bad
            # reader B's current id with reader A's token: refused too
            assert c.get(f"/{s_b.image_url.split('?')[0]}?token={a}").status_code == 404
            urls_a.append(view_url)
            s = reader_handlers.submit_answer(db, a, s.state, 3)
        # Once answered, a read's URL is dead (no re-fetching earlier images to compare).
        assert c.get(f"/{urls_a[0]}").status_code == 404
        assert c.get("/stimulus/" + "x" * 500 + f"?token={a}").status_code == 404
    with open_db(db) as conn:
        rows = conn.execute("SELECT a.view_id, c.stimulus_id, a.kind FROM assignments a "
                            "JOIN cases c ON c.id = a.case_id JOIN readers r ON r.id = a.reader_id "
                            "WHERE r.name = 'dr-a'").fetchall()
    stim_of = {v: sid for v, sid, _ in rows}
    kinds = {k for _, _, k in rows}
    assert {"repeat", "attention"} <= kinds  # the study does repeat a case and check attention
    # Bytes served are the stored file's, byte for byte (no re-encoding).
    for view_id, body in reads:
        assert body == (stimuli_dir(db) / f"{stim_of[view_id]}.png").read_bytes()
    # A stimulus read twice (repeat, attention check) had a different URL each time.
    by_stim = {}
    for view_id, _ in reads:
        by_stim.setdefault(stim_of[view_id], []).append(view_id)
    assert any(len(v) > 1 for v in by_stim.values())
    assert len(set(urls_a)) == len(urls_a) == len(rows)
    # No URL of reader A is reader B's, and no URL holds a source or file name.
    ids_a = {u.split("?")[0] for u in urls_a}
    assert not ids_a & {u.split("?")[0] for u in urls_b}
    assert not [u for u in urls_a if "real" in u.lower() or "synth" in u.lower() or ".png" in u]


def test_missing_stimulus_message_in_words_and_admin_sees_the_fault(served_repeats, tmp_path):
    """A stored stimulus file gone: the reader gets a message in words and waits at that
    case (Try again continues once it is back); the fault is logged with the stimulus id
    and shown in the admin's progress view; the route answers 503, not a broken image."""
    import httpx

    db, tokens = repeat_study(tmp_path)
    token = tokens["dr-b"]
    first = reader_handlers.start(db, token)
    view = session.next_case(db, first.state.reader_id)
    with open_db_(db) as conn:
        sid = conn.execute("SELECT c.stimulus_id FROM assignments a JOIN cases c "
                           "ON c.id = a.case_id WHERE a.view_id = ?", [view.stimulus_id]).fetchone()[0]
    path = stimuli_dir(db) / f"{sid}.png"
    kept = path.read_bytes()
    path.unlink()
    for screen in (reader_handlers.start(db, token), reader_handlers.submit_answer(db, token, None, 3)):
        assert screen.kind == "unavailable" and screen.message == reader_handlers.UNAVAILABLE_IMAGE
        assert "Error" not in screen.message and screen.image_url is None
    found = monitoring.faults(db, "rep")
    assert [f.stimulus_id for f in found] == [sid] and found[0].count == 2
    assert found[0].readers == 1 and found[0].reason
    md = readers_tab.faults_markdown(db, "rep")
    assert sid in md and "Stimulus faults" in md
    assert readers_tab.faults_markdown(db, "rep") and not len(long_table(db, "rep"))
    # The stimulus route of a served studio: 503 in words, and it is logged too.
    url, sdb, stokens = served_repeats
    s = reader_handlers.start(sdb, stokens["dr-b"])
    if s.kind == "case":
        v = session.next_case(sdb, s.state.reader_id)
        with open_db_(sdb) as conn:
            ssid = conn.execute("SELECT c.stimulus_id FROM assignments a JOIN cases c ON "
                                "c.id = a.case_id WHERE a.view_id = ?", [v.stimulus_id]).fetchone()[0]
        spath = stimuli_dir(sdb) / f"{ssid}.png"
        saved = spath.read_bytes()
        spath.unlink()
        try:
            with httpx.Client(base_url=url, timeout=20) as c:
                r = c.get(f"/{s.image_url}")
            assert r.status_code == 503 and "unavailable" in r.text
            assert ssid in [f.stimulus_id for f in monitoring.faults(sdb, "rep")]
        finally:
            spath.write_bytes(saved)
    # Restored: Try again continues at the same case.
    path.write_bytes(kept)
    back = reader_handlers.start(db, token)
    assert back.kind == "case" and back.position == first.position and back.image_url


def open_db_(db):
    from studies.storage.connections import open_db
    return open_db(db)

def test_cross_origin_writes_refused_no_cors_and_security_headers(served):
    import httpx

    url, db, rows, tokens = served
    foreign = {"Host": "studio.example.org", "Origin": "http://blog.example.org"}
    sibling_ref = {"Host": "studio.example.org", "Referer": "http://blog.example.org/x"}
    own = {"Host": "studio.example.org", "Origin": "http://studio.example.org"}
    creds = {"username": "admin", "password": "pw-test"}
    with httpx.Client(base_url=url, timeout=20) as c:
        # A sibling page cannot log in, post events or preflight; own origin can.
        for headers in (foreign, sibling_ref, {"Host": "studio.example.org", "Origin": "null"}):
            r = c.post("/admin/login", data=creds, headers=headers)
            assert r.status_code == 403 and "set-cookie" not in r.headers, headers
            r = c.post("/gradio_api/queue/join", headers=headers,
                       json={"data": [], "fn_index": 0, "session_hash": "x"})
            assert r.status_code == 403
        pre = c.options("/admin/gradio_api/queue/join", headers={
            **foreign, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 403
        assert not [h for h in pre.headers if h.lower().startswith("access-control-")]
        ok = c.post("/admin/login", data=creds, headers=own)
        assert ok.status_code == 200
        # Gradio's login cookies: SameSite=Lax (not None).
        cookies = ok.headers.get_list("set-cookie")
        assert cookies and all("samesite=lax" in k.lower() for k in cookies)
        assert not [k for k in cookies if "samesite=none" in k.lower()]
        # A credentialed cross-origin read gets no CORS headers, so the browser hides it.
        r = c.get("/admin/config", headers=foreign)
        assert r.status_code == 200  # (this client holds the cookie; a browser page would not see it)
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]
        # Security headers on every kind of response: page, JSON, 404, 403, stimulus.
        for r in (c.get("/"), c.get("/config"), c.get("/nope"), c.get("/admin/"),
                  c.post("/admin/login", data=creds, headers=foreign),
                  c.get("/stimulus/x?token=y")):
            h = r.headers
            assert "frame-ancestors 'none'" in h["content-security-policy"], r.url
            assert "img-src 'self' data: blob:;" in h["content-security-policy"]
            assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
            assert h["referrer-policy"] == "no-referrer"


def test_bad_fn_index_is_a_4xx_without_traceback(served):
    import httpx

    url, *_ = served
    with httpx.Client(base_url=url, timeout=20) as c:
        for fn in (999, -1, "x", 1.5, True):
            r = c.post("/gradio_api/queue/join?token=x",
                       json={"data": [], "fn_index": fn, "session_hash": "s"})
            assert 400 <= r.status_code < 500, fn
            assert "Traceback" not in r.text and "KeyError" not in r.text
        r = c.post("/gradio_api/queue/join", content=b"{not json",
                   headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and "Traceback" not in r.text


def test_cookies_secure_behind_https_base_url(tmp_path):
    from starlette.testclient import TestClient

    from studio.web import app as app_mod

    db, _, _ = make_loud_study(tmp_path)
    creds = auth.AdminCredentials.from_password("admin", "pw-test", "env")
    app = app_mod.build_app(db, admin_auth=auth.AdminAuth(creds),
                            base_url="https://studio.example.org/")
    with TestClient(app, base_url="http://studio.example.org") as c:
        r = c.post("/admin/login", data={"username": "admin", "password": "pw-test"},
                   headers={"Origin": "https://studio.example.org"})
        assert r.status_code == 200
        cookies = r.headers.get_list("set-cookie")
        assert cookies and all("secure" in [p.strip().lower() for p in k.split(";")]
                               and "samesite=lax" in k.lower() for k in cookies)


def test_login_lockout_is_per_client_address(served):
    """Five bad posts from one address lock that address out; the admin logging in from
    another address is not affected (two real client addresses: 127.0.0.2 and 127.0.0.3)."""
    import httpx

    url, *_ = served
    bad = {"username": "admin", "password": "nope"}
    good = {"username": "admin", "password": "pw-test"}

    def client(addr):
        return httpx.Client(base_url=url, timeout=20,
                            transport=httpx.HTTPTransport(local_address=addr))
    with client("127.0.0.2") as attacker, client("127.0.0.3") as admin:
        for _ in range(auth.MAX_FAILURES + 2):
            assert attacker.post("/admin/login", data=bad).status_code == 400
        assert attacker.post("/admin/login", data=good).status_code == 400  # locked out
        assert admin.post("/admin/login", data=good).status_code == 200
