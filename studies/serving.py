"""Serving a reader's images: the stored PNG of a read, only to that reader, and the
stimulus faults readers meet (a missing or unreadable stored file), logged for the team.

A read's image is named by its random view id (`CaseView.stimulus_id`, and
`pair_stimulus_id` for the right-hand image of a pair); the stored file's own id never
reaches the browser.
"""
from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

from studies.errors import NotAuthorised, StudyError
from studies.records import log_action
from studies.storage.connections import reading, stimuli_dir
from studies.storage.group_commit import write

if TYPE_CHECKING:
    from studies.session import CaseView

MAX_ID = 200  # longest view id accepted from a request


class StimulusUnavailable(StudyError):
    """The stored stimulus file of a read is missing or unreadable (a storage fault, not the
    reader's doing): `stimulus_id` names it for the study team."""

    def __init__(self, stimulus_id: str, reason: str, reader_id: int | None = None):
        super().__init__(f"stimulus {stimulus_id} is unavailable: {reason}")
        self.stimulus_id, self.reason, self.reader_id = stimulus_id, reason, reader_id


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# A read's images: its own (view_id, the left one of a pair) and, for the pair task, the
# right-hand one (pair_view_id). Either id finds the read, under the same conditions, and
# names its own stored file; each is unique over all reads (unique indexes).
_READ_IMAGES = ("assignments a JOIN cases c ON c.id = a.case_id "
                "LEFT JOIN cases p ON p.id = a.pair_case_id")
_STORED_OF_VIEW = "CASE WHEN a.view_id = ? THEN c.stimulus_id ELSE p.stimulus_id END"
_VIEW_MATCH = "(a.view_id = ? OR a.pair_view_id = ?)"


def _stimulus_of_read(db_path, reader_id: int, view_id: str, current_only: bool) -> str:
    if not isinstance(view_id, str) or not view_id or len(view_id) > MAX_ID:
        raise NotAuthorised("unknown image")
    pending = "AND a.completed_at IS NULL " if current_only else ""
    with reading(db_path) as db:
        row = db.execute(
            f"SELECT {_STORED_OF_VIEW} FROM {_READ_IMAGES} "
            f"WHERE {_VIEW_MATCH} AND a.reader_id = ? {pending}",
            [view_id, view_id, view_id, reader_id]).fetchone()
    if row is None:
        raise NotAuthorised("unknown image")
    return row[0]


def stimulus_png(db_path: str | pathlib.Path, reader_id: int, stimulus_id: str, *,
                 current_only: bool = False) -> bytes:
    """PNG bytes of a stimulus, only if `stimulus_id` (a CaseView.stimulus_id or
    pair_stimulus_id: the random view id of one image of a read) belongs to one of this
    reader's assignments — with `current_only`, one not yet completed (the read on screen)
    — NotAuthorised otherwise; StimulusUnavailable when the stored file is missing or
    unreadable."""
    sid = _stimulus_of_read(db_path, reader_id, stimulus_id, current_only)
    try:
        data = (stimuli_dir(db_path) / f"{sid}.png").read_bytes()
    except OSError as exc:
        raise StimulusUnavailable(sid, exc.strerror or type(exc).__name__) from None
    if not data.startswith(_PNG_SIGNATURE):
        raise StimulusUnavailable(sid, "not a PNG")
    return data


def current_stimulus_png(db_path: str | pathlib.Path, token: str | None,
                         view_id: str) -> tuple[int, bytes]:
    """(reader id, PNG bytes) of the image `view_id` (either image of a pair) if it belongs
    to an unanswered read of the reader holding `token` in an open study — one query on one
    connection, for the image route. NotAuthorised for anything else (no token, another
    reader's read, an answered read, an unknown id, a closed study: the same answer);
    StimulusUnavailable when the stored file is missing or unreadable."""
    from studies.readers import token_hash

    if (not isinstance(token, str) or not token or len(token) > 256
            or not isinstance(view_id, str) or not view_id or len(view_id) > MAX_ID):
        raise NotAuthorised("unknown image")
    with reading(db_path) as db:
        row = db.execute(
            f"SELECT r.id, {_STORED_OF_VIEW} FROM {_READ_IMAGES} "
            "JOIN readers r ON r.id = a.reader_id JOIN studies s ON s.id = r.study_id "
            f"WHERE r.token_hash = ? AND {_VIEW_MATCH} AND a.completed_at IS NULL "
            "AND r.deactivated_at IS NULL "  # a deactivated link fetches nothing either,
            "AND coalesce(s.status, 'open') = 'open'",  # nor a closed or archived study's
            [view_id, token_hash(token), view_id, view_id]).fetchone()
    if row is None:
        raise NotAuthorised("unknown image")
    reader_id, sid = row
    try:
        data = (stimuli_dir(db_path) / f"{sid}.png").read_bytes()
    except OSError as exc:
        raise StimulusUnavailable(sid, exc.strerror or type(exc).__name__, reader_id) from None
    if not data.startswith(_PNG_SIGNATURE):
        raise StimulusUnavailable(sid, "not a PNG", reader_id)
    return reader_id, data


def check_stimulus(db_path: str | pathlib.Path, view: CaseView) -> None:
    """Cheap availability check of a read's stored PNG (opens it and reads its signature)
    before the page points the browser at it — both images of a pair; StimulusUnavailable
    for the first that is not there."""
    for sid in (view.stored_id, view.pair_stored_id):
        if sid is None:
            continue
        try:
            with open(stimuli_dir(db_path) / f"{sid}.png", "rb") as fh:
                head = fh.read(len(_PNG_SIGNATURE))
        except OSError as exc:
            raise StimulusUnavailable(sid, exc.strerror or type(exc).__name__) from None
        if head != _PNG_SIGNATURE:
            raise StimulusUnavailable(sid, "not a PNG")


FAULT_ACTION = "stimulus_unavailable"


def record_fault(db_path: str | pathlib.Path, reader_id: int, stimulus_id: str,
                 reason: str) -> None:
    """Log a stimulus fault in audit_log (actor `reader:<name>`) for the admin's progress
    view (`faults`)."""
    def tx(db) -> None:
        row = db.execute("SELECT study_id, name FROM readers WHERE id = ?",
                         [reader_id]).fetchone()
        if row is not None:
            log_action(db, f"reader:{row[1]}", FAULT_ACTION, row[0],
                       stimulus=stimulus_id, reason=reason)

    write(db_path, tx)
