"""The researcher's app (mounted at `/admin`, behind the admin login).

Tabs: Studies (overview, leak audit), New study (from an uploaded zip, a folder on the
server, or generation batches), Readers (invite, links, live progress), Analysis
(statistics tables, plotly figures, exports and the HTML report), Generate
(`studio.admin.generate`), Evaluate (`studio.admin.evaluate`) and Experiments
(`studio.admin.experiments`).

Everything a tab does is a plain function here (tested without a browser) over the
`studies` API; the Gradio wrappers only check the admin session and render.

Decisions
- Study status: a study has no draft/open flag in the database. Readers reach a study only
  through invitations, so a study with no invited reader is a *draft* and inviting the
  first reader *opens* it. The leak audit is shown on creation and above the invite form;
  when the audit flags a leak, inviting requires ticking an explicit acknowledgement (the
  gate is `readers.invite`'s). The Studies tab shows the contact sheet
  (`studies.contact_sheet`) of the stored stimuli on request.
- Zip upload: size-limited by Gradio (`max_file_size`) and again on extraction (total
  uncompressed bytes, file count, per-member compression ratio — counted while writing, not
  trusted from the zip's headers); absolute paths, `..`, drive letters and symlinks are
  refused (no zip-slip). The archive is extracted to a private temporary folder outside
  Gradio's cache and deleted after ingest; the uploaded zip itself is deleted too. The
  zip's path comes from the client, so it is read (and deleted) only if it resolves inside
  Gradio's upload folder: a forged path naming the database or any other file is refused
  untouched (files already on the server go through "Folder on the server").
- Server folder: the admin is trusted to name any folder the server can read (that is the
  point of the option); nothing in it is ever served — only normalised stimuli are.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import shutil
import stat
import tempfile
import zipfile

import gradio as gr
import pandas as pd

from studies import readers as readers_mod
from studies import session
from studies.design import TASKS, StudyOptions
from studies.errors import StudyError
from studies.stats.numbers import fmt_num, fmt_p, is_p_key, p_text
from studio.format.plain_text import plain_markdown
from studio.format.progress import ATTENTION_HEADER, attention_cell

ZIP_MAX_BYTES = 4 * 1024**3      # uncompressed total
ZIP_MAX_FILES = 50_000
ZIP_MAX_RATIO = 200              # per member: deflate rarely beats ~10x on images
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".gz"}
# The Log out button POSTs (same-origin, so it passes the cross-origin check), then shows
# the login form; paths relative to the admin page (/admin/), so a proxy's path prefix is
# kept. A page script rather than a Gradio event: no handler, no API endpoint.
ADMIN_HEAD = """<script>
document.addEventListener("click", (e) => {
  if (!e.target.closest || !e.target.closest("#logout")) return;
  e.preventDefault();
  fetch("logout", {method: "POST", credentials: "same-origin", redirect: "manual"})
    .finally(() => window.location.assign("./"));
});
</script>"""

ADMIN_CSS = """
footer { display: none !important; }
#audit textarea, #audit pre { font-family: ui-monospace, monospace; font-size: 0.85rem; }
"""


class Forbidden(PermissionError):
    """The request does not come from the logged-in admin."""


class UploadError(StudyError):
    """A bad or dangerous upload (zip-slip, bomb, no manifest ...)."""


# ------------------------------------------------------------------------------- studies
def studies_table(db_path) -> pd.DataFrame:
    """One row per study with its status (draft: no reader invited yet; open)."""
    from studies.ingest import list_studies

    rows = list_studies(db_path)
    cols = ["study", "status", "tasks", "cases", "real", "synthetic", "readers", "leak",
            "created"]
    statuses = _study_statuses(db_path)
    out = [{
        "study": r["name"],
        "status": (statuses.get(r["name"]) if statuses.get(r["name"]) not in (None, "open")
                   else "open" if r["n_readers"] else "draft"),
        "tasks": ", ".join(r["tasks"]), "cases": r["n_cases"], "real": r["n_real"],
        "synthetic": r["n_synthetic"], "readers": r["n_readers"],
        "leak": {True: "LEAK", False: "ok", None: "?"}[r.get("leak")],
        "created": r["created_at"][:19].replace("T", " "),
    } for r in rows]
    return pd.DataFrame(out, columns=cols)


def _study_status(db_path, study: str, stored: str | None) -> str:
    """The status the Studies table shows: the stored one, except that an open study with
    no reader invited is a draft."""
    from studies.storage.database import reading, study_row

    if stored not in (None, "open"):
        return stored
    with reading(db_path) as db:
        sid = study_row(db, study)["id"]
        invited = db.execute("SELECT 1 FROM readers WHERE study_id = ? LIMIT 1", [sid]).fetchone()
    return "open" if invited else "draft"


def _study_statuses(db_path) -> dict[str, str]:
    from studies.storage.database import reading

    with reading(db_path) as db:
        return {n: st for n, st in db.execute("SELECT name, status FROM studies")}


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
        return ("⚠️ **possible leak** — " + "; ".join(_plain(r) for r in reasons[:3]) + more
                + " — read the audit below")
    if report.get("verdict") == "too few images to certify":
        return ("too few images to certify — nothing flagged, but fewer than "
                f"{report.get('min_to_certify', 20)} images in a source cannot show that "
                "nothing leaks")
    return "no leak flagged"


def _plain(text: str) -> str:
    """Audit text is ours, but escape Markdown anyway so it shows as written."""
    return "".join("\\" + c if c in "\\`*_[]<>|~" else c for c in text)


# ------------------------------------------------------------------------------ uploads
def _member_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _safe_member_path(dest: pathlib.Path, name: str) -> pathlib.Path | None:
    """Where a zip member may be written, or None for a directory entry; UploadError for
    anything that would land outside `dest`."""
    norm = name.replace("\\", "/")
    if norm.endswith("/"):
        return None
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if (norm.startswith("/") or any(p == ".." for p in parts) or not parts
            or (len(parts[0]) >= 2 and parts[0][1] == ":")):
        raise UploadError(f"zip member {name!r} has an unsafe path")
    target = dest.joinpath(*parts).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UploadError(f"zip member {name!r} escapes the archive folder")
    return target


def safe_extract_zip(zip_path, dest, *, max_bytes: int = ZIP_MAX_BYTES,
                     max_files: int = ZIP_MAX_FILES, max_ratio: float = ZIP_MAX_RATIO) -> pathlib.Path:
    """Extract `zip_path` into `dest` refusing zip-slip, symlinks and zip bombs."""
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"not a readable zip file ({exc})") from None
    with zf:
        members = zf.infolist()
        files = [m for m in members if not m.is_dir()]
        if len(files) > max_files:
            raise UploadError(f"the zip holds {len(files)} files; the limit is {max_files}")
        declared = sum(m.file_size for m in files)
        if declared > max_bytes:
            raise UploadError(f"the zip expands to {declared} bytes; the limit is {max_bytes}")
        written = 0
        for m in members:
            if _member_is_symlink(m):
                raise UploadError(f"zip member {m.filename!r} is a symbolic link")
            target = _safe_member_path(dest, m.filename)
            if target is None:
                continue
            limit = max(1024 * 1024, m.compress_size * max_ratio)
            target.parent.mkdir(parents=True, exist_ok=True)
            n = 0
            # Count real output bytes: headers can lie about sizes.
            with zf.open(m) as src, open(target, "wb") as out:
                while chunk := src.read(1024 * 1024):
                    n += len(chunk)
                    written += len(chunk)
                    if n > limit:
                        raise UploadError(f"zip member {m.filename!r} expands more than "
                                          f"{max_ratio}x (a zip bomb?)")
                    if written > max_bytes:
                        raise UploadError(f"the zip expands to more than {max_bytes} bytes")
                    out.write(chunk)
    return dest


def find_study_input(root) -> dict:
    """`{"manifest": path}` for a CSV manifest in the extracted tree (top level, or inside
    a single top folder), or `{"images_dir": path}` for real/ + synthetic/ folders."""
    root = pathlib.Path(root)
    candidates = [root]
    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        candidates.append(entries[0])
    for base in candidates:
        csvs = sorted(base.glob("*.csv"))
        if len(csvs) == 1:
            return {"manifest": csvs[0]}
        named = [c for c in csvs if c.name in ("manifest.csv", "cases.csv")]
        if len(named) == 1:
            return {"manifest": named[0]}
        if len(csvs) > 1:
            raise UploadError("several CSV files in the zip; name the manifest manifest.csv")
        if (base / "real").is_dir() or (base / "synthetic").is_dir():
            return {"images_dir": base}
    raise UploadError("the zip holds neither a manifest CSV nor real/ and synthetic/ folders")


# ------------------------------------------------------------------------------- create
def study_options(tasks, *, training_cases=0, repeat_fraction=0.0, attention_checks=0,
                  counterbalance=False, seed=None, cases_per_reader=None, readers_per_case=None,
                  repeat_after="") -> StudyOptions:
    """The CLI's study options from the admin form (0 or empty: the CLI's default)."""
    from studies.design import parse_duration

    tasks = tuple(tasks or ())
    if not tasks:
        raise StudyError("choose at least one task")
    seed = None if seed in (None, "", 0) else int(seed)
    return StudyOptions(tasks=tasks, training_cases=int(training_cases or 0),
                        repeat_fraction=float(repeat_fraction or 0.0),
                        attention_checks=int(attention_checks or 0),
                        counterbalance=bool(counterbalance), seed=seed,
                        cases_per_reader=int(cases_per_reader) if cases_per_reader else None,
                        readers_per_case=int(readers_per_case) if readers_per_case else None,
                        repeat_after_s=parse_duration(str(repeat_after or "").strip()))


def _size(value) -> int | str:
    """A stimulus size from the form or a caller: "auto" (as the CLI) or whole pixels."""
    from studies.imaging.sizing import parse_size

    return value if isinstance(value, int) and not isinstance(value, bool) else parse_size(value)


def error_markdown(exc) -> str:
    """A refused action's message, for the message box beside the control that refused."""
    return f"❌ **Error:** {plain_markdown(str(exc))}"


