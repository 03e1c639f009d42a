"""The reading screen fits, in headless Chromium.

- Phones (390×844 and 360×640, touch), after a refresh (the "Welcome back" line shown):
  every question screen (turing, alignment, quality) shows Submit without scrolling; the
  5-point scales are one column in scale order; the viewer's eight tools fold into one
  button until tapped.
- Paired 2AFC at 1440×900: the two images use the window (each shown at least 500 px; 420 before).

Screenshots go to `$MEDISYN_SCREENSHOTS` when set (docs/img/reader-phone.png,
docs/img/reader-2afc.png, docs/img/reader.png were taken that way)."""
from __future__ import annotations

import pytest

from studio_fixtures import make_loud_study, serve_studio
from test_studio_browser import ADMIN_PASSWORD, _wait_case
from test_studio_browser import browser, shots  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def three_tasks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-layout")
    db, rows, tokens = make_loud_study(tmp, "layout", n_cases=4, size=256,
                                       tasks=("turing", "alignment", "quality"),
                                       readers=("phone-a", "phone-b", "desk"))
    from studies import lifecycle

    lifecycle.set_texts(db, "layout", instructions=INSTRUCTIONS)
    with serve_studio(db, password=ADMIN_PASSWORD) as (url, _):
        yield {"url": url, "db": db, "tokens": tokens}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser-layout-pair")
    db, rows, tokens = make_loud_study(tmp, "pairs", n_cases=8, size=256, tasks=("pair",),
                                       readers=("desk",))
    with serve_studio(db, password=ADMIN_PASSWORD) as (url, _):
        yield {"url": url, "tokens": tokens}


INSTRUCTIONS = ("**Do not** compare with other readers.\n\n- one image at a time\n- _no_ time limit\n\n"
                "[a link](http://127.0.0.1:9/x) ![img](http://127.0.0.1:9/t.png) <b>raw</b>")


def test_instructions_markdown_is_rendered_and_sanitised(browser, three_tasks):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{three_tasks['url']}/?token={three_tasks['tokens']['desk']}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    intro = page.locator("#intro")
    assert intro.locator("strong", has_text="Do not").count() == 1
    assert intro.locator("li", has_text="one image at a time").count() == 1
    assert intro.locator("em", has_text="no").count() >= 1
    text = intro.inner_text()
    assert "**" not in text and "[a link](http" in text and "<b>raw</b>" in text
    assert intro.locator("a").count() == 0 and intro.locator("img").count() == 0
    assert not [u for u in requests if ":9/" in u]
    page.close()


def _question(page) -> str:
    return page.inner_text("#question")


def _check_fits(page, height: int, where: str):
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.scrollY") == 0, where
    sub = page.locator("#submit").bounding_box()
    layout = page.evaluate("""() => ['#progress', '#message', '#stimulus', '#prompt', '#question',
        '#answer', '#submit'].map(s => { const e = document.querySelector(s);
        const r = e && e.getBoundingClientRect(); return [s, r && Math.round(r.top), r && Math.round(r.height)]; })""")
    assert sub and sub["y"] >= 0 and sub["y"] + sub["height"] <= height, (where, sub, layout)
    labels = page.locator("#answer label")
    boxes = [labels.nth(i).bounding_box() for i in range(labels.count())]
    assert all(b["y"] + b["height"] <= height for b in boxes), (where, boxes)
    if len(boxes) == 5:  # one column, top to bottom in scale order
        assert len({round(b["x"]) for b in boxes}) == 1, (where, boxes)
        assert all(a["y"] < b["y"] for a, b in zip(boxes, boxes[1:])), (where, boxes)
    return len(boxes)


