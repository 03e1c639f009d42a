"""Create a study: validate the input, blind every image, audit, store — all or nothing.

`create_study` reads a manifest (or an --images folder), decodes each file
(`studies.imaging.load_image`), re-encodes it to the study's single form
(`studies.imaging.stimuli.normalise` + `encode_png`: letterboxed square RGB PNG, no metadata)
under a random opaque id, runs the leak audit (`studies.audit.audit_leaks`) and writes
study, stimuli and cases in one transaction.

Nothing half-made survives a failure: PNGs are written to a private temporary folder
inside the stimuli folder (same file system, so moving them in is a rename), moved into
place only inside the open transaction, and removed again if the commit does not happen.
A new database is built under a private temporary name and hard-linked into place only
once its study is committed (`os.link` fails if the path exists, so it never replaces a
database another `create` made meanwhile; ours then joins that one). A failing create
therefore only ever deletes files it made itself, never a database at the path
(`studies.staging`). What ingest finds beyond the leak audit: `studies.ingest_checks`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import time
from collections.abc import Callable, Sequence

from studies import audit as audit_mod
from studies import imaging
from studies.design import (
    StudyOptions, make_pairs, new_order_secret, seeded_order_secret, select_training,
)
from studies.errors import IngestError, ManifestError, StudyError, StudyExists
from studies.imaging import sizing, stimuli
from studies.imaging.manifest import ManifestRow, read_images_dir, read_manifest
from studies.ingest_checks import (
    GreyStrata, content_warnings, ingest_checks, stored_grey_strata, with_content_warnings,
    with_ingest_checks,
)
from studies.lifecycle import check_reader_title
from studies.records import log_action, study_row
from studies.staging import create_new_db, move_in, staging
from studies.storage.connections import open_db, reading, stimuli_dir, transaction
from studies.storage.group_commit import write
from studies.storage.schema import utc_now

MIN_SIZE, MAX_SIZE = 32, 4096
MAX_NAME = 200
_ORIGINAL_FIELDS = ("original_format", "original_width", "original_height", "original_mode",
                    "original_bit_depth", "original_bytes")


@dataclasses.dataclass
class StudySummary:
    study_id: int
    name: str
    n_cases: int
    n_real: int
    n_synthetic: int
    n_training: int
    tasks: tuple[str, ...]
    size: int
    seed: int | None  # the --seed given (order reproducible and predictable), else None
    generators: list[str]
    audit: dict
    audit_text: str
    stimuli_dir: pathlib.Path
    seconds: float
    content_warnings: list[dict] = dataclasses.field(default_factory=list)  # see audit
    pairing: str = ""  # pair task: how many pairs, and which images were left unpaired
    skipped: list[dict] = dataclasses.field(default_factory=list)  # skip_unreadable: row, path, error
    duplicates: list[dict] = dataclasses.field(default_factory=list)  # same pixels: row, path, same_as


@dataclasses.dataclass
class _Prepared:
    row: ManifestRow
    stimulus_id: str
    sha256: str
    original: dict  # original_format/width/height/mode/bit_depth/bytes
    degenerate: str = ""  # imaging.degenerate_content: why it shows (almost) nothing
    greyed: float | None = None      # made exact grey: its channel spread before (levels)
    left_colour: float | None = None  # in a greyscale stratum but too colourful to convert
    burned_in: str = ""              # imaging.burned_in_reason


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise StudyError("study name must not be empty")
    name = name.strip()
    if len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise StudyError(f"study name must be at most {MAX_NAME} printable characters")
    return name


def _resolve_options(tasks: Sequence[str] | str | None, options: StudyOptions | None) -> StudyOptions:
    options = options or StudyOptions()
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    if tasks is not None:
        tasks = tuple(tasks)
        if options.tasks != StudyOptions().tasks and options.tasks != tasks:
            raise StudyError("tasks given twice (argument and options) with different values")
        options = dataclasses.replace(options, tasks=tasks)
    return options.validated()


def _check_design(rows: list[ManifestRow], options: StudyOptions, secret: bytes) -> list[str]:
    """Design-level validation; returns the case_ids held aside for training."""
    if "alignment" in options.tasks:
        for row in rows:
            if not row.prompt:
                raise ManifestError(f"{row.where}: the alignment task shows the prompt, "
                                    "but this image has none")
    if options.training_cases >= len(rows):
        raise StudyError(f"{options.training_cases} training cases requested but the study "
                         f"has only {len(rows)} images; keep some for the study itself")
    training = select_training([(r.case_id, r.source) for r in rows],
                               options.training_cases, secret)
    if "turing" in options.tasks or "pair" in options.tasks:
        held = set(training)
        for source in ("real", "synthetic"):
            total = sum(r.source == source for r in rows)
            main = sum(r.source == source and r.case_id not in held for r in rows)
            if total == 0:
                raise StudyError(f"the turing task needs real and synthetic images, but there "
                                 f"are no {source} images")
            if main == 0:
                raise StudyError(f"after holding aside {len(held)} training cases no {source} "
                                 "images remain for the turing task; use fewer training cases")
    return training


def _decode(row: ManifestRow, size: int) -> imaging.DecodedImage:
    try:
        return imaging.load_image(row.path, target_size=size, **row.decode_options())
    except imaging.ImageError as exc:
        raise IngestError(f"{row.where}: {exc}") from None
    except MemoryError:
        raise IngestError(f"{row.where}: {row.rel_path}: image too large to decode") from None
    except Exception as exc:  # any decoder failure is bad input, reported on one line
        raise IngestError(f"{row.where}: {row.rel_path}: cannot read image "
                          f"({type(exc).__name__}: {exc})") from None


def create_study(
    db_path: str | pathlib.Path,
    name: str,
    *,
    manifest: str | pathlib.Path | None = None,
    images_dir: str | pathlib.Path | None = None,
    size: int | str = 512,
    tasks: Sequence[str] | str | None = None,
    options: StudyOptions | None = None,
    actor: str = "cli",
    progress: Callable[[int, int], None] | None = None,
    skip_unreadable: bool = False,
    reader_title: str | None = None,
) -> StudySummary:
    """Create study `name` in `db_path` from a manifest CSV or an images folder.

    `reader_title`: the title readers see (`lifecycle.check_reader_title`; none: a neutral
    "Reader study"; the name itself is never shown to readers).
    `size`: the stimulus side in pixels, or "auto" (`studies.imaging.sizing.auto_size`: the
    largest multiple of 64 in [256, 1024] that does not enlarge most of the images).
    The audit report gains `scaling` (`audit.scaling_check`: images enlarged or reduced
    more than 2x, worst first). One transaction: on any error nothing is left behind
    (no rows, no stimulus files). An unreadable image fails the whole study unless
    `skip_unreadable`: then it is left out and listed in the summary's `skipped`. Images
    with exactly the same pixels after blinding are listed in `duplicates` (a warning).
    Raises StudyError subclasses (ManifestError, IngestError, StudyExists) with one-line
    messages naming the offending row or file.
    """
    t0 = time.perf_counter()
    name = _check_name(name)
    reader_title = check_reader_title(reader_title) or None
    if (manifest is None) == (images_dir is None):
        raise StudyError("give exactly one of a manifest or an images folder")
    _check_size(size)
    options = _resolve_options(tasks, options)
    # The order secret: random unless a seed was given (then reproducible and predictable).
    secret = new_order_secret() if options.seed is None else seeded_order_secret(options.seed)
    db_path = pathlib.Path(db_path)
    if not db_path.parent.is_dir():
        raise StudyError(f"database folder does not exist: {db_path.parent}")

    if db_path.exists():  # fail fast, before decoding anything
        with contextlib.closing(open_db(db_path)) as db:
            if db.execute("SELECT 1 FROM studies WHERE name = ?", [name]).fetchone():
                raise StudyExists(f"a study named {name!r} already exists in {db_path.name}")

    rows = read_manifest(manifest) if manifest is not None else read_images_dir(images_dir)
    if not skip_unreadable:  # fail fast, before decoding anything
        training = set(_check_design(rows, options, secret))
    size = _resolve_size(rows, size)

    with staging(db_path) as stage:
        prepared, items, skipped = _prepare(rows, size, stage.incoming, progress,
                                            skip_unreadable=skip_unreadable)
        if skip_unreadable:
            if not prepared:
                raise IngestError(f"none of the {len(rows)} images could be read")
            rows = [p.row for p in prepared]
            training = set(_check_design(rows, options, secret))
        report = audit_mod.audit_leaks(items, prompts_shown="alignment" in options.tasks)
        del items
        report_dict, report_text = with_content_warnings(
            report.to_dict(), report.format_text(), content_warnings(prepared))
        report_dict, report_text = with_ingest_checks(report_dict, report_text,
                                                       ingest_checks(prepared))
        report_dict, report_text = _with_scaling(report_dict, report_text,
                                                 _scaling_inputs(prepared), size)

        def store(path: pathlib.Path) -> int:
            with contextlib.closing(open_db(path)) as db, transaction(db):
                if db.execute("SELECT 1 FROM studies WHERE name = ?", [name]).fetchone():
                    raise StudyExists(f"a study named {name!r} already exists in {db_path.name}")
                study_id = db["studies"].insert({
                    "name": name, "created_at": utc_now(), "size": size,
                    "tasks": json.dumps(list(options.tasks)),
                    # `seed` is NOT NULL in schema 1; options JSON holds null when none was given.
                    "options": json.dumps(options.to_dict()),
                    "seed": options.seed if options.seed is not None else 0,
                    "order_secret": secret,
                    "audit_report": json.dumps(report_dict, default=str),
                    "audit_text": report_text,
                    "reader_title": reader_title,
                }).last_pk
                _insert_cases(db, study_id, prepared, size, training, first_row=1)
                log_action(db, actor, "create_study", study_id,
                           source=str(manifest or images_dir), n_cases=len(prepared),
                           size=size, options=options.to_dict(), leak=report_dict.get("leak"))
                # Move the stimuli in while the transaction is still open; undone on failure.
                move_in(stage, prepared)
            return study_id

        study_id = None
        if not db_path.exists():
            study_id = create_new_db(db_path, store)
        if study_id is None:  # the database existed, or another create made it meanwhile
            study_id = store(db_path)
        stage.committed = True

    generators = sorted({p.row.generator for p in prepared if p.row.source == "synthetic"})
    return StudySummary(
        study_id=study_id, name=name, n_cases=len(prepared),
        n_real=sum(p.row.source == "real" for p in prepared),
        n_synthetic=sum(p.row.source == "synthetic" for p in prepared),
        n_training=len(training), tasks=options.tasks, size=size, seed=options.seed,
        generators=generators, audit=report_dict, audit_text=report_text,
        stimuli_dir=stimuli_dir(db_path), seconds=time.perf_counter() - t0,
        content_warnings=report_dict["content_warnings"],
        skipped=skipped, duplicates=duplicate_pixels(prepared),
        pairing=(pairing_note(rows, make_pairs(
            [(r.case_id, r.source, r.modality, r.group) for r in rows], secret)[1])
            if "pair" in options.tasks else ""),
    )


def pairing_note(rows: list[ManifestRow], unpaired: list) -> str:
    """One line on the 2AFC pairing: pairs made, and the images no pair could use (pairs
    match modality and group, so unequal counts leave some out; readers never see them)."""
    left = set(unpaired)
    n_pairs = (len(rows) - len(left)) // 2
    if not left:
        return f"Pairs: {n_pairs} (every image is in a pair)."
    by_source = {src: sum(r.source == src for r in rows if r.case_id in left)
                 for src in ("real", "synthetic")}
    listed = ", ".join(sorted(map(str, left))[:10]) + (" ..." if len(left) > 10 else "")
    return (f"Pairs: {n_pairs}; {len(left)} image(s) left unpaired ({by_source['real']} real, "
            f"{by_source['synthetic']} synthetic; pairs need a real and a synthetic image of "
            f"the same modality and group) and never shown to readers: {listed}")


@dataclasses.dataclass
class AddSummary:
    study: str
    n_added: int
    n_real: int
    n_synthetic: int
    n_cases: int  # in the study after adding
    audit: dict
    audit_text: str
    seconds: float
    skipped: list[dict] = dataclasses.field(default_factory=list)  # skip_unreadable: row, path, error
    duplicates: list[dict] = dataclasses.field(default_factory=list)  # allowed: row, path, same_as


def duplicate_pixels(prepared: list[_Prepared], existing: dict[str, str] | None = None) -> list[dict]:
    """Images whose blinded stimulus has exactly the same pixels as an earlier one (in the
    study already, `existing` {sha256: case id}, or earlier in this batch): a case read
    twice is a repeat no one planned, and a reader can tell by recognising it."""
    seen = dict(existing or {})
    out = []
    for p in prepared:
        if p.sha256 in seen:
            out.append({"row": p.row.where, "case_id": p.row.case_id, "path": p.row.rel_path,
                        "same_as": seen[p.sha256]})
        else:
            seen[p.sha256] = p.row.case_id
    return out


def _duplicates_text(dups: list[dict]) -> str:
    shown = "; ".join(f"{d['row']}: {d['path']} = case {d['same_as']}" for d in dups[:5])
    return shown + (f"; and {len(dups) - 5} more" if len(dups) > 5 else "")


def add_cases(
    db_path: str | pathlib.Path,
    study: str,
    *,
    manifest: str | pathlib.Path | None = None,
    images_dir: str | pathlib.Path | None = None,
    actor: str = "cli",
    progress: Callable[[int, int], None] | None = None,
    allow_duplicates: bool = False,
    skip_unreadable: bool = False,
) -> AddSummary:
    """Add images (e.g. a generation batch's manifest.csv) to a draft study as main cases.

    Only before the first reader is invited: each reader's session is fixed when they are
    invited, so adding cases later would give readers different case sets. The images are
    blinded exactly like at creation (the study's size), the leak audit is re-run over all
    cases and stored, and it is all one transaction, as in `create_study`.
    Images with exactly the same pixels as a case already in the study (or as another new
    image) are refused, all of them named, unless `allow_duplicates` (then listed in the
    summary's `duplicates`). `skip_unreadable`: as in `create_study`.
    """
    t0 = time.perf_counter()
    if (manifest is None) == (images_dir is None):
        raise StudyError("give exactly one of a manifest or an images folder")
    db_path = pathlib.Path(db_path)
    with contextlib.closing(open_db(db_path, create=False)) as db:
        srow = study_row(db, study)
        _check_draft(db, srow)
        existing = {k for (k,) in db.execute(
            "SELECT case_key FROM cases WHERE study_id = ?", [srow["id"]])}
        stored_pixels = {sha: key for key, sha in db.execute(
            "SELECT c.case_key, s.sha256 FROM cases c JOIN stimuli s ON s.id = c.stimulus_id "
            "WHERE c.study_id = ? ORDER BY c.id DESC", [srow["id"]])}
        first_row = db.execute("SELECT coalesce(max(manifest_row), 0) + 1 FROM cases "
                               "WHERE study_id = ?", [srow["id"]]).fetchone()[0]
    tasks = json.loads(srow["tasks"])
    rows = read_manifest(manifest) if manifest is not None else read_images_dir(images_dir)
    for row in rows:
        if row.case_id in existing:
            raise ManifestError(f"{row.where}: case_id {row.case_id!r} is already in study "
                                f"{study!r}")
        if "alignment" in tasks and not row.prompt:
            raise ManifestError(f"{row.where}: the alignment task shows the prompt, "
                                "but this image has none")
    size = srow["size"]
    with staging(db_path) as stage:
        prepared, items, skipped = _prepare(rows, size, stage.incoming, progress,
                                            grey_strata=stored_grey_strata(db_path, srow["id"]),
                                            skip_unreadable=skip_unreadable)
        if not prepared:
            raise IngestError(f"none of the {len(rows)} images could be read")
        duplicates = duplicate_pixels(prepared, stored_pixels)
        if duplicates and not allow_duplicates:
            raise StudyError(f"{len(duplicates)} of {len(prepared)} image(s) have exactly the "
                             f"same pixels as a case already in {study!r} or earlier in this "
                             f"batch ({_duplicates_text(duplicates)}); nothing was added. Remove "
                             "them, or allow duplicates (--allow-duplicates) to add them anyway")
        items = _stored_audit_items(db_path, srow["id"]) + items
        report = audit_mod.audit_leaks(items, prompts_shown="alignment" in tasks)
        del items
        earlier_report = json.loads(srow["audit_report"] or "{}")
        earlier = earlier_report.get("content_warnings", [])
        report_dict, report_text = with_content_warnings(
            report.to_dict(), report.format_text(), earlier + content_warnings(prepared))
        report_dict, report_text = with_ingest_checks(
            report_dict, report_text, ingest_checks(prepared, earlier_report))
        report_dict, report_text = _with_scaling(
            report_dict, report_text,
            _stored_scaling_inputs(db_path, srow["id"]) + _scaling_inputs(prepared), size)
        with contextlib.closing(open_db(db_path)) as db, transaction(db):
            _check_draft(db, srow)  # again inside the write lock: no invite slipped in
            _insert_cases(db, srow["id"], prepared, size, set(), first_row=first_row)
            db.execute("UPDATE studies SET audit_report = ?, audit_text = ? WHERE id = ?",
                       [json.dumps(report_dict, default=str), report_text, srow["id"]])
            log_action(db, actor, "add_cases", srow["id"], source=str(manifest or images_dir),
                       n_cases=len(prepared), leak=report_dict.get("leak"))
            n_cases = db.execute("SELECT count(*) FROM cases WHERE study_id = ?",
                                 [srow["id"]]).fetchone()[0]
            move_in(stage, prepared)
        stage.committed = True
    return AddSummary(
        study=srow["name"], n_added=len(prepared),
        n_real=sum(p.row.source == "real" for p in prepared),
        n_synthetic=sum(p.row.source == "synthetic" for p in prepared),
        n_cases=n_cases, audit=report_dict, audit_text=report_text,
        seconds=time.perf_counter() - t0, skipped=skipped, duplicates=duplicates)


def _check_size(size) -> None:
    if size == sizing.AUTO:
        return
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise StudyError(f"size must be 'auto' or a whole number of pixels between {MIN_SIZE} "
                         f"and {MAX_SIZE}")


def _resolve_size(rows: list[ManifestRow], size: int | str) -> int:
    """`size`, or for "auto" the side `sizing.auto_size` picks from the file headers."""
    if size != sizing.AUTO:
        return size
    sides = []
    for row in rows:
        dims = sizing.probe_size(row.path, axis=row.axis)
        sides.append(max(dims) if dims else None)
    return sizing.auto_size(sides)


def _scaling_inputs(prepared: list[_Prepared]) -> list[tuple[str, int | None, int | None]]:
    return [(p.row.case_id, p.original.get("original_width"), p.original.get("original_height"))
            for p in prepared]


def _stored_scaling_inputs(db_path, study_id: int) -> list[tuple[str, int | None, int | None]]:
    with contextlib.closing(open_db(db_path, create=False)) as db:
        return [tuple(r) for r in db.execute(
            "SELECT c.case_key, s.original_width, s.original_height FROM cases c "
            "JOIN stimuli s ON s.id = c.stimulus_id WHERE c.study_id = ? ORDER BY c.id",
            [study_id])]


def _with_scaling(report_dict: dict, text: str, originals, size: int) -> tuple[dict, str]:
    """The leak audit plus the scaling check (`scaling` key, text appended if it warns)."""
    check = audit_mod.scaling_check(originals, size)
    extra = audit_mod.format_scaling(check)
    return report_dict | {"scaling": check}, (f"{text}\n{extra}" if extra else text)


def _check_draft(db, srow) -> None:
    if db.execute("SELECT 1 FROM readers WHERE study_id = ?", [srow["id"]]).fetchone():
        raise StudyError(f"study {srow['name']!r} already has invited readers; cases can only "
                         "be added before the first invitation (create a new study instead)")


def _prepare(rows: list[ManifestRow], size: int, incoming: pathlib.Path,
             progress: Callable[[int, int], None] | None,
             grey_strata: dict[str, bool] | None = None, *, skip_unreadable: bool = False):
    """Decode and blind every row into `incoming`; returns (prepared, audit items, skipped).

    An unreadable image raises IngestError, or with `skip_unreadable` is listed in skipped.
    Real images go first so that each modality is known to be greyscale or not before its
    synthetic images are stored (see `_grey_decision`); `grey_strata` adds what stored real
    images already showed (when adding cases)."""
    prepared: list = [None] * len(rows)
    items: list = [None] * len(rows)
    skipped: list[tuple[int, dict]] = []
    grey = GreyStrata(dict(grey_strata or {}))
    order = sorted(range(len(rows)), key=lambda i: rows[i].source != "real")
    for done, i in enumerate(order, start=1):
        row = rows[i]
        try:
            decoded = _decode(row, size)
        except IngestError as exc:
            if not skip_unreadable:
                raise
            skipped.append((i, {"row": row.where, "case_id": row.case_id, "path": row.rel_path,
                                "error": str(exc)}))
            if progress:
                progress(done, len(rows))
            continue
        greyed = left = None
        if row.source == "real":
            grey.see_real(row.modality, decoded.pixels)
        elif grey.is_grey_stratum(row.modality) and not imaging.is_grey(decoded.pixels):
            spread = imaging.grey_spread(decoded.pixels)
            if spread <= imaging.NEAR_GREY_LEVELS:
                decoded.pixels, greyed = imaging.to_luma(decoded.pixels), round(spread, 2)
            else:
                left = round(spread, 2)
        png = stimuli.encode_png(stimuli.normalise(decoded, size))
        sid = stimuli.new_stimulus_id()
        (incoming / f"{sid}.png").write_bytes(png)
        original = {k: getattr(decoded, k) for k in _ORIGINAL_FIELDS}
        degenerate = decoded.degenerate
        burned_in = decoded.burned_in
        del decoded  # keep only metadata, not the float image
        prepared[i] = _Prepared(row, sid, hashlib.sha256(png).hexdigest(), original,
                                degenerate, greyed=greyed, left_colour=left,
                                burned_in=burned_in)
        items[i] = audit_mod.AuditItem(
            source=row.source, png=png, modality=row.modality, generator=row.generator,
            prompt=row.prompt, group=row.group,
            **{k: v for k, v in original.items() if k != "original_bytes"})
        if progress:
            progress(done, len(rows))
    return ([p for p in prepared if p is not None], [it for it in items if it is not None],
            [entry for _, entry in sorted(skipped, key=lambda pair: pair[0])])


def _insert_cases(db, study_id: int, prepared: list[_Prepared], size: int,
                  training: set[str], *, first_row: int) -> None:
    db["stimuli"].insert_all(({
        "id": p.stimulus_id, "study_id": study_id, "sha256": p.sha256,
        "width": size, "height": size,
        **p.original,
    } for p in prepared), batch_size=500)
    db["cases"].insert_all(({
        "study_id": study_id, "case_key": p.row.case_id, "stimulus_id": p.stimulus_id,
        "source": p.row.source, "modality": p.row.modality, "prompt": p.row.prompt,
        "generator": p.row.generator, "group_name": p.row.group,
        "original_path": p.row.rel_path,
        "decode_options": json.dumps(p.row.decode_options()),
        "role": "training" if p.row.case_id in training else "main",
        "manifest_row": first_row + i,
    } for i, p in enumerate(prepared)), batch_size=500)


def list_studies(db_path: str | pathlib.Path) -> list[dict]:
    """One dict per study, newest first (for the studio's admin view): id, name, created_at, size, tasks (list), options
    (dict), seed (the --seed given, else None), n_cases, n_real, n_synthetic, n_training, generators (list), n_readers,
    leak (bool, or None if the audit could not be stored)."""
    with contextlib.closing(open_db(db_path, create=False)) as db:
        rows = db.execute(
            "SELECT s.id, s.name, s.created_at, s.size, s.tasks, s.options, s.seed, s.audit_report, "
            " (SELECT count(*) FROM cases c WHERE c.study_id = s.id), "
            " (SELECT count(*) FROM cases c WHERE c.study_id = s.id AND c.source = 'real'), "
            " (SELECT count(*) FROM cases c WHERE c.study_id = s.id AND c.role = 'training'), "
            " (SELECT json_group_array(DISTINCT c.generator) FROM cases c "
            "   WHERE c.study_id = s.id AND c.source = 'synthetic' AND c.generator != ''), "
            " (SELECT count(*) FROM readers r WHERE r.study_id = s.id) "
            "FROM studies s ORDER BY s.created_at DESC, s.id DESC").fetchall()
    out = []
    for (sid, name, created, size, tasks, options, seed, report, n_cases, n_real, n_training,
         generators, n_readers) in rows:
        leak = audit_mod.is_flagged(json.loads(report)) if report else None
        out.append({
            "id": sid, "name": name, "created_at": created, "size": size,
            "tasks": json.loads(tasks), "options": json.loads(options),
            "seed": json.loads(options).get("seed"),
            "n_cases": n_cases, "n_real": n_real, "n_synthetic": n_cases - n_real,
            "n_training": n_training,
            "generators": sorted(json.loads(generators)) if generators else [],
            "n_readers": n_readers, "leak": leak,
        })
    return out


def audit_study(db_path: str | pathlib.Path, study: str, *, recompute: bool = False,
                actor: str = "cli") -> tuple[dict, str]:
    """The study's leak-audit report (dict, text). `recompute=True` re-runs the audit on the
    stored stimuli and the recorded original metadata, and stores the new report."""
    with reading(db_path) as db:  # read-only: works in a read-only folder
        row = study_row(db, study)
        if not recompute and row["audit_report"]:
            return json.loads(row["audit_report"]), row["audit_text"] or ""
    items = _stored_audit_items(db_path, row["id"])
    report = audit_mod.audit_leaks(items, prompts_shown="alignment" in json.loads(row["tasks"]))
    # The stimuli do not change, so neither do their content warnings and ingest checks.
    earlier_report = json.loads(row["audit_report"] or "{}")
    earlier = earlier_report.get("content_warnings", [])
    report_dict, text = with_content_warnings(report.to_dict(), report.format_text(), earlier)
    report_dict, text = with_ingest_checks(report_dict, text,
                                            ingest_checks([], earlier_report))
    report_dict, text = _with_scaling(report_dict, text,
                                      _stored_scaling_inputs(db_path, row["id"]), row["size"])

    def store(db):
        db.execute("UPDATE studies SET audit_report = ?, audit_text = ? WHERE id = ?",
                   [json.dumps(report_dict, default=str), text, row["id"]])
        log_action(db, actor, "audit_study", row["id"], leak=report_dict.get("leak"))

    write(db_path, store)
    return report_dict, text


def _stored_audit_items(db_path: pathlib.Path, study_id: int) -> list[audit_mod.AuditItem]:
    """Audit items of a study's stored stimuli and their recorded original metadata."""
    with reading(db_path) as db:
        cases = list(db.query(
            "SELECT c.source, c.modality AS case_modality, c.generator AS case_generator, "
            "c.prompt AS case_prompt, c.group_name AS case_group, s.* FROM cases c "
            "JOIN stimuli s ON s.id = c.stimulus_id WHERE c.study_id = ? ORDER BY c.id",
            [study_id]))
    sdir = stimuli_dir(db_path)
    items = []
    for c in cases:
        path = sdir / f"{c['id']}.png"
        try:
            png = path.read_bytes()
        except OSError:
            raise StudyError(f"stimulus file missing: {path}") from None
        items.append(audit_mod.AuditItem(
            source=c["source"], original_format=c["original_format"],
            original_width=c["original_width"], original_height=c["original_height"],
            original_mode=c["original_mode"], original_bit_depth=c["original_bit_depth"],
            png=png, modality=c["case_modality"] or "", generator=c["case_generator"] or "",
            prompt=c["case_prompt"] or "", group=c["case_group"] or ""))
    return items
