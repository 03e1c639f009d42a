"""The admin's Evaluate tab as plain Python: inputs, jobs, inline report, admin checks."""
from __future__ import annotations

import json
import types
import zipfile

import gradio as gr
import pytest

from study_fixtures import make_study

from evaluation.errors import EvaluationError
from studio.admin import evaluate as evaluate_view
from studio.admin import uploads
from studio.admin import view as admin_view


class _Auth:
    def is_admin(self, username):
        return username == "admin"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalview")
    db, _ = make_study(tmp, "pilot", size=64, synthetic_per_real=2)
    return tmp, db


def test_a_studys_real_images_are_the_reference_and_novelty_writes_a_report(study):
    tmp, db = study
    refs = evaluate_view.reference_input(db, "A study's real images", None, "pilot")
    assert refs and all(r.path.is_file() and r.path.suffix == ".png" for r in refs)
    from studies.export import case_images

    assert len(refs) == len(case_images(db, "pilot", source="real")) < len(case_images(db, "pilot"))
    syn = evaluate_view.synthetic_input("Folder on the server", None, str(tmp / "data" / "synthetic"), None, tmp)
    seen = []
    text, report, files = evaluate_view.novelty_job(db, syn, refs, measures=["pixel", "ssim"],
                                                    on_progress=lambda f, t: seen.append(f))
    assert "synthetic images flagged" in text and "split-conformal" in text
    assert report.is_file() and all(f.is_file() for f in files)
    assert not (report.parent / ".cache").exists()
    assert report.parent.parent == evaluate_view.evaluations_root(db)
    assert seen and seen[-1] == pytest.approx(1.0)
    frame = evaluate_view.report_iframe(report)
    assert frame.startswith('<iframe sandbox=""') and "<img" not in frame  # escaped into srcdoc
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["n_reference"] == len(refs)
    text, report, files = evaluate_view.fidelity_job(db, syn, refs, features="pixels")
    assert "FID" in text and "2,000" in text and report.is_file()


def test_bad_inputs(study, tmp_path):
    _, db = study
    with pytest.raises(EvaluationError, match="choose a generation batch"):
        evaluate_view.synthetic_input("Generation batch", None, None, None, tmp_path)
    with pytest.raises(EvaluationError, match="no such folder"):
        evaluate_view.synthetic_input("Folder on the server", None, str(tmp_path / "nope"), None, tmp_path)
    with pytest.raises(EvaluationError, match="choose a study"):
        evaluate_view.reference_input(db, "A study's real images", None, None)
    outside = tmp_path / "x.zip"
    with zipfile.ZipFile(outside, "w") as z:
        z.writestr("a.png", b"x")
    with pytest.raises(uploads.UploadError):  # a forged upload path is neither read nor deleted
        evaluate_view.synthetic_input("Upload a zip", None, None, str(outside), tmp_path)
    assert outside.exists()


def test_evaluate_handlers_check_the_admin_and_are_private(study):
    _, db = study
    blocks = admin_view.build_admin_blocks(db, _Auth())
    fns = {f.name: f for f in blocks.fns.values()}
    deps = blocks.get_config_file()["dependencies"]
    assert all(d["api_visibility"] == "private" for d in deps)
    args = ["Folder on the server", None, "/", None, "Folder on the server", "/", None, ["pixel"], "pixels", "",
            ""]
    for name in ("run_novelty_ev", "run_fidelity_ev"):
        intruder = types.SimpleNamespace(username="mallory", session_hash="s1")
        with pytest.raises(gr.Error, match="Not authorised"):
            next(fns[name].fn(1, *args, request=intruder))
    with pytest.raises(gr.Error, match="Not authorised"):
        fns["on_cancel"].fn(request=types.SimpleNamespace(username=None, session_hash="s1"))
    # the admin gets the library's error for a bad reference folder, as one message
    admin = types.SimpleNamespace(username="admin", session_hash="s2")
    bad = ["Folder on the server", None, "/nonexistent-synthetic", None, "Folder on the server", "/", None,
           ["pixel"], "pixels", "", ""]
    gen = fns["run_novelty_ev"].fn(1, *bad, request=admin)
    assert next(gen)[0] == "Starting…"
    with pytest.raises(gr.Error, match="no such folder"):
        list(gen)


def test_evaluate_cancel_ends_running_and_waiting_runs_without_gradios_cancel(study, monkeypatch):
    """One evaluation at a time: b's run waits inside its handler and its Cancel ends it at
    once, unstarted; a's Cancel stops a at its next check. Every run returns normally, and no
    event uses Gradio's `cancels=` (whose /cancel made the page show "Error")."""
    import threading

    from evaluation.errors import EvaluationCancelled
    from studio.admin.run_slots import RunSlots

    tmp, db = study
    started = []

    def fake_novelty(db_path, syn, ref, *, measures, on_progress, cancel):
        started.append(1)
        on_progress(0.5, "novelty")
        cancel.wait(30)
        raise EvaluationCancelled("cancelled")

    monkeypatch.setattr(evaluate_view, "novelty_job", fake_novelty)
    monkeypatch.setattr(evaluate_view, "SLOTS", RunSlots(limit=1))
    blocks = admin_view.build_admin_blocks(db, _Auth())
    assert not [d for d in blocks.get_config_file()["dependencies"] if d.get("cancels")]
    fns = {f.fn.__qualname__.split(".")[0] + "." + f.name: f.fn for f in blocks.fns.values()}
    args = ["Folder on the server", None, str(tmp / "data" / "synthetic"), None, "A study's real images", None,
            "pilot", ["pixel"], "pixels", "", ""]

    def handlers(session):
        req = types.SimpleNamespace(username="admin", session_hash=session)
        click = lambda: fns["build_evaluate_tab.click_novelty"](request=req)  # noqa: E731
        run = lambda: fns["build_evaluate_tab.run_novelty_ev"](click(), *args, request=req)  # noqa: E731
        cancel = lambda: fns["build_evaluate_tab.on_cancel"](request=req)  # noqa: E731
        return run, cancel

    run_a, cancel_a = handlers("a")
    run_b, cancel_b = handlers("b")
    a = run_a()
    assert [next(a)[0], next(a)[0]] == ["Starting…", "novelty: 50%"]
    b = run_b()
    assert next(b)[0] == "Waiting for the running evaluation to finish…"
    rest_b: list = []
    waiter = threading.Thread(target=lambda: rest_b.extend(b))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()
    assert cancel_b() == "Cancelling…"
    waiter.join(5)
    assert not waiter.is_alive() and [o[0] for o in rest_b] == ["Cancelled."]
    assert started == [1]  # b never started
    assert cancel_a() == "Cancelling…"
    assert [o[0] for o in a] == ["Cancelled."]
    assert cancel_a() == gr.update()  # nothing left: the status stays


def test_every_admin_handler_gets_the_request(study):
    """Gradio passes `gr.Request` only to a positional parameter: the Evaluate buttons had
    `(*args, request)` and failed at once in the browser (missing request)."""
    import inspect

    _, db = study
    blocks = admin_view.build_admin_blocks(db, _Auth())
    for f in blocks.fns.values():
        param = inspect.signature(f.fn).parameters.get("request") if f.fn else None
        if param is not None:
            assert param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, f.name
