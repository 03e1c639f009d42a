"""The paired (2AFC) reader screen in headless Chromium.

A reader answers every pair with the arrow keys only (← / → step along the 6-point scale),
zooms one image with the wheel and both with the keys; every URL, DOM snapshot and
response is searched for file names, the generator and the truth, as for single images.
On a 390×844 touch screen both images, the whole scale and Submit fit without scrolling,
and a tap answers. With `$MEDISYN_SCREENSHOTS` set, the 1280×900 trial is saved there as
reader-2afc.png (docs/img/reader-2afc.png was taken that way).
"""
from __future__ import annotations

import re
import time

import pytest

from studio_fixtures import leak_needles, make_loud_study, serve_studio
from test_studio_browser import ADMIN_PASSWORD, Recorder, _wait_case, phone_context, pinch
from test_studio_browser import browser, shots  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser

ALL_LOADED = """() => { const i = [...document.querySelectorAll('#stimulus .viewer-pane img')];
    return i.length === 2 && i.every(x => x.complete && x.naturalWidth > 0); }"""


@pytest.fixture(scope="module")
def pair_studio(tmp_path_factory):

    tmp = tmp_path_factory.mktemp("browser-pair")
    db, rows, tokens = make_loud_study(tmp, "Paired reading", n_cases=8, size=256,
                                       tasks=("pair",), readers=("dr-a", "dr-b"))
    with serve_studio(db, password=ADMIN_PASSWORD) as (url, _):
        yield {"url": url, "db": db, "rows": rows, "tokens": tokens}


def _wait_pair(page, n: int, total: int = 4):
    _wait_case(page, n, total)
    page.wait_for_function(ALL_LOADED, timeout=60_000)


def _checked(page) -> int | None:
    i = page.evaluate("() => [...document.querySelectorAll('#answer input[type=radio]')]"
                      ".findIndex(o => o.checked)")
    return None if i < 0 else i + 1


def _zooms(page) -> list[float]:
    return page.evaluate("() => window.__medisynViews.slice(0, 2).map(v => v.zoom)")


def _srcs(page) -> list[str]:
    return page.evaluate("() => [...document.querySelectorAll('#stimulus .viewer-pane')]"
                         ".map(p => p.dataset.side + ' ' + p.querySelector('img').getAttribute('src'))")


