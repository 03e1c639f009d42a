"""The reader page's image viewer, phone layout and connection loss, in headless Chromium.

- Viewer (studio/reader/viewer.js): zoom, pan, window/level, invert, 1:1 and reset change only the
  served <img>'s CSS transform and filter, make no network request, and start afresh on the
  next case; answering with the keys still works.
- Phone (390×844, touch): the image, the whole answer scale and Submit fit without
  scrolling, targets are at least 44 px tall, and no key wording is shown.
- Connection loss: an answer submitted while the server is down is reported as NOT saved
  in words; after a restart on the same port and database the reader reloads, the case is
  still unanswered, and answering it stores exactly one row.
"""
from __future__ import annotations

import re
import sqlite3

import pytest

from studio_fixtures import make_loud_study
from test_studio_browser import ADMIN_PASSWORD, _wait_case, phone_context, pinch
from test_studio_browser import browser  # noqa: F401  (the shared Chromium fixture)

pytestmark = pytest.mark.browser


def _build(db):
    from studio.web import app as app_mod
    from studio.web import auth

    creds = auth.AdminCredentials.from_password("admin", ADMIN_PASSWORD, "env")
    return app_mod.build_app(db, admin_auth=auth.AdminAuth(creds))


@pytest.fixture()
def viewer_studio(tmp_path):
    from studio.web import app as app_mod

    db, rows, tokens = make_loud_study(tmp_path, "view", n_cases=4, size=128,
                                       readers=("dr-a", "dr-b", "dr-c"))
    port = app_mod.free_port()
    server = app_mod.Server(_build(db), "127.0.0.1", port).start()
    state = {"url": server.url, "db": db, "tokens": tokens, "port": port, "server": server}
    yield state
    state["server"].stop()


# A preset name only each modality family's set has (studio/reader/viewer.js PRESET_SETS).
PRESET_WORD = {"ct": "soft tissue", "mri": "dark regions", "colour": "colour off",
               "xray": "lung periphery", "ultrasound": "Bright, High contrast, Dark"}


def _img_style(page) -> dict:
    return page.evaluate("() => { const i = document.querySelector('#stimulus img');"
                         " return {transform: i.style.transform, filter: i.style.filter,"
                         " src: i.getAttribute('src')}; }")


def _fn(css: str, name: str) -> float | None:
    """The argument of `name(...)` in a CSS transform/filter string (the browser
    normalises the numbers, so compare values, not text)."""
    m = re.search(name + r"\(([-0-9.e]+)", css)
    return float(m.group(1)) if m else None


def _responses(db) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM responses").fetchone()[0]


