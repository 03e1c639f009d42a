"""Back and the case's text on the reader page, in headless Chromium: from a case's second
question B returns to its first question (same image, earlier answer selected); once the
question with the text is on screen, Back is gone — the real/synthetic answer is final; the
instructions say so; a training case shows no text (desktop and a 390×844 phone)."""
from __future__ import annotations

import pytest

from studio_fixtures import make_loud_study, serve_studio
from test_studio_browser import ADMIN_PASSWORD, _wait_case, phone_context
from test_studio_browser import browser, shots  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture()
def text_studio(tmp_path):
    db, rows, tokens = make_loud_study(tmp_path, "text", n_cases=6, size=128,
                                       tasks=("turing", "quality", "alignment"),
                                       training_cases=2, readers=("dr-a", "dr-b"))
    _texts_not_cleared(db)
    with serve_studio(db, password=ADMIN_PASSWORD) as (url, _):
        yield {"url": url, "db": db, "tokens": tokens, "prompts": {r["prompt"] for r in rows}}


def _texts_not_cleared(db) -> None:
    """A prompt verdict other than "ok" (the fixture's synthetic prompts are the real
    captions, which the prompt audit clears): training then skips the text question."""
    import contextlib
    import json
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE studies SET audit_report = json_set(coalesce(audit_report, '{}'),"
                     " '$.prompts', json(?))", [json.dumps({"verdict": "too few"})])


def _question(page) -> str:
    return page.inner_text("#question")


def _wait_question(page, words: str):
    page.wait_for_function("w => (document.querySelector('#question') || {}).innerText"
                           "?.includes(w)", arg=words, timeout=30_000)


def _through_training(page, tap: bool, shots, tag: str, prompts):
    for n in (1, 2):
        _wait_case(page, n, 6)
        assert "training" in page.inner_text("#progress .label")
        assert page.locator("#prompt .prompt-text").count() == 0  # no text in training
        for _ in range(2):  # turing, quality: the text question is skipped
            _wait_question(page, "Question")
            label = page.locator("#answer label").first
            label.tap() if tap else label.click()
            page.tap("#submit") if tap else page.click("#submit")
            if page.locator("#feedback").is_visible():
                break
            page.wait_for_timeout(300)
        page.wait_for_selector("#continue:visible", timeout=30_000)
        feedback = page.inner_text("#feedback")
        assert "Training case" in feedback and not any(p in feedback for p in prompts)
        if n == 1:
            page.screenshot(path=str(shots / f"reader-training-feedback-{tag}.png"))
        page.tap("#continue") if tap else page.click("#continue")


def test_back_returns_to_the_first_question_until_the_text_shows(browser, text_studio, shots):
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    page = ctx.new_page()
    page.goto(f"{text_studio['url']}/?token={text_studio['tokens']['dr-a']}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    intro = page.inner_text("#intro")
    assert "final once the text is shown" in intro and "Training cases ask only" in intro
    page.screenshot(path=str(shots / "reader-text-rule-intro.png"))
    page.click("#start")
    _through_training(page, False, shots, "desktop", text_studio["prompts"])

    _wait_case(page, 3, 6)
    src = page.get_attribute("#stimulus img", "src")
    page.keyboard.press("2")
    page.keyboard.press("Enter")  # turing
    _wait_question(page, "Question 2 of 3")
    page.wait_for_selector("#back:visible", timeout=10_000)
    page.keyboard.press("b")
    _wait_question(page, "Question 1 of 3")
    assert "back at the previous question" in page.inner_text("#message")
    assert page.is_checked("#answer input[type=radio] >> nth=1")  # the earlier answer
    assert page.get_attribute("#stimulus img", "src") == src  # the same image and read
    assert page.inner_text("#progress .label").startswith("Case 3 of 6")
    page.screenshot(path=str(shots / "reader-back-question-desktop.png"))
    page.keyboard.press("5")
    page.keyboard.press("Enter")
    _wait_question(page, "Question 2 of 3")
    page.keyboard.press("3")
    page.keyboard.press("Enter")  # quality: the text comes with the next question
    _wait_question(page, "Question 3 of 3")
    assert page.locator("#prompt .prompt-text").is_visible()
    page.wait_for_selector("#back", state="hidden", timeout=10_000)
    page.keyboard.press("b")  # no Back: nothing happens
    page.wait_for_timeout(500)
    assert "Question 3 of 3" in _question(page)
    page.screenshot(path=str(shots / "reader-text-no-back-desktop.png"))
    ctx.close()

    from studies.export import long_table

    df = long_table(text_studio["db"], "text", include_superseded=True)
    main = df[(df["task"] == "turing")].groupby("case")["rating"].apply(list)
    assert [5] in main.tolist() or [2, 5] in main.tolist()


def test_phone_back_to_the_first_question(browser, text_studio, shots):
    ctx = phone_context(browser)
    page = ctx.new_page()
    page.goto(f"{text_studio['url']}/?token={text_studio['tokens']['dr-b']}")
    page.wait_for_selector("#start", state="visible", timeout=30_000)
    page.screenshot(path=str(shots / "reader-text-rule-intro-phone.png"), full_page=True)
    page.tap("#start")
    _through_training(page, True, shots, "phone", text_studio["prompts"])
    _wait_case(page, 3, 6)
    page.locator("#answer label").nth(1).tap()
    page.tap("#submit")
    _wait_question(page, "Question 2 of 3")
    page.wait_for_selector("#back:visible", timeout=10_000)
    page.tap("#back")
    _wait_question(page, "Question 1 of 3")
    assert "back at the previous question" in page.inner_text("#message")
    assert page.is_checked("#answer input[type=radio] >> nth=1")
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "reader-back-question-phone.png"))
    page.locator("#answer label").nth(4).tap()
    page.tap("#submit")
    _wait_question(page, "Question 2 of 3")
    page.locator("#answer label").nth(2).tap()
    page.tap("#submit")
    _wait_question(page, "Question 3 of 3")
    page.wait_for_selector("#back", state="hidden", timeout=10_000)
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "reader-text-no-back-phone.png"))
    ctx.close()