def upload_folder() -> pathlib.Path:
    """Where Gradio stores uploads (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    from gradio import utils as gr_utils

    return pathlib.Path(gr_utils.get_upload_folder()).resolve()


def _uploaded_file(path) -> pathlib.Path:
    """`path` if it is a file Gradio received as an upload, else UploadError. The path
    comes from the client's FileData; under mount_gradio_app Gradio may not check that it
    is an upload, and create_from_zip deletes it afterwards, so a forged path must never
    name a file elsewhere (the database, say)."""
    p = pathlib.Path(str(path))
    try:
        resolved = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UploadError("the uploaded zip is gone; upload it again") from None
    if not resolved.is_relative_to(upload_folder()) or not resolved.is_file():
        raise UploadError("the zip must be uploaded with this form; for a file already on the "
                          "server, choose “Folder on the server”")
    return resolved


def create_from_zip(db_path, name, zip_path, *, size="auto", options: StudyOptions, actor="admin",
                    max_bytes: int = ZIP_MAX_BYTES, skip_unreadable: bool = False):
    """A study from a zip uploaded through the admin form (a file in Gradio's upload
    folder); the upload is deleted afterwards."""
    from studies.ingest import create_study

    if not zip_path:
        raise UploadError("upload a zip file first")
    upload = _uploaded_file(zip_path)  # before anything is read or deleted
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="medisyn-upload-"))
    try:
        safe_extract_zip(upload, tmp / "x", max_bytes=max_bytes)
        where = find_study_input(tmp / "x")
        return create_study(db_path, name, size=_size(size), options=options, actor=actor,
                            skip_unreadable=skip_unreadable, **where)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        # The upload sits in Gradio's cache; it held the original file names: remove it.
        with _suppress():
            upload.unlink()


def create_from_folder(db_path, name, folder, *, size="auto", options: StudyOptions, actor="admin",
                       skip_unreadable: bool = False):
    from studies.ingest import create_study

    folder = pathlib.Path(str(folder or "").strip()).expanduser()
    if not str(folder) or not folder.exists():
        raise UploadError(f"no such file or folder on the server: {folder}")
    if folder.is_file():
        return create_study(db_path, name, manifest=folder, size=_size(size), options=options,
                            actor=actor, skip_unreadable=skip_unreadable)
    return create_study(db_path, name, size=_size(size), options=options, actor=actor,
                        skip_unreadable=skip_unreadable, **find_study_input(folder))


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def create_from_batches(db_path, name, batch_dirs, *, real_folder=None, size="auto",
                        options: StudyOptions, actor="admin", skip_unreadable: bool = False):
    """A study from generation batches (their manifest.csv rows, synthetic) plus, for the
    turing task, real images from a server folder (a sidecar `<name>.txt` holds a real
    image's caption, as for `--images` folders). Files are linked or copied into one
    private staging folder so the combined manifest's paths stay inside it."""
    from studies.ingest import create_study

    if not batch_dirs:
        raise UploadError("choose at least one generation batch")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="medisyn-batch-study-"))
    rows: list[dict] = []
    try:
        for i, bdir in enumerate(batch_dirs):
            bdir = pathlib.Path(bdir)
            man = bdir / "manifest.csv"
            if not man.exists():
                raise UploadError(f"batch {bdir.name} has no manifest.csv")
            with man.open(newline="", encoding="utf-8") as fh:
                for j, rec in enumerate(csv.DictReader(fh)):
                    src = (bdir / rec["path"]).resolve()
                    if not src.is_relative_to(bdir.resolve()):
                        raise UploadError(f"{man} row {j + 2}: path escapes the batch folder")
                    rel = f"synthetic/b{i}/{j:05d}{src.suffix.lower()}"
                    _link_or_copy(src, tmp / rel)
                    rows.append({"path": rel, "source": "synthetic",
                                 "modality": rec.get("modality", ""),
                                 "prompt": rec.get("prompt", ""),
                                 "generator": rec.get("generator", "") or "generated"})
        if real_folder and str(real_folder).strip():
            rf = pathlib.Path(str(real_folder).strip()).expanduser()
            if not rf.is_dir():
                raise UploadError(f"no such folder on the server: {rf}")
            for j, src in enumerate(_image_files(rf)):
                rel = f"real/{j:05d}{''.join(src.suffixes[-2:]) if src.name.endswith('.nii.gz') else src.suffix.lower()}"
                _link_or_copy(src, tmp / rel)
                side = src.with_name(src.name.split(".")[0] + ".txt")  # same as --images
                prompt = side.read_text(encoding="utf-8").strip() if side.is_file() else ""
                rows.append({"path": rel, "source": "real", "modality": "", "prompt": prompt,
                             "generator": ""})
        man = tmp / "manifest.csv"
        with man.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["path", "source", "modality", "prompt", "generator"])
            w.writeheader()
            w.writerows(rows)
        return create_study(db_path, name, manifest=man, size=_size(size), options=options,
                            actor=actor, skip_unreadable=skip_unreadable)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def summary_markdown(summary) -> str:
    gens = ", ".join(plain_markdown(g) for g in summary.generators) or "—"
    return (f"Created **{plain_markdown(summary.name)}**: {summary.n_cases} cases ({summary.n_real} real, "
            f"{summary.n_synthetic} synthetic; {summary.n_training} training), tasks "
            f"{', '.join(summary.tasks)}, {summary.size}×{summary.size} px, generators {gens}, "
            f"in {summary.seconds:.1f} s. Status: **draft** — review the leak audit, then "
            "invite readers to open it."
            + (f"  \n{plain_markdown(summary.pairing)}" if getattr(summary, "pairing", "") else "")
            + "".join(f"  \n⚠️ skipped unreadable {plain_markdown(x['row'])}: "
                      f"{plain_markdown(x['path'])} ({plain_markdown(x['error'])})"
                      for x in getattr(summary, "skipped", []))
            + (f"  \n⚠️ {len(summary.duplicates)} image(s) have the same pixels as another case"
               if getattr(summary, "duplicates", []) else ""))


