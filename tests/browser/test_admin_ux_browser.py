"""The researcher's admin pages in headless Chromium: the New study form offers what the
CLI offers (size auto, cases per reader, readers per case, repeat-after, skip unreadable);
Study settings says draft for a draft; Save texts confirms; the CSV invite has its own leak
acknowledgement; a refused action shows its error beside its own button only; the Analysis
tab of a pair study shows the 2AFC tables per reader.

Screenshots go to `$MEDISYN_SCREENSHOTS` when set (docs/img/admin-analysis-pair.png)."""
from __future__ import annotations

import json
import os
import pathlib
import time
import uuid

import pytest

from studio_fixtures import add_loud_study
from study_fixtures import make_manifest
from test_studio_browser import ADMIN_PASSWORD, _login, browser, shots  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def admin_studio(tmp_path_factory):
    from studies import readers
    from studies.audit import is_flagged
    from studies.design import StudyOptions
    from studies.ingest import audit_study, create_study
    from studies.session import next_case, submit
    from studio.web import app as app_mod
    from studio.web import auth

    tmp = tmp_path_factory.mktemp("admin-ux")
    db = tmp / "studio.db"
    create_study(db, "duo", manifest=make_manifest(tmp / "pair-data"), size=96,
                 options=StudyOptions(tasks=("pair",), seed=5))
    from study_fixtures import acknowledge_fixture_leak

    acknowledge_fixture_leak(db, "duo")  # small fixture images fail the leak audit
    for i in range(3):
        ref = readers.reader_for_token(db, readers.invite(db, "duo", f"reader-{i + 1}"))
        k = 0
        while (view := next_case(db, ref.reader_id)) is not None:
            submit(db, ref.reader_id, view.assignment_id, "pair", 2 if k % 3 else 5, 900,
                   str(uuid.uuid4()))
            k += 1
    add_loud_study(db, tmp / "draft-data", "draft", n_cases=10, size=96)
    # add_loud_study acknowledges a flagged audit; this study tests the refused invite
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE studies SET audit_report = json_remove(audit_report, "
                     "'$.acknowledged') WHERE name = 'draft'")
    flagged = bool(is_flagged(audit_study(db, "draft")[0]))
    creds = auth.AdminCredentials.from_password("admin", ADMIN_PASSWORD, "env")
    app = app_mod.build_app(db, admin_auth=auth.AdminAuth(creds))
    server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
    yield {"url": server.url, "db": db, "tmp": tmp, "flagged": flagged}
    server.stop()


def _pick_study(page, name):
    page.click("#study-select input")
    page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_function(f"() => document.querySelector('#study-select input').value === {name!r}",
                           timeout=10_000)
    time.sleep(1.0)


def _error_pills(page) -> list[str]:
    """Texts of Gradio's per-component status trackers that say Error."""
    return page.evaluate("""() => [...document.querySelectorAll('.wrap.error, .error')]
        .filter(e => e.offsetParent !== null).map(e => e.closest('[id]')?.id || e.className)""")


def test_new_study_form_matches_the_cli(browser, admin_studio):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    _login(page, admin_studio["url"])
    page.get_by_role("tab", name="New study").click()
    assert page.input_value("#new-size input, #new-size textarea") == "auto"
    page.fill("#new-name input, #new-name textarea", "from-form")
    page.get_by_label("Folder on the server").check()
    manifest = make_manifest(admin_studio["tmp"] / "form-data")
    page.get_by_label("Manifest CSV or folder (real/, synthetic/) on the server").fill(str(manifest))
    page.fill("#new-cases-per-reader input", "4")
    page.fill("#new-readers-per-case input", "3")
    page.fill("#new-repeat input[type=number]", "0.25")
    page.locator("#new-repeat input[type=number]").press("Enter")
    page.fill("#new-repeat-after input, #new-repeat-after textarea", "36h")
    page.click("#create")
    page.wait_for_function("() => document.body.innerText.includes('Created from-form')"
                           " || document.body.innerText.includes('Error:')", timeout=120_000)
    body = page.inner_text("body")
    assert "Created from-form" in body, body[body.find("Error:") - 200:body.find("Error:") + 300]
    from studies.storage.connections import open_db

    with open_db(admin_studio["db"]) as conn:
        size, options = conn.execute("SELECT size, options FROM studies WHERE name = ?",
                                     ["from-form"]).fetchone()
    options = json.loads(options)
    assert size == 256  # auto, as the CLI picks for these small images
    assert (options["cases_per_reader"], options["readers_per_case"],
            options["repeat_after_s"], options["repeat_fraction"]) == (4, 3, 36 * 3600, 0.25)
    page.close()


