"""The admin's Experiments tab: experiment runs (``studio.experiment.pipeline``), their stages and readers'
progress, start and cancel of the automatic stages, and the report inline and for download.

Runs listed: those under ``<db dir>/runs/`` and those started from this tab (remembered in
``<db dir>/experiments.json``, paths only). A run started here puts its study in the studio's own
database (``db`` override), so its readers read in this studio. It runs in a worker thread of this
process, one at a time; Cancel stops it at its next check (between images and stages). Reader
links of a run started here are shown once, in the run's log on this page, and never stored.

Plain functions (``start_run``, ``cancel_run``, ``run_choices``, ``stage_table``, ``readers_table``,
``report_iframe``) do the work; the Gradio handlers only check the admin session and call them.
Readers never see this tab: it lives in the admin Blocks only, every handler is private to the
API and checks the admin.
"""
from __future__ import annotations

import dataclasses
import html
import json
import pathlib
import threading

import gradio as gr
import pandas as pd

import studio.experiment as E


@dataclasses.dataclass
class Job:
    out: pathlib.Path
    cancel: threading.Event
    thread: threading.Thread | None = None
    log: list[str] = dataclasses.field(default_factory=list)
    error: str = ""
    finished: bool = False
    shown_final: bool = False  # the page has drawn the finished run once


_JOBS: dict[str, Job] = {}
_LOCK = threading.Lock()


def _registry(db_path) -> pathlib.Path:
    return pathlib.Path(db_path).resolve().parent / "experiments.json"


def _remember(db_path, out: pathlib.Path) -> None:
    path = _registry(db_path)
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = []
    if str(out) not in known:
        known.append(str(out))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(known, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)


def run_choices(db_path) -> list[str]:
    """Run folders: under <db dir>/runs and those started here (that still exist)."""
    found = {str(p.resolve()) for p in E.list_runs(pathlib.Path(db_path).resolve().parent / "runs")}
    try:
        found |= {p for p in json.loads(_registry(db_path).read_text(encoding="utf-8"))
                  if (pathlib.Path(p) / "experiment.json").is_file()}
    except (OSError, ValueError):
        pass
    return sorted(found)


def running(out) -> Job | None:
    job = _JOBS.get(str(pathlib.Path(out).resolve()))
    return job if job is not None and not job.finished else None


def start_run(config_path, db_path, *, until: str | None = None, force=()) -> Job:
    """Validate the config and start its automatic stages in a worker thread; ExperimentError
    (one line) for a bad config or a run of the same folder still going."""
    if not str(config_path or "").strip():
        raise E.ExperimentError("give the path of an experiment config (TOML) on the server")
    cfg = E.read_config(str(config_path).strip(), db=db_path)
    key = str(cfg.out)
    with _LOCK:
        if any(not j.finished for j in _JOBS.values()):
            raise E.ExperimentError("another experiment is running in this studio; cancel it or wait")
        job = Job(cfg.out, threading.Event())
        _JOBS[key] = job

    def work():
        try:
            E.run_experiment(cfg, until=until, force=force, log=job.log.append, cancel=job.cancel)
        except E.ExperimentCancelled:
            job.log.append("cancelled")
        except E.ExperimentError as exc:
            job.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - shown on the page, the worker must not die silently
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = True

    cfg.out.mkdir(parents=True, exist_ok=True)
    _remember(db_path, cfg.out)
    job.thread = threading.Thread(target=work, daemon=True, name=f"experiment-{cfg.name}")
    job.thread.start()
    return job


def cancel_run(out) -> bool:
    job = running(out)
    if job is None:
        return False
    job.cancel.set()
    return True


def stage_table(out) -> pd.DataFrame:
    status = E.experiment_status(out)
    return pd.DataFrame([{"stage": s.stage, "state": s.state, "finished": s.finished_at,
                          "seconds": "" if s.seconds is None else f"{s.seconds:.1f}", "note": s.note}
                         for s in status.stages])


def readers_table(out) -> pd.DataFrame:
    status = E.experiment_status(out)
    rows = [{"reader": r["reader"], "completed": r["completed"], "total": r["total"],
             "finished": "yes" if r["finished"] else ""} for r in status.readers]
    return pd.DataFrame(rows, columns=["reader", "completed", "total", "finished"])


def status_text(out) -> str:
    status = E.experiment_status(out)
    job = _JOBS.get(str(pathlib.Path(out).resolve()))
    lines = [f"**{status.name}** — `{status.out}`"]
    if status.study:
        lines.append(f"Study `{status.study}` in `{status.db}`.")
    if status.new_answers:
        lines.append("New answers since the last analysis: *Update report* redoes the analysis and the report.")
    if job is not None:
        state = "running" if not job.finished else ("failed: " + job.error if job.error else "finished")
        lines.append(f"Started here: {state}.")
        if job.log:
            lines.append("```\n" + "\n".join(job.log[-40:]) + "\n```")
    return "\n\n".join(lines)


