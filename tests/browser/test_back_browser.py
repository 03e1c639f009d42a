"""Going back, comment and non-diagnostic flag on the reader page, in
headless Chromium: the B key reopens the previous case under a new image URL with the
earlier answer, comment and flag shown; keys typed into the comment stay there; the
changed answer is stored as a new row and wins; on a 390×844 phone the Back button fits
beside Submit without scrolling."""
from __future__ import annotations

import pytest

from studio_fixtures import make_loud_study, serve_studio
from test_reader_viewer_browser import _start
from test_studio_browser import ADMIN_PASSWORD, _wait_case, phone_context
from test_studio_browser import browser, shots  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture()
def back_studio(tmp_path):
    db, rows, tokens = make_loud_study(tmp_path, "back", n_cases=4, size=128,
                                       readers=("dr-a", "dr-b"))
    with serve_studio(db, password=ADMIN_PASSWORD) as (url, _):
        yield {"url": url, "db": db, "tokens": tokens}


def _src(page) -> str:
    return page.get_attribute("#stimulus img", "src")


def test_back_key_changes_the_answer_comment_and_flag(browser, back_studio, shots):
    from studies.export import long_table

    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    _start(page, back_studio["url"], back_studio["tokens"]["dr-a"])
    assert page.locator("#back").is_hidden()  # nothing to go back to yet
    first_src = _src(page)
    page.keyboard.press("2")
    page.click("#comment textarea")
    page.keyboard.type("blurred 1/4 of the image =x")  # neither Back, a scale option nor Enter's submit
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    assert page.inner_text("#progress .label").startswith("Case 1 of 4")
    assert page.is_checked("#answer input[type=radio] >> nth=1")
    assert page.input_value("#comment textarea") == "blurred 1/4 of the image =x"
    page.check("#non-diagnostic input")
    page.keyboard.press("Enter")  # focus on the checkbox: Enter submits (never untick it)
    _wait_case(page, 2, 4)
    page.wait_for_selector("#back:visible", timeout=10_000)
    assert page.input_value("#comment textarea") == ""  # a new case starts blank
    assert not page.is_checked("#non-diagnostic input")

    page.keyboard.press("b")
    _wait_case(page, 1, 4, answer_kept=True)
    assert "back at the previous case" in page.inner_text("#message")
    page.wait_for_selector("#back", state="hidden", timeout=10_000)  # one step only
    assert page.is_checked("#answer input[type=radio] >> nth=1")  # the earlier answer
    assert page.input_value("#comment textarea") == "blurred 1/4 of the image =x"
    assert page.is_checked("#non-diagnostic input")
    page.wait_for_function("s => document.querySelector('#stimulus img') && "
                           "document.querySelector('#stimulus img').getAttribute('src') !== s",
                           arg=first_src, timeout=10_000)
    assert _src(page).split("?")[0] != first_src.split("?")[0]  # a new view id
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "reader-back.png"))

    page.keyboard.press("5")
    page.fill("#comment textarea", "=changed")
    page.uncheck("#non-diagnostic input")
    page.click("#submit")
    _wait_case(page, 2, 4)
    page.wait_for_selector("#back:visible", timeout=10_000)
    df = long_table(back_studio["db"], "back", include_superseded=True)
    case1 = df[df["case"] == df["case"].iloc[0]]
    assert case1["superseded"].tolist() == [1, 0]
    assert case1["rating"].tolist() == [2, 5]
    assert case1["comment"].tolist() == ["blurred 1/4 of the image =x", "=changed"]
    assert case1["non_diagnostic"].tolist() == [1, 0]
    ctx.close()


def test_phone_back_button_fits_beside_submit(browser, back_studio):
    ctx = phone_context(browser)
    page = ctx.new_page()
    page.goto(f"{back_studio['url']}/?token={back_studio['tokens']['dr-b']}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    page.tap("#start")
    _wait_case(page, 1, 4)
    page.locator("#answer label").nth(1).tap()
    page.tap("#submit")
    _wait_case(page, 2, 4)
    page.wait_for_selector("#back:visible", timeout=10_000)
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.scrollY") == 0
    sub, back = (page.locator(s).bounding_box() for s in ("#submit", "#back"))
    for b in (sub, back):
        assert b["height"] >= 44 and b["y"] + b["height"] <= 844, b
    assert sub["width"] > back["width"]
    labels = page.locator("#answer label")
    for i in range(labels.count()):
        b = labels.nth(i).bounding_box()
        assert b["y"] + b["height"] <= 844, (i, b)
    img = page.locator("#stimulus img").bounding_box()
    assert img["height"] > 200 and img["y"] + img["height"] <= 844
    page.tap("#back")
    _wait_case(page, 1, 4, answer_kept=True)
    assert page.is_checked("#answer input[type=radio] >> nth=1")
    ctx.close()
