"""Read and validate what a study is made of: a manifest CSV or an `--images` folder.

Manifest columns (header names are case-insensitive; unknown columns are an error, so a
typo in an optional column is not silently ignored):

required  path, source, modality, prompt
optional  generator, case_id, group, frame, window, slice, axis, crop

- `path` is relative to the manifest's folder; absolute paths, `..` escapes and symlinks
  that resolve outside that folder are refused.
- `source` is `real` or `synthetic`.
- `frame` (multi-frame DICOM, 0-based; default middle), `window` (`lung`, `soft_tissue`,
  `bone` ... or `centre/width` such as `40/400`; default the file's own window),
  `slice` and `axis` (NIfTI, 0-based; default middle slice of axis 2) are passed to
  `studies.imaging.load_image`.
- `crop` (`x,y,w,h` in the source image's pixels, e.g. `0,60,640,420`) cuts the image to
  that box before it is normalised: e.g. to remove burned-in text (institution, dates)
  from an ultrasound or secondary-capture frame. The box must lie inside the image.
- `case_id` defaults to the path; it must be unique.

`--images DIR` shortcut: files under `DIR/real/` and `DIR/synthetic/` (recursively,
hidden files skipped). A first-level folder under `synthetic/` names the generator
(`synthetic/sd15/x.png` -> generator `sd15`), a first-level folder under `real/` names the
modality (`real/xray/a.png` -> modality `xray`), and a second-level folder under
`synthetic/` names the synthetic image's modality (`synthetic/sd15/xray/b.png`); files
directly under `real/` or `synthetic/<generator>/` have a blank modality. (Real images
have no generator, synthetic ones always have one, hence the asymmetry.) A sidecar `<name>.txt` next to an image
holds its prompt; otherwise prompt and modality are blank (fine for turing and quality,
refused for alignment, which must show a prompt).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib

from studies.cells import write_csv
from studies.errors import ManifestError

REQUIRED = ("path", "source", "modality", "prompt")
OPTIONAL = ("generator", "case_id", "group", "frame", "window", "slice", "axis", "crop")
SOURCES = ("real", "synthetic")
# The columns a manifest is written with, in this order, by every writer in the project.
COLUMNS = REQUIRED + ("generator", "case_id", "group")
_SIDECAR = ".txt"


@dataclasses.dataclass(frozen=True)
class ManifestRow:
    where: str              # "cases.csv row 3" or "images/real/a.png": used in every error
    path: pathlib.Path      # resolved file
    rel_path: str           # as recorded (posix, relative to the manifest folder)
    source: str
    modality: str = ""
    prompt: str = ""
    generator: str = ""
    case_id: str = ""
    group: str = ""
    frame: int | None = None
    window: str | tuple[float, float] | None = None
    slice_index: int | None = None
    axis: int | None = None
    crop: tuple[int, int, int, int] | None = None

    def decode_options(self) -> dict:
        """Keyword arguments for `studies.imaging.load_image` (only those set)."""
        opts = {"frame": self.frame, "window": self.window, "slice_index": self.slice_index,
                "axis": self.axis, "crop": self.crop}
        out = {k: v for k, v in opts.items() if v is not None}
        if self.modality:
            out["modality"] = self.modality
        return out


def _inside(base: pathlib.Path, rel: str, where: str) -> pathlib.Path:
    """Resolve `rel` against `base`, refusing anything that ends up outside it."""
    if not rel:
        raise ManifestError(f"{where}, column 'path': empty path")
    if os.path.isabs(rel) or pathlib.PureWindowsPath(rel).is_absolute() or rel.startswith("~"):
        raise ManifestError(f"{where}, column 'path': absolute path {rel!r} is not allowed; "
                            "paths are relative to the manifest's folder")
    base_resolved = base.resolve()
    target = (base / rel).resolve()  # follows symlinks, so a link pointing out is caught
    if not target.is_relative_to(base_resolved):
        raise ManifestError(f"{where}, column 'path': {rel!r} escapes the manifest's folder")
    if not target.exists():
        raise ManifestError(f"{where}, column 'path': file not found: {rel}")
    if not target.is_file():
        raise ManifestError(f"{where}, column 'path': not a file: {rel}")
    return target


def _int(value: str, where: str, column: str, lo: int = 0, hi: int | None = None) -> int | None:
    value = value.strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ManifestError(f"{where}, column {column!r}: {value!r} is not a whole number") from None
    if n < lo or (hi is not None and n > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ManifestError(f"{where}, column {column!r}: {n} is out of range ({rng})")
    return n


def _window(value: str, where: str) -> str | tuple[float, float] | None:
    value = value.strip()
    if not value:
        return None
    if "/" in value:
        try:
            centre, width = (float(x) for x in value.split("/"))
        except ValueError:
            raise ManifestError(f"{where}, column 'window': {value!r} is not 'centre/width' "
                                "or a preset name") from None
        if width <= 0:
            raise ManifestError(f"{where}, column 'window': width must be > 0")
        return (centre, width)
    return value.lower()


def _crop(value: str, where: str) -> tuple[int, int, int, int] | None:
    value = value.strip()
    if not value:
        return None
    parts = [v.strip() for v in value.replace(";", ",").split(",")]
    try:
        box = tuple(int(v) for v in parts)
    except ValueError:
        raise ManifestError(f"{where}, column 'crop': {value!r} is not x,y,w,h (four whole "
                            "numbers of source pixels)") from None
    if len(box) != 4:
        raise ManifestError(f"{where}, column 'crop': {value!r} is not x,y,w,h (four whole "
                            "numbers of source pixels)")
    if box[0] < 0 or box[1] < 0 or box[2] < 1 or box[3] < 1:
        raise ManifestError(f"{where}, column 'crop': {value!r}: x and y must be >= 0, w and h "
                            ">= 1")
    return box  # type: ignore[return-value]


def read_manifest(manifest: str | pathlib.Path) -> list[ManifestRow]:
    """Validated rows of a manifest CSV; raises ManifestError naming row and column."""
    manifest = pathlib.Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"manifest not found: {manifest}")
    base = manifest.parent
    name = manifest.name
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise ManifestError(f"{name}: the manifest is empty") from None
            columns = [h.strip().lower() for h in header]
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise ManifestError(f"{name}: missing required column(s) {', '.join(missing)} "
                                    f"(required: {', '.join(REQUIRED)})")
            unknown = [c for c in columns if c not in REQUIRED + OPTIONAL]
            if unknown:
                raise ManifestError(f"{name}: unknown column {unknown[0]!r} (allowed: "
                                    f"{', '.join(REQUIRED + OPTIONAL)})")
            dupes = {c for c in columns if columns.count(c) > 1}
            if dupes:
                raise ManifestError(f"{name}: column {sorted(dupes)[0]!r} appears twice")
            rows = []
            for i, values in enumerate(reader, start=1):
                if not any(v.strip() for v in values):
                    continue  # blank line
                where = f"{name} row {i} (line {reader.line_num})"
                if len(values) != len(columns):
                    raise ManifestError(f"{where}: expected {len(columns)} fields, found {len(values)}")
                rows.append(_row(dict(zip(columns, values)), base, where))
    except UnicodeDecodeError:
        raise ManifestError(f"{name}: not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise ManifestError(f"{name}: malformed CSV ({exc})") from None
    if not rows:
        raise ManifestError(f"{name}: the manifest lists no images")
    _check_unique(rows)
    return rows


def _row(record: dict[str, str], base: pathlib.Path, where: str) -> ManifestRow:
    rel = record["path"].strip()
    source = record["source"].strip().lower()
    if source not in SOURCES:
        raise ManifestError(f"{where}, column 'source': unknown source {record['source']!r} "
                            "(expected real or synthetic)")
    path = _inside(base, rel, where)
    return ManifestRow(
        where=where,
        path=path,
        rel_path=pathlib.PurePath(rel).as_posix(),
        source=source,
        modality=record["modality"].strip(),
        prompt=record["prompt"].strip(),
        generator=record.get("generator", "").strip(),
        case_id=record.get("case_id", "").strip() or pathlib.PurePath(rel).as_posix(),
        group=record.get("group", "").strip(),
        frame=_int(record.get("frame", ""), where, "frame"),
        window=_window(record.get("window", ""), where),
        slice_index=_int(record.get("slice", ""), where, "slice"),
        axis=_int(record.get("axis", ""), where, "axis", 0, 2),
        crop=_crop(record.get("crop", ""), where),
    )


def read_images_dir(images_dir: str | pathlib.Path) -> list[ManifestRow]:
    """Rows for an `--images DIR` holding `real/` and `synthetic/` subfolders."""
    base = pathlib.Path(images_dir)
    if not base.is_dir():
        raise ManifestError(f"images folder not found: {base}")
    present = [s for s in SOURCES if (base / s).is_dir()]
    if not present:
        raise ManifestError(f"{base}: expected subfolders real/ and synthetic/")
    rows = []
    for source in present:
        for path in sorted((base / source).rglob("*")):
            rel = path.relative_to(base)
            if any(part.startswith(".") for part in rel.parts) or path.suffix.lower() == _SIDECAR:
                continue
            if path.is_dir():
                continue
            where = f"{base.name}/{rel.as_posix()}"
            resolved = _inside(base, rel.as_posix(), where)
            generator = modality = ""
            if source == "synthetic" and len(rel.parts) > 2:
                generator = rel.parts[1]
                if len(rel.parts) > 3:
                    modality = rel.parts[2]
            elif source == "real" and len(rel.parts) > 2:
                modality = rel.parts[1]
            prompt = ""
            sidecar = _sidecar(path)
            if sidecar is not None:
                prompt = sidecar.read_text(encoding="utf-8", errors="replace").strip()
            rows.append(ManifestRow(where=where, path=resolved, rel_path=rel.as_posix(),
                                    source=source, prompt=prompt, generator=generator,
                                    modality=modality,
                                    case_id=rel.as_posix()))
    if not rows:
        raise ManifestError(f"{base}: no image files under real/ or synthetic/")
    _check_unique(rows)
    return rows


def _sidecar(path: pathlib.Path) -> pathlib.Path | None:
    name = path.name
    for ext in (".nii.gz",):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    else:
        name = path.stem
    candidate = path.with_name(name + _SIDECAR)
    return candidate if candidate.is_file() else None


def _check_unique(rows: list[ManifestRow]) -> None:
    seen: dict[str, str] = {}
    for row in rows:
        if row.case_id in seen:
            raise ManifestError(f"{row.where}: duplicate case_id {row.case_id!r} "
                                f"(first used at {seen[row.case_id]})")
        seen[row.case_id] = row.where


def write_manifest(path: str | pathlib.Path, rows: list[dict],
                   columns: tuple[str, ...] = COLUMNS) -> pathlib.Path:
    """Write `rows` (dicts; missing columns empty, extra keys ignored) as a manifest that
    `read_manifest` reads back unchanged (cells as they are: a manifest is read by the project,
    not opened as a spreadsheet), atomically."""
    return write_csv(path, rows, columns, safe=False)
