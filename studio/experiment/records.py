"""What a run keeps on disk and how its stages see it: stage stamps (hashes of inputs and
outputs), the run's tables read back, and the `Context` every stage runs in.

Tables the pipeline writes for itself and for people (`split/`, `novelty/kept.csv`) go through
`studies.cells.write_csv` and come back through `studies.cells.read_csv`, unchanged.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import pathlib
import threading
from collections.abc import Callable

from studies.cells import read_csv
from studio.experiment.config import Config, ExperimentCancelled


def sha_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def digest_files(paths, root: pathlib.Path) -> tuple[str, dict]:
    files = {}
    for p in sorted(paths):
        p = pathlib.Path(p)
        files[os.path.relpath(p, root)] = sha_file(p)
    return sha_json(files), files


def stamp_path(out, stage: str) -> pathlib.Path:
    return pathlib.Path(out) / stage / "stamp.json"


def read_stamp(out, stage: str) -> dict | None:
    try:
        return json.loads(stamp_path(out, stage).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def read_rows(path: pathlib.Path) -> list[dict]:
    """Rows of a CSV written by another component as plain text (the generate job's manifest
    and generation record, the demo's captions)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@dataclasses.dataclass
class Context:
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


def reference_rows(out) -> list[dict]:
    return read_csv(pathlib.Path(out) / "split" / "reference.csv")


def holdout_rows(out) -> list[dict]:
    return read_csv(pathlib.Path(out) / "split" / "holdout.csv")


def synthetic_rows(out, generators) -> list[dict]:
    """Every generated image: path (absolute), name, modality, prompt, generator, case_id, group."""
    rows = []
    for g in generators:
        folder = pathlib.Path(out) / "generate" / g.name
        for r in read_rows(folder / "manifest.csv"):
            rows.append({"path": str(folder / r["path"]), "name": f"{g.name}/{r['path']}",
                         "modality": r["modality"], "prompt": r["prompt"], "generator": g.name,
                         "case_id": r.get("case_id", ""), "group": r.get("group", "")})
    return rows


def kept_rows(out) -> list[dict]:
    return read_csv(pathlib.Path(out) / "novelty" / "kept.csv")


def novelty_summary(out) -> dict:
    return json.loads((pathlib.Path(out) / "novelty" / "novelty.json").read_text(encoding="utf-8"))


def study_of(out) -> tuple[pathlib.Path, str] | None:
    s = read_stamp(out, "study")
    if not s:
        return None
    return pathlib.Path(s["summary"]["db"]), s["summary"]["study"]

