"""The reader-study stages: study (`studies.ingest.create_study` with the kept synthetic and the
reference real images; its leak audit stops the run unless acknowledged; readers invited) and
analyze (the analysis of the answers so far, and the answers table for people)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil

from studies.cells import write_csv
from studies.imaging.manifest import write_manifest
from studio.experiment.config import ExperimentError
from studio.experiment.records import Context, kept_rows, reference_rows, sha_file, sha_json, write_json


class StudyStopped(Exception):
    """The study stage stopped on purpose (its leak audit flags the study)."""


def _study_design(ctx: Context) -> dict:
    c = ctx.cfg
    return {"split": ctx.outputs("split"), "novelty": ctx.outputs("novelty"), "tasks": list(c.tasks),
            "size": c.study_size, "training_cases": c.training_cases, "repeat_fraction": c.repeat_fraction,
            "db": str(c.study_db), "name": c.study_name}


def study_inputs(ctx: Context) -> dict:
    c = ctx.cfg
    readers = c.readers
    readers = {"csv": sha_file(readers)} if isinstance(readers, pathlib.Path) else list(readers)
    return {"design": _study_design(ctx), "readers": readers, "acknowledge_leak": c.acknowledge_leak,
            "base_url": c.base_url}


def study_name_for(ctx: Context) -> str:
    # A changed design is a new study (readers' answers to the old one stay where they are).
    return f"{ctx.cfg.study_name}-{sha_json(_study_design(ctx))[:8]}"


def _link_or_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def study_stage(ctx: Context):
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
    manifest = write_manifest(d / "manifest.csv", rows,
                              columns=("path", "source", "modality", "prompt", "generator", "group"))
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
    write_json(d / "study.json", summary)
    return [manifest, d / "study.json"], summary


def answers(db: pathlib.Path, study: str):
    from studies.export import long_table

    return long_table(db, study)


def answers_digest(table) -> str:
    """A hash of the answers table: a new answer changes it."""
    return hashlib.sha256(table.to_json(orient="split", index=False).encode()).hexdigest()


def analyze_inputs(ctx: Context) -> dict:
    db, study = pathlib.Path(ctx.summary("study")["db"]), ctx.summary("study")["study"]
    table = answers(db, study)
    return {"study": ctx.outputs("study"), "answers": answers_digest(table)}


def analyze_stage(ctx: Context):
    from studies.stats import analysis
    from studies import monitoring
    from studies.errors import StudyError

    db, study = pathlib.Path(ctx.summary("study")["db"]), ctx.summary("study")["study"]
    d = ctx.dir("analyze")
    table = answers(db, study)
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
    progress = [dataclasses.asdict(p) for p in monitoring.progress(db, study)]
    path = d / "analysis.json"
    write_json(path, {"result": json.loads(json.dumps(result, default=analysis._json_default))
                       if result else None, "reason": reason, "progress": progress})
    # for people to open: prompts and names must not run as spreadsheet formulas
    write_csv(d / "answers.csv", table.astype(object).where(table.notna(), None).to_dict("records"), table.columns)
    return [path, d / "answers.csv"], {"n_answers": int(len(main)), "reason": reason}