# ------------------------------------------------------------------------------ readers
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
    path = _uploaded_file(csv_upload)
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
             "link issued": (r.link_issued_at or "")[:19].replace("T", " "),
             "consented": (r.consented_at or "")[:19].replace("T", " ") or "no",
             "profile": ", ".join(f"{k}={v}" for k, v in r.profile.items()),
             "profile form": (r.profile_completed_at or "")[:19].replace("T", " ") or "no",
             "done": f"{r.completed} / {r.total}"}
            for r in readers_mod.reader_table(db_path, study)]
    return pd.DataFrame(rows, columns=["reader", "link", "link issued", "consented", "profile",
                                       "profile form", "done"])


def study_settings(db_path, study: str) -> tuple[str, str, str, str, bool]:
    """(status line, instructions, consent, profile fields, ask profile) for the admin's
    form."""
    from studies.lifecycle import study_texts

    t = study_texts(db_path, study)
    status = _study_status(db_path, study, t.status)
    return (f"Status: **{status}**" + (f" since {t.status_at[:19].replace('T', ' ')}"
                                        if t.status_at and status != "draft" else
                                        " — no reader invited yet; inviting the first reader "
                                        "opens it" if status == "draft" else ""),
            t.instructions, t.consent, ", ".join(t.profile_fields), t.ask_profile)


def progress_table(db_path, study: str) -> pd.DataFrame:
    rows = []
    for p in session.progress(db_path, study):
        rows.append({
            "reader": p.reader, "answered": f"{p.completed} / {p.total}",
            "done %": round(100 * p.completed / p.total) if p.total else 0,
            "training": f"{p.training_completed} / {p.training_total}",
            ATTENTION_HEADER: attention_cell(p.attention_passed, p.attention_answered,
                                             p.attention_total),
            "median s/answer": None if p.median_duration_ms is None
            else round(p.median_duration_ms / 1000, 1),
            "last answer": (p.last_answered_at or "")[:19].replace("T", " "),
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
    found = session.faults(db_path, study)
    disk = disk_warning(db_path)
    if not found:
        return disk
    lines = ["**⚠️ Stimulus faults** — readers were told the image is unavailable and wait at "
             "that case; restore the file under the study's stimuli folder (the readers' "
             "Try again then continues):", ""]
    for f in found:
        case = f" (case {plain_markdown(f.case)})" if f.case else ""
        lines.append(f"- stimulus `{f.stimulus_id}`{case}: {plain_markdown(f.reason)} — "
                     f"{f.count}× for {f.readers} reader(s), last {f.last_at[:19].replace('T', ' ')}")
    return "\n\n".join(filter(None, [disk, "\n".join(lines)]))


# ------------------------------------------------------------------------------ analysis
_BINARY_COLS = ("n", "accuracy", "sensitivity", "specificity", "fool_rate", "ci_wilson",
                "p_binomial", "auc", "auc_ci")


def _reasoned(d: dict, key: str):
    """The value, or "n/a (reason)" from the analysis' `<key>_reason` (never a bare dash)."""
    v = d.get(key)
    if v is None:
        return f"n/a ({d.get(f'{key}_reason') or 'not computed'})"
    text = fmt_p(v) if is_p_key(key) and isinstance(v, (int, float)) else _fmt(v)
    if d.get(f"{key}_note"):
        return f"{text} ({d[f'{key}_note']})"
    return text


def _fmt(v):
    """The studies.stats.numbers format (as in the CLI and the HTML report), as table text."""
    if isinstance(v, float):
        return fmt_num(v)
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) or x is None for x in v):
        return "[" + ", ".join("—" if x is None else fmt_num(float(x)) for x in v) + "]"
    if v is None:
        return "—"
    return v


