"""The reader's profile form and the intro's touch wording, in headless Chromium.

- Keyboard/mouse: the intro shows the key hints and the profile form (the coordinator's
  value pre-filled); Start with a field missing keeps the intro with the reason and records
  nothing; with every field filled in, the first case appears and the values are stored.
- Touch (390×844, `has_touch`, `is_mobile`): the intro shows tap wording and no key
  wording ("Enter", "Keyboard", "keys"); the form is filled by tapping and typing.
"""
from __future__ import annotations

import json
import os
import pathlib
import sqlite3

import pytest

from studio_fixtures import make_loud_study, serve_studio
from test_studio_browser import ADMIN_PASSWORD, _wait_case, phone_context
from test_studio_browser import browser  # noqa: F401  (the shared Chromium fixture)

pytestmark = pytest.mark.browser


@pytest.fixture()
def profile_studio(tmp_path):
    from studies import lifecycle

    db, _, tokens = make_loud_study(tmp_path, "pilot", n_cases=4, size=128,
                                    readers=("dr-a", "dr-b"))
    lifecycle.set_texts(db, "pilot", instructions="Read each image at full size.",
                        consent="I agree that my answers are used for this study.",
                        profile_fields="site", ask_profile=True)
    from studies import profiles, readers

    profiles.update_profile(db, readers.reader_for_token(db, tokens["dr-a"]).reader_id,
                           {"specialty": "radiology"})  # as from the coordinator's CSV
    with serve_studio(db, password=ADMIN_PASSWORD) as (url, _):
        yield {"url": url, "db": db, "tokens": tokens}


def _profile(db, name):
    with sqlite3.connect(db) as con:
        p, done, consent = con.execute("SELECT profile, profile_completed_at, consented_at "
                                       "FROM readers WHERE name = ?", [name]).fetchone()
    return json.loads(p), done, consent


def _responses(db) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT count(*) FROM responses").fetchone()[0]


def test_fill_in_the_profile_then_start_shows_the_first_case(browser, profile_studio):
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    page.goto(f"{profile_studio['url']}/?token={profile_studio['tokens']['dr-a']}")
    page.wait_for_selector("#profile input:visible", timeout=30_000)
    assert page.input_value('[data-field="specialty"]') == "radiology"  # pre-filled
    assert page.is_visible(".intro-keys") and not page.is_visible(".intro-touch")
    assert "Enter" in page.inner_text(".intro-keys")
    page.check("#consent-agree input")  # consent is explicit: ticked, then Start
    shots = os.environ.get("MEDISYN_SCREENSHOTS")
    if shots:  # docs/img/reader-profile.png comes from here
        page.fill('[data-field="years_experience"]', "12")
        pathlib.Path(shots).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(pathlib.Path(shots) / "reader-profile.png"), full_page=True)
    # a field left empty: the intro stays with the reason, nothing is recorded
    page.fill('[data-field="years_experience"]', "12")
    page.click("#start")
    page.wait_for_selector("#profile .profile-error:visible", timeout=30_000)
    assert page.inner_text("#profile .profile-error") == "Please fill in: Site."
    assert page.input_value('[data-field="years_experience"]') == "12"  # typed values kept
    assert page.is_visible("#start") and not page.is_visible("#case")
    assert _profile(profile_studio["db"], "dr-a") == ({"specialty": "radiology"}, None, None)
    page.fill('[data-field="site"]', "Leiden")
    page.click("#start")
    _wait_case(page, 1, 4)
    profile, done, consent = _profile(profile_studio["db"], "dr-a")
    assert profile == {"specialty": "radiology", "years_experience": 12, "site": "Leiden"}
    assert done and consent
    # answer with the keys: the form's inputs no longer hold the focus of the page's keys
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    _wait_case(page, 2, 4)
    assert _responses(profile_studio["db"]) == 1
    # reload: the reader resumes at case 2, not asked again
    page.reload()
    _wait_case(page, 2, 4)
    assert not page.is_visible("#profile")
    page.close()


def test_touch_intro_shows_tap_wording_and_the_form(browser, profile_studio):
    ctx = phone_context(browser, scale=2)
    page = ctx.new_page()
    page.goto(f"{profile_studio['url']}/?token={profile_studio['tokens']['dr-b']}")
    page.wait_for_selector("#profile input:visible", timeout=30_000)
    text = page.inner_text("#intro")
    for word in ("Enter", "Keyboard", "keys", "digit"):
        assert word not in text, (word, text)
    assert "Touch:" in text and "tap an answer" in text
    assert page.is_visible(".intro-touch") and not page.is_visible(".intro-keys")
    for field, value in (("specialty", "ophthalmology"), ("years_experience", "4"),
                         ("site", "Bergen")):
        box = page.locator(f'[data-field="{field}"]')
        assert box.bounding_box()["height"] >= 44
        box.tap()
        page.keyboard.type(value)
    page.tap("#consent-agree input")
    page.tap("#start")
    _wait_case(page, 1, 4)
    assert _profile(profile_studio["db"], "dr-b")[0] == {
        "specialty": "ophthalmology", "years_experience": 4, "site": "Bergen"}
    ctx.close()
