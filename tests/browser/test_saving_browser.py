"""In Chromium: an answer that waits shows "Saving…", a stalled writer ends at the storage
screen (Try again) instead of an endless wait, and Try again continues where the reader
really is."""
from __future__ import annotations

import os
import signal

import pytest

from studies.storage import writer_process
from studio_fixtures import make_loud_study, serve_studio
from test_studio_browser import CHROMIUM_ARGS, _chromium

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("viewport", [(1440, 900), (390, 844)], ids=["desktop", "phone"])
def test_saving_then_storage_screen_then_try_again(tmp_path, monkeypatch, viewport):
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    monkeypatch.setattr(writer_process, "CALL_DEADLINE_S", 3.0)
    monkeypatch.setattr(writer_process, "REPLY_GRACE_S", 0.5)
    db, _, tokens = make_loud_study(tmp_path, n_cases=4, size=96)
    shots = os.environ.get("MEDISYN_SCREENSHOTS")
    with serve_studio(db) as (url, _ids), sync_playwright() as p:
        writer = writer_process.writer_for(db)
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.goto(f"{url}/?token={tokens['dr-a']}")
            page.click("#start")
            page.wait_for_selector("#progress:has-text('Case 1 of 4')")
            os.kill(writer.proc.pid, signal.SIGSTOP)
            try:
                page.click("#answer label >> nth=0")
                page.click("#submit")
                page.wait_for_selector("#saving", state="visible", timeout=30_000)
                assert page.inner_text("#saving") == "Saving…"
                if shots:
                    page.screenshot(path=f"{shots}/saving-{viewport[0]}.png")
                page.wait_for_selector("#unavailable", state="visible", timeout=60_000)
                assert "may not have been saved" in page.inner_text("#unavailable")
                assert not page.is_visible("#saving")
                if shots:
                    page.screenshot(path=f"{shots}/storage-{viewport[0]}.png")
            finally:
                os.kill(writer.proc.pid, signal.SIGCONT)
            page.click("#retry")
            # the answer was not stored: the same case again, and then it is answered
            page.wait_for_selector("#progress:has-text('Case 1 of 4')", state="visible")
            page.click("#answer label >> nth=0")
            page.click("#submit")
            page.wait_for_selector("#progress:has-text('Case 2 of 4')", state="visible")
            assert not page.is_visible("#saving")
        finally:
            browser.close()