_PAIR_COLS = ("n", "correct", "proportion", "ci", "p_binomial")


def pair_tables(result: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pooled, per-reader) tables of the paired 2AFC section: proportion correct with its
    Clopper–Pearson CI and binomial p; empty frames when the study has no pair reads."""
    p = result.get("pair") or {}
    if not p:
        return pd.DataFrame(), pd.DataFrame()
    pooled = p["pooled"]
    rr = p.get("random_readers") or {}
    prow = {"readers": f"all {p['n_readers']} (pooled, {p['n_pairs']} pairs)",
            **{c: _reasoned(pooled, c) for c in _PAIR_COLS},
            "random-readers mean": _reasoned(rr, "mean"), "random-readers p": _reasoned(rr, "p")}
    rrows = [{"reader": name, **{c: _reasoned(v, c) for c in _PAIR_COLS}}
             for name, v in p["per_reader"].items()]
    names = {"proportion": "proportion correct", "ci": "95% CI (Clopper–Pearson)",
             "p_binomial": "p (binomial vs 0.5)"}
    return (pd.DataFrame([prow]).rename(columns=names),
            pd.DataFrame(rrows, columns=["reader", *_PAIR_COLS]).rename(columns=names))


def _reason_frame(text: str) -> pd.DataFrame:
    """A one-cell table that says why there is nothing to show (an empty frame renders as
    columns headed 1 2 3)."""
    return pd.DataFrame({"result": [text]})


def turing_tables(result: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pooled, per-reader) turing tables from `studies.stats.analysis.analyze`'s result."""
    t = result.get("turing") or {}
    pooled = t.get("pooled") or {}
    prow = {"readers": "all (pooled)", **{c: _reasoned(pooled, c) for c in _BINARY_COLS
                                          if c in pooled or f"{c}_reason" in pooled}}
    per = t.get("per_reader") or {}
    rrows = [{"reader": name, **{c: _reasoned(v, c) for c in _BINARY_COLS
                                 if c in v or f"{c}_reason" in v}}
             for name, v in per.items()]
    names = {"fool_rate": "fool rate", "ci_wilson": "95% CI (Wilson)",
             "p_binomial": "p (binomial vs 0.5)", "auc_ci": "AUC 95% CI (DeLong)"}
    return ((pd.DataFrame([prow]) if pooled else pd.DataFrame()).rename(columns=names),
            pd.DataFrame(rrows).rename(columns=names))


def _scalar(v):
    if isinstance(v, dict):
        for key in ("value", "kappa", "alpha", "icc", "estimate", "auc"):
            if key in v:
                return v[key]
        return None
    return v


def _value_note(stat, reason) -> dict:
    """value + note of an agreement statistic (a dict with its own `<key>_reason`s)."""
    if isinstance(stat, dict):
        for key in ("value", "kappa", "alpha", "icc", "estimate", "auc", "mean_kappa"):
            if key in stat or f"{key}_reason" in stat:
                return {"value": _reasoned(stat, key), "note": ""}
    if stat is None:
        return {"value": f"n/a ({reason or 'not computed'})", "note": ""}
    return {"value": _fmt(stat), "note": reason or ""}


def _p_note(d: dict, key: str) -> str:
    """"p = 0.043" / "p < 0.001", or "p n/a (reason)"."""
    v = d.get(key)
    return p_text(v) if v is not None else f"p {_reasoned(d, key)}"


def agreement_table(result: dict) -> pd.DataFrame:
    rows = []
    t = result.get("turing") or {}
    for key, label in (("fleiss_kappa", "turing: Fleiss' κ"),
                       ("krippendorff_alpha", "turing: Krippendorff's α")):
        if key in t:
            rows.append({"statistic": label, **_value_note(t.get(key), t.get(f"{key}_reason"))})
    mr = t.get("mrmc") or {}
    if isinstance(mr, dict) and mr:
        if mr.get("p") is not None:
            note = f"{p_text(mr.get('p'))}, CI {_reasoned(mr, 'ci')}"
        else:
            note = f"random-readers test: n/a ({mr.get('p_reason') or 'not computed'})"
            fr = mr.get("fixed_readers")
            if isinstance(fr, dict) and fr.get("p") is not None:
                note += f"; fixed readers: {p_text(fr['p'])}, CI {_reasoned(fr, 'ci')}"
        if mr.get("block"):
            note = f"{mr['block']}. {note}"
        rows.append({"statistic": "turing: MRMC AUC (Obuchowski–Rockette)",
                     "value": _reasoned(mr, "auc"), "note": note})
    pair = result.get("pair") or {}
    if pair:
        pooled = pair["pooled"]
        rows.append({"statistic": "pair (2AFC): proportion correct, pooled (estimates the AUC)",
                     "value": _reasoned(pooled, "proportion"),
                     "note": f"CI {_reasoned(pooled, 'ci')} (Clopper–Pearson), "
                             f"{_p_note(pooled, 'p_binomial')}"})
        rr = pair["random_readers"]
        rows.append({"statistic": "pair (2AFC): mean reader proportion (random readers)",
                     "value": _reasoned(rr, "mean"),
                     "note": f"{_p_note(rr, 'p')}, CI {_reasoned(rr, 'ci')}"})
        rows.append({"statistic": "pair (2AFC): Fleiss' κ on right/wrong",
                     **_value_note(pair["fleiss_kappa"], None)})
    for task in ("alignment", "quality"):
        s = result.get(task) or {}
        for key in ("krippendorff_alpha_ordinal", "krippendorff_alpha_interval"):
            if key in s:
                rows.append({"statistic": f"{task}: {key.replace('_', ' ')}",
                             **_value_note(s.get(key), s.get(f"{key}_reason"))})
        icc = (s.get("icc") or {}) if isinstance(s.get("icc"), dict) else {}
        for form in ("ICC2", "ICC2k"):
            if isinstance(icc.get(form), dict):
                rows.append({"statistic": f"{task}: {form}",
                             "value": _reasoned(icc[form], "icc"),
                             "note": f"CI {_reasoned(icc[form], 'ci')}"})
    return pd.DataFrame(rows, columns=["statistic", "value", "note"])


