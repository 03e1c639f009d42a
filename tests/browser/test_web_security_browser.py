"""In Chromium: `/admin` (as the banner prints it) reaches the login form, and the Log out
button ends the session with a same-origin POST that the cross-origin check lets through."""
from __future__ import annotations

import os
import shutil

import pytest

from studio_fixtures import make_loud_study

pytestmark = pytest.mark.browser
PASSWORD = "browser-logout-pw"


@pytest.fixture(scope="module")
def page_and_url(tmp_path_factory):
    exe = os.environ.get("MEDISYN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed")
    if not os.path.exists(exe):
        pytest.skip(f"no chromium at {exe}")
    from studio.web import app as app_mod
    from studio.web import auth

    db, _, _ = make_loud_study(tmp_path_factory.mktemp("logout"), readers=())
    app = app_mod.build_app(db, admin_auth=auth.AdminAuth(
        auth.AdminCredentials.from_password("admin", PASSWORD, "env")))
    server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            yield page, server.url
            browser.close()
    finally:
        server.stop()


def test_admin_link_and_logout_button(page_and_url):
    page, url = page_and_url
    page.goto(f"{url}/admin")  # without the slash
    page.wait_for_selector("input[type=password]", timeout=30_000)
    assert page.url.endswith("/admin/")
    page.fill("input[type=text]", "admin")
    page.fill("input[type=password]", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector("#study-select", timeout=30_000)
    assert page.request.get(f"{url}/admin/gradio_api/login_check").status == 200
    with page.expect_response(lambda r: r.url.endswith("/admin/logout")) as logout:
        page.click("#logout")
    assert logout.value.request.method == "POST" and logout.value.status == 303
    page.wait_for_selector("input[type=password]", timeout=30_000)
    assert page.request.get(f"{url}/admin/gradio_api/login_check").status == 401
