"""The split stage: the real manifest read (`read_real_manifest`) and cut into a reference part
and a held-out part by group, per modality (`split_groups`), so a group never straddles the two."""
from __future__ import annotations

import csv
import pathlib

from studies.cells import write_csv
from studio.experiment.config import ExperimentError
from studio.experiment.records import Context, sha_file, sha_json

REAL_COLUMNS = ("path", "modality", "prompt", "group", "licence", "origin", "label")


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


def split_inputs(ctx: Context) -> dict:
    cfg = ctx.cfg
    rows = read_real_manifest(cfg.real_manifest)
    images = sha_json({r["name"]: sha_file(pathlib.Path(r["path"])) for r in rows})
    holdout = cfg.holdout
    if isinstance(holdout, pathlib.Path):
        holdout = {"manifest": sha_file(holdout), "images": sha_json(
            {r["name"]: sha_file(pathlib.Path(r["path"])) for r in read_real_manifest(holdout)})}
    return {"manifest": sha_file(cfg.real_manifest), "images": images, "holdout": holdout, "seed": cfg.seed,
            "licence": cfg.real_licence, "source": cfg.real_source}


_SPLIT_FIELDS = ("path", "name", "modality", "prompt", "group", "licence", "origin", "label")


def split_stage(ctx: Context):
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
    files = [write_csv(d / "reference.csv", reference, _SPLIT_FIELDS),
             write_csv(d / "holdout.csv", held_rows, _SPLIT_FIELDS)]

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

