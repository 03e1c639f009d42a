"""The studio's handlers as plain Python: reader flow, admin actions, auth, uploads, and
the app's routes (through HTTP, without a browser)."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import stat
import zipfile

import numpy as np
import pytest

from studio_fixtures import leak_needles, make_loud_study, write_loud_manifest

from studies import session, stimuli
from studies.database import stimuli_dir
from studies.export import long_table
from studio import admin_view, auth, reader_view


def _text(obj) -> str:
    """Everything a Screen would send to the browser, as text."""
    if dataclasses.is_dataclass(obj):
        obj = {k: v for k, v in dataclasses.asdict(obj).items() if k not in ("image", "state")}
    return json.dumps(obj, default=str)


def _answer_all(db, token, rating=2, likert=4, max_steps=200):
    screen = reader_view.start(db, token)
    steps = 0
    while screen.kind != "finished":
        steps += 1
        assert steps < max_steps
        if screen.kind == "feedback":
            screen = reader_view.continue_after_feedback(db, token)
            continue
        assert screen.kind == "case", screen
        value = rating if len(screen.choices) == 6 else likert
        screen = reader_view.submit_answer(db, token, screen.state, value)
    return screen


# ------------------------------------------------------------------------------- reader
def test_reader_flow_blinded_pixels_and_finish(tmp_path):
    db, rows, tokens = make_loud_study(tmp_path)
    token = tokens["dr-a"]
    needles = leak_needles(rows) + [r["prompt"] for r in rows]  # turing: no prompt shown

    first = reader_view.open_page(db, token)
    assert first.kind == "intro" and "10" in first.intro
    screen = reader_view.start(db, token)
    seen = []
    while screen.kind == "case":
        assert (screen.position, screen.total) == (len(seen) + 1, 10)
        assert [v for _, v in screen.choices] == [1, 2, 3, 4, 5, 6]
        assert screen.prompt is None
        text = _text(screen)
        assert not [n for n in needles if n.lower() in text.lower()]
        # The pixels handed to Gradio are exactly the stored normalised stimulus.
        view = session.next_case(db, screen.state.reader_id)
        stored = session.stimulus_png(db, screen.state.reader_id, view.stimulus_id)
        assert isinstance(screen.image, np.ndarray) and screen.image.shape == (96, 96, 3)
        np.testing.assert_array_equal(screen.image, stimuli.decode_png(stored))
        seen.append(view.assignment_id)
        screen = reader_view.submit_answer(db, token, screen.state, 5)
    assert screen.kind == "finished" and "10" in screen.message
    assert len(set(seen)) == 10
    df = long_table(db, "ten")
    assert len(df) == 10 and set(df["rating"]) == {5}
    assert (df["duration_ms"] >= 0).all()
    # Back on the page later: still finished, nothing asked again.
    assert reader_view.open_page(db, token).kind == "finished"


def test_resume_after_refresh_and_restart_starts_at_first_unanswered(tmp_path):
    db, _, tokens = make_loud_study(tmp_path)
    token = tokens["dr-a"]
    screen = reader_view.start(db, token)
    for _ in range(3):
        screen = reader_view.submit_answer(db, token, screen.state, 1)
    assert screen.position == 4
    # A refresh (or a server restart) loses gr.State: the page comes back from the DB.
    again = reader_view.open_page(db, token)
    assert again.kind == "case" and again.position == 4 and "Welcome back" in again.message
    assert again.state.assignment_id == screen.state.assignment_id
    assert len(long_table(db, "ten")) == 3


def test_stale_or_foreign_state_records_nothing(tmp_path):
    db, _, tokens = make_loud_study(tmp_path, readers=("dr-a", "dr-b"))
    a, b = tokens["dr-a"], tokens["dr-b"]
    sa = reader_view.start(db, a)
    after = reader_view.submit_answer(db, a, sa.state, 3)
    # The same submission again (double Enter after the page moved on): nothing recorded.
    again = reader_view.submit_answer(db, a, sa.state, 3)
    assert again.kind == "case" and again.position == 2 and "out of date" in again.message
    # Reader B replaying reader A's state with B's token: refused, nothing for either.
    sb = reader_view.start(db, b)
    forged = reader_view.submit_answer(db, b, after.state, 6)
    assert forged.position == 1 and forged.state.reader_id == sb.state.reader_id
    # No state at all (server restarted under an open tab): re-shown, nothing recorded.
    assert reader_view.submit_answer(db, a, None, 2).position == 2
    df = long_table(db, "ten")
    assert list(df["reader"]) == ["dr-a"] and list(df["rating"]) == [3]


def test_no_answer_and_bad_tokens(tmp_path):
    db, _, tokens = make_loud_study(tmp_path)
    s = reader_view.start(db, tokens["dr-a"])
    s2 = reader_view.submit_answer(db, tokens["dr-a"], s.state, None)
    assert s2.kind == "case" and "Choose an answer" in s2.message and s2.position == 1
    assert s2.state.shown_mono == s.state.shown_mono  # timing keeps running
    assert len(long_table(db, "ten")) == 0
    tok = tokens["dr-a"]
    near = tok[:-1] + ("B" if tok[-1] == "A" else "A")  # one character off
    for bad in (None, "", "x" * 43, near, "y" * 5000):
        assert reader_view.open_page(db, bad).kind == "login"
        assert reader_view.start(db, bad).kind == "login"
        assert reader_view.submit_answer(db, bad, s.state, 3).kind == "login"
    assert len(long_table(db, "ten")) == 0


def test_duration_is_measured_from_when_the_case_was_served(tmp_path, monkeypatch):
    db, _, tokens = make_loud_study(tmp_path)
    clock = [1000.0]
    monkeypatch.setattr(reader_view.time, "monotonic", lambda: clock[0])
    s = reader_view.start(db, tokens["dr-a"])
    clock[0] += 2.5
    reader_view.submit_answer(db, tokens["dr-a"], s.state, 4)
    df = long_table(db, "ten")
    assert df["duration_ms"].tolist() == [2500]


def test_duration_uses_the_browsers_display_time_only_when_shorter(tmp_path, monkeypatch):
    """The browser times from when the image was on screen; it may shorten the server's
    figure (queue + download), never lengthen it or replace it with junk."""
    db, _, tokens = make_loud_study(tmp_path)
    token = tokens["dr-a"]
    clock = [1000.0]
    monkeypatch.setattr(reader_view.time, "monotonic", lambda: clock[0])
    for client_ms in (1800, 99_999, -5, float("nan"), "junk", None):
        s = reader_view.start(db, token)
        clock[0] += 2.5
        reader_view.submit_answer(db, token, s.state, 4, client_ms)
    df = long_table(db, "ten")
    assert df["duration_ms"].tolist() == [1800, 2500, 2500, 2500, 2500, 2500]
    # shown_at follows the figure used: 1.8 s before the answer, not the server's send time
    from studies.database import open_db
    conn = open_db(db)
    try:
        first = conn.execute("SELECT shown_at, answered_at FROM responses ORDER BY id LIMIT 1").fetchone()
    finally:
        conn.close()
    import datetime as dt
    shown, answered = (dt.datetime.fromisoformat(v.replace("Z", "+00:00")) for v in first)
    assert (answered - shown).total_seconds() == pytest.approx(1.8, abs=0.01)


def test_two_tasks_prompt_only_with_alignment_and_training_feedback(tmp_path):
    db, rows, tokens = make_loud_study(tmp_path, tasks=("turing", "alignment"),
                                       training_cases=2)
    token = tokens["dr-a"]
    prompts = {r["prompt"] for r in rows}
    s = reader_view.start(db, token)
    assert s.training and s.prompt is None and len(s.choices) == 6
    s = reader_view.submit_answer(db, token, s.state, 1)
    # Same image, second question: the prompt appears, the image is not re-sent.
    assert s.kind == "case" and s.position == 1 and not s.new_image and s.image is None
    assert s.prompt in prompts and len(s.choices) == 5
    s = reader_view.submit_answer(db, token, s.state, 3)
    assert s.kind == "feedback" and "Training case" in s.feedback
    assert ("real" in s.feedback) or ("synthetic" in s.feedback)
    assert "correct" in s.feedback.lower() or "not quite" in s.feedback.lower()
    s = reader_view.continue_after_feedback(db, token)
    assert s.kind == "case" and s.position == 2 and s.new_image
    final = _answer_all(db, token)
    assert final.kind == "finished"
    df = long_table(db, "ten")
    assert set(df["task"]) == {"turing", "alignment"} and len(df) == 2 * 10  # 10 cases, 2 of them training


def test_reader_blocks_config_is_blind_and_every_event_private(tmp_path):
    db, rows, _ = make_loud_study(tmp_path)
    blocks = reader_view.build_reader_blocks(db)
    config = json.dumps(blocks.get_config_file(), default=str)
    for needle in leak_needles(rows) + [str(stimuli_dir(db)), str(db)]:
        assert needle not in config
    deps = blocks.get_config_file()["dependencies"]
    assert deps and all(d["api_visibility"] == "private" for d in deps)
    image = next(c for c in blocks.get_config_file()["components"]
                 if c.get("props", {}).get("elem_id") == "stimulus")
    assert image["props"]["format"] == "png" and image["props"]["buttons"] == []


# -------------------------------------------------------------------------------- auth
def test_admin_credentials_generated_hashed_and_reused(tmp_path):
    db = tmp_path / "s.db"
    creds, password = auth.load_or_create(db, env={})
    assert password and len(password) >= 16 and creds.user == "admin"
    cfg = auth.config_path(db)
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert password not in cfg.read_text()
    again, pw2 = auth.load_or_create(db, env={})
    assert pw2 is None and again.matches("admin", password)
    assert not again.matches("admin", password + "x") and not again.matches("root", password)
    reset, pw3 = auth.load_or_create(db, env={}, reset=True)
    assert pw3 and pw3 != password and reset.matches("admin", pw3)
    env_creds, pw4 = auth.load_or_create(db, env={auth.ENV_USER: "chief",
                                                  auth.ENV_PASSWORD: "s3cret"})
    assert pw4 is None and env_creds.source == "env" and env_creds.matches("chief", "s3cret")


def test_admin_auth_brake_after_repeated_failures():
    now = [0.0]
    a = auth.AdminAuth(auth.AdminCredentials.from_password("admin", "right", "env"),
                       clock=lambda: now[0])
    assert a("admin", "right")
    for _ in range(auth.MAX_FAILURES):
        assert not a("admin", "wrong")
    assert a.locked() and not a("admin", "right")  # even the right password waits
    now[0] += auth.LOCKOUT_S + 1
    assert a("admin", "right")
    assert a.is_admin("admin") and not a.is_admin(None) and not a.is_admin("Admin")


# ------------------------------------------------------------------------------ uploads
def _zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("entries,symlink,message", [
    ({"../evil.txt": b"x"}, None, "unsafe path"),
    ({"/abs/evil.txt": b"x"}, None, "unsafe path"),
    ({"a/../../evil.txt": b"x"}, None, "unsafe path"),
    ({"C:/evil.txt": b"x"}, None, "unsafe path"),
    ({"ok.txt": b"x"}, "link.png", "symbolic link"),
    ({"bomb.bin": b"\0" * (8 * 1024 * 1024)}, None, "zip bomb"),
])
def test_safe_extract_refuses_slip_links_and_bombs(tmp_path, entries, symlink, message):
    z = tmp_path / "in.zip"
    z.write_bytes(_zip(entries, symlink=symlink))
    with pytest.raises(admin_view.UploadError, match=message):
        admin_view.safe_extract_zip(z, tmp_path / "out", max_ratio=50)
    assert not (tmp_path / "evil.txt").exists() and not pathlib.Path("/abs/evil.txt").exists()


def test_safe_extract_total_size_limit(tmp_path):
    z = tmp_path / "in.zip"
    z.write_bytes(_zip({"a.bin": os.urandom(3000), "b.bin": os.urandom(3000)}))
    with pytest.raises(admin_view.UploadError, match="expands"):
        admin_view.safe_extract_zip(z, tmp_path / "out", max_bytes=5000)


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """Gradio's upload folder, private to the test (Gradio reads GRADIO_TEMP_DIR per call)."""
    folder = tmp_path / "gradio-uploads"
    (folder / "0123abcd").mkdir(parents=True)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder / "0123abcd"


