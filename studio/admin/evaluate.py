"""The admin's Evaluate tab: novelty and fidelity of a generation batch against a reference set.

Synthetic images: a saved generation batch (`studio.admin.generate`), a folder on the server,
or an uploaded zip (extracted with the same guards as a study upload). Reference: a folder or
manifest on the server, or a study's real images (its stored stimuli, via
`studies.export.case_images`). Runs `evaluation.novelty.run_novelty` /
`evaluation.fidelity.run_fidelity` in a worker thread with progress and cancel; the report is
shown inline in a sandboxed iframe (no scripts, no same-origin) and offered for download.
Results go to `<db dir>/evaluations/<run id>/`. Every handler checks the admin session.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import pathlib
import queue
import secrets
import shutil
import tempfile
import threading

import gradio as gr

from evaluation.errors import EvaluationCancelled, EvaluationError
from evaluation.images import ImageRef
from studio.admin.run_slots import RunSlots

SYNTHETIC_SOURCES = ("Generation batch", "Folder on the server", "Upload a zip")
REFERENCE_SOURCES = ("Folder on the server", "A study's real images")
FEATURE_CHOICES = ("pixels", "inception")
# One evaluation at a time in this process; Gradio lets up to EVALUATE_ADMITTED requests
# into the handler, where the rest wait and Cancel reaches them (studio/admin/run_slots.py).
SLOTS = RunSlots(limit=1)
EVALUATE_ADMITTED = 4


def evaluations_root(db_path) -> pathlib.Path:
    return pathlib.Path(db_path).resolve().parent / "evaluations"


def new_run_dir(db_path, kind: str) -> pathlib.Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    d = evaluations_root(db_path) / f"{stamp}-{kind}-{secrets.token_hex(3)}"
    d.mkdir(parents=True)
    return d


def synthetic_input(source: str, batch: str | None, folder: str | None, upload, work: pathlib.Path):
    """Folder/manifest (or ImageRef list) of the synthetic images the admin picked."""
    if source == "Generation batch":
        if not batch:
            raise EvaluationError("choose a generation batch")
        man = pathlib.Path(batch) / "manifest.csv"
        return man if man.is_file() else pathlib.Path(batch)
    if source == "Folder on the server":
        p = pathlib.Path(str(folder or "").strip()).expanduser()
        if not str(folder or "").strip() or not p.exists():
            raise EvaluationError(f"no such folder or manifest on the server: {p}")
        return p
    if not upload:
        raise EvaluationError("upload a zip of images first")
    from studio.admin.uploads import safe_extract_zip, uploaded_file

    zpath = uploaded_file(upload)
    dest = work / "uploaded"
    try:
        safe_extract_zip(zpath, dest)
    finally:
        zpath.unlink(missing_ok=True)
    return dest


def reference_input(db_path, source: str, folder: str | None, study: str | None):
    """Folder/manifest on the server, or the ImageRefs of a study's real stimuli."""
    if source == "A study's real images":
        from studies.export import case_images

        if not study:
            raise EvaluationError("choose a study for the reference images")
        rows = case_images(db_path, study, source="real")
        if not rows:
            raise EvaluationError(f"study {study!r} has no real images")
        return [ImageRef(r["path"], r["case"], r["modality"], r["prompt"], r["generator"]) for r in rows]
    p = pathlib.Path(str(folder or "").strip()).expanduser()
    if not str(folder or "").strip() or not p.exists():
        raise EvaluationError(f"no such reference folder or manifest on the server: {p}")
    return p


def novelty_job(db_path, synthetic, reference, *, measures=("pixel", "tiled_l2", "ssim", "phash"),
                on_progress=None, cancel=None) -> tuple[str, pathlib.Path, list[pathlib.Path]]:
    """Run novelty into a new run folder: (markdown summary, report.html, downloadable files)."""
    from evaluation.novelty import run_novelty

    out = new_run_dir(db_path, "novelty")
    res = run_novelty(synthetic, reference, out, measures=list(measures), progress=False,
                      on_progress=on_progress, cancel=cancel)
    lines = [f"**{res.n_flagged} of {len(res.rows)} synthetic images flagged ({res.fraction_flagged:.1%})** "
             f"against {res.n_reference} reference images; flagged when at least {res.min_votes} of "
             f"{len(res.measures)} measures pass."]
    lines += [f"- `{m}` threshold {res.thresholds[m]:.4g}: {res.threshold_rules[m]}" for m in res.measures]
    shutil.rmtree(out / ".cache", ignore_errors=True)  # descriptors: large, and not for download
    files = [out / "report.html", out / "novelty.csv", out / "summary.json"]
    return "\n".join(lines), out / "report.html", files