def test_pair_answered_with_arrow_keys_and_nothing_leaks(browser, pair_studio, shots):
    from studies.imaging import stimuli
    from studies.storage.connections import open_db, stimuli_dir
    from studies.stats.columns import TASKS, pair_call
    from studies.export import long_table
    from studio.reader import texts as reader_texts

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    rec = Recorder(page)
    token = pair_studio["tokens"]["dr-a"]
    page.goto(f"{pair_studio['url']}/?token={token}")
    page.wait_for_selector("#start:visible", timeout=30_000)
    assert "← / →" in page.inner_text("#intro")
    page.keyboard.press("Enter")
    # (keys, the scale value after each press): a press steps one place towards its side.
    plan = [(["ArrowLeft", "ArrowLeft"], [3, 2]),
            (["ArrowRight", "ArrowRight", "ArrowRight", "ArrowRight"], [4, 5, 6, 6]),
            (["ArrowLeft", "ArrowLeft", "ArrowLeft"], [3, 2, 1]),
            (["ArrowLeft", "ArrowRight"], [3, 4])]
    dom, shown_srcs = [], []
    for n, (keys, values) in enumerate(plan, start=1):
        _wait_pair(page, n)
        srcs = _srcs(page)
        assert [s.split()[0] for s in srcs] == ["left", "right"]
        shown_srcs.append([s.split()[1] for s in srcs])
        assert _zooms(page) == [1, 1]  # every pair starts from the reset view
        assert reader_texts.PAIR_KEYS_HINT.split(" (")[0] in page.inner_text("#case")
        if n == 1:
            # Keys act on both images, the wheel on the one under the pointer.
            page.keyboard.press("+")
            assert _zooms(page) == [pytest.approx(1.25)] * 2
            right = page.locator('#stimulus .viewer-pane[data-side="right"]').bounding_box()
            page.mouse.move(right["x"] + right["width"] / 2, right["y"] + right["height"] / 2)
            page.mouse.wheel(0, -100)
            page.wait_for_function("() => window.__medisynViews[1].zoom > 1.5")
            assert _zooms(page) == [pytest.approx(1.25), pytest.approx(1.5625)]
            page.keyboard.press("i")
            assert page.evaluate("() => window.__medisynViews.slice(0, 2).every(v => v.invert)")
            page.keyboard.press("r")
            assert _zooms(page) == [1, 1]
            page.keyboard.press("?")
            assert "which image is synthetic" in page.inner_text("#viewer-help")
            page.keyboard.press("Escape")
        for key, value in zip(keys, values):
            page.keyboard.press(key)
            page.wait_for_function("(v) => { const o = document.querySelectorAll("
                                   "'#answer input[type=radio]'); return o[v - 1].checked; }",
                                   arg=value, timeout=10_000)
            assert _checked(page) == value
        if n == 1:
            page.mouse.move(5, 5)  # no hover highlight in the picture
            time.sleep(0.5)
            page.screenshot(path=str(shots / "reader-2afc.png"))
        dom.append(page.content())
        page.keyboard.press("Enter")
    page.wait_for_selector("#finished:visible", timeout=20_000)
    rec.harvest_streams()
    dom.append(page.content())

    # Stored: one row per pair, the rating the keys chose, the side it calls synthetic.
    df = long_table(pair_studio["db"], "Paired reading")
    df = df[df["reader"] == "dr-a"].sort_values("answered_at")
    expected = [values[-1] for _, values in plan]
    assert df["rating"].tolist() == expected
    assert df["response"].tolist() == [pair_call(v) for v in expected]
    # The page showed left and right exactly as the reader's assignments say.
    with open_db(pair_studio["db"]) as conn:
        stored = conn.execute(
            "SELECT a.view_id, a.pair_view_id FROM assignments a JOIN readers r "
            "ON r.id = a.reader_id WHERE r.name = 'dr-a' ORDER BY a.position").fetchall()
    assert [[re.search(r"stimulus/([^?]+)", u).group(1) for u in pair] for pair in shown_srcs] \
        == [list(r) for r in stored]

    # Nothing identifying in URLs, DOM or any response body.
    needles = [n.lower() for n in leak_needles(pair_studio["rows"])]
    needles += [r["prompt"].lower() for r in pair_studio["rows"]]
    needles += [str(pair_studio["db"]).lower(), "stimuli"]
    ui_words = [lab for _, lab in TASKS["pair"].scale] + [
        TASKS["pair"].question, TASKS["pair"].help, reader_texts.PAIR_KEYS_HINT,
        "one real, one synthetic", "the side you think is synthetic"]
    images = []
    for url, ctype, body in rec.items:
        assert not [n for n in needles if n in url.lower()], url
        if "image/png" in ctype:
            assert re.search(r"/stimulus/[A-Za-z0-9_-]{22}\?token=", url), url
            assert set(stimuli.png_chunk_types(body)) <= {"IHDR", "IDAT", "IEND"}
            images.append(stimuli.decode_png(body))
            continue
        if not any(t in ctype for t in ("text", "json", "javascript", "event-stream")):
            continue
        text = body.decode("utf-8", "replace").lower()
        assert not [n for n in needles if n in text], url
        if "/gradio_api/" in url or url == "(event stream)":
            for w in ui_words:
                text = text.replace(w.lower(), "")
            assert not re.search(r"\b(real|synthetic|source|generator|truth)\b", text), url
    streams = b"".join(b for _, c, b in rec.items if "event-stream" in c)
    assert len(set(re.findall(rb"stimulus/([A-Za-z0-9_-]{22})\?token=", streams))) == 8
    for html in dom:
        assert not [n for n in needles if n in html.lower()]
    files = {stimuli.decode_png(p.read_bytes()).tobytes()
             for p in stimuli_dir(pair_studio["db"]).glob("*.png")}
    assert len(images) == 8 and all(im.tobytes() in files for im in images)
    ctx.close()


def test_pair_on_a_phone_fits_and_a_tap_answers(browser, pair_studio):
    from studies.export import long_table

    ctx = phone_context(browser)
    page = ctx.new_page()
    page.goto(f"{pair_studio['url']}/?token={pair_studio['tokens']['dr-b']}")
    page.wait_for_selector("#start:visible", timeout=30_000)
    page.tap("#start")
    _wait_pair(page, 1)
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.scrollY") == 0
    panes = [page.locator(f'#stimulus .viewer-pane[data-side="{s}"] img').bounding_box()
             for s in ("left", "right")]
    assert panes[0]["x"] + panes[0]["width"] <= panes[1]["x"]  # side by side, left first
    for b in panes:
        assert b["width"] > 150 and b["y"] >= 0 and b["y"] + b["height"] <= 844, b
    labels = page.locator("#answer label")
    assert labels.count() == 6
    for i in range(6):
        b = labels.nth(i).bounding_box()
        assert b["height"] >= 44 and b["y"] + b["height"] <= 844, (i, b)
    sub = page.locator("#submit").bounding_box()
    assert sub["height"] >= 44 and sub["y"] + sub["height"] <= 844, sub
    text = page.inner_text("body")
    for word in ("Enter", "Keys", "keys", "digit", "←"):
        assert word not in text, (word, text)
    assert "Tap an answer" in text
    # Pinch on the right image zooms that image only.
    pinch(ctx, page, page.locator('#stimulus .viewer-pane[data-side="right"]').bounding_box(),
          (10, 15, 20, 30))
    zl, zr = _zooms(page)
    assert zl == 1 and 2.5 < zr < 3.5, (zl, zr)
    labels.nth(4).tap()  # "probably right"
    page.tap("#submit")
    _wait_pair(page, 2)
    assert _zooms(page) == [1, 1]
    df = long_table(pair_studio["db"], "Paired reading")
    got = df[df["reader"] == "dr-b"]
    assert got["rating"].tolist() == [5] and got["response"].tolist() == ["right"]
    ctx.close()
