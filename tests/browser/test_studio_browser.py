"""End-to-end: the studio in headless Chromium (Debian's `chromium`, driven by Playwright).

A reader completes a 10-case study with the keyboard only, refreshes half-way and resumes
at the right case; every URL, DOM snapshot and network response is searched for the
original file names, the generator and ground truth. The admin logs in and sees that
reader's results; the Generate tab makes an image with the embedded model (or a tiny
random pipeline while the embedded one is absent), cancels a long request, and sends a
batch to a draft study (a study with readers refuses it). A second studio runs a study
with training cases and two questions per image (turing, alignment), keyboard only.

Locally a missing browser skips these tests with a message; under CI (`CI=true`) it fails.
Screenshots go to a temporary folder, or to `$MEDISYN_SCREENSHOTS` when set (the README's
docs/img/*.png were taken that way).
"""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import time

import pytest

from studio_fixtures import add_loud_study, leak_needles, make_loud_study

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ADMIN_PASSWORD = "browser-test-pw"
DRAFT = "draft-study"  # in the `studio` fixture's database, no reader invited


def _chromium() -> str:
    path = os.environ.get("MEDISYN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed"
    if problem is None and not os.path.exists(path):
        problem = f"no chromium at {path} (Debian: apt-get install chromium)"
    if problem:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests need Chromium under CI: {problem}")
        pytest.skip(f"browser tests skipped: {problem}")
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> pathlib.Path:
    out = os.environ.get("MEDISYN_SCREENSHOTS")
    path = pathlib.Path(out) if out else tmp_path_factory.mktemp("shots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from studio.web import app as app_mod
    from studio.web import auth

    tmp = tmp_path_factory.mktemp("browser")
    # A draft study (no reader invited) for "send batch to study", created first so that
    # 'ten' stays the newest study, the one the admin page selects by default.
    add_loud_study(tmp / "studio.db", tmp / "draft-data", DRAFT, n_cases=4, size=96)
    db, rows, tokens = make_loud_study(tmp, n_cases=10, size=256)
    creds = auth.AdminCredentials.from_password("admin", ADMIN_PASSWORD, "env")
    model = _model_for_tests(tmp)
    app = app_mod.build_app(db, admin_auth=auth.AdminAuth(creds), model=model)
    assert app_mod.start_writer(db)  # as `medisyn studio` runs (training_studio: without)
    server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
    yield {"url": server.url, "db": db, "rows": rows, "tokens": tokens, "model": model}
    server.stop()
    app_mod.stop_writer()


@pytest.fixture(scope="module")
def training_studio(tmp_path_factory):
    """A second studio: 2 training + 2 main cases, each asked turing then alignment."""
    from studio.web import app as app_mod
    from studio.web import auth

    tmp = tmp_path_factory.mktemp("browser-training")
    db, rows, tokens = make_loud_study(tmp, "two-tasks", n_cases=4, size=128,
                                       tasks=("turing", "alignment"), training_cases=2)
    # The prompt audit found the texts indistinguishable, so training cases ask the text
    # question too (without that verdict they skip it: tests/browser/test_back_text_browser.py).
    from studies.storage.connections import open_db

    with open_db(db) as conn:
        conn.execute("UPDATE studies SET audit_report = json_set(coalesce(audit_report, "
                     "'{}'), '$.prompts', json('{\"verdict\": \"ok\"}'))")
        conn.conn.commit()
    creds = auth.AdminCredentials.from_password("admin", ADMIN_PASSWORD, "env")
    app = app_mod.build_app(db, admin_auth=auth.AdminAuth(creds))
    server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
    yield {"url": server.url, "db": db, "rows": rows, "tokens": tokens, "study": "two-tasks"}
    server.stop()


def _model_for_tests(tmp: pathlib.Path) -> str:
    """The embedded model when it is shipped, else a tiny random SD pipeline."""
    from studio.web.app import default_model

    emb = default_model()
    if emb and (pathlib.Path(emb) / "model_index.json").is_file():
        return emb
    from runtime_fixtures import build_sd

    return str(build_sd(tmp / "tiny-sd"))


# Chromium's devtools cannot hand over the bodies of streamed responses, and Gradio's
# event payloads arrive on a streamed fetch (/queue/data): copy them in the page.
TAP_EVENT_STREAM = """(() => {
  window.__sse = [];
  const orig = window.fetch;
  window.fetch = async (...args) => {
    const resp = await orig(...args);
    try {
      const url = (args[0] && args[0].url) || String(args[0]);
      if (url.includes('/queue/data') && resp.body) {
        const reader = resp.clone().body.getReader();
        const dec = new TextDecoder();
        (async () => { for (;;) { const {done, value} = await reader.read();
                                  if (done) break; window.__sse.push(dec.decode(value)); } })();
      }
    } catch (e) {}
    return resp;
  };
})();"""


class Recorder:
    """Every response the page receives: URL, content type and body — including the
    streamed event payloads, copied in the page by TAP_EVENT_STREAM."""

    def __init__(self, page):
        self.items: list[tuple[str, str, bytes]] = []
        self.page = page
        page.add_init_script(TAP_EVENT_STREAM)
        page.on("response", self._on)

    def harvest_streams(self):
        """Collect the page's event-stream copy (call before a reload and at the end)."""
        text = self.page.evaluate("() => (window.__sse || []).join('')")
        self.items.append(("(event stream)", "text/event-stream", text.encode("utf-8")))

    def _on(self, response):
        ctype = response.headers.get("content-type", "")
        body = b""
        try:
            body = response.body()
        except Exception:  # a stream that ended with the page; its URL is still recorded
            pass
        self.items.append((response.url, ctype, body))


def _wait_case(page, n: int, total: int = 10, *, answer_kept: bool = False):
    """Case n of total on screen with its image; unless `answer_kept` (a case the reader
    went back to shows the earlier answer), with no answer selected."""
    page.wait_for_function(
        "([n, t]) => { const el = document.querySelector('#progress .label');"
        " return el && el.textContent.startsWith(`Case ${n} of ${t}`); }",
        arg=[n, total], timeout=60_000)
    # The image of this case is on screen before the reader answers.
    page.wait_for_function("() => { const i = document.querySelector('#stimulus img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
    # ... and no answer is pre-selected (the previous case's choice must not carry over).
    if not answer_kept:
        page.wait_for_function("() => !document.querySelector('#answer input:checked')"
                               " && !document.querySelector('#answer label.selected')",
                               timeout=10_000)


def phone_context(browser, scale: int = 3):
    """A 390×844 touch phone, the layout target of the reader page."""
    return browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True,
                               is_mobile=True, device_scale_factor=scale)


def pinch(ctx, page, box: dict, spread: tuple[int, ...]) -> None:
    """Two fingers on the centre of `box`, `spread[0]` px either side of it, moving apart
    through the other spreads and lifting (DevTools touch events, as a phone sends them)."""
    cdp = ctx.new_cdp_session(page)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    def touch(kind, d):
        pts = [] if kind == "touchEnd" else [{"x": cx - d, "y": cy, "id": 1},
                                             {"x": cx + d, "y": cy, "id": 2}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": pts})

    touch("touchStart", spread[0])
    for d in spread[1:]:
        touch("touchMove", d)
    touch("touchEnd", 0)


def _press(page, key: str):
    page.keyboard.press(key)


def test_reader_keyboard_only_with_refresh_and_nothing_leaks(browser, studio, shots):
    from studies.imaging import stimuli
    from studies.export import long_table
    from studies.design import TASKS

    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    rec = Recorder(page)
    token = studio["tokens"]["dr-a"]
    page.goto(f"{studio['url']}/?token={token}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    _press(page, "Enter")
    dom = []
    keys = [str(1 + (i % 6)) for i in range(10)]
    for i in range(10):
        if i == 5:  # refresh half-way: the page resumes at case 6 from the database
            _wait_case(page, 6)  # (the 5th answer has been stored)
            rec.harvest_streams()
            page.reload()
            _wait_case(page, 6)
            assert "Welcome back" in page.inner_text("#message")
        _wait_case(page, i + 1)
        if i == 2:
            time.sleep(0.5)  # let the options' hover/selection transitions settle
            page.screenshot(path=str(shots / "reader.png"))
        dom.append(page.content())
        # keyboard.js timed this case from when it appeared (sent with the answer)
        assert page.evaluate("typeof window.__medisynShownAt") == "number"
        if i == 3:
            time.sleep(1.2)
            on_screen_ms = page.evaluate("performance.now() - window.__medisynShownAt")
        _press(page, keys[i])
        assert page.is_checked(f"#answer input[type=radio] >> nth={int(keys[i]) - 1}")
        _press(page, "Enter")
    page.wait_for_selector("#finished", state="visible", timeout=20_000)
    rec.harvest_streams()
    assert "All 10 cases are answered" in page.inner_text("#finished")
    dom.append(page.content())
    page.screenshot(path=str(shots / "reader-finished.png"))

    # What was recorded: each keypress, in order, exactly once.
    df = long_table(studio["db"], "ten")
    df = df[df["reader"] == "dr-a"]
    assert df["rating"].tolist() == [int(k) for k in keys]
    assert (df["duration_ms"] > 0).all()
    # Case 4 was on screen ≥ 1.2 s before its keys were pressed, and the stored time is the
    # browser's (from display, not from the server's send) up to the key presses.
    assert on_screen_ms >= 1200
    assert on_screen_ms <= df["duration_ms"].iloc[3] <= on_screen_ms + 2000

    # Nothing identifying in URLs, DOM or any response body.
    needles = [n.lower() for n in leak_needles(studio["rows"])]
    needles += [r["prompt"].lower() for r in studio["rows"]]  # turing only: no prompt shown
    needles += [str(studio["db"]).lower(), "stimuli"]
    scale_words = [lab for _, lab in TASKS["turing"].scale] + [TASKS["turing"].question,
                                                              TASKS["turing"].help]
    images = []
    for url, ctype, body in rec.items:
        assert not [n for n in needles if n in url.lower()], url
        if "image/png" in ctype:
            # our own per-read route: /stimulus/<random view id>?token=<reader's token>
            assert re.search(r"/stimulus/[A-Za-z0-9_-]{22}\?token=", url), url
            assert set(stimuli.png_chunk_types(body)) <= {"IHDR", "IDAT", "IEND"}  # no metadata
            images.append(stimuli.decode_png(body))
            continue
        if not any(t in ctype for t in ("text", "json", "javascript", "event-stream")):
            continue
        text = body.decode("utf-8", "replace").lower()
        hits = [n for n in needles if n in text]
        assert not hits, (url, hits)
        if "/gradio_api/" in url or url == "(event stream)":  # event payloads: no truth
            # words beyond the scale labels
            for w in scale_words:
                text = text.replace(w.lower(), "")
            text = text.replace("real or synthetic", "")
            assert not re.search(r"\b(real|synthetic|source|generator|truth)\b", text), url
    # The scan saw the event payloads that carried the images (not just empty streams).
    streams = [b for _, c, b in rec.items if "event-stream" in c and b]
    shown = set()
    for b in streams:
        shown |= set(re.findall(rb"stimulus/([A-Za-z0-9_-]{22})\?token=", b))
    assert len(shown) == 10
    assert not [u for u, _, _ in rec.items if "/file=" in u or "/file/" in u]  # no Gradio files
    for html in dom:
        low = html.lower()
        assert not [n for n in needles if n in low]
    # Served pixels are exactly the study's normalised stimuli.
    from studies.storage.connections import stimuli_dir
    stored = {stimuli.decode_png(p.read_bytes()).tobytes()
              for p in stimuli_dir(studio["db"]).glob("*.png")}
    assert images and all(im.tobytes() in stored for im in images)
    assert len({im.tobytes() for im in images}) == 10
    ctx.close()


def test_access_code_form_and_keys_in_text_fields(browser, studio):
    """Without a link a reader pastes the code; digits typed into a text field stay there."""
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(f"{studio['url']}/")
    page.wait_for_selector("#login", state="visible", timeout=30_000)
    token = studio["tokens"]["dr-a"]
    page.click("#login input")
    page.keyboard.type("12345")  # would pick scale options if the shortcut script took them
    assert page.input_value("#login input") == "12345"
    page.fill("#login input", f"{studio['url']}/?token={token}")  # a whole link works too
    page.keyboard.press("Enter")  # Enter in a text field is not "submit the answer"
    page.get_by_role("button", name="Open").click()
    page.wait_for_url(f"**/?token={token}", timeout=30_000)
    page.wait_for_selector("#finished:visible, #start:visible, #progress:visible", state="visible", timeout=30_000)
    ctx.close()


def _login(page, url):
    page.goto(f"{url}/admin/")
    page.wait_for_selector("input[type=password]", timeout=30_000)
    page.fill("input[type=text]", "admin")
    page.fill("input[type=password]", ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector("#study-select", timeout=30_000)


def test_admin_sees_the_readers_results(browser, studio, shots):
    from studies import readers as readers_mod
    from studio.reader import handlers as reader_handlers

    # Another reader answers through the same handlers the page uses.
    db = studio["db"]
    tok = readers_mod.invite(db, "ten", "dr-b")
    s = reader_handlers.start(db, tok)
    while s.kind == "case":
        s = reader_handlers.submit_answer(db, tok, s.state, 6)

    ctx = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = ctx.new_page()
    csp = _csp_violations(page)
    # A reader's token gives no access to the admin app.
    page.goto(f"{studio['url']}/admin/?token={studio['tokens']['dr-a']}")
    page.wait_for_selector("input[type=password]", timeout=30_000)
    _login(page, studio["url"])
    page.get_by_role("tab", name="Readers").click()
    page.wait_for_function("() => document.querySelector('#progress-table')"
                           " && document.querySelector('#progress-table').innerText.includes('dr-b')",
                           timeout=20_000)
    table = page.inner_text("#progress-table")
    assert "dr-a" in table and "10 / 10" in table
    page.get_by_role("tab", name="Analysis").click()
    page.click("#analyze")
    page.wait_for_function("() => document.querySelector('#per-reader')"
                           " && document.querySelector('#per-reader').innerText.includes('dr-a')",
                           timeout=60_000)
    per_reader = page.inner_text("#per-reader")
    assert "dr-a" in per_reader and "dr-b" in per_reader
    page.wait_for_selector(".js-plotly-plot", timeout=30_000)
    time.sleep(1.0)
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    assert not csp, csp  # the admin pages (plots included) run under the CSP
    ctx.close()


def test_generate_an_image(browser, studio, shots):
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    csp = _csp_violations(page)
    _login(page, studio["url"])
    page.get_by_role("tab", name="Generate").click()
    if "medisyn-mini" in studio["model"]:  # the shipped weights: the picker's default, licence shown
        assert page.input_value("#gen-model input") == "MediSyn-mini (embedded)"
        assert "licence" in page.inner_text("#gen-model-info")
    # A preset fills the prompt (and its fields); then generate.
    page.click("#gen-preset input")
    page.keyboard.type("Radiology · CT")
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('#gen-prompt textarea').value"
                           ".startsWith('Axial CT image')", timeout=30_000)
    page.click("#gen-go")
    page.wait_for_function("() => document.querySelectorAll('#gen-gallery img').length >= 1",
                           timeout=120_000)
    status = page.inner_text("#gen-status")
    assert "image(s) in" in status
    assert re.search(r"seed \d+", page.inner_text("#gen-gallery"))  # a fresh random seed
    # thumbnails show the whole image (letterboxed in their tile), never a centre crop
    fits = page.eval_on_selector_all("#gen-gallery img", "els => els.map(e => getComputedStyle(e).objectFit)")
    assert fits and set(fits) == {"contain"}, fits
    assert page.locator("#gen-files a").count() >= 1
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / "generate.png"), full_page=True)
    assert not csp, csp  # the gallery's images (Gradio file URLs) are 'self'
    ctx.close()


def _visible(page, selector: str) -> bool:
    return page.locator(selector).is_visible()


def _img_src(page) -> str:
    return page.get_attribute("#stimulus img", "src") or ""


def test_training_feedback_and_two_questions_keyboard_only(browser, training_studio, shots):
    """Training cases first (labelled, with feedback naming the truth); two questions per
    image, the text shown only with the alignment question, the image sent once per case."""
    from studies.export import long_table

    st = training_studio
    prompts = {r["prompt"] for r in st["rows"]}
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    image_fetches = []
    page.on("response", lambda r: image_fetches.append(r.url) if "/stimulus/" in r.url
            else None)
    page.goto(f"{st['url']}/?token={st['tokens']['dr-a']}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    intro = page.inner_text("#intro")
    assert "Is this image real or synthetic?" in intro and "match the text" in intro
    _press(page, "Enter")

    turing_keys = ["2", "5", "1", "6"]      # 1–6 scale
    alignment_keys = ["4", "1", "3", "5"]   # 1–5 scale
    feedbacks, srcs = [], []
    for i in range(4):
        training = i < 2
        _wait_case(page, i + 1, total=4)
        label = page.inner_text("#progress .label")
        assert label == f"Case {i + 1} of 4" + (" · training" if training else ""), label
        # Question 1 of 2: real or synthetic, without the text.
        question = page.inner_text("#question")
        assert "Is this image real or synthetic?" in question and "Question 1 of 2" in question
        assert not _visible(page, "#prompt")
        assert not [p for p in prompts if p.lower() in page.inner_text("body").lower()]
        assert not _visible(page, "#feedback")
        src = _img_src(page)
        assert src and src not in srcs  # a new image for a new case
        srcs.append(src)
        _press(page, turing_keys[i])
        _press(page, "Enter")
        # Question 2 of 2 on the same image: the text appears, the image is not re-sent.
        page.wait_for_function("() => document.querySelector('#question')"
                               ".innerText.includes('Question 2 of 2')", timeout=20_000)
        page.wait_for_function("() => !document.querySelector('#answer input:checked')",
                               timeout=10_000)
        assert "How well does the image match the text?" in page.inner_text("#question")
        assert not _visible(page, "#feedback")  # no feedback before both questions
        assert _visible(page, "#prompt")
        shown_prompt = page.inner_text("#prompt")
        assert shown_prompt.startswith("Text:") and shown_prompt[5:].strip() in prompts
        assert _img_src(page) == src
        assert page.inner_text("#progress .label").startswith(f"Case {i + 1} of 4")
        options = page.locator("#answer input[type=radio]").count()
        assert options == 5
        _press(page, alignment_keys[i])
        assert page.is_checked(f"#answer input[type=radio] >> nth={int(alignment_keys[i]) - 1}")
        _press(page, "Enter")
        if training:
            page.wait_for_selector("#feedback", state="visible", timeout=20_000)
            text = page.inner_text("#feedback")
            feedbacks.append(text)
            assert text.startswith("Training case.")
            # The question, the answer scale, the submit button and the text are gone.
            assert not _visible(page, "#answer") and not _visible(page, "#submit")
            assert not _visible(page, "#prompt")
            assert _visible(page, "#continue")
            assert page.inner_text(".keys-hint").strip() == "Keys: Enter continues"
            if i == 0:
                time.sleep(0.5)
                page.screenshot(path=str(shots / "reader-feedback.png"))
            _press(page, "Enter")
    page.wait_for_selector("#finished", state="visible", timeout=20_000)
    assert "All 4 cases are answered" in page.inner_text("#finished")
    assert len(feedbacks) == 2 and not _visible(page, "#feedback")  # main cases: none
    # One image per case, fetched once each (never again for the second question).
    assert len(image_fetches) == 4 and len(set(image_fetches)) == 4, image_fetches
    ctx.close()

    df = long_table(st["db"], st["study"])
    df = df[df["reader"] == "dr-a"].reset_index(drop=True)
    assert len(df) == 8
    assert df["task"].tolist() == ["turing", "alignment"] * 4
    assert df["training"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert df["case"].tolist()[::2] == df["case"].tolist()[1::2]  # both questions per case
    assert df["case"].nunique() == 4
    ratings = [int(k) for pair in zip(turing_keys, alignment_keys) for k in pair]
    assert df["rating"].tolist() == ratings
    assert (df["duration_ms"] > 0).all()
    # Each training feedback names that case's truth and grades the real/synthetic call.
    for i, text in enumerate(feedbacks):
        truth = df.loc[2 * i, "source"]
        call = "real" if int(turing_keys[i]) <= 3 else "synthetic"
        assert f"This image is {truth}." in text, text
        assert f"You answered {call}" in text, text
        assert ("Correct" in text) == (call == truth), text


def _open_generate(page, url: str):
    _login(page, url)
    page.get_by_role("tab", name="Generate").click()
    page.wait_for_selector("#gen-go", state="visible", timeout=30_000)


def _set_slider(page, label: str, value: int):
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Tab")
    assert page.get_by_label(f"range slider for {label}").input_value() == str(value)


def _batch_folders(db) -> set[str]:
    from studio.admin.generate import batches_root

    root = batches_root(db)
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def test_generate_cancel(browser, studio):
    """Cancel during a long request: the run stops at the next step, nothing is kept."""
    from studio.admin.generate import MAX_IMAGES, MAX_STEPS

    before = _batch_folders(studio["db"])
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    _open_generate(page, studio["url"])
    page.fill("#gen-prompt textarea", "Axial CT image of the head")
    _set_slider(page, "Images", MAX_IMAGES)
    _set_slider(page, "Steps", MAX_STEPS)
    page.click("#gen-go")
    # Cancel once the run is really going (its cancel flag exists from then on).
    page.wait_for_function("() => document.querySelector('#gen-status').innerText"
                           ".startsWith('Step ')", timeout=60_000)
    step = page.inner_text("#gen-status")
    t0 = time.monotonic()
    page.click("#gen-cancel")
    m = re.match(r"Step (\d+) / (\d+)", step)
    assert m, step
    # 16 images × 150 steps: one pass per image on CPU, one pass in all on a GPU.
    assert int(m.group(2)) in (MAX_STEPS, MAX_STEPS * MAX_IMAGES), step
    page.wait_for_function("() => document.querySelector('#gen-status').innerText"
                           ".trim() === 'Cancelled.'", timeout=30_000)
    assert time.monotonic() - t0 < 20
    time.sleep(1.5)  # no late progress overwrites the verdict, no images arrive
    assert page.inner_text("#gen-status").strip() == "Cancelled."
    assert page.locator("#gen-gallery img").count() == 0
    assert page.locator("#gen-files a").count() == 0
    assert _batch_folders(studio["db"]) == before  # no batch written for a cancelled run
    # Cancel with nothing running or queued leaves the status alone (no "Cancelling…").
    page.click("#gen-cancel")
    time.sleep(1.0)
    assert page.inner_text("#gen-status").strip() == "Cancelled."
    ctx.close()



# Every text #gen-status shows, even for a few milliseconds (Gradio's "Error" tracker came
# and went within 40 ms when the page handled /cancel's reply last).
WATCH_STATUS = """() => { const el = document.querySelector('#gen-status'); window.__seen = [];
  const note = () => window.__seen.push(el.innerText);
  new MutationObserver(note).observe(el, {subtree: true, childList: true, characterData: true,
                                          attributes: true}); }"""


def _start_long_run(page, url):
    _open_generate(page, url)
    page.evaluate(WATCH_STATUS)
    page.fill("#gen-prompt textarea", "Axial CT image of the head")
    _set_slider(page, "Images", 4)
    _set_slider(page, "Steps", 150)
    page.click("#gen-go")


def _wait_status(page, pred_js: str, timeout=60_000):
    page.wait_for_function(f"() => (t => {pred_js})(document.querySelector('#gen-status').innerText.trim())",
                           timeout=timeout)


def test_generate_cancel_during_a_slow_step_never_shows_error(browser, studio, monkeypatch):
    """Cancel while the step in progress takes 2 s more: the run is still going when the
    browser's Cancel lands. With Gradio's `cancels=` that showed "Error" every time; the
    status must only ever say "Cancelled." (and the page never calls Gradio's /cancel)."""
    from studio.admin import generate as generate_view

    real = generate_view.run_generation

    def slow_after_cancel(location, *, on_step, cancel, **kw):
        def step(*a):
            on_step(*a)
            if cancel.is_set():
                time.sleep(2.0)
        return real(location, on_step=step, cancel=cancel, **kw)

    monkeypatch.setattr(generate_view, "run_generation", slow_after_cancel)
    before = _batch_folders(studio["db"])
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    cancels = []
    page.on("request", lambda r: cancels.append(r.url) if r.url.endswith("/cancel") else None)
    _start_long_run(page, studio["url"])
    _wait_status(page, "t.startsWith('Step ')")
    page.click("#gen-cancel")
    _wait_status(page, "t === 'Cancelled.'", timeout=30_000)
    time.sleep(3.0)  # past the slow step: the run has ended
    seen = page.evaluate("() => window.__seen")
    assert not [t for t in seen if "Error" in t], seen
    assert page.inner_text("#gen-status").strip() == "Cancelled." and cancels == []
    assert page.locator("#gen-gallery img").count() == 0
    assert _batch_folders(studio["db"]) == before
    ctx.close()


def test_generate_cancel_a_run_waiting_for_a_slot(browser, studio, monkeypatch):
    """One slot: tab B's run waits for tab A's; B's Cancel ends B at once (nothing made),
    A goes on; then A's Cancel stops A. Neither tab ever shows "Error"."""
    from studio.admin import generate as generate_view
    from studio.admin.run_slots import RunSlots

    monkeypatch.setattr(generate_view, "SLOTS", RunSlots(limit=1))
    before = _batch_folders(studio["db"])
    ctx_a = browser.new_context(viewport={"width": 1360, "height": 900})
    ctx_b = browser.new_context(viewport={"width": 1360, "height": 900})
    a, b = ctx_a.new_page(), ctx_b.new_page()
    _start_long_run(a, studio["url"])
    _wait_status(a, "t.startsWith('Step ')")
    _start_long_run(b, studio["url"])
    _wait_status(b, "t === 'Waiting for a free generation slot…'")
    t0 = time.monotonic()
    b.click("#gen-cancel")
    _wait_status(b, "t === 'Cancelled.'", timeout=10_000)
    assert time.monotonic() - t0 < 5
    step = int(re.match(r"Step (\d+)", a.inner_text("#gen-status")).group(1))
    _wait_status(a, f"t.startsWith('Step ') && parseInt(t.slice(5)) > {step}")  # A goes on
    a.click("#gen-cancel")
    _wait_status(a, "t === 'Cancelled.'", timeout=30_000)
    time.sleep(1.5)
    for page in (a, b):
        seen = page.evaluate("() => window.__seen")
        assert not [t for t in seen if "Error" in t], seen
        assert page.inner_text("#gen-status").strip() == "Cancelled."
    assert not [t for t in b.evaluate("() => window.__seen") if t.startswith("Step")]  # B never ran
    assert _batch_folders(studio["db"]) == before
    ctx_a.close()
    ctx_b.close()


def test_evaluate_cancel_during_a_slow_check_never_shows_error(browser, studio, monkeypatch):
    """The Evaluate tab's Cancel, with a stand-in novelty job whose next cancel check comes
    2 s after Cancel (the same `cancels=` race as Generate's): only "Cancelling…" then
    "Cancelled.", never "Error", and no call to Gradio's /cancel."""
    from evaluation.errors import EvaluationCancelled
    from studio.admin import evaluate as evaluate_view

    def slow_novelty(db_path, syn, ref, *, measures, on_progress, cancel):
        on_progress(0.5, "novelty")
        cancel.wait(60)
        time.sleep(2.0)
        raise EvaluationCancelled("cancelled")

    monkeypatch.setattr(evaluate_view, "synthetic_input", lambda *a: [])
    monkeypatch.setattr(evaluate_view, "reference_input", lambda *a: [])
    monkeypatch.setattr(evaluate_view, "novelty_job", slow_novelty)
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    cancels = []
    page.on("request", lambda r: cancels.append(r.url) if r.url.endswith("/cancel") else None)
    _login(page, studio["url"])
    page.get_by_role("tab", name="Evaluate").click()
    page.wait_for_selector("#eval-novelty", state="visible", timeout=30_000)
    page.evaluate(WATCH_STATUS.replace("#gen-status", "#eval-status"))
    page.click("#eval-novelty")
    page.wait_for_function("() => document.querySelector('#eval-status').innerText.trim()"
                           " === 'novelty: 50%'", timeout=30_000)
    page.click("#eval-cancel")
    page.wait_for_function("() => document.querySelector('#eval-status').innerText.trim()"
                           " === 'Cancelled.'", timeout=30_000)
    time.sleep(1.5)
    seen = page.evaluate("() => window.__seen")
    assert not [t for t in seen if "Error" in t], seen
    assert any(t.strip() == "Cancelling…" for t in seen), seen
    assert page.inner_text("#eval-status").strip() == "Cancelled." and cancels == []
    page.click("#eval-cancel")  # nothing running: the status stays
    time.sleep(1.0)
    assert page.inner_text("#eval-status").strip() == "Cancelled."
    ctx.close()

def _pick_study(page, name: str):
    page.click("#study-select input")
    page.keyboard.press("Control+A")
    page.keyboard.type(name)
    page.keyboard.press("Enter")
    page.wait_for_function("(n) => document.querySelector('#study-select input').value === n",
                           arg=name, timeout=10_000)


def test_send_batch_to_a_draft_study(browser, studio):
    """Generate 2 images, send them to the draft study; a study with readers refuses them."""
    from studies.ingest import list_studies

    def counts():
        return {r["name"]: (r["n_cases"], r["n_synthetic"]) for r in list_studies(studio["db"])}

    before = counts()
    assert DRAFT in before and "ten" in before
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    page = ctx.new_page()
    _open_generate(page, studio["url"])
    page.fill("#gen-prompt textarea", "Axial CT image of the head")
    _set_slider(page, "Images", 2)
    _set_slider(page, "Steps", 8)
    page.click("#gen-go")
    page.wait_for_function("() => document.querySelectorAll('#gen-gallery img').length === 2",
                           timeout=120_000)
    assert "2 image(s) in" in page.inner_text("#gen-status")
    page.click("#gen-cancel")  # nothing to cancel: the batch summary stays
    time.sleep(1.0)
    assert "2 image(s) in" in page.inner_text("#gen-status")

    _pick_study(page, DRAFT)
    page.click("#gen-send")
    page.wait_for_selector("text=Added 2 images to", timeout=60_000)
    msg = page.get_by_text("Added 2 images to").inner_text()
    n_cases, n_synth = before[DRAFT]
    assert DRAFT in msg and f"({n_cases + 2} cases now)" in msg, msg
    after = counts()
    assert after[DRAFT] == (n_cases + 2, n_synth + 2)

    # 'ten' has an invited reader: its case set is fixed.
    _pick_study(page, "ten")
    page.click("#gen-send")
    err = page.get_by_text("already has invited readers")
    err.first.wait_for(state="visible", timeout=30_000)
    assert "'ten'" in err.first.inner_text()
    assert counts() == after
    ctx.close()


# ------------------------------------------------------------- per-read image URLs, CSP
def _csp_violations(page) -> list[str]:
    found: list[str] = []
    page.on("console", lambda m: found.append(m.text)
            if "Content Security Policy" in m.text else None)
    return found


@pytest.fixture(scope="module")
def repeat_studio(tmp_path_factory):
    """A study with repeated cases and an attention check, two readers."""
    from studies import readers as readers_mod
    from studies.design import StudyOptions
    from studies.ingest import create_study
    from studio.web import app as app_mod
    from studio.web import auth
    from studio_fixtures import write_loud_manifest

    tmp = tmp_path_factory.mktemp("browser-repeats")
    db = tmp / "studio.db"
    manifest, rows = write_loud_manifest(tmp / "data", 6)
    create_study(db, "rep", manifest=manifest, size=96,
                 options=StudyOptions(repeat_fraction=0.5, attention_checks=1))
    readers_mod.acknowledge_leak(db, "rep", actor="test")
    tokens = {r: readers_mod.invite(db, "rep", r) for r in ("dr-a", "dr-b")}
    creds = auth.AdminCredentials.from_password("admin", ADMIN_PASSWORD, "env")
    app = app_mod.build_app(db, admin_auth=auth.AdminAuth(creds))
    server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
    yield {"url": server.url, "db": db, "rows": rows, "tokens": tokens}
    server.stop()


def _total_cases(page) -> int:
    page.wait_for_selector("#progress .label", timeout=30_000)
    return int(re.search(r"of (\d+)", page.inner_text("#progress .label")).group(1))


def test_repeated_case_new_url_bound_to_reader_and_token(browser, repeat_studio):
    """A repeat and an attention check show the same stimulus under a new URL; a URL works
    only with its own reader's token and only while its case is on screen; no file or
    source name anywhere; the page runs under the CSP without a violation."""
    from studies.storage.connections import open_db
    from studio_fixtures import leak_needles

    url, db, tokens = repeat_studio["url"], repeat_studio["db"], repeat_studio["tokens"]
    ctx = browser.new_context()
    page = ctx.new_page()
    csp = _csp_violations(page)
    rec = Recorder(page)
    page.goto(f"{url}/?token={tokens['dr-a']}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    _press(page, "Enter")
    total = _total_cases(page)
    srcs = []
    for i in range(total):
        _wait_case(page, i + 1, total)
        src = page.evaluate("() => document.querySelector('#stimulus img').src")
        srcs.append(src)
        # While on screen: the URL works with the token, not without, not with B's token.
        assert ctx.request.get(src).status == 200
        bare = src.split("?")[0]
        assert ctx.request.get(bare).status == 404
        assert ctx.request.get(f"{bare}?token={tokens['dr-b']}").status == 404
        _press(page, "1")
        _press(page, "Enter")
    page.wait_for_selector("#finished", state="visible", timeout=20_000)
    rec.harvest_streams()
    # Every read had its own URL although stimuli were shown more than once.
    with open_db(db) as conn:
        kinds = [k for (k,) in conn.execute(
            "SELECT a.kind FROM assignments a JOIN readers r ON r.id = a.reader_id "
            "WHERE r.name = 'dr-a'")]
        n_stimuli = conn.execute(
            "SELECT count(DISTINCT a.case_id) FROM assignments a JOIN readers r "
            "ON r.id = a.reader_id WHERE r.name = 'dr-a'").fetchone()[0]
    assert "repeat" in kinds and "attention" in kinds and n_stimuli < total
    assert len(set(srcs)) == total == len(kinds)
    # Answered reads' URLs are dead, with the token too.
    assert all(ctx.request.get(s_).status == 404 for s_ in srcs)
    # Reader B's URLs share nothing with A's.
    page_b = ctx.new_page()
    page_b.goto(f"{url}/?token={tokens['dr-b']}")
    page_b.wait_for_selector("#start", state="visible", timeout=30_000)
    page_b.keyboard.press("Enter")
    page_b.wait_for_function("() => { const i = document.querySelector('#stimulus img');"
                             " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
    src_b = page_b.evaluate("() => document.querySelector('#stimulus img').src")
    assert src_b.split("?")[0] not in {s_.split("?")[0] for s_ in srcs}
    assert ctx.request.get(src_b.replace(tokens["dr-b"], tokens["dr-a"])).status == 404
    # No file, source or generator name in any URL or response; no Gradio file route.
    needles = [n.lower() for n in leak_needles(repeat_studio["rows"])] + ["stimuli", ".png"]
    for u, ctype, body in rec.items:
        assert not [n for n in needles if n in u.lower()], u
        assert "/file=" not in u and "/file/" not in u, u
        if any(t in ctype for t in ("text", "json", "javascript", "event-stream")):
            text = body.decode("utf-8", "replace").lower()
            assert not [n for n in needles if n in text and n != ".png"], u
    assert not csp, csp
    ctx.close()


@pytest.fixture(scope="module")
def tracker():
    """A local HTTP server that counts every request it gets (a 'remote' image host)."""
    import http.server
    import threading

    from studio.web.app import free_port

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()

        def log_message(self, *a):
            pass

    port = free_port()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}", hits
    srv.shutdown()


def test_prompts_and_names_are_plain_text_no_outgoing_request(browser, tmp_path_factory,
                                                                tracker):
    """A Markdown/HTML image in a prompt or a study name is shown as typed, to the reader
    and in the admin, and the browser fetches nothing from the 'remote' host."""
    import csv

    from studies import readers as readers_mod
    from studies.design import StudyOptions
    from studies.ingest import create_study
    from studio.web import app as app_mod
    from studio.web import auth
    from studio_fixtures import write_loud_manifest

    remote, hits = tracker
    tmp = tmp_path_factory.mktemp("browser-md")
    manifest, rows = write_loud_manifest(tmp / "data", 2)
    prompt = f"![x]({remote}/md.png) <img src=\"{remote}/html.png\"> **bold**"
    with manifest.open(newline="", encoding="utf-8") as fh:
        data = list(csv.DictReader(fh))
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows({**r, "prompt": prompt} for r in data)
    name = f"md ![s]({remote}/name.png)"
    db = tmp / "studio.db"
    # the reader sees the researcher's reader-facing title (here the same text), never the
    # internal name
    create_study(db, name, manifest=manifest, size=64, reader_title=name,
                 options=StudyOptions(tasks=("turing", "alignment")))
    token = readers_mod.invite(db, name, "dr-a", acknowledge_leak=True)
    creds = auth.AdminCredentials.from_password("admin", ADMIN_PASSWORD, "env")
    app = app_mod.build_app(db, admin_auth=auth.AdminAuth(creds))
    server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
    try:
        ctx = browser.new_context()
        page = ctx.new_page()
        csp = _csp_violations(page)
        page.goto(f"{server.url}/?token={token}")
        page.wait_for_selector("#start", state="visible", timeout=30_000)
        assert f"![s]({remote}/name.png)" in page.inner_text("#intro")
        _press(page, "Enter")
        _wait_case(page, 1, 2)
        _press(page, "1")
        _press(page, "Enter")  # turing answered: the alignment question shows the prompt
        page.wait_for_selector("#prompt .prompt-text", state="visible", timeout=20_000)
        shown = page.inner_text("#prompt")
        assert prompt in shown  # verbatim: no image, no bold, no tag
        assert not page.query_selector("#prompt img, #prompt strong, #intro img")
        # The admin sees the study's name as typed too.
        apage = ctx.new_page()
        _login(apage, server.url)
        apage.wait_for_function("(n) => document.querySelector('#overview')"
                                " && document.querySelector('#overview').innerText.includes(n)",
                                arg=f"![s]({remote}/name.png)", timeout=20_000)
        assert not apage.query_selector("#overview img")
        time.sleep(1.0)
        assert hits == []
        assert not csp, csp
        ctx.close()
    finally:
        server.stop()