def _start(page, url, token, total=4):
    page.goto(f"{url}/?token={token}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    page.keyboard.press("Enter")
    _wait_case(page, 1, total)


def test_viewer_zoom_window_invert_reset_no_requests(browser, viewer_studio):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    _start(page, viewer_studio["url"], viewer_studio["tokens"]["dr-a"])
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    first_src = _img_style(page)["src"]
    assert _img_style(page)["transform"] == "" and _img_style(page)["filter"] == ""

    page.keyboard.press("+")
    page.keyboard.press("+")
    assert _fn(_img_style(page)["transform"], "scale") == pytest.approx(1.5625)
    page.keyboard.press("-")
    assert _fn(_img_style(page)["transform"], "scale") == pytest.approx(1.25)
    # A zoomed image stays inside its box: the answer column is still what is clicked.
    page.keyboard.press("+")
    page.keyboard.press("+")
    page.keyboard.press("+")
    assert page.evaluate("""() => { const r = document.querySelector('#answer label')
        .getBoundingClientRect(); const e = document.elementFromPoint(r.left + 5, r.top + r.height / 2);
        return !!e.closest('#answer'); }""")
    page.keyboard.press("-")
    page.keyboard.press("-")
    page.keyboard.press("-")
    # Wheel zooms at the pointer: the point under it stays put, so the image is translated.
    box = page.locator("#stimulus").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.25)
    page.mouse.wheel(0, -100)
    page.wait_for_timeout(100)
    t = _img_style(page)["transform"]
    assert _fn(t, "scale") == pytest.approx(1.5625) and _fn(t, "translate") > 0, t
    # Drag pans.
    before = page.evaluate("() => [window.__medisynView.tx, window.__medisynView.ty]")
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 40, cy + 30, steps=4)
    page.mouse.up()
    after = page.evaluate("() => [window.__medisynView.tx, window.__medisynView.ty]")
    assert round(after[0] - before[0]) == 40 and round(after[1] - before[1]) == 30
    # Right-drag is window/level: right = more contrast, up = brighter.
    page.mouse.move(cx, cy)
    page.mouse.down(button="right")
    page.mouse.move(cx + 100, cy - 100, steps=4)
    page.mouse.up(button="right")
    f = _img_style(page)["filter"]
    assert _fn(f, "brightness") == pytest.approx(1.649, abs=0.01), f
    assert _fn(f, "contrast") == pytest.approx(1.649, abs=0.01), f
    page.keyboard.press("i")
    assert _fn(_img_style(page)["filter"], "invert") == 1
    page.keyboard.press("i")
    assert "invert" not in _img_style(page)["filter"]
    # N: one image pixel per screen pixel (DPR 1 here): the displayed content of the
    # object-fit: contain box is exactly naturalWidth x naturalHeight.
    page.keyboard.press("n")
    shown = page.evaluate("""() => { const i = document.querySelector('#stimulus img');
        const r = i.getBoundingClientRect();
        const s = Math.min(r.width / i.naturalWidth, r.height / i.naturalHeight);
        return [s * i.naturalWidth, i.naturalWidth, r.width]; }""")
    assert abs(shown[0] - shown[1]) < 1 and shown[2] != 0, shown
    # Help overlay lists the keys; Escape closes it.
    page.keyboard.press("?")
    assert page.is_visible("#viewer-help")
    help_text = page.inner_text("#viewer-help")
    for word in ("full screen", "invert", "native pixels", "reset"):
        assert word in help_text
    # The contrast presets are the modality's (every modality here has both sources).
    family = page.get_attribute("#stimulus img", "data-presets")
    assert family in PRESET_WORD, family
    assert PRESET_WORD[family] in help_text
    page.keyboard.press("Escape")
    assert not page.is_visible("#viewer-help")
    # Reset restores the plain image.
    page.keyboard.press("c")
    assert "contrast(" in _img_style(page)["filter"]
    page.keyboard.press("r")
    assert _img_style(page) == {"transform": "", "filter": "", "src": first_src}
    # The viewer made no request of its own.
    assert requests == [], requests

    # Answering by keys still works; the next case starts from the reset view.
    page.keyboard.press("+")
    page.keyboard.press("i")
    assert _img_style(page)["transform"] and _img_style(page)["filter"]
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    _wait_case(page, 2, 4)
    s = _img_style(page)
    assert s["src"] != first_src and s["transform"] == "" and s["filter"] == ""
    assert _responses(viewer_studio["db"]) == 1
    # Only the app's own event posts and the new stimulus were requested.
    others = [u for u in requests if "/gradio_api/" not in u and "/stimulus/" not in u]
    assert others == [], others
    ctx.close()


