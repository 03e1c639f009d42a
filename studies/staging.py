"""Putting a new study's stimulus files and database in place, all or nothing.

New PNGs are written to a private folder inside the stimuli folder (same file system, so
moving them in is a rename), moved into place only inside the open transaction, and removed
again if the commit does not happen; a new database is built under a private name and linked
into place only when complete.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pathlib
import secrets
import shutil
import time
from collections.abc import Callable

from studies.errors import StudyError
from studies.storage.connections import stimuli_dir


@dataclasses.dataclass
class Stage:
    sdir: pathlib.Path
    incoming: pathlib.Path
    moved: list[pathlib.Path]
    committed: bool = False


def create_new_db(db_path: pathlib.Path, store: Callable[[pathlib.Path], int]) -> int | None:
    """Build a new database with `store` under a private name and link it into place at
    `db_path`; the study id, or None if a database appeared at `db_path` meanwhile (the
    caller then stores into that one). Our temporary files are removed in every case."""
    tmp = db_path.with_name(f".{db_path.name}.new-{secrets.token_hex(8)}")
    try:
        study_id = store(tmp)
        # The connection is closed: SQLite folded the WAL into the file and removed it, so
        # the one file is the whole database.
        if pathlib.Path(f"{tmp}-wal").exists():
            raise StudyError(f"could not finish writing the new database {tmp}")
        try:
            os.link(tmp, db_path)  # atomic, and refuses to replace an existing file
        except FileExistsError:
            return None
        except OSError:  # a file system without hard links: best effort, checked first
            if db_path.exists():
                return None
            os.rename(tmp, db_path)
        return study_id
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            pathlib.Path(f"{tmp}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def staging(db_path: pathlib.Path):
    """A private folder for new stimulus PNGs; unless `stage.committed` is set, everything
    it put in place (moved files, a new stimuli folder) is undone."""
    sdir = stimuli_dir(db_path)
    sdir_existed = sdir.exists()
    sdir.mkdir(exist_ok=True)
    sweep_stale_incoming(sdir, db_path)
    stage = Stage(sdir, sdir / f".incoming-{secrets.token_hex(8)}", [])
    stage.incoming.mkdir()
    try:
        yield stage
    finally:
        shutil.rmtree(stage.incoming, ignore_errors=True)
        if not stage.committed:
            for path in stage.moved:
                path.unlink(missing_ok=True)
            if not sdir_existed:
                with contextlib.suppress(OSError):
                    sdir.rmdir()  # only if empty


def move_in(stage: Stage, prepared: list) -> None:
    done = set(stage.moved)  # a second attempt (see create_new_db) skips what is in place
    for p in prepared:
        final = stage.sdir / f"{p.stimulus_id}.png"
        if final in done:
            continue
        os.replace(stage.incoming / f"{p.stimulus_id}.png", final)
        stage.moved.append(final)


def sweep_stale_incoming(sdir: pathlib.Path, db_path: pathlib.Path,
                          max_age_s: float = 24 * 3600) -> None:
    """Remove temporary folders left by a create that was killed (older than a day, so a
    concurrent create's folder is never touched)."""
    now = time.time()
    for path in sdir.glob(".incoming-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > max_age_s:
                shutil.rmtree(path, ignore_errors=True)
    # ... and new databases a killed create was still building (see create_new_db).
    for path in db_path.parent.glob(f".{glob.escape(db_path.name)}.new-*"):
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