def test_create_study_from_uploaded_zip_then_invite_and_progress(tmp_path, uploads):
    manifest, rows = write_loud_manifest(tmp_path / "src", 10)
    z = uploads / "upload.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(manifest, "study/cases.csv")
        for r in rows:
            zf.write(manifest.parent / r["path"], f"study/{r['path']}")
    db = tmp_path / "studio.db"
    opts = admin_view.study_options(["turing"], training_cases=0, seed=3)
    summary = admin_view.create_from_zip(db, "zipped", str(z), size=64, options=opts)
    assert summary.n_cases == 10 and summary.n_real == 5
    assert not z.exists()  # the upload (original file names) is removed after ingest
    table = admin_view.studies_table(db)
    assert table.loc[0, "study"] == "zipped" and table.loc[0, "status"] == "draft"
    md, audit_text, leak = admin_view.study_overview(db, "zipped")
    assert "draft" in md and "Leak audit" in audit_text
    link = admin_view.invite_reader(db, "zipped", "dr-z", "http://h:1/", acknowledge_leak=leak)
    assert link.startswith("http://h:1/?token=")
    assert admin_view.studies_table(db).loc[0, "status"] == "open"
    token = link.split("token=", 1)[1]
    s = reader_view.start(db, token)
    reader_view.submit_answer(db, token, s.state, 6)
    prog = admin_view.progress_table(db, "zipped")
    assert prog.loc[0, "reader"] == "dr-z" and prog.loc[0, "answered"] == "1 / 10"


