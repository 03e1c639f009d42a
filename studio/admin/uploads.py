"""Uploaded files the admin pages accept: Gradio's upload folder as the only place an
uploaded path may name, and zip extraction that refuses zip-slip, symlinks and bombs.

- Zip upload: size-limited by Gradio (`max_file_size`) and again on extraction (total
  uncompressed bytes, file count, per-member compression ratio — counted while writing, not
  trusted from the zip's headers); absolute paths, `..`, drive letters and symlinks are
  refused (no zip-slip). The archive is extracted to a private temporary folder outside
  Gradio's cache and deleted after ingest; the uploaded zip itself is deleted too. The
  zip's path comes from the client, so it is read (and deleted) only if it resolves inside
  Gradio's upload folder: a forged path naming the database or any other file is refused
  untouched (files already on the server go through "Folder on the server").
"""
from __future__ import annotations

import pathlib
import stat
import zipfile

from studies.errors import StudyError

ZIP_MAX_BYTES = 4 * 1024**3      # uncompressed total
ZIP_MAX_FILES = 50_000
ZIP_MAX_RATIO = 200              # per member: deflate rarely beats ~10x on images


class UploadError(StudyError):
    """A bad or dangerous upload (zip-slip, bomb, no manifest ...)."""


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


def upload_folder() -> pathlib.Path:
    """Where Gradio stores uploads (GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    from gradio import utils as gr_utils

    return pathlib.Path(gr_utils.get_upload_folder()).resolve()


def uploaded_file(path) -> pathlib.Path:
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