def test_settings_draft_status_save_confirmation_and_errors_in_place(browser, admin_studio):
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    _login(page, admin_studio["url"])
    _pick_study(page, "draft")
    page.get_by_role("tab", name="Study settings").click()
    page.wait_for_function("() => document.querySelector('#study-status').innerText"
                           ".includes('draft')", timeout=20_000)
    page.fill("#instructions textarea", "Look at **every** image.")
    page.click("#save-texts")
    page.wait_for_function("() => document.querySelector('#save-texts-msg').innerText"
                           ".includes('Saved at')", timeout=20_000)
    # Readers tab: a refused invite shows its error beside the Invite button only.
    page.get_by_role("tab", name="Readers").click()
    page.fill("#reader-name input, #reader-name textarea", "dr-new")
    if admin_studio["flagged"]:
        page.click("#invite")  # no acknowledgement ticked: refused
        page.wait_for_function("() => document.querySelector('#invite-msg').innerText"
                               ".includes('Error:')", timeout=20_000)
        assert "leak audit" in page.inner_text("#invite-msg")
        time.sleep(0.5)
        assert _error_pills(page) == []
        page.get_by_label("I have read the leak audit; open the study anyway").first.check()
    page.click("#invite")
    page.wait_for_function("() => document.querySelector('#invite-msg').innerText"
                           ".includes('Invited')", timeout=20_000)
    assert "token=" in page.input_value("#reader-link textarea, #reader-link input")
    page.click("#invite")  # the same name again: refused, and the old link and ✅ go away
    page.wait_for_function("() => document.querySelector('#invite-msg').innerText"
                           ".includes('Error:')", timeout=20_000)
    assert "already invited" in page.inner_text("#invite-msg")
    assert "Invited" not in page.inner_text("#invite-msg")
    assert page.input_value("#reader-link textarea, #reader-link input") == ""
    time.sleep(0.5)
    assert _error_pills(page) == []
    # The CSV invite carries its own acknowledgement, inside its section.
    page.get_by_text("Invite from a CSV, links, deactivation").click()
    if admin_studio["flagged"]:
        ack = page.locator("#csv-ack")
        ack.wait_for(state="visible", timeout=20_000)  # the section opens client-side
        box = ack.bounding_box()
        button = page.locator("#invite-csv").bounding_box()
        assert box["y"] < button["y"]  # above its own button, not in the single-invite row
    page.close()


def test_pair_study_analysis_shows_2afc_tables(browser, admin_studio, shots):  # noqa: F811
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    _login(page, admin_studio["url"])
    _pick_study(page, "duo")
    page.get_by_role("tab", name="Analysis").click()
    page.click("#analyze")
    try:
        page.wait_for_function("() => document.querySelector('#per-reader')"
                               " && document.querySelector('#per-reader').innerText.includes('reader-3')",
                               timeout=60_000)
    finally:
        page.screenshot(path=str(shots / "admin-analysis-pair.png"), full_page=True)
    text = page.inner_text("#per-reader")
    assert "proportion correct" in text and "p (binomial vs 0.5)" in text
    assert "2AFC" in page.inner_text("#pooled")
    page.wait_for_selector(".js-plotly-plot", timeout=30_000)
    time.sleep(1.0)
    page.screenshot(path=str(shots / "admin-analysis-pair.png"), full_page=True)
    page.close()


def test_settings_reader_title_is_saved_and_shown(browser, admin_studio, shots):  # noqa: F811
    """Study settings: the reader-facing title loads with the study and Save texts stores it
    (the library call `study configure --title` makes)."""
    from studies.lifecycle import study_texts

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    _login(page, admin_studio["url"])
    _pick_study(page, "draft")
    page.get_by_role("tab", name="Study settings").click()
    page.wait_for_function("() => document.querySelector('#study-status').innerText"
                           ".includes('Status:')", timeout=20_000)
    page.fill("#reader-title input, #reader-title textarea", "Chest CT <b>reading</b> study")
    page.click("#save-texts")
    page.wait_for_function("() => document.querySelector('#save-texts-msg').innerText"
                           ".includes('reader title Chest CT')", timeout=20_000)
    assert study_texts(admin_studio["db"], "draft").reader_title == "Chest CT <b>reading</b> study"
    if shots:
        page.screenshot(path=str(shots / "admin-settings-title.png"))
    page.close()
