"""A run seen from outside: each stage's state and the readers' progress (`experiment_status`),
the analysis and report redone with the answers so far (`experiment_report`), the runs in a
folder (`list_runs`)."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable

from studio.experiment.config import STAGES, ExperimentError, parse_config
from studio.experiment.pipeline import RunResult, run_experiment
from studio.experiment.records import read_stamp, study_of
from studio.experiment.study import answers, answers_digest


@dataclasses.dataclass
class StageState:
    stage: str
    state: str            # done | running | failed | stopped | cancelled | interrupted | not run | not configured
    finished_at: str = ""
    seconds: float | None = None
    note: str = ""


@dataclasses.dataclass
class Status:
    out: pathlib.Path
    name: str
    stages: list[StageState]
    study: str | None
    db: str | None
    readers: list[dict]      # per reader: reader, completed, total, finished
    new_answers: bool        # answers since the last analysis: `experiment report` would redo it

    def lines(self) -> list[str]:
        out = [f"experiment {self.name} ({self.out})"]
        for s in self.stages:
            extra = f"  {s.finished_at}" if s.finished_at else ""
            extra += f"  {s.seconds:.1f} s" if s.seconds is not None else ""
            extra += f"  {s.note}" if s.note else ""
            out.append(f"  {s.stage:<9} {s.state}{extra}")
        if self.study:
            out.append(f"study {self.study} in {self.db}")
            for r in self.readers:
                out.append(f"  {r['reader']:<20} {r['completed']}/{r['total']}"
                           + ("  finished" if r["finished"] else ""))
            if not self.readers:
                out.append("  no readers invited")
            if self.new_answers:
                out.append("new answers since the last analysis: run `medisyn experiment report OUT`")
        return out


def _alive(pid) -> bool:
    from studies.storage.writer_process import pid_alive

    return isinstance(pid, int) and pid > 0 and pid_alive(pid)


def _run_info(out: pathlib.Path) -> dict:
    try:
        return json.loads((out / "experiment.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ExperimentError(f"{out}: not an experiment folder (no experiment.json)") from None


def experiment_status(out) -> Status:
    """Each stage's state (from its stamp and state file) and the readers' progress."""
    from studies import monitoring

    out = pathlib.Path(out).resolve()
    info = _run_info(out)
    cfg = None
    try:
        cfg = parse_config(info["config_text"], pathlib.Path(info["config_path"]), base=pathlib.Path(info["base"]),
                           db=info.get("db"))
    except ExperimentError:
        pass
    stages = []
    for stage in STAGES:
        stamp = read_stamp(out, stage)
        try:
            state = json.loads((out / stage / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = None
        if stage == "augment" and cfg is not None and cfg.augment is None:
            stages.append(StageState(stage, "not configured"))
        elif state:
            name = state["state"]
            if name == "running" and not _alive(state.get("pid")):
                name = "interrupted"  # the process that ran it is gone: a re-run redoes the stage
            stages.append(StageState(stage, name, state.get("at", ""), None, state.get("reason", "")[:200]))
        elif stamp:
            stages.append(StageState(stage, "done", stamp.get("finished_at", ""), stamp.get("seconds")))
        else:
            stages.append(StageState(stage, "not run"))
    where = study_of(out)
    readers, new = [], False
    if where:
        db, study = where
        try:
            readers = [{"reader": p.reader, "completed": p.completed, "total": p.total, "finished": p.finished}
                       for p in monitoring.progress(db, study)]
            stamp = read_stamp(out, "analyze")
            if stamp:
                new = answers_digest(answers(db, study)) != stamp["inputs"]["answers"]
        except Exception as exc:  # noqa: BLE001 - a moved database: say so, keep the stage list
            readers = []
            stages.append(StageState("readers", "unavailable", note=f"{type(exc).__name__}: {exc}"))
    return Status(out, info.get("name", out.name), stages, where[1] if where else None,
                  str(where[0]) if where else None, readers, new)


def experiment_report(out, *, log: Callable[[str], None] = print, cancel=None) -> RunResult:
    """Redo the analysis (and the report) with the answers so far; earlier stages must be done."""
    out = pathlib.Path(out).resolve()
    info = _run_info(out)
    if not read_stamp(out, "study"):
        raise ExperimentError(f"{out}: the study stage has not run yet; run `medisyn experiment run` first")
    cfg = parse_config(info["config_text"], pathlib.Path(info["config_path"]), base=pathlib.Path(info["base"]),
                       db=info.get("db"))
    cfg = dataclasses.replace(cfg, out=out)
    return run_experiment(cfg, engine=info.get("engine", "local"), log=log, cancel=cancel)


def list_runs(root) -> list[pathlib.Path]:
    """Experiment folders directly below ``root`` (those with an experiment.json)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "experiment.json").is_file())

