"""One config from generator to report: the validation-study pipeline, staged and re-runnable.

``run_experiment(config)`` is what ``medisyn experiment run`` (and the admin's Experiments tab)
runs. Stages, in order (docs/experiments.md):

    split     real manifest -> reference part and a held-out part, by group (a group never
              straddles the two), per modality
    generate  per generator, ``model_runtime.batch_job.run_generate_job`` (local or Ray; resumes)
    novelty   every synthetic image against the reference part; thresholds calibrated on the
              held-out part; ``gate = true`` keeps flagged images out of the study
    fidelity  per generator, overall and per modality (``evaluation.fidelity``)
    study     ``studies.ingest.create_study`` with the kept synthetic and the reference real
              images; its leak audit stops the run unless acknowledged; readers invited
    analyze   ``studies.export.analyze_db`` on the answers so far
    augment   (optional) ``evaluation.augment.run_augment`` on the same images
    report    OUT/report.md and OUT/report.html (``studio.experiment.report``)

Each stage writes ``OUT/<stage>/`` and ``OUT/<stage>/stamp.json``: the hash of its inputs (its
parameters and the recorded output hashes of the stages it reads) and of its outputs. A stage
whose input hash matches its stamp is skipped; one whose inputs changed is redone, and so is
everything that reads it (their inputs then change in turn). Stamps trust the outputs they
recorded: after editing a stage's files by hand, ``force`` it.

Only ``studio`` joins ``model_runtime``, ``evaluation`` and ``studies``; this package is that join.
This module runs the stages in order; each stage is a pair of functions (its inputs, its run) in
``split``, ``generate``, ``screen`` (novelty, fidelity), ``study`` (study, analyze) and
``augment_stage``; the report stage's pair is here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import threading
import time
from collections.abc import Callable

from studio.experiment import report as experiment_report
from studio.experiment.augment_stage import augment_inputs, augment_stage
from studio.experiment.config import (ENGINES, STAGES, Config, ExperimentCancelled, ExperimentError,
                                      check_stage, read_config)
from studio.experiment.generate import generate_inputs, generate_stage
from studio.experiment.records import (Context, digest_files, now, read_stamp, sha_json, stamp_path,
                                       write_json)
from studio.experiment.screen import fidelity_inputs, fidelity_stage, novelty_inputs, novelty_stage
from studio.experiment.split import split_inputs, split_stage
from studio.experiment.study import StudyStopped, analyze_inputs, analyze_stage, study_inputs, study_stage


@dataclasses.dataclass
class StageRun:
    stage: str
    action: str          # ran | skipped | stopped
    seconds: float = 0.0
    note: str = ""


@dataclasses.dataclass
class RunResult:
    out: pathlib.Path
    stages: list[StageRun]
    links: dict[str, str]           # reader -> link, only those invited by this run (shown once)
    study: str | None
    report: pathlib.Path | None

    @property
    def ran(self) -> list[str]:
        return [s.stage for s in self.stages if s.action == "ran"]


def run_experiment(config, *, until: str | None = None, force=(), engine: str = "local", db=None,
                   log: Callable[[str], None] = print, cancel: threading.Event | None = None) -> RunResult:
    """Run (or resume) the experiment of ``config`` (a path or a Config) up to ``until``.

    ``force``: stages to redo even when their inputs are unchanged. Reader links of readers
    invited by this run are in the result and printed through ``log`` once; only their hashes
    are stored.
    """
    cfg = config if isinstance(config, Config) else read_config(config, db=db)
    check_stage(until, "--until")
    force = tuple(force or ())
    for f in force:
        check_stage(f, "--force")
    if engine not in ENGINES:
        raise ExperimentError(f"--engine: {engine!r} (choose local or ray)")
    cfg.out.mkdir(parents=True, exist_ok=True)
    with _run_lock(cfg.out):
        return _run_locked(cfg, until=until, force=force, engine=engine, log=log, cancel=cancel)


@contextlib.contextmanager
def _run_lock(out: pathlib.Path):
    """One run of a folder at a time (two would write the same stamps and images)."""
    import fcntl

    fh = open(out / ".lock", "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExperimentError(f"{out}: another run of this experiment is in progress") from None
        yield
    finally:
        fh.close()  # closing releases the lock


def _run_locked(cfg: Config, *, until, force, engine, log, cancel) -> RunResult:
    write_json(cfg.out / "experiment.json", {
        "name": cfg.name, "config_path": str(cfg.path), "base": str(cfg.base), "db": str(cfg.study_db),
        "config_text": cfg.text, "engine": engine, "updated_at": now()})
    ctx = Context(cfg, engine, log, cancel)
    runs: list[StageRun] = []
    last = STAGES.index(until) if until else len(STAGES) - 1
    for stage in STAGES[:last + 1]:
        ctx.check()
        inputs = _INPUTS[stage](ctx)
        if inputs is None:  # a stage that does not apply (augment without [augment])
            _clear(ctx.out, stage)
            continue
        key = sha_json(inputs)
        old = read_stamp(ctx.out, stage)
        if old and old.get("key") == key and stage not in force:
            ctx.stamps[stage] = old
            runs.append(StageRun(stage, "skipped"))
            log(f"{stage}: unchanged, skipped")
            continue
        t0 = time.perf_counter()
        log(f"{stage}: running")
        _mark_running(ctx.out, stage)
        try:
            files, summary = _RUN[stage](ctx)
        except StudyStopped as stop:
            write_json(ctx.out / stage / "state.json", {"state": "stopped", "reason": str(stop), "at": now()})
            runs.append(StageRun(stage, "stopped", time.perf_counter() - t0, str(stop)))
            raise ExperimentError(str(stop)) from None
        except BaseException as exc:
            write_json(ctx.out / stage / "state.json",
                        {"state": "cancelled" if isinstance(exc, ExperimentCancelled) else "failed",
                         "reason": str(exc)[:500], "at": now()})
            raise
        outputs, file_hashes = digest_files(files, ctx.out)
        stamp = {"stage": stage, "key": key, "inputs": inputs, "outputs": outputs, "files": file_hashes,
                 "summary": summary, "finished_at": now(), "seconds": round(time.perf_counter() - t0, 2)}
        write_json(stamp_path(ctx.out, stage), stamp)
        (ctx.out / stage / "state.json").unlink(missing_ok=True)
        ctx.stamps[stage] = stamp
        runs.append(StageRun(stage, "ran", stamp["seconds"]))
        log(f"{stage}: done in {stamp['seconds']:.1f} s")
    study = ctx.stamps.get("study", {}).get("summary", {}).get("study")
    report = ctx.out / "report.html" if "report" in ctx.stamps else None
    return RunResult(ctx.out, runs, dict(ctx.links), study, report)


def _clear(out: pathlib.Path, stage: str) -> None:
    stamp_path(out, stage).unlink(missing_ok=True)


def _mark_running(out: pathlib.Path, stage: str) -> None:
    write_json(out / stage / "state.json", {"state": "running", "pid": os.getpid(), "at": now()})


def report_inputs(ctx: Context) -> dict:
    ups = {s: ctx.outputs(s) for s in STAGES[:-1] if s in ctx.stamps and (s != "augment" or ctx.cfg.augment)}
    return {"upstream": ups, "config": sha_json(ctx.cfg.text), "format": experiment_report.FORMAT_VERSION}


def report_stage(ctx: Context):
    paths = experiment_report.write_report(ctx.out, ctx.cfg, ctx.stamps)
    return paths, {"files": [p.name for p in paths]}


_INPUTS = {"split": split_inputs, "generate": generate_inputs, "novelty": novelty_inputs,
           "fidelity": fidelity_inputs, "study": study_inputs, "analyze": analyze_inputs,
           "augment": augment_inputs, "report": report_inputs}
_RUN = {"split": split_stage, "generate": generate_stage, "novelty": novelty_stage, "fidelity": fidelity_stage,
        "study": study_stage, "analyze": analyze_stage, "augment": augment_stage, "report": report_stage}