def test_create_from_folder_and_bad_inputs(tmp_path, uploads):
    manifest, _ = write_loud_manifest(tmp_path / "src", 10)
    db = tmp_path / "studio.db"
    opts = admin_view.study_options(["turing"])
    s = admin_view.create_from_folder(db, "fromfolder", str(manifest), size=64, options=opts)
    assert s.n_cases == 10
    with pytest.raises(admin_view.UploadError, match="no such file"):
        admin_view.create_from_folder(db, "x", str(tmp_path / "missing"), options=opts)
    with pytest.raises(admin_view.StudyError, match="at least one task"):
        admin_view.study_options([])
    notzip = uploads / "n.zip"
    notzip.write_text("hello")
    with pytest.raises(admin_view.UploadError, match="not a readable zip"):
        admin_view.create_from_zip(db, "y", str(notzip), options=opts)
    assert not notzip.exists()


def test_zip_path_outside_the_upload_folder_is_neither_read_nor_deleted(tmp_path, uploads):
    """A forged FileData path: the admin form may only name a file Gradio received."""
    manifest, rows = write_loud_manifest(tmp_path / "src", 4)
    db = tmp_path / "studio.db"
    admin_view.create_from_folder(db, "existing", str(manifest), size=32,
                                  options=admin_view.study_options(["turing"]))
    good_zip = tmp_path / "study.zip"  # a valid study zip, but not an upload
    with zipfile.ZipFile(good_zip, "w") as zf:
        zf.write(manifest, "cases.csv")
        for r in rows:
            zf.write(manifest.parent / r["path"], r["path"])
    link = uploads / "link.zip"
    link.symlink_to(good_zip)
    escape = uploads / ".." / ".." / "study.zip"
    opts = admin_view.study_options(["turing"])
    for forged in (db, good_zip, link, escape):
        before = pathlib.Path(forged).resolve().read_bytes()
        with pytest.raises(admin_view.UploadError, match="uploaded with this form.*Folder on the server"):
            admin_view.create_from_zip(db, "forged", str(forged), options=opts)
        assert pathlib.Path(forged).resolve().read_bytes() == before
    assert admin_view.study_names(db) == ["existing"]
    with pytest.raises(admin_view.UploadError, match="gone"):
        admin_view.create_from_zip(db, "forged", str(uploads / "missing.zip"), options=opts)


