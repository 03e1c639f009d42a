"""The Readers tab: invitations (one by one or from a CSV), the readers' links and
profiles, live progress, and the stimulus faults and low-disk warning the admin must act on."""
from __future__ import annotations

import pathlib
import shutil

import pandas as pd

from studies import readers as readers_mod
from studies import monitoring
from studies.errors import StudyError
from studies.stats.numbers import fmt_time
from studio.admin.uploads import uploaded_file
from studio.format.plain_text import plain_markdown
from studio.format.progress import ATTENTION_HEADER, attention_cell


def invite_reader(db_path, study: str, reader: str, base_url: str, *,
                  acknowledge_leak: bool = False, reissue: bool = False, actor="admin") -> str:
    """Invite a reader (or reissue their link) and return their personal link; a flagged
    study needs `acknowledge_leak` (the gate is `readers.invite`'s, as for the CLI)."""
    token = readers_mod.invite(db_path, study, reader, reissue=reissue, actor=actor,
                               acknowledge_leak=acknowledge_leak)
    return readers_mod.reader_link(token, base_url)


def invite_from_csv(db_path, study: str, csv_upload, base_url: str, *,
                    acknowledge_leak: bool = False, actor="admin") -> str:
    """Invite every reader of an uploaded readers CSV (`readers.invite_csv`: a `reader`
    column and optional profile columns; all or none) and return `reader,link` lines.
    The upload must be a file Gradio received (as for the zip) and is deleted after."""
    if not csv_upload:
        raise StudyError("choose a readers CSV file first")
    path = uploaded_file(csv_upload)
    try:
        invitations = readers_mod.invite_csv(db_path, study, path, actor=actor,
                                             acknowledge_leak=acknowledge_leak)
    finally:
        path.unlink(missing_ok=True)
    return "\n".join(f"{i.reader},{readers_mod.reader_link(i.token, base_url)}"
                     for i in invitations)


def readers_table(db_path, study: str) -> pd.DataFrame:
    """Readers with link status (never a link: only hashes are stored), consent, profile
    and progress (`readers.reader_table`)."""
    rows = [{"reader": r.reader, "link": r.link,
             "link issued": fmt_time(r.link_issued_at),
             "consented": fmt_time(r.consented_at) or "no",
             "profile": ", ".join(f"{k}={v}" for k, v in r.profile.items()),
             "profile form": fmt_time(r.profile_completed_at) or "no",
             "done": f"{r.completed} / {r.total}"}
            for r in readers_mod.reader_table(db_path, study)]
    return pd.DataFrame(rows, columns=["reader", "link", "link issued", "consented", "profile",
                                       "profile form", "done"])


def progress_table(db_path, study: str) -> pd.DataFrame:
    rows = []
    for p in monitoring.progress(db_path, study):
        rows.append({
            "reader": p.reader, "answered": f"{p.completed} / {p.total}",
            "done %": round(100 * p.completed / p.total) if p.total else 0,
            "training": f"{p.training_completed} / {p.training_total}",
            ATTENTION_HEADER: attention_cell(p.attention_passed, p.attention_answered,
                                             p.attention_total),
            "median s/answer": None if p.median_duration_ms is None
            else round(p.median_duration_ms / 1000, 1),
            "last answer": fmt_time(p.last_answered_at),
            "finished": "yes" if p.finished else "",
        })
    return pd.DataFrame(rows, columns=["reader", "answered", "done %", "training",
                                       ATTENTION_HEADER, "median s/answer", "last answer",
                                       "finished"])


LOW_DISK_BYTES = 1024**3  # free space below this on the database's disk: warn the admin


def disk_warning(db_path) -> str:
    """A warning when the disk holding the study database is nearly full (answers that
    cannot be written make readers wait at the storage screen), else ""."""
    try:
        free = shutil.disk_usage(pathlib.Path(db_path).resolve().parent).free
    except OSError:
        return ""
    if free >= LOW_DISK_BYTES:
        return ""
    return (f"**⚠️ Low disk space:** {free / 1024**2:,.0f} MB free where the study database "
            "is stored. When the disk is full, readers' answers cannot be saved (they see a "
            "storage message and wait); free some space.")


def faults_markdown(db_path, study: str) -> str:
    """Stimulus faults readers met (missing or unreadable files), for the Readers tab,
    after a low-disk-space warning when there is one (`disk_warning`)."""
    found = monitoring.faults(db_path, study)
    disk = disk_warning(db_path)
    if not found:
        return disk
    lines = ["**⚠️ Stimulus faults** — readers were told the image is unavailable and wait at "
             "that case; restore the file under the study's stimuli folder (the readers' "
             "Try again then continues):", ""]
    for f in found:
        case = f" (case {plain_markdown(f.case)})" if f.case else ""
        lines.append(f"- stimulus `{f.stimulus_id}`{case}: {plain_markdown(f.reason)} — "
                     f"{f.count}× for {f.readers} reader(s), last {fmt_time(f.last_at)}")
    return "\n\n".join(filter(None, [disk, "\n".join(lines)]))
