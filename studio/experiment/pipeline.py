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

Only ``studio`` joins ``model_runtime``, ``evaluation`` and ``studies``; this module is that join.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import threading
import time
import tomllib
from collections.abc import Callable

STAGES = ("split", "generate", "novelty", "fidelity", "study", "analyze", "augment", "report")
ENGINES = ("local", "ray")
NOVELTY_ALPHA = 0.05  # target rate of held-out real images flagged (evaluation.novelty.ALPHA)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
REAL_COLUMNS = ("path", "modality", "prompt", "group", "licence", "origin", "label")


class ExperimentError(Exception):
    """A bad config or a stage that cannot go on; the message is one line naming the cause."""


class ExperimentCancelled(ExperimentError):
    pass


# --------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class Generator:
    name: str
    model: str
    lora: tuple[str, ...] = ()
    prompts: str = "real"           # "real" or a prompts CSV (absolute after loading)
    images_per_prompt: int = 1
    steps: int | None = None        # None: the model's own defaults (medisyn.json), else 25
    guidance: float | None = None   # None: as steps, else 7.0
    sampler: str | None = None
    seed: int = 0
    size: int | None = None
    batch_size: int = 1
    threads: int = 1
    licence: str = ""


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    path: pathlib.Path              # the config file
    base: pathlib.Path              # relative paths in the config are relative to this folder
    out: pathlib.Path
    seed: int
    real_manifest: pathlib.Path
    holdout: float | pathlib.Path
    real_licence: str
    real_source: str
    generators: tuple[Generator, ...]
    novelty_gate: bool
    novelty_measures: tuple[str, ...]
    novelty_alpha: float
    novelty_size: int
    fidelity_features: str
    fidelity_weights: pathlib.Path | None
    study_db: pathlib.Path
    study_name: str
    tasks: tuple[str, ...]
    readers: tuple[str, ...] | pathlib.Path
    study_size: int
    training_cases: int
    repeat_fraction: float
    acknowledge_leak: bool
    base_url: str
    augment: dict | None
    text: str                       # the config file as read (provenance)


def _fail(key: str, problem: str):
    raise ExperimentError(f"config key '{key}': {problem}")


def _take(table: dict, prefix: str, spec: dict) -> dict:
    """Validate `table` against spec {key: (kind, default)}; unknown keys are an error."""
    for key in table:
        if key not in spec:
            where = f"{prefix}.{key}" if prefix else key
            _fail(where, f"unknown key (allowed: {', '.join(sorted(spec))})")
    out = {}
    for key, (kind, default) in spec.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in table:
            if default is _REQUIRED:
                _fail(where, "missing (required)")
            out[key] = default
            continue
        out[key] = _check(where, table[key], kind)
    return out


_REQUIRED = object()


def _check(where: str, value, kind):
    if callable(kind):
        return kind(where, value)
    raise AssertionError(kind)


def _str(where, v):
    if not isinstance(v, str) or not v.strip():
        _fail(where, f"must be a non-empty string, got {v!r}")
    return v.strip()


def _opt_str(where, v):
    if not isinstance(v, str):
        _fail(where, f"must be a string, got {v!r}")
    return v.strip()


def _name(where, v):
    v = _str(where, v)
    if not _NAME.fullmatch(v):
        _fail(where, f"{v!r}: use letters, digits, '-', '_' or '.' (at most 64, starting with a letter or digit)")
    return v


def _bool(where, v):
    if not isinstance(v, bool):
        _fail(where, f"must be true or false, got {v!r}")
    return v


