"""What ingest finds beyond the leak audit, and how it joins the stored audit report:
greyscale strata (synthetic images made exact grey where the real ones are), DICOMs likely to
carry burned-in text, and images that show (almost) nothing.

`prepared` below is ingest's list of prepared images (each with its manifest `row` and what
preparing it found: `greyed`, `left_colour`, `burned_in`, `degenerate`).
"""
from __future__ import annotations

import contextlib
import dataclasses

from studies import imaging
from studies.audit import loose_key
from studies.imaging import stimuli
from studies.storage.connections import reading, stimuli_dir


@dataclasses.dataclass
class GreyStrata:
    """Which modalities' real images are greyscale. A named modality is greyscale when all
    its real images are exactly grey; the blank modality (no name to go by) when any of its
    real images is, since a near-grey synthetic image can only pass for one of those."""

    seen: dict[str, bool]  # modality key -> its real images so far are all grey (named) /
    #                        at least one is grey (blank)

    def see_real(self, modality: str, pixels) -> None:
        key = loose_key(modality)
        g = imaging.is_grey(pixels)
        if key:
            self.seen[key] = self.seen.get(key, True) and g
        else:
            self.seen[key] = self.seen.get(key, False) or g

    def is_grey_stratum(self, modality: str) -> bool:
        return self.seen.get(loose_key(modality), False)


def stored_grey_strata(db_path, study_id: int) -> dict[str, bool]:
    """`GreyStrata.seen` from a study's stored real stimuli."""
    with reading(db_path) as db:
        rows = db.execute("SELECT c.modality, c.stimulus_id FROM cases c WHERE c.study_id = ? "
                          "AND c.source = 'real'", [study_id]).fetchall()
    grey = GreyStrata({})
    sdir = stimuli_dir(db_path)
    for modality, sid in rows:
        with contextlib.suppress(OSError, ValueError):
            grey.see_real(modality or "", stimuli.decode_png((sdir / f"{sid}.png").read_bytes()))
    return grey.seen


def ingest_checks(prepared: list, earlier: dict | None = None) -> dict:
    """What ingest changed or found beyond the leak audit: synthetic images made exact grey
    (and those left in colour), DICOMs likely to carry burned-in text. `earlier` carries a
    stored report's lists over (adding cases, recomputing)."""
    earlier = earlier or {}
    old_grey = earlier.get("greyscale") or {}
    greyscale = {
        "near_grey_levels": imaging.NEAR_GREY_LEVELS,
        "converted": list(old_grey.get("converted", [])) + [
            {"row": p.row.where, "case_id": p.row.case_id, "modality": p.row.modality,
             "spread": p.greyed} for p in prepared if p.greyed is not None],
        "left_in_colour": list(old_grey.get("left_in_colour", [])) + [
            {"row": p.row.where, "case_id": p.row.case_id, "modality": p.row.modality,
             "spread": p.left_colour} for p in prepared if p.left_colour is not None],
    }
    burned = list(earlier.get("burned_in") or []) + [
        {"row": p.row.where, "case_id": p.row.case_id, "path": p.row.rel_path,
         "source": p.row.source, "reason": p.burned_in,
         "crop": list(p.row.crop) if p.row.crop else None}
        for p in prepared if p.burned_in]
    return {"greyscale": greyscale, "burned_in": burned}


def with_ingest_checks(report: dict, text: str, checks: dict) -> tuple[dict, str]:
    report = dict(report, **checks)
    lines = []
    g = checks["greyscale"]
    if g["converted"]:
        mods = sorted({c["modality"] or "(blank)" for c in g["converted"]})
        lines.append(f"Greyscale: {len(g['converted'])} synthetic image(s) stored as exact grey "
                     f"(luma) because the real images of their modality ({', '.join(mods)}) are "
                     f"greyscale; each was near-grey (99th percentile channel spread <= "
                     f"{g['near_grey_levels']} of 255 levels; largest "
                     f"{max(c['spread'] for c in g['converted']):g}).")
    if g["left_in_colour"]:
        lines.append(f"Greyscale: {len(g['left_in_colour'])} synthetic image(s) in a greyscale "
                     f"modality are in colour (channel spread > {g['near_grey_levels']} levels) "
                     "and were left as they are: " + ", ".join(
                         c["case_id"] for c in g["left_in_colour"][:5]))
    if checks["burned_in"]:
        lines.append(f"Burned-in text: {len(checks['burned_in'])} DICOM image(s) may show "
                     "text in the pixels (patient data, and a 'real' cue); look at them and "
                     "give a crop (manifest column crop = x,y,w,h) if needed:")
        lines += [f"  {b['row']}: {b['path']}: {b['reason']}"
                  + (f" (cropped to {','.join(map(str, b['crop']))})" if b.get("crop") else "")
                  for b in checks["burned_in"][:20]]
        if len(checks["burned_in"]) > 20:
            lines.append(f"  ... {len(checks['burned_in']) - 20} more")
    if lines:
        text = text.rstrip("\n") + "\n" + "\n".join(lines)
    return report, text


def content_warnings(prepared: list) -> list[dict]:
    return [{"row": p.row.where, "case_id": p.row.case_id, "path": p.row.rel_path,
             "problem": p.degenerate} for p in prepared if p.degenerate]


def with_content_warnings(report: dict, text: str, warnings: list[dict]) -> tuple[dict, str]:
    """The audit report (dict, text) with the images that show (almost) nothing named by
    manifest row: not a blinding leak, but a reader cannot judge them (kept apart from the
    leak audit's own fields)."""
    report = dict(report, content_warnings=warnings)
    if warnings:
        lines = [f"Content warnings: {len(warnings)} image(s) show little or nothing "
                 "(check them; readers will see them as they are)"]
        lines += [f"  {w['row']}: {w['path']}: {w['problem']}" for w in warnings]
        text = text.rstrip("\n") + "\n" + "\n".join(lines)
    return report, text
