"""A contact sheet of a study's stored stimuli: what readers will see, for the researcher.

`contact_sheet_html(db_path, study)` returns one self-contained HTML page (no script, no
external request: images are inline `data:` PNGs, a Content-Security-Policy forbids
anything else, and every text is escaped): per modality, the real and the synthetic
stimuli side by side as readers receive them, with the leak audit's verdict, its reasons
and each stratum's own result, the prompt audit, the greyscale conversions and the
burned-in text warnings. `medisyn study audit --html FILE` writes it; the admin's Studies
tab shows the same page.

It shows the stored stimuli themselves (downscaled to `thumb` pixels only when larger), so
a badly windowed CT, an image enlarged 24x or a tinted "greyscale" image is visible here
before any reader sees it. Large strata show an evenly spaced sample of `per_source`
images per source (the count shown says so).
"""
from __future__ import annotations

import base64
import html
import io
import json
import pathlib

from PIL import Image

from studies.audit import format_prompts, is_flagged, loose_key
from studies.storage.connections import reading, stimuli_dir
from studies.records import study_row

__all__ = ["PER_SOURCE", "THUMB", "contact_sheet_html", "write_contact_sheet"]

PER_SOURCE = 12
"""Images shown per source in each modality (an evenly spaced sample of larger ones)."""
THUMB = 256
"""Longest side of a thumbnail in pixels (stimuli larger than this are downscaled)."""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#111;background:#fff}
h1{font-size:20px;margin:0 0 8px}h2{font-size:17px;margin:20px 0 6px;border-top:1px solid #ccc;padding-top:10px}
.flag{color:#a00;font-weight:600}.ok{color:#060;font-weight:600}.muted{color:#555}
ul{margin:4px 0 8px 18px;padding:0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.col h3{font-size:15px;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:var(--t);max-width:100%}
figure img{width:100%;height:auto;display:block;background:#000;image-rendering:auto}
figcaption{font-size:11px;color:#444;overflow-wrap:anywhere}
pre{white-space:pre-wrap;font-size:12px;background:#f5f5f5;padding:8px}
.col{min-width:0}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _thumb(png: bytes, size: int) -> str:
    with Image.open(io.BytesIO(png)) as im:
        if max(im.size) > size:
            im = im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, "PNG")
            png = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _sample(rows: list, n: int) -> list:
    if len(rows) <= n:
        return rows
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def contact_sheet_html(db_path: str | pathlib.Path, study: str, *,
                       per_source: int = PER_SOURCE, thumb: int = THUMB) -> str:
    """The study's contact sheet (see module doc) as one HTML string."""
    with reading(db_path) as db:
        srow = study_row(db, study)
        cases = [dict(r) for r in db.query(
            "SELECT case_key, source, modality, generator, role, stimulus_id FROM cases "
            "WHERE study_id = ? ORDER BY manifest_row, id", [srow["id"]])]
    report = json.loads(srow.get("audit_report") or "{}")
    sdir = stimuli_dir(db_path)
    flagged = is_flagged(report)
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">",
           "<meta name='viewport' content='width=device-width, initial-scale=1'>",
           f"<title>{_e(srow['name'])}: what readers will see</title>",
           f"<style>{_STYLE}</style></head><body style='--t:{int(thumb)}px'>",
           f"<h1>{_e(srow['name'])}: the stimuli as readers will see them</h1>",
           f"<p class='muted'>{len(cases)} cases, {srow['size']}x{srow['size']} px PNG each. "
           "Real on the left, synthetic on the right, per modality.</p>"]
    verdict = report.get("verdict") or ("leak" if flagged else "not audited")
    cls = "flag" if flagged else "ok"
    out.append(f"<p>Leak audit: <span class='{cls}'>{_e(verdict.upper())}</span>"
               + (" (acknowledged by " + _e(report["acknowledged"].get("by", "?")) + ")"
                  if report.get("acknowledged") else "") + "</p>")
    if report.get("reasons"):
        out.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in report["reasons"]) + "</ul>")
    extras = []
    if report.get("prompts"):
        extras.append(format_prompts(report["prompts"]))
    grey = report.get("greyscale") or {}
    if grey.get("converted"):
        extras.append(f"Greyscale: {len(grey['converted'])} synthetic image(s) stored as exact "
                      f"grey (near-grey threshold {grey.get('near_grey_levels')} levels).")
    if grey.get("left_in_colour"):
        extras.append(f"Greyscale: {len(grey['left_in_colour'])} synthetic image(s) in colour "
                      "in a greyscale modality, left as they are.")
    for b in (report.get("burned_in") or [])[:20]:
        extras.append(f"Burned-in text? {b.get('path')}: {b.get('reason')}")
    for w in report.get("warnings") or []:
        extras.append(f"Warning: {w}")
    if extras:
        out.append("<pre>" + _e("\n".join(extras)) + "</pre>")

    strata = report.get("strata") or []
    modalities = sorted({loose_key(c["modality"]) for c in cases})
    for m in modalities:
        in_m = [c for c in cases if loose_key(c["modality"]) == m]
        real = [c for c in in_m if c["source"] == "real"]
        synth = [c for c in in_m if c["source"] == "synthetic"]
        out.append(f"<h2>Modality: {_e(m or '(blank)')}</h2>")
        notes = []
        for s in strata:
            if s.get("modality") != m and not (len(modalities) == 1 and s.get("modality") is None):
                continue
            if not s.get("tested"):
                notes.append(f"<li class='muted'>{_e(s['name'])}: not tested alone "
                             f"({_e(s.get('note', ''))})</li>")
                continue
            state = ("<span class='flag'>FLAGGED</span>" if s.get("flagged")
                     else "<span class='ok'>ok</span>")
            auc = "n/a" if s.get("auc") is None else f"{s['auc']:.2f}"
            notes.append(f"<li>{_e(s['name'])}: {state}, classifier AUC {_e(auc)}"
                         + "".join(f"<br>&nbsp;&nbsp;- {_e(r)}" for r in s.get("reasons", []))
                         + "</li>")
        if notes:
            out.append("<ul>" + "".join(notes) + "</ul>")
        out.append("<div class='pair'>")
        for label, group in (("Real", real), ("Synthetic", synth)):
            shown = _sample(group, per_source)
            gens = sorted({c["generator"] for c in group if c["generator"]})
            head = f"{label}: {len(group)}" + (f", showing {len(shown)}" if len(shown) < len(group) else "")
            if gens:
                head += f" (generators: {', '.join(gens)})"
            out.append(f"<div class='col'><h3>{_e(head)}</h3><div class='grid'>")
            for c in shown:
                try:
                    src = _thumb((sdir / f"{c['stimulus_id']}.png").read_bytes(), thumb)
                except OSError:
                    out.append(f"<figure><figcaption class='flag'>missing stimulus: "
                               f"{_e(c['case_key'])}</figcaption></figure>")
                    continue
                cap = c["case_key"] + (f" [{c['generator']}]" if c["generator"] else "") \
                    + (" (training)" if c["role"] == "training" else "")
                out.append(f"<figure><img src='{src}' alt='{_e(c['case_key'])}'>"
                           f"<figcaption>{_e(cap)}</figcaption></figure>")
            out.append("</div></div>")
        out.append("</div>")
    out.append("</body></html>")
    return "\n".join(out)


def write_contact_sheet(db_path: str | pathlib.Path, study: str, path: str | pathlib.Path,
                        **kwargs) -> pathlib.Path:
    """Write `contact_sheet_html` to `path` (UTF-8); returns the path."""
    from studies.errors import StudyError

    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise StudyError(f"output folder does not exist: {path.parent}")
    text = contact_sheet_html(db_path, study, **kwargs)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise StudyError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