def test_phone_layout_fits_without_scrolling(browser, viewer_studio):
    ctx = phone_context(browser)
    page = ctx.new_page()
    page.goto(f"{viewer_studio['url']}/?token={viewer_studio['tokens']['dr-b']}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    page.tap("#start")
    _wait_case(page, 1, 4)
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.scrollY") == 0
    sub = page.locator("#submit").bounding_box()
    assert sub["y"] + sub["height"] <= 844, sub
    assert sub["height"] >= 44
    img = page.locator("#stimulus img").bounding_box()
    assert img["height"] > 200 and img["y"] >= 0 and img["y"] + img["height"] <= 844, img
    # The image box spans the phone's width (Gradio's own page padding is 32 px a side).
    box = page.locator("#stimulus").bounding_box()
    assert box["width"] >= 370, box
    labels = page.locator("#answer label")
    assert labels.count() == 6
    boxes = [labels.nth(i).bounding_box() for i in range(6)]
    for i, b in enumerate(boxes):
        assert b["height"] >= 44 and b["y"] + b["height"] <= 844, (i, b)
    # Two columns read top to bottom: the real half of the scale on the left, synthetic right.
    assert all(b["x"] < boxes[3]["x"] for b in boxes[:3]), boxes
    assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"] and boxes[3]["y"] < boxes[4]["y"] < boxes[5]["y"]
    for b in page.locator("#stimulus .viewer-tools button:visible").all():
        assert b.bounding_box()["height"] >= 44
    text = page.inner_text("body")
    for word in ("Enter", "Keys", "keys", "digit"):
        assert word not in text, (word, text)
    assert "Tap an answer" in text
    # The option's key digit is not drawn on touch screens.
    before = page.evaluate("() => getComputedStyle(document.querySelector('#answer label > span'),"
                           " '::before').content")
    assert before in ("none", "normal"), before
    # Pinch zooms the image (two touch points moving apart).
    pinch(ctx, page, img, (20, 30, 40, 60))
    z = page.evaluate("() => window.__medisynView.zoom")
    assert 2.5 < z < 3.5, z
    # Tap an answer and Submit: stored.
    labels.nth(4).tap()
    page.tap("#submit")
    _wait_case(page, 2, 4)
    assert page.evaluate("() => window.__medisynView.zoom") == 1
    assert _responses(viewer_studio["db"]) == 1
    ctx.close()


def test_answer_while_server_down_is_reported_not_saved(browser, viewer_studio):
    from playwright.sync_api import Error as PlaywrightError

    from studio.web import app as app_mod

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    _start(page, viewer_studio["url"], viewer_studio["tokens"]["dr-c"])
    page.keyboard.press("1")
    page.keyboard.press("Enter")
    _wait_case(page, 2, 4)
    assert _responses(viewer_studio["db"]) == 1
    page.keyboard.press("2")  # chosen while the server is up ...
    server = viewer_studio["server"]
    server._server.force_exit = True  # do not wait for the page's open event stream
    server.stop()
    page.keyboard.press("Enter")  # ... submitted while it is down
    page.wait_for_selector("#connection-lost", timeout=30_000)
    assert "NOT recorded" in page.inner_text("#connection-lost")
    assert _responses(viewer_studio["db"]) == 1
    # Restart on the same port and database: the banner says so and offers Reload.
    viewer_studio["server"] = app_mod.Server(_build(viewer_studio["db"]), "127.0.0.1",
                                             viewer_studio["port"]).start()
    # Gradio reloads the page by itself once the server answers; if our probe sees the
    # server first, the banner offers Reload. Either way the reloaded page says the last
    # answer was not saved.
    page.wait_for_function("""() => { const b = document.querySelector('#connection-lost');
        return b && !b.hidden && /connection is back|answer this case again/.test(b.textContent); }""",
                           timeout=30_000)
    assert _responses(viewer_studio["db"]) == 1
    if "connection is back" in (page.text_content("#connection-lost") or ""):
        # (Playwright's click would wait for a "load" that Gradio's open heartbeat delays.)
        try:
            page.evaluate("() => { setTimeout(() => { const b = document.querySelector("
                          "'#connection-lost button'); if (b) b.click(); }, 0); }")
        except PlaywrightError:  # Gradio's own reload got there first
            pass
    page.wait_for_function("""() => { const b = document.querySelector('#connection-lost');
        return b && !b.hidden && b.textContent.includes('answer this case again'); }""",
                           timeout=30_000)
    assert "NOT saved" in page.inner_text("#connection-lost")
    _wait_case(page, 2, 4)  # the same case, still unanswered
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    _wait_case(page, 3, 4)
    assert _responses(viewer_studio["db"]) == 2
    assert not page.is_visible("#connection-lost")  # a saved answer ends the notice
    ctx.close()
