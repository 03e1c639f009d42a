"""The Studies tab: every study with its status, one study's overview and leak audit, its
contact sheet.

Study status: a study has no draft/open flag in the database. Readers reach a study only
through invitations, so a study with no invited reader is a *draft* and inviting the first
reader *opens* it. The leak audit is shown on creation and above the invite form; when the
audit flags a leak, inviting requires ticking an explicit acknowledgement (the gate is
`readers.invite`'s). The contact sheet (`studies.contact_sheet`) shows the stored stimuli on
request.
"""
from __future__ import annotations

import pathlib

import pandas as pd

from studies.errors import StudyError
from studies.stats.numbers import fmt_time
from studio.format.plain_text import plain_markdown


def studies_table(db_path) -> pd.DataFrame:
    """One row per study with its status (draft: no reader invited yet; open)."""
    from studies.ingest import list_studies

    rows = list_studies(db_path)
    cols = ["study", "status", "tasks", "cases", "real", "synthetic", "readers", "leak",
            "created"]
    from studies.lifecycle import study_statuses

    statuses = study_statuses(db_path)
    out = [{
        "study": r["name"],
        "status": (statuses.get(r["name"]) if statuses.get(r["name"]) not in (None, "open")
                   else "open" if r["n_readers"] else "draft"),
        "tasks": ", ".join(r["tasks"]), "cases": r["n_cases"], "real": r["n_real"],
        "synthetic": r["n_synthetic"], "readers": r["n_readers"],
        "leak": {True: "LEAK", False: "ok", None: "?"}[r.get("leak")],
        "created": fmt_time(r["created_at"]),
    } for r in rows]
    return pd.DataFrame(out, columns=cols)


def study_status(db_path, study: str, stored: str | None) -> str:
    """The status the Studies table shows: the stored one, except that an open study with
    no reader invited is a draft."""
    from studies.lifecycle import has_readers

    if stored not in (None, "open"):
        return stored
    return "open" if has_readers(db_path, study) else "draft"


def study_names(db_path) -> list[str]:
    if not pathlib.Path(db_path).exists():
        return []
    from studies.ingest import list_studies

    return [r["name"] for r in list_studies(db_path)]


def study_overview(db_path, study: str) -> tuple[str, str, bool]:
    """(markdown summary, leak-audit text, leak flag) of one study."""
    from studies.audit import is_flagged
    from studies.ingest import audit_study, list_studies

    info = next((r for r in list_studies(db_path) if r["name"] == study), None)
    if info is None:
        raise StudyError(f"no study named {study!r}")
    report, text = audit_study(db_path, study)
    status = "**open** (readers invited)" if info["n_readers"] else \
        "**draft** — no reader invited yet; inviting the first reader opens it"
    md = (f"### {plain_markdown(study)}\n"
          f"- status: {status}\n"
          f"- tasks: {', '.join(info['tasks'])}\n"
          f"- cases: {info['n_cases']} ({info['n_real']} real, {info['n_synthetic']} synthetic)"
          f", stimuli {info['size']}×{info['size']} px\n"
          f"- readers: {info['n_readers']}\n"
          f"- leak audit: {_audit_summary(report)}")
    return md, text, bool(is_flagged(report))


def contact_sheet_frame(db_path, study: str) -> str:
    """The study's contact sheet (`studies.contact_sheet`, the page `medisyn study audit
    --html` writes) in a sandboxed frame: its styles stay inside and nothing in it runs."""
    import html

    from studies.contact_sheet import contact_sheet_html

    page = contact_sheet_html(db_path, study)
    return (f"<iframe sandbox title='Contact sheet of {html.escape(study, quote=True)}' "
            f"srcdoc=\"{html.escape(page, quote=True)}\" style='width:100%;height:80vh;"
            "border:1px solid #bbb;border-radius:6px;background:#fff'></iframe>")


def _audit_summary(report: dict) -> str:
    """One line for the overview: the audit's verdict, with its reasons when flagged."""
    from studies.audit import is_flagged

    if is_flagged(report):
        reasons = report.get("reasons") or ["see the audit below"]
        more = f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else ""
        return ("⚠️ **possible leak** — " + "; ".join(plain_markdown(r) for r in reasons[:3]) + more
                + " — read the audit below")
    if report.get("verdict") == "too few images to certify":
        return ("too few images to certify — nothing flagged, but fewer than "
                f"{report.get('min_to_certify', 20)} images in a source cannot show that "
                "nothing leaks")
    return "no leak flagged"