def remarks_markdown(flags: dict) -> str:
    """The readers' non-diagnostic flags and comments (studies.stats.remarks) in one line; case
    ids are the study's own text, escaped (plain_markdown)."""
    cases = flags.get("non_diagnostic_cases") or {}
    listed = ", ".join(f"{plain_markdown(c)} ({n})" for c, n in cases.items())
    return (f"**{flags['n_cases_non_diagnostic']} of {flags['n_cases']} images flagged "
            f"non-diagnostic by ≥1 reader**" + (f" (readers): {listed}" if listed else "")
            + f"; {flags['n_comments']} reads with a comment (see the long export's "
            "`comment` column).")


def reader_title_setting(db_path, study: str) -> str:
    """The title readers of `study` see ("" : the neutral default)."""
    from studies.lifecycle import study_texts

    return study_texts(db_path, study).reader_title


def back_setting(db_path, study: str) -> bool:
    """Whether readers of `study` may go back to the previous case."""
    from studies.lifecycle import study_texts

    return study_texts(db_path, study).allow_back


def save_back_setting(db_path, study: str, allowed: bool, *, actor: str = "admin") -> str:
    """Allow or forbid going back (studies.lifecycle.set_allow_back); a line saying so."""
    from studies.lifecycle import set_allow_back

    if not study:
        raise StudyError("choose a study first")
    set_allow_back(db_path, study, bool(allowed), actor=actor)
    return ("Readers **may go back** to the previous case and change their answer."
            if allowed else "Readers **cannot go back** to the previous case.")


@dataclasses.dataclass
class Dashboard:
    result: dict
    pooled: pd.DataFrame
    per_reader: pd.DataFrame
    agreement: pd.DataFrame
    figures: list            # plotly figures (title, figure)
    note: str
    pooled_label: str = "Real vs synthetic (turing), pooled"
    per_reader_label: str = "Per reader"


def dashboard(db_path, study: str) -> Dashboard:
    """The statistics module's result, tables and figures for one study."""
    from studies.stats import analysis
    from studies.export import long_table

    long_df = long_table(db_path, study)
    result = analysis.analyze(long_df)
    pooled, per_reader = turing_tables(result)
    labels = {}
    if result.get("pair") and not result.get("turing"):
        pooled, per_reader = pair_tables(result)
        labels = {"pooled_label": "Which image is synthetic? (pair, 2AFC): proportion correct, "
                                  "pooled (estimates the AUC; 0.5 = cannot tell)",
                  "per_reader_label": "Per reader (pair, 2AFC): proportion correct"}
    if pooled.empty:
        pooled = _reason_frame(result.get("turing_reason") or "no turing responses yet")
    if per_reader.empty:
        per_reader = _reason_frame(result.get("turing_reason") or "no turing responses yet")
    from studies.stats import report

    figures = [(report.figure_title(k), fig) for k, fig in report.figures(result).items()]
    n = int(len(long_df))
    note = (f"{n} responses from {long_df['reader'].nunique() if n else 0} readers "
            "(training rows excluded from the statistics; latest answer wins).")
    if result.get("reader_flags"):
        note += "  \n" + remarks_markdown(result["reader_flags"])
    return Dashboard(result, pooled, per_reader, agreement_table(result), figures, note,
                     **labels)


def _imrmc_refusal(db_path, study: str) -> str:
    from studies.export import _no_imrmc_reason

    return _no_imrmc_reason(db_path, study)


def export_files(db_path, study: str, out_dir, *, actor="admin") -> list[pathlib.Path]:
    """The long and iMRMC exports and the self-contained HTML report, in `out_dir`."""
    from studies.stats import analysis, report
    from studies.export import long_table, write_export

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in study)[:60] or "study"
    paths = []
    for fmt in ("long", "imrmc"):
        p = out_dir / f"{safe}-{fmt}.csv"
        try:
            write_export(db_path, study, fmt, p, actor=actor)
        except (StudyError, ValueError, KeyError):
            continue  # e.g. no turing responses yet for iMRMC: offer what exists
        paths.append(p)
    from studies.methods import study_design

    result = analysis.analyze(long_table(db_path, study))
    paths.append(report.write_html(result, out_dir / f"{safe}-report.html",
                                   title=f"Reader study {study}",
                                   design=study_design(db_path, study)))
    return paths


# ------------------------------------------------------------------------------- Gradio
def base_url_of(request, configured: str | None) -> str:
    """Where readers reach the studio: configured, else the host the admin used."""
    if configured:
        return configured
    headers = getattr(request, "headers", None) or {}
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    proto = headers.get("x-forwarded-proto") or "http"
    return f"{proto}://{host}/"