@pytest.mark.parametrize("size,reader", [((390, 844), "phone-a"), ((360, 640), "phone-b")])
def test_every_phone_screen_fits_with_submit_visible(browser, three_tasks, shots, size, reader):
    width, height = size
    ctx = browser.new_context(viewport={"width": width, "height": height}, has_touch=True,
                              is_mobile=True, device_scale_factor=2)
    page = ctx.new_page()
    url = f"{three_tasks['url']}/?token={three_tasks['tokens'][reader]}"
    page.goto(url)
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    page.tap("#start")
    _wait_case(page, 1, 4)
    page.locator("#answer label").nth(1).tap()
    page.tap("#submit")  # turing answered: alignment next; then refresh mid-case
    page.wait_for_function("() => document.querySelectorAll('#answer label').length === 5",
                           timeout=30_000)
    page.goto(url)
    page.wait_for_function("() => document.querySelectorAll('#answer label').length === 5",
                           timeout=60_000)
    assert "Welcome back" in page.inner_text("body")
    seen = []
    for _ in range(4):  # alignment, quality, then the next case's turing and alignment
        if not seen and shots:
            page.wait_for_timeout(300)
            page.screenshot(path=str(shots / ("reader-phone.png" if width == 390
                                              else f"reader-phone-{width}.png")))
        seen.append(_check_fits(page, height, f"{size} {_question(page)!r}"))
        before = _question(page)
        page.locator("#answer label").nth(2).tap()
        page.tap("#submit")
        page.wait_for_function("q => document.querySelector('#question').innerText !== q",
                               arg=before, timeout=30_000)
    assert sorted(set(seen)) == [5, 6], seen
    # The tools fold into one button on a phone; tapping it shows them.
    visible = page.locator("#stimulus .viewer-tools button:visible")
    assert visible.count() == 1
    visible.first.tap()
    assert page.locator("#stimulus .viewer-tools button:visible").count() == 9
    ctx.close()


def test_pair_panes_use_the_desktop_window(browser, pairs, shots):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{pairs['url']}/?token={pairs['tokens']['desk']}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    page.click("#start")
    _wait_case(page, 1, 4)
    page.wait_for_function("() => [...document.querySelectorAll('#stimulus .viewer-pane img')]"
                           ".every(x => x.complete && x.naturalWidth > 0)", timeout=60_000)
    page.wait_for_timeout(300)
    if shots:
        page.screenshot(path=str(shots / "reader-2afc.png"))
    sizes = page.evaluate("""() => [...document.querySelectorAll('#stimulus .viewer-pane img')]
        .map(i => { const r = i.getBoundingClientRect(); return [r.width, r.height, r.bottom]; })""")
    assert len(sizes) == 2
    for w, h, bottom in sizes:
        assert min(w, h) >= 500, sizes  # the square image is drawn at least this large (was 420)
        assert bottom <= 900, sizes
    sub = page.locator("#submit").bounding_box()
    assert sub["y"] + sub["height"] <= 900
    page.close()


def test_consent_is_an_explicit_agree_or_decline_both_recorded(browser, tmp_path):
    import sqlite3

    from studies import lifecycle
    from studio.reader.handlers import CONSENT_DECLINED, CONSENT_NEEDED

    db, _, tokens = make_loud_study(tmp_path, "consent", n_cases=4, size=128, readers=("dr-c",))
    lifecycle.set_texts(db, "consent", consent="My answers may be **published** in aggregate.")

    def consented():
        with sqlite3.connect(db) as con:
            at = con.execute("SELECT consented_at FROM readers").fetchone()[0]
            declined = con.execute("SELECT count(*) FROM audit_log WHERE action = "
                                   "'consent_declined'").fetchone()[0]
        return at, declined

    with serve_studio(db, password=ADMIN_PASSWORD) as (url, _):
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{url}/?token={tokens['dr-c']}")
        page.wait_for_selector("#consent-agree", state="visible", timeout=30_000)
        assert page.locator("#intro strong", has_text="published").count() == 1
        page.click("#start")  # not ticked: nothing recorded, the intro says what to do
        page.wait_for_function("t => document.querySelector('#intro').innerText.includes(t)",
                               arg=CONSENT_NEEDED[:30], timeout=30_000)
        assert consented() == (None, 0) and not page.is_visible("#case")
        page.click("#consent-decline")
        page.wait_for_function("t => document.querySelector('#intro').innerText.includes(t)",
                               arg=CONSENT_DECLINED[:30], timeout=30_000)
        assert consented() == (None, 1) and not page.is_visible("#stimulus img")
        page.check("#consent-agree input")
        page.click("#start")
        _wait_case(page, 1, 4)
        at, declined = consented()
        assert at and declined == 1
        page.close()