def test_invite_requires_acknowledgement_when_audit_flags_a_leak(tmp_path, monkeypatch):
    db, _, _ = make_loud_study(tmp_path, readers=())
    from studies import ingest

    real = ingest.audit_study
    monkeypatch.setattr(ingest, "audit_study",
                        lambda *a, **k: ({**real(*a, **k)[0], "leak": True}, "LEAK"))
    with pytest.raises(admin_view.StudyError, match="leak audit flags"):
        admin_view.invite_reader(db, "ten", "dr-q", "http://h/")
    assert admin_view.invite_reader(db, "ten", "dr-q", "http://h/", acknowledge_leak=True)


def test_dashboard_and_exports_show_each_readers_results(tmp_path):
    db, _, tokens = make_loud_study(tmp_path, readers=("dr-a", "dr-b"))
    _answer_all(db, tokens["dr-a"], rating=1)
    _answer_all(db, tokens["dr-b"], rating=6)
    d = admin_view.dashboard(db, "ten")
    assert set(d.per_reader["reader"]) == {"dr-a", "dr-b"}
    acc = dict(zip(d.per_reader["reader"], d.per_reader["accuracy"]))
    assert acc == {"dr-a": 0.5, "dr-b": 0.5}  # all-real / all-synthetic on a 5/5 split
    assert d.pooled.loc[0, "n"] == 20
    assert d.figures and all(hasattr(f, "to_plotly_json") for _, f in d.figures)
    paths = admin_view.export_files(db, "ten", tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["ten-imrmc.csv", "ten-long.csv", "ten-report.html"]
    assert "dr-b" in (tmp_path / "out" / "ten-long.csv").read_text()
    assert "<html" in (tmp_path / "out" / "ten-report.html").read_text().lower()


def test_base_url_of():
    class R:
        headers = {"host": "example.org:8080"}
    assert admin_view.base_url_of(R(), None) == "http://example.org:8080/"
    assert admin_view.base_url_of(R(), "https://x/") == "https://x/"


# ------------------------------------------------------------------------------- routes
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The whole studio app on a free port (no browser): (base url, db, rows, tokens)."""
    from studio import app as app_mod

    tmp = tmp_path_factory.mktemp("served")
    db, rows, tokens = make_loud_study(tmp)
    creds = auth.AdminCredentials.from_password("admin", "pw-test", "env")
    app = app_mod.build_app(db, admin_auth=auth.AdminAuth(creds))
    server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
    yield server.url, db, rows, tokens
    server.stop()


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
        # No public API: the API description lists no endpoint.
        info = c.get("/gradio_api/info").json()
        assert not info.get("named_endpoints") and not info.get("unnamed_endpoints")


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
        # The one thing the reader side does serve: Gradio's cached stimulus copies.
        for route in (f"/gradio_api/file={png}", f"/gradio_api/file/{png}"):
            assert c.get(route).status_code == 200, route
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


# ------------------------------------------------------------------------------ generate
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from runtime_fixtures import build_sd

    return str(build_sd(tmp_path_factory.mktemp("tiny") / "sd"))


def test_generation_batch_has_provenance_and_becomes_a_study(tmp_path, tiny_model):
    import threading

    from model_runtime import provenance
    from studio import generate_view

    steps = []
    batch = generate_view.run_generation(
        tiny_model, prompt="Axial CT image of the head", seed=77, steps=3, n_images=2,
        modality="CT", out_root=tmp_path / "batches", on_step=lambda d, t: steps.append((d, t)))
    assert batch.seeds == [77, 78] and len(batch.files) == 2 and steps[-1][0] == steps[-1][1]
    params, rec = provenance.read_png(batch.files[1])
    assert "Seed: 78" in params and rec["synthetic"] is True
    choices = generate_view.batch_choices(tmp_path / "studio.db", tmp_path / "batches")
    assert [c[1] for c in choices] == [str(batch.folder)] and "2 ×" in choices[0][0]
    # Cancelled before it starts: nothing written.
    stop = threading.Event()
    stop.set()
    with pytest.raises(Exception, match="(?i)cancel"):
        generate_view.run_generation(tiny_model, prompt="x", steps=3, n_images=1,
                                     out_root=tmp_path / "batches", cancel=stop)
    assert len(generate_view.batch_choices(tmp_path / "s.db", tmp_path / "batches")) == 1
    # The batch plus real images on the server make a turing study; provenance is stripped.
    real = tmp_path / "real"
    manifest, rows = write_loud_manifest(tmp_path / "src", 4)
    real.mkdir()
    for r in rows:
        if r["source"] == "real":
            dst = real / pathlib.Path(r["path"]).name
            dst.write_bytes((manifest.parent / r["path"]).read_bytes())
            dst.with_name(dst.name.split(".")[0] + ".txt").write_text(r["prompt"])
    db = tmp_path / "studio.db"
    summary = admin_view.create_from_batches(
        db, "from-batch", [str(batch.folder)], real_folder=str(real), size=64,
        options=admin_view.study_options(["turing", "alignment"]))
    assert (summary.n_real, summary.n_synthetic) == (2, 2)
    for png in stimuli_dir(db).glob("*.png"):
        assert set(stimuli.png_chunk_types(png.read_bytes())) <= {"IHDR", "IDAT", "IEND"}


def test_a_batch_manifest_carries_only_the_text_the_model_read(tmp_path, tiny_model):
    import csv

    from studio import generate_view

    long = " ".join(["chest image patient normal"] * 30)  # 120 one-token words; CLIP reads 75
    batch = generate_view.run_generation(tiny_model, prompt=long, seed=1, steps=1, n_images=1,
                                         out_root=tmp_path / "batches")
    assert batch.prompt_seen == " ".join(long.split()[:75])
    with (batch.folder / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        assert [r["prompt"] for r in csv.DictReader(fh)] == [batch.prompt_seen]


def test_generation_input_checks(tmp_path, tiny_model):
    from studio import generate_view

    with pytest.raises(ValueError, match="prompt"):
        generate_view.run_generation(tiny_model, prompt="  ", out_root=tmp_path)
    with pytest.raises(ValueError, match="number of images"):
        generate_view.run_generation(tiny_model, prompt="x", n_images=99, out_root=tmp_path)
    with pytest.raises(ValueError, match="not a diffusers folder"):
        generate_view.model_location(generate_view.LOCAL_PATH, str(tmp_path))
    assert generate_view.model_location(generate_view.LOCAL_PATH, tiny_model) == tiny_model
    keys = [k for _, k in generate_view.model_choices()]
    assert keys[0] == "embedded" and keys[-1] == generate_view.LOCAL_PATH
    assert "CC-BY-NC-ND-4.0" in generate_view.model_info("medisyn")
    # "<modality> image of <anatomy>" must survive Markdown (a raw <tag> is swallowed).
    assert "&lt;modality&gt; image of &lt;anatomy&gt;" in generate_view.model_info("embedded")
    prompt, modality = generate_view.preset_prompt("fundus", {"view": "right"})
    assert "right" in prompt and modality == "fundus photograph"


# ------------------------------------------------------------------------------ start-up
def _fake_demo(tmp_path, monkeypatch):
    """studio.demo with its image building (embedded model, tested by its own suite)
    replaced by a small real study; returns the list of models it was asked for."""
    from studio import demo

    calls = []

    def fake_create(db_path, model, *, synthetic_per_modality, seed, log):
        calls.append(model)
        manifest, _ = write_loud_manifest(tmp_path / "demo-src", 4)
        from studies.ingest import create_study
        create_study(db_path, demo.DEMO_STUDY, manifest=manifest, size=32)
        return {}

    monkeypatch.setattr(demo, "_create", fake_create)
    return calls


def test_prepare_prints_credentials_once_and_a_working_demo_link(tmp_path, monkeypatch):
    from studies import readers
    from studio import app as app_mod
    from studio import demo

    db = tmp_path / "data" / "studio.db"
    calls = _fake_demo(tmp_path, monkeypatch)
    first = app_mod.prepare(db, model="m", port=7999, env={}, echo=lambda m: None)
    banner = first.banner()
    assert first.admin_password and first.admin_password in banner
    assert "http://127.0.0.1:7999/admin" in banner and first.demo_link in banner
    token = first.demo_link.split("token=")[1]
    assert readers.reader_for_token(db, token).name == demo.DEMO_READER
    kept = demo.token_path(db)
    assert kept == db.parent / "studio.demo-reader"
    assert kept.read_text().strip() == token and stat.S_IMODE(kept.stat().st_mode) == 0o600
    # A restart prints the same link, and it still opens the demo: an open tab keeps working.
    second = app_mod.prepare(db, model="m", port=7999, env={}, echo=lambda m: None)
    assert second.admin_password is None and first.admin_password not in second.banner()
    assert second.admin_auth.creds.matches("admin", first.admin_password)
    assert second.demo_link == first.demo_link and first.demo_link in second.banner()
    assert readers.reader_for_token(db, token).name == demo.DEMO_READER
    assert calls == ["m"]  # the study was built once
    # The kept file is demo-only convenience: if it is lost, or an admin reissued the
    # link, the next start issues a new link (and keeps that one).
    kept.unlink()
    third = app_mod.prepare(db, model="m", port=7999, env={}, echo=lambda m: None)
    new_token = third.demo_link.split("token=")[1]
    assert new_token != token and readers.reader_for_token(db, token) is None
    assert kept.read_text().strip() == new_token
    admin_view.invite_reader(db, demo.DEMO_STUDY, demo.DEMO_READER, "http://h/",
                             acknowledge_leak=True, reissue=True)
    fourth = app_mod.prepare(db, model="m", port=7999, env={}, echo=lambda m: None)
    assert fourth.demo_link != third.demo_link
    assert readers.reader_for_token(db, fourth.demo_link.split("token=")[1]) is not None
    # The token file is never served, even to the admin.
    assert str(kept) in app_mod.blocked_paths(db)
    # A database with only the user's own studies is never seeded.
    other = tmp_path / "other" / "s.db"
    other.parent.mkdir()
    make_loud_study(other.parent, readers=())
    fifth = app_mod.prepare(other.parent / "studio.db", model="m", env={}, echo=lambda m: None)
    assert fifth.demo_link is None and calls == ["m"]


@pytest.mark.parametrize("leak", [True, False])
def test_banner_says_when_the_demo_fails_its_leak_audit(tmp_path, monkeypatch, leak):
    from studio import app as app_mod
    from studio import demo

    _fake_demo(tmp_path, monkeypatch)
    real = demo.audit_study
    monkeypatch.setattr(demo, "audit_study",
                        lambda *a, **k: ({**real(*a, **k)[0], "leak": leak, "auc": 0.83}, "LEAK"))
    info = app_mod.prepare(tmp_path / "studio.db", model="m", env={}, echo=lambda m: None)
    banner = info.banner()
    assert info.demo_link in banner
    mentions = "leak audit (classifier AUC 0.83)" in banner and "not a study" in banner
    assert mentions == leak, banner
    if leak:
        assert "distinguishable" in banner and "low-level features" in banner


def test_cli_studio_help_lists_options():
    from click.testing import CliRunner

    from studio.cli import cli

    out = CliRunner().invoke(cli, ["studio", "--help"])
    assert out.exit_code == 0
    for opt in ("--host", "--port", "--db", "--model", "--base-url", "--reset-admin-password"):
        assert opt in out.output
