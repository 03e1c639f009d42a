"""An experiment's config: the TOML file read and validated into a `Config` (`read_config`),
every error one line naming the key (`ExperimentError`)."""
from __future__ import annotations

import dataclasses
import math
import pathlib
import re
import tomllib

STAGES = ("split", "generate", "novelty", "fidelity", "study", "analyze", "augment", "report")
ENGINES = ("local", "ray")
NOVELTY_ALPHA = 0.05  # target rate of held-out real images flagged (evaluation.novelty.ALPHA)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ExperimentError(Exception):
    """A bad config or a stage that cannot go on; the message is one line naming the cause."""


class ExperimentCancelled(ExperimentError):
    pass


def check_stage(name: str | None, what: str) -> None:
    if name is not None and name not in STAGES:
        raise ExperimentError(f"{what}: unknown stage {name!r} (stages: {', '.join(STAGES)})")


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
        "gate": (_bool, True), "measures": (_str_list, tuple(_default_measures())),
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


def _default_measures():
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
