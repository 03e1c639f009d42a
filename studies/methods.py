"""What a journal's methods section needs about a study, as one JSON-ready dict.

`study_design(db_path, study)` gathers the design (tasks, stimulus size, options), the
cases per source, generator and modality, the readers' profiles and progress, and the
leak-audit verdict. `studies.stats.report.render_html(result, design=...)` turns it into the
report's design, audit, reader and methods sections.
"""
from __future__ import annotations

import json

from studies.audit import is_flagged
from studies.storage.connections import reading
from studies.records import study_row
from studies.design import StudyOptions

def study_design(db_path, study: str) -> dict:
    """{study, created_at, status, tasks, size, options, cases, readers, audit} of `study`."""
    from studies.readers import reader_table

    with reading(db_path) as db:
        srow = study_row(db, study)
        cases = db.execute("SELECT source, generator, modality, role FROM cases "
                           "WHERE study_id = ?", [srow["id"]]).fetchall()
    options = StudyOptions.from_dict(json.loads(srow["options"]))
    main = [c for c in cases if c[3] != "training"]
    by_source = {s: sum(c[0] == s for c in main) for s in ("real", "synthetic")}
    by_generator: dict[str, int] = {}
    by_modality: dict[str, dict[str, int]] = {}
    for source, generator, modality, _ in main:
        if source == "synthetic":
            by_generator[generator or "unnamed"] = by_generator.get(generator or "unnamed", 0) + 1
        m = by_modality.setdefault(modality or "unspecified", {"real": 0, "synthetic": 0})
        m[source] = m.get(source, 0) + 1
    report = json.loads(srow.get("audit_report") or "{}")
    scaling = report.get("scaling") or {}
    audit = {"verdict": report.get("verdict"), "flagged": is_flagged(report),
             "reasons": report.get("reasons") or [], "auc": report.get("auc"),
             "auc_reason": report.get("auc_reason"), "threshold": report.get("threshold"),
             "cv": report.get("cv"), "counts": report.get("counts") or {},
             "n_enlarged_over_2x": scaling.get("n_upscaled"),
             "n_reduced_over_2x": scaling.get("n_downscaled")}
    readers = [{"reader": r.reader, "specialty": r.profile.get("specialty", ""),
                "years_experience": r.profile.get("years_experience", ""),
                "completed": r.completed, "total": r.total,
                "consented": bool(r.consented_at), "active": r.link == "active"}
               for r in reader_table(db_path, study)]
    return {
        "study": srow["name"], "created_at": srow.get("created_at"),
        "status": srow.get("status") or "open", "tasks": list(options.tasks),
        "size": srow.get("size"),
        "options": {"training_cases": options.training_cases,
                    "repeat_fraction": options.repeat_fraction,
                    "attention_checks": options.attention_checks,
                    "counterbalance": options.counterbalance,
                    "cases_per_reader": options.cases_per_reader,
                    "readers_per_case": options.readers_per_case,
                    "repeat_after_s": options.repeat_after_s,
                    "allow_back": bool(srow.get("allow_back", 1)),
                    "reproducible_seed": options.seed is not None},
        "cases": {"main": len(main), "training": len(cases) - len(main),
                  "by_source": by_source, "by_generator": by_generator,
                  "by_modality": by_modality},
        "readers": readers,
        "audit": audit,
    }