def report_iframe(out) -> str:
    """The report inline: a sandboxed iframe (scripts for its figures, no same-origin, so it
    cannot reach the admin page) with the HTML as srcdoc."""
    path = pathlib.Path(out) / "report.html"
    if not path.is_file():
        return "<p>No report yet.</p>"
    doc = path.read_text(encoding="utf-8")
    return (f'<iframe sandbox="allow-scripts" style="width:100%;height:760px;border:1px solid #ccc" '
            f'title="experiment report" srcdoc="{html.escape(doc, quote=True)}"></iframe>')


def report_files(out) -> list[str]:
    """Copies of the report in a fresh temporary folder: Gradio serves a returned file only from
    its working folder, the temporary folder or allowed paths, and a run may live anywhere."""
    import shutil
    import tempfile

    files = [p for p in (pathlib.Path(out) / "report.html", pathlib.Path(out) / "report.md") if p.is_file()]
    if not files:
        return []
    folder = pathlib.Path(tempfile.mkdtemp(prefix="medisyn-report-"))
    return [str(shutil.copy2(p, folder / p.name)) for p in files]


def update_report(out, db_path) -> Job:
    """Redo the analysis and the report with the answers so far, in the worker thread."""
    out = pathlib.Path(out).resolve()
    with _LOCK:
        if any(not j.finished for j in _JOBS.values()):
            raise E.ExperimentError("another experiment is running in this studio; cancel it or wait")
        job = Job(out, threading.Event())
        _JOBS[str(out)] = job

    def work():
        try:
            E.experiment_report(out, log=job.log.append, cancel=job.cancel)
        except E.ExperimentCancelled:
            job.log.append("cancelled")
        except E.ExperimentError as exc:
            job.error = str(exc)
        except Exception as exc:  # noqa: BLE001
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = True

    job.thread = threading.Thread(target=work, daemon=True, name="experiment-report")
    job.thread.start()
    return job


# ------------------------------------------------------------------ Gradio

def build_experiments_tab(db_path, guard):
    """Components of the tab, inside the current admin Blocks."""
    private = dict(api_visibility="private")
    with gr.Row():
        config = gr.Textbox(label="Experiment config (TOML) on the server", scale=3, elem_id="exp-config")
        start = gr.Button("Start", variant="primary", scale=0, min_width=90, elem_id="exp-start")
        stop = gr.Button("Cancel", variant="stop", scale=0, min_width=90, elem_id="exp-cancel")
    with gr.Row():
        run_dd = gr.Dropdown(label="Run", choices=run_choices(db_path), value=None, scale=3, elem_id="exp-run")
        refresh = gr.Button("↻ Refresh", scale=0, min_width=90)
        update = gr.Button("Update report", scale=0, min_width=120, elem_id="exp-update")
    message = gr.Markdown(elem_id="exp-status")
    stages = gr.Dataframe(label="Stages", interactive=False, elem_id="exp-stages")
    progress = gr.Dataframe(label="Readers' progress", interactive=False, elem_id="exp-readers")
    report = gr.HTML(elem_id="exp-report")
    files = gr.File(label="Report (download)", file_count="multiple", interactive=False)
    timer = gr.Timer(3.0)

    def _show(out, with_report=True):
        if not out:
            return "", None, None, "", None
        try:
            head = (status_text(out), stage_table(out), readers_table(out))
            if not with_report:
                return (*head, gr.update(), gr.update())
            return (*head, report_iframe(out), report_files(out) or None)
        except E.ExperimentError as exc:
            return str(exc), None, None, "", None

    def show(out, request: gr.Request):
        guard(request)
        return _show(out)

    def tick(out, request: gr.Request):
        """While a run started here goes on: its log, stages and readers (the report is redrawn
        once, when it ends); otherwise nothing changes."""
        guard(request)
        job = _JOBS.get(str(pathlib.Path(out).resolve())) if out else None
        if job is None or job.shown_final:
            return (gr.update(),) * 5
        if not job.finished:
            return _show(out, with_report=False)
        job.shown_final = True
        return _show(out)

    def do_start(path, request: gr.Request):
        guard(request)
        try:
            job = start_run(path, db_path)
        except E.ExperimentError as exc:
            raise gr.Error(str(exc)) from None
        out = str(job.out.resolve())
        return gr.update(choices=run_choices(db_path), value=out)

    def do_cancel(out, request: gr.Request):
        guard(request)
        return "Cancelling…" if out and cancel_run(out) else gr.update()

    def do_update(out, request: gr.Request):
        guard(request)
        if not out:
            raise gr.Error("choose a run")
        try:
            update_report(out, db_path)
        except E.ExperimentError as exc:
            raise gr.Error(str(exc)) from None
        return _show(out)

    def do_refresh(out, request: gr.Request):
        guard(request)
        choices = run_choices(db_path)
        return gr.update(choices=choices, value=out if out in choices else None)

    outputs = [message, stages, progress, report, files]
    start.click(do_start, [config], [run_dd], **private)
    stop.click(do_cancel, [run_dd], [message], queue=False, **private)
    run_dd.change(show, [run_dd], outputs, **private)
    update.click(do_update, [run_dd], outputs, **private)
    refresh.click(do_refresh, [run_dd], [run_dd], **private).then(show, [run_dd], outputs, **private)
    timer.tick(tick, [run_dd], outputs, **private)
    return run_dd