def _int(lo, hi=None):
    def check(where, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            _fail(where, f"must be a whole number {rng}, got {v!r}")
        return v
    return check


def _float(lo, hi, *, open_lo=False, open_hi=False):
    def check(where, v):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            _fail(where, f"must be a number, got {v!r}")
        if v < lo or v > hi or (open_lo and v == lo) or (open_hi and v == hi):
            _fail(where, f"must be between {lo} and {hi}{' (exclusive)' if open_lo or open_hi else ''}, got {v!r}")
        return float(v)
    return check


def _str_list(where, v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
        _fail(where, f"must be a list of non-empty strings, got {v!r}")
    return tuple(x.strip() for x in v)


def _int_list(where, v):
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1
                                                     for x in v):
        _fail(where, f"must be a non-empty list of whole numbers >= 1, got {v!r}")
    return tuple(v)


def _table(where, v):
    if not isinstance(v, dict):
        _fail(where, f"must be a table ([{where}]), got {type(v).__name__}")
    return v


def _file(base: pathlib.Path, where: str, value: str) -> pathlib.Path:
    p = (base / pathlib.Path(value).expanduser()).resolve()
    if not p.is_file():
        _fail(where, f"file not found: {value}")
    return p


def read_config(path, *, db=None) -> Config:
    """Parse and validate an experiment config (TOML). ``db`` overrides ``study.db`` (the
    studio passes its own database so readers read there)."""
    path = pathlib.Path(path).expanduser().resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExperimentError(f"cannot read the config {path}: {exc.strerror or exc}") from None
    return parse_config(text, path, db=db)


def parse_config(text: str, path: pathlib.Path, *, base: pathlib.Path | None = None, db=None) -> Config:
    path = pathlib.Path(path)
    base = pathlib.Path(base) if base is not None else path.parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{path.name}: not valid TOML: {exc}") from None
    from evaluation import descriptors
    from studies.design import TASKS

    top = _take(data, "", {
        "name": (_name, _REQUIRED), "out": (_str, None), "seed": (_int(0), 0),
        "real": (_table, _REQUIRED), "generator": (_gen_list, _REQUIRED), "novelty": (_table, {}),
        "fidelity": (_table, {}), "study": (_table, _REQUIRED), "augment": (_table, None),
    })
    real = _take(top["real"], "real", {
        "manifest": (_str, _REQUIRED), "holdout": (_holdout, 0.2), "licence": (_opt_str, ""),
        "source": (_opt_str, ""),
    })
    manifest = _file(base, "real.manifest", real["manifest"])
    holdout = real["holdout"]
    if isinstance(holdout, str):
        holdout = _file(base, "real.holdout", holdout)

    gens, seen = [], set()
    for i, g in enumerate(top["generator"]):
        p = f"generator[{i}]"
        d = _take(_table(p, g), p, {
            "name": (_name, _REQUIRED), "model": (_str, _REQUIRED), "lora": (_str_list, ()),
            "prompts": (_str, "real"), "images_per_prompt": (_int(1, 1000), 1), "steps": (_int(1, 1000), None),
            "guidance": (_float(0.0, 100.0), None), "sampler": (_str, None), "seed": (_int(0), 0),
            "size": (_int(8, 4096), None), "batch_size": (_int(1, 4096), 1), "threads": (_int(1, 512), 1),
            "licence": (_opt_str, ""),
        })
        if d["name"] in seen:
            _fail(f"{p}.name", f"{d['name']!r} is used by another generator")
        seen.add(d["name"])
        if d["prompts"] != "real":
            d["prompts"] = str(_file(base, f"{p}.prompts", d["prompts"]))
        model = d["model"]
        local = (base / pathlib.Path(model).expanduser())
        if ("/" in model or model.startswith(".")) and local.exists():
            d["model"] = str(local.resolve())  # a folder next to the config, as the CLI would read it
        d["lora"] = tuple(_lora_spec(base, f"{p}.lora", s) for s in d["lora"])
        gens.append(Generator(**d))

    nov = _take(top["novelty"], "novelty", {
        "gate": (_bool, True), "measures": (_str_list, tuple(descriptors_default())),
        "alpha": (_float(0.0, 1.0, open_lo=True, open_hi=True), NOVELTY_ALPHA), "size": (_int(16, 1024), 128),
    })
    bad = [m for m in nov["measures"] if m not in descriptors.MEASURES or m == "features"]
    if bad:
        _fail("novelty.measures", f"unknown measure {bad[0]!r} (choose from "
              f"{', '.join(m for m in descriptors.MEASURES if m != 'features')})")
    fid = _take(top["fidelity"], "fidelity", {"features": (_str, "pixels"), "weights": (_str, None)})
    weights = _file(base, "fidelity.weights", fid["weights"]) if fid["weights"] else None
    if fid["features"] == "inception" and weights is None:
        _fail("fidelity.weights", "the 'inception' features need a local weights file (nothing is downloaded)")

    st = _take(top["study"], "study", {
        "db": (_str, "study.db"), "name": (_name, None), "tasks": (_str_list, ("turing",)),
        "readers": (_readers, ()), "size": (_int(32, 4096), 256), "training_cases": (_int(0), 0),
        "repeat_fraction": (_float(0.0, 1.0), 0.0), "acknowledge_leak": (_bool, False),
        "base_url": (_str, None),
    })
    for t in st["tasks"]:
        if t not in TASKS or t == "pair":
            _fail("study.tasks", f"unknown task {t!r} (choose from "
                  f"{', '.join(k for k in TASKS if k != 'pair')})")
    readers = st["readers"]
    if isinstance(readers, str):
        readers = _file(base, "study.readers", readers)
    from studies import readers as readers_mod

    aug = None
    if top["augment"] is not None:
        aug = _take(top["augment"], "augment", {
            "label": (_str, "modality"), "n_real": (_int(1), _REQUIRED), "amounts": (_int_list, _REQUIRED),
            "repeats": (_int(1, 1000), 3), "max_epochs": (_int(1, 10_000), 20), "patience": (_int(1, 10_000), 4),
            "size": (_int(8, 1024), 32), "batch_size": (_int(1, 4096), 16), "seed": (_int(0), 0),
            "threads": (_int(1, 512), 1),
        })
        if aug["label"] not in ("modality",) and any(g.prompts != "real" for g in gens):
            _fail("augment.label", f"{aug['label']!r}: synthetic images get a label other than 'modality' "
                  "only from the real image they were prompted from (prompts = \"real\")")

    out = (base / (top["out"] or f"runs/{top['name']}")).resolve()
    db_path = pathlib.Path(db).resolve() if db is not None else (base / st["db"]).resolve()
    return Config(
        name=top["name"], path=path, base=base, out=out, seed=top["seed"], real_manifest=manifest,
        holdout=holdout, real_licence=real["licence"], real_source=real["source"], generators=tuple(gens),
        novelty_gate=nov["gate"], novelty_measures=tuple(nov["measures"]),
        novelty_alpha=nov["alpha"], novelty_size=nov["size"],
        fidelity_features=fid["features"], fidelity_weights=weights, study_db=db_path,
        study_name=st["name"] or top["name"], tasks=tuple(st["tasks"]), readers=readers,
        study_size=st["size"], training_cases=st["training_cases"], repeat_fraction=st["repeat_fraction"],
        acknowledge_leak=st["acknowledge_leak"], base_url=st["base_url"] or readers_mod.DEFAULT_BASE_URL,
        augment=aug, text=text,
    )


def descriptors_default():
    from evaluation.novelty import DEFAULT_MEASURES

    return DEFAULT_MEASURES


def _gen_list(where, v):
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list) or not v:
        _fail(where, "give at least one [[generator]] table")
    return v


def _holdout(where, v):
    if isinstance(v, str):
        return _str(where, v)
    return _float(0.0, 1.0, open_lo=True, open_hi=True)(where, v)


def _readers(where, v):
    if isinstance(v, str):
        return _str(where, v)
    names = _str_list(where, v)
    if len(set(names)) != len(names):
        _fail(where, "reader names must be unique")
    return names


def _lora_spec(base: pathlib.Path, where: str, spec: str) -> str:
    """PATH[:SCALE] with PATH made absolute (relative to the config)."""
    path, _, scale = spec.rpartition(":") if re.search(r":[0-9.]+$", spec) else (spec, "", "")
    p = (base / pathlib.Path(path).expanduser()).resolve()
    if not p.exists():
        _fail(where, f"LoRA not found: {path}")
    return f"{p}:{scale}" if scale else str(p)


# --------------------------------------------------------------------------- stamps

def _sha_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _digest_files(paths, root: pathlib.Path) -> tuple[str, dict]:
    files = {}
    for p in sorted(paths):
        p = pathlib.Path(p)
        files[os.path.relpath(p, root)] = _sha_file(p)
    return _sha_json(files), files


def stamp_path(out, stage: str) -> pathlib.Path:
    return pathlib.Path(out) / stage / "stamp.json"