def fidelity_job(db_path, synthetic, reference, *, features="pixels", weights=None, by=None,
                 on_progress=None, cancel=None) -> tuple[str, pathlib.Path, list[pathlib.Path]]:
    from evaluation.fidelity import format_fidelity, run_fidelity
    from evaluation.report import write_fidelity_report

    out = new_run_dir(db_path, "fidelity")
    res = run_fidelity(synthetic, reference, features=features, weights=weights or None, by=by or None,
                       progress=False, on_progress=on_progress, cancel=cancel)
    (out / "fidelity.json").write_text(json.dumps(res, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    write_fidelity_report(out / "report.html", res)
    text = format_fidelity(res).replace("\n", "\n\n")
    return text, out / "report.html", [out / "report.html", out / "fidelity.json"]


def report_iframe(path) -> str:
    """The report inline: a sandboxed iframe (no scripts, no same-origin) with the HTML as srcdoc."""
    doc = pathlib.Path(path).read_text(encoding="utf-8")
    return (f'<iframe sandbox="" style="width:100%;height:720px;border:1px solid #ccc" '
            f'srcdoc="{html.escape(doc, quote=True)}"></iframe>')


# (label, value): the blank value has a label, or the dropdown shows a bare tick
BREAKDOWN_CHOICES = [("no breakdown (all images together)", ""), ("modality", "modality"),
                     ("prompt", "prompt"), ("generator", "generator")]


def source_visibility(syn_source: str, ref_source: str) -> tuple[bool, bool, bool, bool, bool]:
    """Which inputs show: (batch, synthetic folder, synthetic zip, reference folder, study)
    — only the one of each chosen source."""
    syn = [s == syn_source for s in SYNTHETIC_SOURCES]
    ref = [s == ref_source for s in REFERENCE_SOURCES]
    return (*syn, *ref)


@dataclasses.dataclass
class EvaluateTab:
    wire: object


def build_evaluate_tab(db_path, guard, *, batches_dir=None) -> EvaluateTab:
    """Components of the tab (inside the current Blocks); `wire(study_dd)` is a no-op hook
    kept for symmetry with the Generate tab."""
    from studio.admin import generate as generate_view

    with gr.Row():
        syn_source = gr.Radio(list(SYNTHETIC_SOURCES), value=SYNTHETIC_SOURCES[0], label="Synthetic images")
        ref_source = gr.Radio(list(REFERENCE_SOURCES), value=REFERENCE_SOURCES[0], label="Reference (real) images")
    with gr.Row():
        with gr.Column():
            # only the input of the chosen source shows (see show_sources)
            shown = source_visibility(SYNTHETIC_SOURCES[0], REFERENCE_SOURCES[0])
            batch = gr.Dropdown(choices=generate_view.batch_choices(db_path, batches_dir), label="Generation batch",
                                visible=shown[0], elem_id="eval-batch")
            syn_folder = gr.Textbox(label="Synthetic folder or manifest.csv on the server",
                                    visible=shown[1], elem_id="eval-syn-folder")
            syn_upload = gr.File(label="Zip of synthetic images", file_types=[".zip"], type="filepath",
                                 visible=shown[2], elem_id="eval-syn-upload")
        with gr.Column():
            ref_folder = gr.Textbox(label="Reference folder or manifest.csv on the server",
                                    visible=shown[3], elem_id="eval-ref-folder")
            ref_study = gr.Dropdown(choices=[], label="Study (its real images)", visible=shown[4],
                                    elem_id="eval-ref-study")
    with gr.Row():
        measures = gr.CheckboxGroup(["pixel", "tiled_l2", "ssim", "ms_ssim", "phash"],
                                    value=["pixel", "tiled_l2", "ssim", "phash"], label="Novelty measures")
        features = gr.Textbox(value="pixels", label="Fidelity features: pixels, inception, or a model path")
        weights = gr.Textbox(label="Inception weights file (for 'inception')")
        by = gr.Dropdown(choices=BREAKDOWN_CHOICES, value="", label="Break down by",
                         elem_id="eval-by")
    with gr.Row():
        run_nov = gr.Button("Run novelty", variant="primary", elem_id="eval-novelty")
        run_fid = gr.Button("Run fidelity", elem_id="eval-fidelity")
        stop = gr.Button("Cancel", variant="stop", elem_id="eval-cancel")
    status = gr.Markdown(elem_id="eval-status")
    report = gr.HTML(elem_id="eval-report")
    files = gr.File(label="Downloads", file_count="multiple", interactive=False)

    def refresh_choices(request: gr.Request):
        guard(request)
        from studio.admin.studies_tab import study_names

        return (gr.update(choices=generate_view.batch_choices(db_path, batches_dir)),
                gr.update(choices=study_names(db_path)))

    def run(kind, ticket, syn_src, batch_, syn_folder_, upload_, ref_src, ref_folder_, study_, measures_,
            features_, weights_, by_, request: gr.Request):
        guard(request)
        slots = SLOTS  # the same pool from start to end
        cancel = slots.begin(request.session_hash, ticket, kind)
        if cancel is None:  # Cancel came while the request was on its way: never starts
            yield "Cancelled.", gr.update(), gr.update()
            return
        try:
            if not slots.try_slot():
                yield "Waiting for the running evaluation to finish…", gr.update(), gr.update()
                if not slots.wait_slot(cancel):
                    yield "Cancelled.", gr.update(), gr.update()
                    return
            yield from _run(slots, kind, cancel, syn_src, batch_, syn_folder_, upload_, ref_src, ref_folder_,
                            study_, measures_, features_, weights_, by_)
        finally:
            slots.end(request.session_hash, cancel)

    def _run(slots, kind, cancel, syn_src, batch_, syn_folder_, upload_, ref_src, ref_folder_, study_,
             measures_, features_, weights_, by_):
        """The evaluation itself, holding the slot (freed when its worker ends)."""
        events: queue.Queue = queue.Queue()
        box: dict = {}
        work = pathlib.Path(tempfile.mkdtemp(prefix="medisyn-eval-"))

        def work_fn():
            try:
                syn = synthetic_input(syn_src, batch_, syn_folder_, upload_, work)
                ref = reference_input(db_path, ref_src, ref_folder_, study_)
                cb = lambda f, text: events.put((f, text))  # noqa: E731
                if kind == "novelty":
                    box["out"] = novelty_job(db_path, syn, ref, measures=measures_ or ["pixel"],
                                             on_progress=cb, cancel=cancel)
                else:
                    box["out"] = fidelity_job(db_path, syn, ref, features=(features_ or "pixels").strip(),
                                              weights=(weights_ or "").strip() or None, by=by_ or None,
                                              on_progress=cb, cancel=cancel)
            except BaseException as exc:  # shown below, in the request thread
                box["error"] = exc
            finally:
                shutil.rmtree(work, ignore_errors=True)
                slots.free_slot()
                events.put(None)

        threading.Thread(target=work_fn, daemon=True).start()
        yield "Starting…", gr.update(), gr.update()
        try:
            while True:
                ev = events.get()
                if ev is None:
                    break
                frac, text = ev
                yield f"{text}: {frac:.0%}", gr.update(), gr.update()
        finally:
            if "out" not in box and "error" not in box:
                cancel.set()  # the browser went away: stop the worker too
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, EvaluationCancelled):
                yield "Cancelled.", gr.update(), gr.update()
                return
            if isinstance(exc, (EvaluationError, ValueError, OSError)):
                raise gr.Error(str(exc)) from None
            raise gr.Error(f"{type(exc).__name__}: {exc}") from None
        text, report_path, out_files = box["out"]
        yield text, report_iframe(report_path), [str(f) for f in out_files]

    # Every input a named parameter: Gradio passes `request` only to a positional parameter
    # (with `*args, request` the handler got none and failed at once).
    def run_novelty_ev(ticket, syn_src, batch_, syn_folder_, upload_, ref_src, ref_folder_, study_, measures_,
                       features_, weights_, by_, request: gr.Request):
        yield from run("novelty", ticket, syn_src, batch_, syn_folder_, upload_, ref_src, ref_folder_, study_,
                       measures_, features_, weights_, by_, request=request)

    def run_fidelity_ev(ticket, syn_src, batch_, syn_folder_, upload_, ref_src, ref_folder_, study_, measures_,
                        features_, weights_, by_, request: gr.Request):
        yield from run("fidelity", ticket, syn_src, batch_, syn_folder_, upload_, ref_src, ref_folder_, study_,
                       measures_, features_, weights_, by_, request=request)

    def click_novelty(request: gr.Request):
        guard(request)
        return SLOTS.click(request.session_hash, "novelty")

    def click_fidelity(request: gr.Request):
        guard(request)
        return SLOTS.click(request.session_hash, "fidelity")

    def on_cancel(request: gr.Request):
        """Stop this session's evaluations: a running one at its next check, one waiting or
        still on its way at once. With nothing to cancel, the status stays."""
        guard(request)
        return "Cancelling…" if SLOTS.cancel(request.session_hash) else gr.update()

    private = dict(api_visibility="private")
    inputs = [syn_source, batch, syn_folder, syn_upload, ref_source, ref_folder, ref_study, measures, features,
              weights, by]
    # A click takes a ticket at once (no queue), so a Cancel before the run starts stops it
    # too. No `cancels=`: Gradio's /cancel makes the page show "Error" (run_slots.py).
    nov_ticket, fid_ticket = gr.State(0), gr.State(0)
    run_nov.click(click_novelty, None, [nov_ticket], queue=False, **private).then(
        run_novelty_ev, [nov_ticket, *inputs], [status, report, files],
        concurrency_limit=EVALUATE_ADMITTED, concurrency_id="evaluate", **private)
    run_fid.click(click_fidelity, None, [fid_ticket], queue=False, **private).then(
        run_fidelity_ev, [fid_ticket, *inputs], [status, report, files],
        concurrency_limit=EVALUATE_ADMITTED, concurrency_id="evaluate", **private)
    stop.click(on_cancel, None, [status], queue=False, **private)

    def show_sources(syn_src, ref_src, request: gr.Request):
        guard(request)
        return [gr.update(visible=v) for v in source_visibility(syn_src, ref_src)]

    for radio in (syn_source, ref_source):
        radio.change(show_sources, [syn_source, ref_source],
                     [batch, syn_folder, syn_upload, ref_folder, ref_study], **private)

    def wire(study_dd):
        study_dd.change(refresh_choices, None, [batch, ref_study], **private)

    return EvaluateTab(wire)
