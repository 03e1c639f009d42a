"""Screenshots of docs/experiments.md: the shipped example's report and the admin's Experiments tab.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python scripts/experiment_screenshots.py \
        [--out docs/img] [--work /tmp/medisyn-exp-shots]

Runs `studio.experiment.write_demo_inputs` end to end (embedded model, CPU), answers the study as
two simulated readers through the study library, rewrites the report, then opens it and the admin
tab in headless Chromium (Debian's /usr/bin/chromium) at 1440x900 and 390x844.
"""
from __future__ import annotations

import argparse
import pathlib
import random
import time
import uuid

ADMIN_PASSWORD = "screenshot-pw"


def answer_all(db, study, seed=0):
    from studies import readers
    from studies.session import next_case, submit

    rng = random.Random(seed)
    for ref in readers.list_readers(db, study):
        while (view := next_case(db, ref.reader_id)) is not None:
            q = view.pending[0]
            # a reader slightly better than chance on the turing question
            values = [s["value"] for s in q["scale"]]
            submit(db, ref.reader_id, view.assignment_id, q["task"], rng.choice(values), rng.randint(1500, 6000),
                   str(uuid.uuid4()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/img"))
    ap.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/medisyn-exp-shots"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()

    import studio.experiment as E

    config = E.write_demo_inputs(args.work, steps=4)  # a second call reuses the run (stages unchanged)
    result = E.run_experiment(config)
    db, study = E.study_of(result.out)
    answer_all(db, study)
    E.experiment_report(result.out)
    args.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    from studio.web import app as app_mod
    from studio.web import auth

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        report = (result.out / "report.html").resolve().as_uri()
        for name, viewport, anchor in (("experiment-report.png", (1440, 900), None),
                                       ("experiment-report-novelty.png", (1440, 900), "novelty-results"),
                                       ("experiment-report-phone.png", (390, 844), None)):
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.goto(report + (f"#{anchor}" if anchor else ""))
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / name))
            page.close()

        creds = auth.AdminCredentials.from_password("admin", ADMIN_PASSWORD, "env")
        app = app_mod.build_app(db, admin_auth=auth.AdminAuth(creds))
        server = app_mod.Server(app, "127.0.0.1", app_mod.free_port()).start()
        try:
            for name, viewport in (("experiments-tab.png", (1440, 900)), ("experiments-tab-phone.png", (390, 844))):
                page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
                page.goto(f"{server.url}/admin/")
                page.wait_for_selector("input[type=password]", timeout=30_000)
                page.fill("input[type=text]", "admin")
                page.fill("input[type=password]", ADMIN_PASSWORD)
                page.keyboard.press("Enter")
                page.wait_for_selector("#study-select", timeout=30_000)
                tab = page.get_by_role("tab", name="Experiments")
                if not tab.is_visible():  # on a phone the tab sits in Gradio's overflow menu
                    page.evaluate("() => [...document.querySelectorAll('#admin-tabs button')].find(b => "
                                  "b.offsetParent !== null && b.getBoundingClientRect().width > 0 "
                                  "&& b.innerText.trim() === '').click()")
                    tab = page.locator("#admin-tabs button:visible", has_text="Experiments").last
                tab.click()
                page.click("#exp-run input")
                page.get_by_role("option").first.click()
                page.wait_for_function("() => document.querySelector('#exp-stages')"
                                       " && document.querySelector('#exp-stages').innerText.includes('novelty')",
                                       timeout=30_000)
                page.wait_for_selector("#exp-report iframe", timeout=30_000)
                frame = next(f for f in page.frames if f.url == "about:srcdoc")
                frame.wait_for_selector("h1", timeout=60_000)  # 5 MB of srcdoc: parsed after the page
                time.sleep(2.0)
                page.screenshot(path=str(args.out / name))
                # Chromium leaves a sandboxed (cross-origin) iframe blank in full-page shots: scroll to it
                page.locator("#exp-report iframe").scroll_into_view_if_needed()
                time.sleep(2.0)
                page.screenshot(path=str(args.out / name.replace(".png", "-report.png")))
                page.close()
        finally:
            server.stop()
        browser.close()
    print(f"screenshots in {args.out}; run in {result.out}")


if __name__ == "__main__":
    main()