def read_stamp(out, stage: str) -> dict | None:
    try:
        return json.loads(stamp_path(out, stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# --------------------------------------------------------------------------- run

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


@dataclasses.dataclass
class _Ctx:
    cfg: Config
    engine: str
    log: Callable[[str], None]
    cancel: threading.Event | None
    stamps: dict = dataclasses.field(default_factory=dict)
    links: dict = dataclasses.field(default_factory=dict)

    @property
    def out(self) -> pathlib.Path:
        return self.cfg.out

    def dir(self, stage: str) -> pathlib.Path:
        d = self.out / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise ExperimentCancelled("cancelled")

    def outputs(self, stage: str) -> str:
        return self.stamps[stage]["outputs"]

    def summary(self, stage: str) -> dict:
        return self.stamps[stage].get("summary", {})


def _check_stage(name: str | None, what: str) -> None:
    if name is not None and name not in STAGES:
        raise ExperimentError(f"{what}: unknown stage {name!r} (stages: {', '.join(STAGES)})")


def run_experiment(config, *, until: str | None = None, force=(), engine: str = "local", db=None,
                   log: Callable[[str], None] = print, cancel: threading.Event | None = None) -> RunResult:
    """Run (or resume) the experiment of ``config`` (a path or a Config) up to ``until``.

    ``force``: stages to redo even when their inputs are unchanged. Reader links of readers
    invited by this run are in the result and printed through ``log`` once; only their hashes
    are stored.
    """
    cfg = config if isinstance(config, Config) else read_config(config, db=db)
    _check_stage(until, "--until")
    force = tuple(force or ())
    for f in force:
        _check_stage(f, "--force")
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
    _write_json(cfg.out / "experiment.json", {
        "name": cfg.name, "config_path": str(cfg.path), "base": str(cfg.base), "db": str(cfg.study_db),
        "config_text": cfg.text, "engine": engine, "updated_at": _now()})
    ctx = _Ctx(cfg, engine, log, cancel)
    runs: list[StageRun] = []
    last = STAGES.index(until) if until else len(STAGES) - 1
    for stage in STAGES[:last + 1]:
        ctx.check()
        inputs = _INPUTS[stage](ctx)
        if inputs is None:  # a stage that does not apply (augment without [augment])
            _clear(ctx.out, stage)
            continue
        key = _sha_json(inputs)
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
            _write_json(ctx.out / stage / "state.json", {"state": "stopped", "reason": str(stop), "at": _now()})
            runs.append(StageRun(stage, "stopped", time.perf_counter() - t0, str(stop)))
            raise ExperimentError(str(stop)) from None
        except BaseException as exc:
            _write_json(ctx.out / stage / "state.json",
                        {"state": "cancelled" if isinstance(exc, ExperimentCancelled) else "failed",
                         "reason": str(exc)[:500], "at": _now()})
            raise
        outputs, file_hashes = _digest_files(files, ctx.out)
        stamp = {"stage": stage, "key": key, "inputs": inputs, "outputs": outputs, "files": file_hashes,
                 "summary": summary, "finished_at": _now(), "seconds": round(time.perf_counter() - t0, 2)}
        _write_json(stamp_path(ctx.out, stage), stamp)
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
    _write_json(out / stage / "state.json", {"state": "running", "pid": os.getpid(), "at": _now()})


class StudyStopped(Exception):
    pass


# --------------------------------------------------------------------------- split

def read_real_manifest(path: pathlib.Path) -> list[dict]:
    """Rows of the real manifest: path (relative to the manifest), modality, prompt; optional
    group (default: the path), licence, origin, label. Unknown columns are an error."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip().lower() for c in reader.fieldnames or ()]
        for c in cols:
            if c not in REAL_COLUMNS:
                raise ExperimentError(f"real.manifest {path.name}: unknown column {c!r} "
                                      f"(allowed: {', '.join(REAL_COLUMNS)})")
        for c in ("path", "modality", "prompt"):
            if c not in cols:
                raise ExperimentError(f"real.manifest {path.name}: missing column {c!r}")
        rows = []
        for line, rec in enumerate(reader, start=2):
            rec = {k.strip().lower(): (v or "").strip() for k, v in rec.items() if k}
            p = (path.parent / rec["path"]).resolve()
            if not rec["path"] or not p.is_file():
                raise ExperimentError(f"real.manifest {path.name} line {line}: image not found: {rec['path']!r}")
            if not rec["modality"]:
                raise ExperimentError(f"real.manifest {path.name} line {line}: empty modality")
            rows.append({"path": str(p), "name": rec["path"], "modality": rec["modality"],
                         "prompt": rec.get("prompt", ""), "group": rec.get("group") or rec["path"],
                         "licence": rec.get("licence", ""), "origin": rec.get("origin", ""),
                         "label": rec.get("label", "")})
    if not rows:
        raise ExperimentError(f"real.manifest {path.name} lists no images")
    return rows


def split_groups(rows: list[dict], holdout: float, seed: int) -> set[str]:
    """Held-out groups: per modality, round(holdout x groups) of its groups (at least one group
    stays in the reference part), chosen with ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    held = set()
    for modality in sorted({r["modality"] for r in rows}):
        groups = sorted({r["group"] for r in rows if r["modality"] == modality})
        n = min(len(groups) - 1, int(round(holdout * len(groups))))
        if len(groups) >= 2:
            n = max(n, 1)
        held.update(groups[i] for i in rng.permutation(len(groups))[:n])
    return held


def _inputs_split(ctx: _Ctx) -> dict:
    cfg = ctx.cfg
    rows = read_real_manifest(cfg.real_manifest)
    images = _sha_json({r["name"]: _sha_file(pathlib.Path(r["path"])) for r in rows})
    holdout = cfg.holdout
    if isinstance(holdout, pathlib.Path):
        holdout = {"manifest": _sha_file(holdout), "images": _sha_json(
            {r["name"]: _sha_file(pathlib.Path(r["path"])) for r in read_real_manifest(holdout)})}
    return {"manifest": _sha_file(cfg.real_manifest), "images": images, "holdout": holdout, "seed": cfg.seed,
            "licence": cfg.real_licence, "source": cfg.real_source}


_SPLIT_FIELDS = ("path", "name", "modality", "prompt", "group", "licence", "origin", "label")


def _write_rows(path: pathlib.Path, rows: list[dict], fields) -> pathlib.Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _read_rows(path: pathlib.Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _run_split(ctx: _Ctx):
    cfg = ctx.cfg
    rows = read_real_manifest(cfg.real_manifest)
    if isinstance(cfg.holdout, pathlib.Path):
        held_rows = read_real_manifest(cfg.holdout)
        overlap = {r["group"] for r in held_rows} & {r["group"] for r in rows}
        if overlap:
            raise ExperimentError(f"real.holdout: group {sorted(overlap)[0]!r} is in both manifests; a group "
                                  "must be wholly held out")
        reference = rows
        rule = f"held-out manifest {cfg.holdout.name}"
    else:
        held = split_groups(rows, cfg.holdout, cfg.seed)
        reference = [r for r in rows if r["group"] not in held]
        held_rows = [r for r in rows if r["group"] in held]
        rule = (f"{cfg.holdout:g} of each modality's groups held out (at least one group per modality "
                f"with two or more groups; seed {cfg.seed})")
    if len(held_rows) < 2:
        raise ExperimentError(f"real.holdout: the held-out part has {len(held_rows)} image(s); at least 2 are "
                              "needed to calibrate the novelty rule (give more groups or a larger share)")
    d = ctx.dir("split")
    files = [_write_rows(d / "reference.csv", reference, _SPLIT_FIELDS),
             _write_rows(d / "holdout.csv", held_rows, _SPLIT_FIELDS)]

    def counts(rs):
        out = {}
        for r in rs:
            out[r["modality"]] = out.get(r["modality"], 0) + 1
        return dict(sorted(out.items()))

    summary = {"rule": rule, "n_reference": len(reference), "n_holdout": len(held_rows),
               "reference_per_modality": counts(reference), "holdout_per_modality": counts(held_rows),
               "groups_reference": len({r["group"] for r in reference}),
               "groups_holdout": len({r["group"] for r in held_rows}),
               "licences": sorted({r["licence"] or cfg.real_licence or "not reported" for r in rows}),
               "origins": sorted({r["origin"] for r in rows if r["origin"]})[:50],
               "source": cfg.real_source}
    return files, summary


def reference_rows(out) -> list[dict]:
    return _read_rows(pathlib.Path(out) / "split" / "reference.csv")


def holdout_rows(out) -> list[dict]:
    return _read_rows(pathlib.Path(out) / "split" / "holdout.csv")


# --------------------------------------------------------------------------- generate

def _gen_params(g: Generator) -> dict:
    d = dataclasses.asdict(g)
    if g.prompts != "real":
        d["prompts"] = {"file": g.prompts, "sha256": _sha_file(pathlib.Path(g.prompts))}
    d["lora"] = [{"spec": s, "sha256": _lora_hash(s)} for s in g.lora]
    return d


def _lora_hash(spec: str) -> str:
    path = re.sub(r":[0-9.]+$", "", spec)
    p = pathlib.Path(path)
    if p.is_file():
        return _sha_file(p)
    return _digest_files([f for f in p.rglob("*") if f.is_file()], p)[0] if p.is_dir() else ""


def _inputs_generate(ctx: _Ctx) -> dict:
    # The engine is not an input: local and Ray write identical bytes (model_runtime.batch_job).
    return {"split": ctx.outputs("split"), "generators": [_gen_params(g) for g in ctx.cfg.generators]}


def _model_defaults(model: str) -> tuple[int, float]:
    from model_runtime import loading
    from studio.demo.embedded_model import DEFAULTS_FILE, read_defaults

    try:
        path, _ = loading.resolve(model)
    except Exception:  # noqa: BLE001 - the job itself reports an unknown model with its own message
        return 25, 7.0
    if (pathlib.Path(path) / DEFAULTS_FILE).is_file():
        d = read_defaults(path)
        return d.steps, d.guidance_scale
    return 25, 7.0


def _prompts_for(g: Generator, reference: list[dict], folder: pathlib.Path) -> pathlib.Path:
    if g.prompts != "real":
        return pathlib.Path(g.prompts)
    path = folder / "prompts.csv"
    rows = [{"prompt": r["prompt"], "modality": r["modality"], "n": g.images_per_prompt,
             "case_id": f"{g.name}-r{i:05d}", "group": r["group"]} for i, r in enumerate(reference)]
    if any(not r["prompt"] for r in rows):
        raise ExperimentError(f"generator {g.name!r}: prompts = \"real\" needs a caption (prompt) for every "
                              "reference image in real.manifest")
    return _write_rows(path, rows, ("prompt", "modality", "n", "case_id", "group"))


def _run_generate(ctx: _Ctx):
    from model_runtime.batch_job import PromptsFileError, run_generate_job
    from model_runtime.devices import DeviceUnavailableError
    from model_runtime.generation import NonFiniteOutputError

    reference = reference_rows(ctx.out)
    files, per_gen = [], {}
    keep = {g.name for g in ctx.cfg.generators}
    root = ctx.dir("generate")
    for old in root.iterdir():  # a generator removed from the config leaves nothing behind
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old)
    for g in ctx.cfg.generators:
        ctx.check()
        folder = root / g.name
        folder.mkdir(parents=True, exist_ok=True)
        params = _gen_params(g)
        sub_key = _sha_json({"params": params, "reference": ctx.outputs("split") if g.prompts == "real" else ""})
        sub = folder / "stamp.json"
        try:
            done = json.loads(sub.read_text(encoding="utf-8")) if sub.is_file() else None
        except ValueError:
            done = None
        if done and done.get("key") == sub_key and (folder / "manifest.csv").is_file():
            ctx.log(f"generate {g.name}: unchanged, skipped")
        else:
            prompts = _prompts_for(g, reference, folder)
            steps, guidance = _model_defaults(g.model)

            def on_image(task, path):
                if ctx.cancel is not None and ctx.cancel.is_set():
                    raise ExperimentCancelled("cancelled")

            try:
                res = run_generate_job(
                    g.model, folder, prompts_csv=prompts, n=g.images_per_prompt, seed=g.seed,
                    steps=g.steps or steps, guidance_scale=g.guidance if g.guidance is not None else guidance,
                    scheduler=g.sampler, width=g.size, height=g.size, batch_size=g.batch_size,
                    engine=ctx.engine, threads=g.threads, options={"loras": g.lora} if g.lora else None,
                    progress=False, warn=lambda m, n=g.name: ctx.log(f"generate {n}: {m}"), on_image=on_image)
            except ExperimentCancelled:
                raise
            except (PromptsFileError, ValueError, LookupError, OSError, DeviceUnavailableError,
                    NonFiniteOutputError) as exc:
                text = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # KeyError quotes its text
                raise ExperimentError(f"generator {g.name!r}: {text}") from None
            ctx.log(f"generate {g.name}: {res.generated} generated, {res.skipped} already there")
            sub.write_text(json.dumps({"key": sub_key}) + "\n", encoding="utf-8")
        manifest = _read_rows(folder / "manifest.csv")
        details = _read_rows(folder / "generation.csv")
        files += [folder / "manifest.csv", folder / "generation.csv"] + [folder / r["path"] for r in manifest]
        first = details[0] if details else {}
        per_gen[g.name] = {
            "n": len(manifest), "model": g.model, "model_label": first.get("model", ""),
            "weights_sha256": first.get("weights_sha256", ""), "loras": first.get("loras", ""),
            "lora_sha256": first.get("lora_sha256", ""), "scheduler": first.get("scheduler", ""),
            "steps": first.get("steps", ""), "guidance_scale": first.get("guidance_scale", ""),
            "size": f"{first.get('width', '')}x{first.get('height', '')}", "dtype": first.get("dtype", ""),
            "seeds": _seed_range([int(r["seed"]) for r in details if r.get("seed", "").lstrip("-").isdigit()]),
            "prompts": "the reference real images' own captions, one row per real image (paired by group)"
                       if g.prompts == "real" else f"prompts file {pathlib.Path(g.prompts).name}",
            "images_per_prompt": g.images_per_prompt, "licence": _licence(g),
            "truncated": sum(r.get("prompt_truncated") == "true" for r in details),
        }
    return files, {"generators": per_gen}


def _seed_range(seeds: list[int]) -> str:
    if not seeds:
        return ""
    s = sorted(seeds)
    return (f"one per image: generator seed + 10000 × prompt row + image index ({len(s)} images, "
            f"{s[0]} … {s[-1]})") if len(s) > 1 else str(s[0])


def _licence(g: Generator) -> str:
    if g.licence:
        return g.licence
    try:
        from model_runtime import registry

        entry = registry.find(g.model)
    except Exception:  # noqa: BLE001 - a folder or Hub id outside the registry
        entry = None
    if entry is not None and entry.licence:
        return entry.licence + ("" if entry.licence_verified else " (as reported; not verified)")
    return "not reported"


def synthetic_rows(out, generators) -> list[dict]:
    """Every generated image: path (absolute), name, modality, prompt, generator, case_id, group."""
    rows = []
    for g in generators:
        folder = pathlib.Path(out) / "generate" / g.name
        for r in _read_rows(folder / "manifest.csv"):
            rows.append({"path": str(folder / r["path"]), "name": f"{g.name}/{r['path']}",
                         "modality": r["modality"], "prompt": r["prompt"], "generator": g.name,
                         "case_id": r.get("case_id", ""), "group": r.get("group", "")})
    return rows


# --------------------------------------------------------------------------- novelty

def _inputs_novelty(ctx: _Ctx) -> dict:
    c = ctx.cfg
    return {"split": ctx.outputs("split"), "generate": ctx.outputs("generate"), "gate": c.novelty_gate,
            "measures": list(c.novelty_measures), "alpha": c.novelty_alpha, "size": c.novelty_size,
            "seed": c.seed}


def _refs(rows: list[dict]):
    from evaluation.images import ImageRef

    # the group travels with each image so the novelty check never compares an image with its own
    # patient / volume and leaves whole held-out groups out of their own calibration
    return [ImageRef(pathlib.Path(r["path"]), r["name"], r.get("modality", ""), r.get("prompt", ""),
                     r.get("generator", ""), patient_group=r.get("group", "") or "") for r in rows]


def calibrated_novelty(synthetic: list[dict], reference: list[dict], holdout: list[dict], out_dir: pathlib.Path,
                       *, measures, alpha: float, size: int, seed: int, cancel=None) -> dict:
    """Flag synthetic images that are near-copies of reference images: one call of
    ``evaluation.novelty.run_novelty`` with the held-out part as its held-out real images.

    That function calibrates each measure's threshold on the held-out images (split-conformal, so a
    real image unrelated to the reference part is flagged with probability at most ``alpha``),
    measures the held-out flag rate leaving each held-out group out of its own calibration (Wilson
    95 % CI), and asks whether the synthetic images are closer to the reference than the held-out
    ones are (one-sided Mann-Whitney U per modality). Returns the rows and a JSON-able summary.
    """
    from evaluation.novelty import format_rate, memorisation_answer, run_novelty

    cache = out_dir / ".cache"
    measures = tuple(measures)
    try:
        res = run_novelty(_refs(synthetic), _refs(reference), out_dir, holdout=_refs(holdout), measures=measures,
                          alpha=alpha, size=size, cache_dir=cache, seed=seed, progress=False, cancel=cancel)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    hold_rows = res.holdout.get("rows", [])
    n_groups = res.holdout.get("n_groups")
    # run_novelty words its calibration set for the CLI; here it is the split's held-out part
    where = f"{res.holdout.get('n', len(hold_rows))} held-out real images of the split ({n_groups} groups)"
    rules = {m: r.replace(f"held-out real images ({len(holdout)} given with --holdout)", "held-out real images "
                          "of the split") for m, r in res.threshold_rules.items()}
    first = [r for r in res.memorisation if r["measure"] == measures[0]]
    return {
        "rows": res.rows, "thresholds": res.thresholds, "threshold_rules": rules,
        "min_votes": res.min_votes, "measures": list(measures), "alpha": alpha,
        "flag_rule": f"flagged when at least {res.min_votes} of {len(measures)} measures pass their threshold",
        "holdout_n": res.holdout.get("n", len(hold_rows)), "holdout_groups": n_groups,
        "holdout_description": where,
        "holdout_flagged": sorted(r["holdout"] for r in hold_rows if r["flagged"]),
        "holdout_rate": res.holdout_rate, "holdout_rate_text": format_rate(res.holdout_rate),
        "synthetic_rate": res.synthetic_rate, "synthetic_rate_text": format_rate(res.synthetic_rate),
        "memorisation": res.memorisation, "memorisation_answer": memorisation_answer(first),
        "warnings": list(res.warnings),
        "duplicates": {"exact": len(res.duplicates.get("exact", [])), "near": len(res.duplicates.get("near", []))},
        "holdout_values": {m: [float(v) for v in res.calibration[m]] for m in measures},
    }


def _run_novelty(ctx: _Ctx):
    c = ctx.cfg
    d = ctx.dir("novelty")
    syn = synthetic_rows(ctx.out, c.generators)
    from evaluation.errors import EvaluationCancelled, EvaluationError

    try:
        res = calibrated_novelty(syn, reference_rows(ctx.out), holdout_rows(ctx.out), d,
                                 measures=c.novelty_measures, alpha=c.novelty_alpha,
                                 size=c.novelty_size, seed=c.seed, cancel=ctx.cancel)
    except EvaluationCancelled:
        raise ExperimentCancelled("cancelled") from None
    except EvaluationError as exc:
        raise ExperimentError(f"novelty: {exc}") from None
    by_name = {r["name"]: r for r in syn}
    flagged = {r["synthetic"] for r in res["rows"] if r["flagged"]}
    kept = [r for r in syn if not (c.novelty_gate and r["name"] in flagged)]
    excluded = [dict(by_name[r["synthetic"]], nearest_reference=r["nearest_reference"], votes=r["votes"],
                     flagged_by=r["flagged_by"]) for r in res["rows"] if r["flagged"]]
    fields = ("path", "name", "modality", "prompt", "generator", "case_id", "group")
    files = [_write_rows(d / "kept.csv", kept, fields),
             _write_rows(d / "flagged.csv", excluded, (*fields, "nearest_reference", "votes", "flagged_by"))]
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in res["rows"]]
    first = res["measures"][0]
    from evaluation import descriptors as D

    sign = -1 if D.MEASURES[first].higher_is_closer else 1
    closest = sorted(rows, key=lambda r: (-r["votes"], sign * r[first]))[:12]
    ref_paths = {r["name"]: r["path"] for r in reference_rows(ctx.out)}
    for r in closest:
        r["synthetic_path"] = by_name[r["synthetic"]]["path"]
        r["reference_path"] = ref_paths.get(r["nearest_reference"], "")
    summary = {k: v for k, v in res.items() if k != "rows"}
    summary.update({"n_synthetic": len(syn), "n_flagged": len(flagged), "n_kept": len(kept), "gate": c.novelty_gate,
                    "excluded": [{"name": e["name"], "nearest_reference": e["nearest_reference"],
                                  "flagged_by": e["flagged_by"]} for e in excluded] if c.novelty_gate else [],
                    "flagged": sorted(flagged), "closest": closest,
                    "synthetic_values": {m: [float(r[m]) for r in rows] for m in res["measures"]}})
    _write_json(d / "novelty.json", summary)
    files += [d / "novelty.json"] + [p for p in (d / "novelty.csv", d / "holdout.csv", d / "summary.json")
                                     if p.is_file()]
    if not kept:
        raise ExperimentError("novelty: every synthetic image was flagged as a near-copy; nothing is left for "
                              "the study (see OUT/novelty/flagged.csv)")
    ctx.log(f"novelty: {len(flagged)} of {len(syn)} synthetic images flagged; held-out real images flagged "
            f"{res['holdout_rate_text']}"
            + (f"; {len(syn) - len(kept)} kept out of the study" if c.novelty_gate else ""))
    ctx.log("novelty: synthetic images closer to the reference than held-out real images? "
            + res["memorisation_answer"])
    for w in res["warnings"]:
        ctx.log(f"novelty: warning: {w}")
    return files, {k: summary[k] for k in ("n_synthetic", "n_flagged", "n_kept", "gate", "holdout_rate",
                                           "memorisation_answer", "warnings")}


def novelty_summary(out) -> dict:
    return json.loads((pathlib.Path(out) / "novelty" / "novelty.json").read_text(encoding="utf-8"))


def kept_rows(out) -> list[dict]:
    return _read_rows(pathlib.Path(out) / "novelty" / "kept.csv")


# --------------------------------------------------------------------------- fidelity

def _inputs_fidelity(ctx: _Ctx) -> dict:
    c = ctx.cfg
    return {"split": ctx.outputs("split"), "novelty": ctx.outputs("novelty"), "features": c.fidelity_features,
            "weights": _sha_file(c.fidelity_weights) if c.fidelity_weights else None, "seed": c.seed}


def _run_fidelity(ctx: _Ctx):
    from evaluation.errors import EvaluationCancelled, EvaluationError
    from evaluation.fidelity import run_fidelity

    c = ctx.cfg
    kept = kept_rows(ctx.out)
    reference = _refs(reference_rows(ctx.out))
    results = {}
    for g in c.generators:
        ctx.check()
        syn = _refs([r for r in kept if r["generator"] == g.name])
        if not syn:
            results[g.name] = {"error": "no synthetic images kept"}
            continue
        try:
            results[g.name] = run_fidelity(syn, reference, features=c.fidelity_features,
                                           weights=str(c.fidelity_weights) if c.fidelity_weights else None,
                                           by="modality", seed=c.seed, progress=False, cancel=ctx.cancel,
                                           kid_subset_size=min(1000, len(syn), len(reference)))
        except EvaluationCancelled:
            raise ExperimentCancelled("cancelled") from None
        except EvaluationError as exc:
            raise ExperimentError(f"fidelity ({g.name}): {exc}") from None
    d = ctx.dir("fidelity")
    path = d / "fidelity.json"
    _write_json(path, results)
    return [path], {"generators": sorted(results)}


# --------------------------------------------------------------------------- study

def _study_design(ctx: _Ctx) -> dict:
    c = ctx.cfg
    return {"split": ctx.outputs("split"), "novelty": ctx.outputs("novelty"), "tasks": list(c.tasks),
            "size": c.study_size, "training_cases": c.training_cases, "repeat_fraction": c.repeat_fraction,
            "db": str(c.study_db), "name": c.study_name}


def _inputs_study(ctx: _Ctx) -> dict:
    c = ctx.cfg
    readers = c.readers
    readers = {"csv": _sha_file(readers)} if isinstance(readers, pathlib.Path) else list(readers)
    return {"design": _study_design(ctx), "readers": readers, "acknowledge_leak": c.acknowledge_leak,
            "base_url": c.base_url}


def study_name_for(ctx: _Ctx) -> str:
    # A changed design is a new study (readers' answers to the old one stay where they are).
    return f"{ctx.cfg.study_name}-{_sha_json(_study_design(ctx))[:8]}"


def _link_or_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _run_study(ctx: _Ctx):
    from studies import lifecycle
    from studies import readers as readers_mod
    from studies.audit import is_flagged
    from studies.design import StudyOptions
    from studies.errors import StudyError
    from studies.ingest import audit_study, create_study, list_studies

    c = ctx.cfg
    d = ctx.dir("study")
    name = study_name_for(ctx)
    images = d / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    rows = []
    for i, r in enumerate(reference_rows(ctx.out)):
        src = pathlib.Path(r["path"])
        dst = images / f"real_{i:05d}{''.join(src.suffixes[-2:]) if src.name.endswith('.nii.gz') else src.suffix}"
        _link_or_copy(src, dst)
        rows.append({"path": f"images/{dst.name}", "source": "real", "modality": r["modality"], "prompt": r["prompt"],
                     "generator": "", "group": r["group"]})
    for i, r in enumerate(kept_rows(ctx.out)):
        src = pathlib.Path(r["path"])
        dst = images / f"synthetic_{i:05d}{src.suffix}"
        _link_or_copy(src, dst)
        rows.append({"path": f"images/{dst.name}", "source": "synthetic", "modality": r["modality"],
                     "prompt": r["prompt"], "generator": r["generator"], "group": r["group"]})
    manifest = _write_rows(d / "manifest.csv", rows, ("path", "source", "modality", "prompt", "generator", "group"))
    c.study_db.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not (c.study_db.exists() and any(s["name"] == name for s in list_studies(c.study_db))):
            options = StudyOptions(tasks=c.tasks, training_cases=c.training_cases, repeat_fraction=c.repeat_fraction)
            create_study(c.study_db, name, manifest=manifest, size=c.study_size, options=options,
                         actor="experiment")
            ctx.log(f"study: created {name!r} in {c.study_db}")
        else:
            ctx.log(f"study: {name!r} already in {c.study_db}, reused")
        report, text = audit_study(c.study_db, name)
        flagged = bool(is_flagged(report))
        status = lifecycle.study_texts(c.study_db, name).status
        if flagged and not c.acknowledge_leak:
            if status == "open":
                lifecycle.set_status(c.study_db, name, "closed", actor="experiment")
            first = (report.get("reasons") or [""])[0]
            raise StudyStopped(
                f"study: the leak audit flags {name!r} (classifier AUC {report.get('auc', float('nan')):.2f}"
                f"{'; ' + first if first else ''}); readers could tell the sources apart without judging the "
                "content. The study is closed. Fix the images, or set study.acknowledge_leak = true to go on")
        if status == "closed":
            lifecycle.set_status(c.study_db, name, "open", actor="experiment")
        ack = flagged and c.acknowledge_leak  # the config's acknowledgement, recorded with the invites
        invited = {r.name for r in readers_mod.list_readers(c.study_db, name)}
        if isinstance(c.readers, pathlib.Path):
            if not invited:
                for inv in readers_mod.invite_csv(c.study_db, name, c.readers, actor="experiment",
                                                  acknowledge_leak=ack):
                    ctx.links[inv.reader] = readers_mod.reader_link(inv.token, c.base_url)
        else:
            for reader in c.readers:
                if reader not in invited:
                    token = readers_mod.invite(c.study_db, name, reader, actor="experiment", acknowledge_leak=ack)
                    ctx.links[reader] = readers_mod.reader_link(token, c.base_url)
    except StudyError as exc:
        raise ExperimentError(f"study: {exc}") from None
    for reader, link in ctx.links.items():
        ctx.log(f"reader {reader}: {link}")
    if ctx.links:
        ctx.log("These links are shown once; only their hashes are stored.")
    summary = {"study": name, "db": str(c.study_db), "n_real": sum(r["source"] == "real" for r in rows),
               "n_synthetic": sum(r["source"] == "synthetic" for r in rows), "leak": flagged,
               "leak_acknowledged": flagged and c.acknowledge_leak, "audit_auc": report.get("auc"),
               "audit_text": text, "audit_reasons": list(report.get("reasons") or []),
               "readers": sorted(invited | set(ctx.links))}
    _write_json(d / "study.json", summary)
    return [manifest, d / "study.json"], summary


def study_of(out) -> tuple[pathlib.Path, str] | None:
    s = read_stamp(out, "study")
    if not s:
        return None
    return pathlib.Path(s["summary"]["db"]), s["summary"]["study"]


# --------------------------------------------------------------------------- analyze

def _answers(db: pathlib.Path, study: str):
    from studies.export import long_table

    return long_table(db, study)


def _inputs_analyze(ctx: _Ctx) -> dict:
    db, study = pathlib.Path(ctx.summary("study")["db"]), ctx.summary("study")["study"]
    table = _answers(db, study)
    return {"study": ctx.outputs("study"), "answers": hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()}


def _run_analyze(ctx: _Ctx):
    from studies.stats import analysis
    from studies import session
    from studies.errors import StudyError

    db, study = pathlib.Path(ctx.summary("study")["db"]), ctx.summary("study")["study"]
    d = ctx.dir("analyze")
    table = _answers(db, study)
    main = table[~table["training"].astype(str).str.lower().isin(("true", "1"))] if "training" in table else table
    result = None
    reason = ""
    if len(main):
        try:
            result = analysis.analyze(table, study=study)
        except (StudyError, ValueError) as exc:
            reason = str(exc)
    else:
        reason = "no answers yet"
    progress = [dataclasses.asdict(p) for p in session.progress(db, study)]
    path = d / "analysis.json"
    _write_json(path, {"result": json.loads(json.dumps(result, default=analysis._json_default))
                       if result else None, "reason": reason, "progress": progress})
    from studies.cells import spreadsheet_safe

    # for people to open, never read back: prompts and names must not run as spreadsheet formulas
    table.map(spreadsheet_safe).to_csv(d / "answers.csv", index=False)
    return [path, d / "answers.csv"], {"n_answers": int(len(main)), "reason": reason}


def analysis_of(out) -> dict:
    return json.loads((pathlib.Path(out) / "analyze" / "analysis.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- augment

def _inputs_augment(ctx: _Ctx) -> dict | None:
    a = ctx.cfg.augment
    if a is None:
        return None
    return {"split": ctx.outputs("split"), "novelty": ctx.outputs("novelty"), "params": a}


def _labelled(rows: list[dict], column: str, label_of=None):
    from evaluation.augment import LabelledImage

    # the group (patient, volume, source) lets the augment statistics resample whole sources
    grouped = "group" in {f.name for f in dataclasses.fields(LabelledImage)}
    return [LabelledImage(pathlib.Path(r["path"]), label_of(r) if label_of else r[column],
                          **({"group": r.get("group") or None} if grouped else {})) for r in rows]


def run_augment_on(real_pool, test, synthetic, out_dir: pathlib.Path, params: dict, log):
    """The utility experiment on the run's images (``evaluation.augment``'s public entry point)."""
    from evaluation.augment import AugmentConfig, run_augment
    from studio.cli.model import decode_rgb

    cfg = AugmentConfig(n_real=params["n_real"], synthetic=tuple(params["amounts"]), repeats=params["repeats"],
                        seed=params["seed"], size=params["size"], max_epochs=params["max_epochs"],
                        patience=params["patience"], batch_size=params["batch_size"], threads=params["threads"])
    return run_augment(real_pool, test, synthetic, out_dir, cfg, decode_fn=decode_rgb, log=log, progress=False)


def _run_augment(ctx: _Ctx):
    from evaluation.augment import AugmentError

    a = ctx.cfg.augment
    col = a["label"]
    ref, held = reference_rows(ctx.out), holdout_rows(ctx.out)
    for r in ref + held:
        if not r.get(col):
            raise ExperimentError(f"augment.label: real image {r['name']} has no {col!r}")
    kept = kept_rows(ctx.out)
    if col == "modality":
        syn = _labelled(kept, "modality")
    else:
        by_case = {f"{g.name}-r{i:05d}": r[col] for g in ctx.cfg.generators for i, r in enumerate(ref)}
        syn = _labelled(kept, col, lambda r: by_case[re.sub(r"_\d+$", "", r["case_id"])
                                                     if r["case_id"] not in by_case else r["case_id"]])
    d = ctx.dir("augment")
    try:
        res = run_augment_on(_labelled(ref, col), _labelled(held, col), syn, d, a, ctx.log)
    except AugmentError as exc:
        raise ExperimentError(f"augment: {exc}") from None
    files = [p for p in d.iterdir() if p.is_file() and p.name not in ("stamp.json", "state.json")]
    return files, {"summary": res.summary, "comparisons": res.comparisons, "test": "held-out real groups"}


# --------------------------------------------------------------------------- report

def _inputs_report(ctx: _Ctx) -> dict:
    from studio.experiment import report as experiment_report

    ups = {s: ctx.outputs(s) for s in STAGES[:-1] if s in ctx.stamps and (s != "augment" or ctx.cfg.augment)}
    return {"upstream": ups, "config": _sha_json(ctx.cfg.text), "format": experiment_report.FORMAT_VERSION}


def _run_report(ctx: _Ctx):
    from studio.experiment import report as experiment_report

    paths = experiment_report.write_report(ctx.out, ctx.cfg, ctx.stamps)
    return paths, {"files": [p.name for p in paths]}


_INPUTS = {"split": _inputs_split, "generate": _inputs_generate, "novelty": _inputs_novelty,
           "fidelity": _inputs_fidelity, "study": _inputs_study, "analyze": _inputs_analyze,
           "augment": _inputs_augment, "report": _inputs_report}
_RUN = {"split": _run_split, "generate": _run_generate, "novelty": _run_novelty, "fidelity": _run_fidelity,
        "study": _run_study, "analyze": _run_analyze, "augment": _run_augment, "report": _run_report}


# --------------------------------------------------------------------------- status / report

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
    from studies import session

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
                       for p in session.progress(db, study)]
            stamp = read_stamp(out, "analyze")
            if stamp:
                table = _answers(db, study)
                new = hashlib.sha256(table.to_csv(index=False).encode()).hexdigest() != stamp["inputs"]["answers"]
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


# --------------------------------------------------------------------------- example inputs

# Files that are one acquisition under two encodings (assets/DATA_CARD.md): one group.
SAME_ACQUISITION = {"pydicom/data/test_files/JPEG2000.dcm": "pydicom/data/test_files/JPGExtended.dcm"}


def demo_group(view) -> str:
    """The group of a ``studio.demo.data`` view: its source file (one acquisition)."""
    source = f"{view.package}/{view.relpath}"
    return SAME_ACQUISITION.get(source, source)


_PACKAGE_LICENCES = {"pydicom": "MIT (pydicom test data; per-file terms in assets/DATA_CARD.md)",
                     "nibabel": "MIT (nibabel test data; see assets/DATA_CARD.md)",
                     "skimage": "BSD-3-Clause (scikit-image data; see assets/DATA_CARD.md)"}

EXAMPLE_CONFIG = """\
name = "{name}"
out = "runs/{name}"

[real]
manifest = "real/manifest.csv"
holdout = 0.3
source = "public test images shipped with pydicom, nibabel and scikit-image (studio.demo.data)"

[[generator]]
name = "mini"
model = "embedded"
prompts = "real"
images_per_prompt = 1
steps = {steps}
seed = 1

[novelty]
gate = true

[fidelity]
features = "pixels"

[study]
db = "study.db"
tasks = ["turing", "alignment"]
readers = ["dr-a", "dr-b"]
size = 64
acknowledge_leak = true   # the tiny embedded model fails the leak audit (see docs/experiments.md)
"""


def write_demo_inputs(folder, *, name: str = "demo-experiment", modalities=("ct", "mri", "histology"),
                      per_modality: int = 3, steps: int = 4) -> pathlib.Path:
    """A small runnable experiment from the images installed packages ship: ``real/`` (training
    crops and held-out demo images of ``modalities``; one group per source file, so slices, frames
    and regions of one file stay together), and
    ``experiment.toml`` for the embedded model. Returns the config path."""
    from studio.demo import data as demo_data

    folder = pathlib.Path(folder)
    real = folder / "real"
    real.mkdir(parents=True, exist_ok=True)
    views = {v.key: v for v in demo_data.train_views() + demo_data.demo_views()}
    info = demo_data.build_training_set(real / "train", samples=per_modality * len(modalities), seed=0,
                                        modalities=list(modalities))
    rows = []
    for r in _read_rows(info.out_dir / "captions.csv"):
        v = views[r["view"]]
        rows.append({"path": f"train/{r['path']}", "modality": demo_data.MODALITIES[r["modality"]].label,
                     "prompt": r["caption"], "group": demo_group(v), "licence": _PACKAGE_LICENCES[v.package],
                     "origin": f"{v.package}/{v.relpath}"})
    for im in demo_data.build_demo_set(real / "demo"):
        if im.modality not in modalities:
            im.path.unlink()
            continue
        rows.append({"path": f"demo/{im.path.name}", "modality": demo_data.MODALITIES[im.modality].label,
                     "prompt": im.prompt, "group": demo_group(views[im.view]),
                     "licence": _PACKAGE_LICENCES[views[im.view].package],
                     "origin": im.origin})
    _write_rows(real / "manifest.csv", rows, ("path", "modality", "prompt", "group", "licence", "origin"))
    config = folder / "experiment.toml"
    config.write_text(EXAMPLE_CONFIG.format(name=name, steps=steps), encoding="utf-8")
    return config