def build_admin_blocks(db_path, admin_auth, *, model=None, base_url=None, batches_dir=None):
    from studio.admin import generate as generate_view

    db_path = str(db_path)

    def guard(request: gr.Request | None) -> str:
        user = getattr(request, "username", None) if request is not None else None
        if not admin_auth.is_admin(user):
            raise gr.Error("Not authorised.")
        return user

    def friendly(fn):
        """Show a StudyError as a message instead of a stack trace."""
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except (StudyError, Forbidden) as exc:
                raise gr.Error(str(exc)) from None
        return wrapper

    task_choices = [(f"{t.name} — {t.question}", t.name) for t in TASKS.values()]

    with gr.Blocks(title="MediSyn Studio — researcher", analytics_enabled=False,
                   delete_cache=(3600, 24 * 3600)) as demo:
        with gr.Row():
            gr.Markdown("# MediSyn Studio")
            study_dd = gr.Dropdown(label="Study", choices=[], value=None, scale=2,
                                   elem_id="study-select", allow_custom_value=False)
            refresh_btn = gr.Button("↻ Refresh", scale=0, min_width=90)
            # a POST (ADMIN_HEAD): a cross-site GET must not end the session
            gr.Button("Log out", scale=0, min_width=90, elem_id="logout")
        with gr.Tabs(elem_id="admin-tabs") as tabs:
            with gr.Tab("Studies", id="studies"):
                table = gr.Dataframe(interactive=False, elem_id="studies-table", wrap=True)
                overview = gr.Markdown(elem_id="overview")
                audit_box = gr.Textbox(label="Leak audit", lines=14, interactive=False,
                                       elem_id="audit", buttons=["copy"])
                sheet_btn = gr.Button("Show the contact sheet (the stimuli as readers see "
                                      "them)", elem_id="contact-sheet-btn")
                sheet = gr.HTML(elem_id="contact-sheet")
            with gr.Tab("New study", id="new"):
                with gr.Row():
                    name = gr.Textbox(label="Study name", elem_id="new-name")
                    size = gr.Textbox(label="Stimulus size: auto, or pixels (auto: the largest "
                                      "multiple of 64 in 256-1024 that enlarges at most half "
                                      "of the images)", value="auto", elem_id="new-size")
                tasks = gr.CheckboxGroup(task_choices, value=["turing"], label="Tasks")
                with gr.Row():
                    training = gr.Number(label="Training cases", value=0, precision=0, minimum=0)
                    repeat = gr.Slider(0, 0.5, value=0.0, step=0.05,
                                       label="Repeated fraction (intra-reader)",
                                       elem_id="new-repeat")
                    attention = gr.Number(label="Attention checks", value=0, precision=0,
                                          minimum=0)
                    counterbalance = gr.Checkbox(label="Counterbalance the tasks after turing (turing is always first)")
                    seed = gr.Number(label="Seed (0: random secret; any other value makes the "
                                     "order predictable — testing only)", value=0, precision=0)
                with gr.Row():
                    cases_per_reader = gr.Number(
                        label="Cases per reader (0: every case; pairs for the pair task)",
                        value=0, precision=0, minimum=0, elem_id="new-cases-per-reader")
                    readers_per_case = gr.Number(
                        label="Target readers per case (0: none)", value=0, precision=0,
                        minimum=0, elem_id="new-readers-per-case")
                    repeat_after = gr.Textbox(
                        label="Repeat after (wash-out, e.g. 7d, 36h; empty: same session)",
                        value="", elem_id="new-repeat-after")
                    skip_unreadable = gr.Checkbox(
                        label="Skip unreadable images and list them (default: all or nothing)",
                        elem_id="new-skip-unreadable")
                source = gr.Radio(["Upload a zip", "Folder on the server", "Generation batches"],
                                  value="Upload a zip", label="Images from")
                with gr.Group(visible=True) as zip_group:
                    upload = gr.File(label="Zip: a manifest CSV (path, source, modality, prompt"
                                     "[, generator, case_id, group]) with its images, or "
                                     "real/ and synthetic/ folders", file_types=[".zip"],
                                     type="filepath")
                with gr.Group(visible=False) as folder_group:
                    folder = gr.Textbox(label="Manifest CSV or folder (real/, synthetic/) on "
                                        "the server")
                with gr.Group(visible=False) as batch_group:
                    batches = gr.CheckboxGroup([], label="Generation batches")
                    real_folder = gr.Textbox(label="Real images folder on the server "
                                             "(needed for the turing task)")
                create_btn = gr.Button("Create study (runs the leak audit)", variant="primary",
                                       elem_id="create")
                created = gr.Markdown()
                created_audit = gr.Textbox(label="Leak audit", lines=12, interactive=False)
            with gr.Tab("Readers", id="readers"):
                invite_overview = gr.Markdown()
                with gr.Row():
                    reader_name = gr.Textbox(label="Reader name", elem_id="reader-name")
                    ack = gr.Checkbox(label="I have read the leak audit; open the study anyway",
                                      visible=False)
                    reissue = gr.Checkbox(label="Reissue link (old link stops working)")
                invite_btn = gr.Button("Invite", variant="primary", elem_id="invite")
                invite_msg = gr.Markdown(elem_id="invite-msg")
                link = gr.Textbox(label="Personal link (copy and send; shown once)",
                                  interactive=False, buttons=["copy"], elem_id="reader-link")
                progress = gr.Dataframe(label="Progress (refreshes every 5 s)",
                                        interactive=False, elem_id="progress-table")
                faults = gr.Markdown(elem_id="stimulus-faults")
                timer = gr.Timer(5.0)
                with gr.Accordion("Invite from a CSV, links, deactivation", open=False):
                    readers_csv = gr.File(label="Readers CSV: a `reader` column, optional "
                                          "specialty, years_experience and the study's own "
                                          "profile fields", file_types=[".csv"],
                                          type="filepath", elem_id="readers-csv")
                    csv_ack = gr.Checkbox(label="I have read the leak audit; open the study "
                                          "anyway", visible=False, elem_id="csv-ack")
                    csv_btn = gr.Button("Invite everyone in the CSV", elem_id="invite-csv")
                    csv_msg = gr.Markdown(elem_id="csv-msg")
                    csv_links = gr.Textbox(label="reader,link (copy and send; shown once)",
                                           lines=6, interactive=False, buttons=["copy"],
                                           elem_id="csv-links")
                    readers_df = gr.Dataframe(label="Readers (links are never stored: reissue "
                                              "to give a new one)", interactive=False,
                                              elem_id="readers-table")
                    with gr.Row():
                        manage_name = gr.Textbox(label="Reader", elem_id="manage-reader")
                        deactivate_btn = gr.Button("Deactivate (link stops working)",
                                                   elem_id="deactivate")
                        reactivate_btn = gr.Button("Reactivate", elem_id="reactivate")
                    manage_msg = gr.Markdown(elem_id="manage-msg")
            with gr.Tab("Study settings", id="settings"):
                status_md = gr.Markdown(elem_id="study-status")
                with gr.Row():
                    close_btn = gr.Button("Close (readers see a closed page)", elem_id="close-study")
                    reopen_btn = gr.Button("Reopen", elem_id="reopen-study")
                    archive_btn = gr.Button("Archive", elem_id="archive-study")
                status_msg = gr.Markdown(elem_id="status-msg")
                reader_title_box = gr.Textbox(
                    label="Title readers see (empty: \"Reader study\"; the study's name is "
                          "never shown to readers)", max_lines=1, elem_id="reader-title")
                instructions_box = gr.Textbox(label="Instructions shown before the first case",
                                              lines=6, elem_id="instructions")
                consent_box = gr.Textbox(label="Consent text (empty: no consent step)", lines=4,
                                         elem_id="consent")
                fields_box = gr.Textbox(label="Extra reader profile fields (comma-separated, "
                                        "e.g. site,country)", elem_id="profile-fields")
                ask_profile_box = gr.Checkbox(
                    label="Readers fill in their profile before the first case (specialty, "
                          "years of experience and the extra fields; all required)",
                    elem_id="ask-profile")
                save_texts_btn = gr.Button("Save texts", elem_id="save-texts")
                save_texts_msg = gr.Markdown(elem_id="save-texts-msg")
                # Going back (studies.session.go_back): saved as soon as it is ticked.
                allow_back_box = gr.Checkbox(label="Readers may go back to the previous case "
                                             "and change their answer", elem_id="allow-back")
                allow_back_md = gr.Markdown(elem_id="allow-back-status")
            with gr.Tab("Analysis", id="analysis"):
                analyze_btn = gr.Button("Run analysis", variant="primary", elem_id="analyze")
                note = gr.Markdown()
                pooled = gr.Dataframe(label="Real vs synthetic (turing), pooled",
                                      interactive=False, elem_id="pooled")
                per_reader = gr.Dataframe(label="Per reader", interactive=False,
                                          elem_id="per-reader")
                agreement = gr.Dataframe(label="Agreement and MRMC", interactive=False)
                plots = []
                for _ in range(3):
                    with gr.Row():
                        plots += [gr.Plot(visible=False), gr.Plot(visible=False)]
                with gr.Accordion("Full result (JSON)", open=False):
                    result_json = gr.JSON()
                export_btn = gr.Button("Prepare downloads (long, iMRMC, HTML report)",
                                       elem_id="export")
                export_msg = gr.Markdown(elem_id="export-msg")
                downloads = gr.File(label="Downloads", file_count="multiple",
                                    interactive=False, elem_id="downloads")
            with gr.Tab("Generate", id="generate"):
                gen = generate_view.build_generate_tab(db_path, guard, model=model,
                                                       batches_dir=batches_dir)
            with gr.Tab("Evaluate", id="evaluate"):
                from studio.admin import evaluate as evaluate_view

                evaluate = evaluate_view.build_evaluate_tab(db_path, guard, batches_dir=batches_dir)
            with gr.Tab("Experiments", id="experiments"):
                from studio.admin import experiments as experiments_view

                experiments_view.build_experiments_tab(db_path, guard)

        admin_events = dict(api_visibility="private")

        def reported(n_outputs: int, at: int = 0, clear: tuple[int, ...] = ()):
            """Like `friendly`, but a refused action's message goes to its own message box
            (output `at`) and the outputs in `clear` are emptied (a stale link or success
            message must not stand beside an error); the rest stay as they were. Gradio
            marks every output of a failed event with an "Error" pill, unrelated ones too."""
            import functools

            def deco(fn):
                @functools.wraps(fn)
                def wrapper(*args, **kwargs):
                    try:
                        return fn(*args, **kwargs)
                    except Forbidden as exc:
                        raise gr.Error(str(exc)) from None
                    except StudyError as exc:
                        out = [gr.update() for _ in range(n_outputs)]
                        for i in clear:
                            out[i] = gr.update(value=None)
                        out[at] = error_markdown(exc)
                        return out[0] if n_outputs == 1 else tuple(out)
                return wrapper
            return deco

        @friendly
        def refresh(current, request: gr.Request):
            guard(request)
            names = study_names(db_path)
            value = current if current in names else (names[0] if names else None)
            tbl = studies_table(db_path) if names else pd.DataFrame()
            return (gr.update(choices=names, value=value), tbl,
                    gr.update(choices=generate_view.batch_choices(db_path, batches_dir)))

        @friendly
        def show_study(study, request: gr.Request):
            guard(request)
            if not study:
                return ("No study yet: create one in **New study**.", "", "",
                        gr.update(visible=False), pd.DataFrame(), "", gr.update(visible=False))
            md, text, leak = study_overview(db_path, study)
            # The invite gate's tick box, until the flagged audit is acknowledged.
            leak = leak and not (readers_mod.leak_acknowledgement(db_path, study) or {}).get(
                "acknowledged")
            return (md, text, md, gr.update(visible=leak, value=False),
                    progress_table(db_path, study), faults_markdown(db_path, study),
                    gr.update(visible=leak, value=False))

        @friendly
        def show_sheet(study, request: gr.Request):
            guard(request)
            if not study:
                raise StudyError("choose a study first")
            return contact_sheet_frame(db_path, study)

        @friendly
        def clear_sheet(request: gr.Request):
            guard(request)
            return ""

        @friendly
        def switch_source(choice, request: gr.Request):
            guard(request)
            return (gr.update(visible=choice == "Upload a zip"),
                    gr.update(visible=choice == "Folder on the server"),
                    gr.update(visible=choice == "Generation batches"))

        @reported(5, at=0, clear=(1,))
        def create(name_, size_, tasks_, training_, repeat_, attention_, cb_, seed_, cpr_, rpc_,
                   repeat_after_, skip_, source_, upload_, folder_, batches_, real_folder_,
                   request: gr.Request):
            user = guard(request)
            opts = study_options(tasks_, training_cases=training_, repeat_fraction=repeat_,
                                 attention_checks=attention_, counterbalance=cb_, seed=seed_,
                                 cases_per_reader=cpr_, readers_per_case=rpc_,
                                 repeat_after=repeat_after_)
            kw = dict(size=_size(size_), options=opts, actor=f"admin:{user}",
                      skip_unreadable=bool(skip_))
            if source_ == "Upload a zip":
                summary = create_from_zip(db_path, name_, upload_, **kw)
            elif source_ == "Folder on the server":
                summary = create_from_folder(db_path, name_, folder_, **kw)
            else:
                summary = create_from_batches(db_path, name_, batches_, real_folder=real_folder_, **kw)
            names = study_names(db_path)
            return (summary_markdown(summary), summary.audit_text,
                    gr.update(choices=names, value=summary.name), studies_table(db_path), None)

        @reported(5, at=4, clear=(0,))
        def do_invite(study, reader, ack_, reissue_, request: gr.Request):
            user = guard(request)
            if not study:
                raise StudyError("choose a study first")
            url = invite_reader(db_path, study, reader, base_url_of(request, base_url),
                                acknowledge_leak=ack_, reissue=reissue_, actor=f"admin:{user}")
            md, _, _ = study_overview(db_path, study)
            return (url, progress_table(db_path, study), md, studies_table(db_path),
                    f"✅ Invited **{plain_markdown(reader.strip())}**: copy the link below.")

        @reported(5, at=4, clear=(0,))
        def do_invite_csv(study, upload_, ack_, request: gr.Request):
            user = guard(request)
            if not study:
                raise StudyError("choose a study first")
            lines = invite_from_csv(db_path, study, upload_, base_url_of(request, base_url),
                                    acknowledge_leak=ack_, actor=f"admin:{user}")
            n = len([ln for ln in str(lines).splitlines() if ln.strip()])
            return (lines, readers_table(db_path, study), progress_table(db_path, study), None,
                    f"✅ Invited {n} reader(s): copy their links below.")

        def _switch_reader(active):
            @reported(2, at=1)
            def handler(study, reader, request: gr.Request):
                user = guard(request)
                if not study:
                    raise StudyError("choose a study first")
                readers_mod.set_reader_active(db_path, study, reader, active,
                                              actor=f"admin:{user}")
                return (readers_table(db_path, study),
                        f"✅ {plain_markdown(reader.strip())} "
                        + ("reactivated: their link works again." if active else
                           "deactivated: their link no longer works (answers kept)."))
            return handler

        def _set_status(status):
            @reported(3, at=2)
            def handler(study, request: gr.Request):
                from studies.lifecycle import set_status

                user = guard(request)
                if not study:
                    raise StudyError("choose a study first")
                set_status(db_path, study, status, actor=f"admin:{user}")
                return study_settings(db_path, study)[0], studies_table(db_path), ""
            return handler

        @friendly
        def show_settings(study, request: gr.Request):
            guard(request)
            if not study:
                return "", "", "", "", False, pd.DataFrame()
            return (*study_settings(db_path, study), readers_table(db_path, study))

        @reported(6, at=5)
        def save_texts(study, instructions_, consent_, fields_, ask_profile_, title_,
                       request: gr.Request):
            import datetime as _dt

            from studies.lifecycle import set_texts

            user = guard(request)
            if not study:
                raise StudyError("choose a study first")
            texts = set_texts(db_path, study, instructions=instructions_ or "",
                              consent=consent_ or "", profile_fields=fields_ or "",
                              ask_profile=bool(ask_profile_), title=title_ or "",
                              actor=f"admin:{user}")
            at = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S UTC")
            return (*study_settings(db_path, study),
                    f"✅ Saved at {at}: instructions {len(texts.instructions)} characters, "
                    f"consent {len(texts.consent) or 'none'}"
                    f"{' characters' if texts.consent else ''}, profile form "
                    f"{'on' if texts.ask_profile else 'off'}, reader title "
                    f"{plain_markdown(texts.reader_title) if texts.reader_title else 'none'}.")

        @friendly
        def show_reader_title(study, request: gr.Request):
            guard(request)
            return reader_title_setting(db_path, study) if study else ""

        @friendly
        def show_back(study, request: gr.Request):
            guard(request)
            return back_setting(db_path, study) if study else False, ""

        @reported(1)
        def save_back(study, allowed, request: gr.Request):
            user = guard(request)
            return save_back_setting(db_path, study, allowed, actor=f"admin:{user}")

        def tick(study, request: gr.Request):
            guard(request)
            if not study:
                return gr.update(), gr.update()
            try:
                return progress_table(db_path, study), faults_markdown(db_path, study)
            except StudyError:
                return gr.update(), gr.update()

        @reported(5 + len(plots), at=0)
        def run_analysis(study, request: gr.Request):
            guard(request)
            if not study:
                raise StudyError("choose a study first")
            d = dashboard(db_path, study)
            plot_updates = []
            for i in range(len(plots)):
                if i < len(d.figures):
                    title, fig = d.figures[i]
                    plot_updates.append(gr.update(value=fig, visible=True, label=title))
                else:
                    plot_updates.append(gr.update(value=None, visible=False))
            return [d.note, gr.update(value=d.pooled, label=d.pooled_label),
                    gr.update(value=d.per_reader, label=d.per_reader_label), d.agreement,
                    *plot_updates, d.result]

        @reported(2, at=1, clear=(0,))
        def do_export(study, request: gr.Request):
            guard(request)
            if not study:
                raise StudyError("choose a study first")
            out = pathlib.Path(tempfile.mkdtemp(prefix="medisyn-export-"))
            paths = export_files(db_path, study, out)
            note = ("" if any(p.name.endswith("-imrmc.csv") for p in paths) else
                    "No iMRMC file: " + plain_markdown(_imrmc_refusal(db_path, study)) + ".")
            return [str(p) for p in paths], note

        demo.load(refresh, [study_dd], [study_dd, table, batches], **admin_events)
        refresh_btn.click(refresh, [study_dd], [study_dd, table, batches], **admin_events)
        study_dd.change(show_study, [study_dd],
                        [overview, audit_box, invite_overview, ack, progress, faults, csv_ack],
                        **admin_events)
        source.change(switch_source, [source], [zip_group, folder_group, batch_group],
                      **admin_events)
        sheet_btn.click(show_sheet, [study_dd], [sheet], **admin_events)
        study_dd.change(clear_sheet, None, [sheet], **admin_events)
        create_btn.click(create, [name, size, tasks, training, repeat, attention, counterbalance,
                                  seed, cases_per_reader, readers_per_case, repeat_after,
                                  skip_unreadable, source, upload, folder, batches, real_folder],
                         [created, created_audit, study_dd, table, upload],
                         concurrency_limit=1, concurrency_id="create", **admin_events)
        invite_btn.click(do_invite, [study_dd, reader_name, ack, reissue],
                         [link, progress, invite_overview, table, invite_msg], **admin_events)
        timer.tick(tick, [study_dd], [progress, faults], show_progress="hidden", **admin_events)
        study_dd.change(show_settings, [study_dd],
                        [status_md, instructions_box, consent_box, fields_box, ask_profile_box,
                         readers_df],
                        **admin_events)
        csv_btn.click(do_invite_csv, [study_dd, readers_csv, csv_ack],
                      [csv_links, readers_df, progress, readers_csv, csv_msg], **admin_events)
        deactivate_btn.click(_switch_reader(False), [study_dd, manage_name],
                             [readers_df, manage_msg], **admin_events)
        reactivate_btn.click(_switch_reader(True), [study_dd, manage_name],
                             [readers_df, manage_msg], **admin_events)
        for btn, status in ((close_btn, "closed"), (reopen_btn, "open"),
                            (archive_btn, "archived")):
            btn.click(_set_status(status), [study_dd], [status_md, table, status_msg],
                      **admin_events)
        save_texts_btn.click(save_texts, [study_dd, instructions_box, consent_box, fields_box,
                                          ask_profile_box, reader_title_box],
                             [status_md, instructions_box, consent_box, fields_box,
                              ask_profile_box, save_texts_msg],
                             **admin_events)
        study_dd.change(show_back, [study_dd], [allow_back_box, allow_back_md], **admin_events)
        study_dd.change(show_reader_title, [study_dd], [reader_title_box], **admin_events)
        allow_back_box.input(save_back, [study_dd, allow_back_box], [allow_back_md],
                             **admin_events)
        analyze_btn.click(run_analysis, [study_dd],
                          [note, pooled, per_reader, agreement, *plots, result_json],
                          concurrency_limit=2, concurrency_id="analysis", **admin_events)
        export_btn.click(do_export, [study_dd], [downloads, export_msg], concurrency_id="analysis",
                         **admin_events)
        gen.wire(study_dd)
        evaluate.wire(study_dd)
    return demo
