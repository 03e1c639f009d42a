"""The New study tab: a study from an uploaded zip, a manifest or folder on the server, or
generation batches, with the CLI's study options.

The server folder: the admin is trusted to name any folder the server can read (that is the
point of the option); nothing in it is ever served — only normalised stimuli are.
"""
from __future__ import annotations

import contextlib
import csv
import os
import pathlib
import shutil
import tempfile

from studies.design import StudyOptions
from studies.errors import StudyError
from studies.imaging import is_image_file
from studies.imaging.manifest import write_manifest
from studio.admin.uploads import (ZIP_MAX_BYTES, UploadError, find_study_input,
                                  safe_extract_zip, uploaded_file)
from studio.format.plain_text import plain_markdown


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


def size_of(value) -> int | str:
    """A stimulus size from the form or a caller: "auto" (as the CLI) or whole pixels."""
    from studies.imaging.sizing import parse_size

    return value if isinstance(value, int) and not isinstance(value, bool) else parse_size(value)


def create_from_zip(db_path, name, zip_path, *, size="auto", options: StudyOptions, actor="admin",
                    max_bytes: int = ZIP_MAX_BYTES, skip_unreadable: bool = False):
    """A study from a zip uploaded through the admin form (a file in Gradio's upload
    folder); the upload is deleted afterwards."""
    from studies.ingest import create_study

    if not zip_path:
        raise UploadError("upload a zip file first")
    upload = uploaded_file(zip_path)  # before anything is read or deleted
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="medisyn-upload-"))
    try:
        safe_extract_zip(upload, tmp / "x", max_bytes=max_bytes)
        where = find_study_input(tmp / "x")
        return create_study(db_path, name, size=size_of(size), options=options, actor=actor,
                            skip_unreadable=skip_unreadable, **where)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        # The upload sits in Gradio's cache; it held the original file names: remove it.
        with contextlib.suppress(OSError):
            upload.unlink()


def create_from_folder(db_path, name, folder, *, size="auto", options: StudyOptions, actor="admin",
                       skip_unreadable: bool = False):
    from studies.ingest import create_study

    folder = pathlib.Path(str(folder or "").strip()).expanduser()
    if not str(folder) or not folder.exists():
        raise UploadError(f"no such file or folder on the server: {folder}")
    if folder.is_file():
        return create_study(db_path, name, manifest=folder, size=size_of(size), options=options,
                            actor=actor, skip_unreadable=skip_unreadable)
    return create_study(db_path, name, size=size_of(size), options=options, actor=actor,
                        skip_unreadable=skip_unreadable, **find_study_input(folder))


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and is_image_file(p))


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
        man = write_manifest(tmp / "manifest.csv", rows)
        return create_study(db_path, name, manifest=man, size=size_of(size), options=options,
                            actor=actor, skip_unreadable=skip_unreadable)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


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
