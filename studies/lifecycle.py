"""A study's life after creation: status (open, closed, archived) and the texts readers
see before the first case (instructions, consent) plus the reader profile: the study's own
profile fields and whether the reader page asks the reader to fill in their profile
(`ask_profile`; the form, its required fields and validation: `profiles.profile_form`).

- open: readers may answer; new readers may be invited.
- closed: readers can no longer answer (the reader page shows a polite closed page; see
  `readers.reader_status`); answers, exports and analysis stay available. Reopening is
  allowed.
- archived: closed, and listed apart in the admin; nothing is deleted.

Going back (`set_allow_back`): whether a reader may return to the previous case and change
the answer (`session.go_back`). New studies allow it; studies created before this option
existed keep the protocol they started with (forbidden) until a coordinator allows it.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re

from studies.records import log_action, study_row
from studies.storage.connections import reading
from studies.storage.schema import utc_now
from studies.storage.group_commit import write
from studies.errors import StudyError

STATUSES = ("open", "closed", "archived")
MAX_TEXT = 20_000
MAX_PROFILE_FIELDS = 20
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,39}")
_RESERVED = {"reader", "specialty", "years_experience", "study", "case", "task", "source",
             "generator", "modality", "prompt", "truth", "response", "rating", "group",
             "comment", "non_diagnostic"}


@dataclasses.dataclass(frozen=True)
class StudyTexts:
    status: str
    status_at: str | None
    instructions: str
    consent: str           # empty: no consent step
    profile_fields: list[str]
    ask_profile: bool = False  # the reader fills in their profile before the first case
    allow_back: bool = True  # readers may go back to the previous case (session.go_back)
    reader_title: str = ""   # the title readers see (empty: READER_TITLE_DEFAULT)


def set_status(db_path: str | pathlib.Path, study: str, status: str, *,
               actor: str = "cli") -> None:
    """Open, close or archive `study` (logged)."""
    if status not in STATUSES:
        raise StudyError(f"unknown study status {status!r}; choose from {', '.join(STATUSES)}")

    def tx(db) -> None:
        srow = study_row(db, study)
        db.execute("UPDATE studies SET status = ?, status_at = ? WHERE id = ?",
                   [status, utc_now(), srow["id"]])
        log_action(db, actor, f"study_{status}", srow["id"], previous=srow.get("status"))

    write(db_path, tx)


def set_allow_back(db_path: str | pathlib.Path, study: str, allowed: bool, *,
                   actor: str = "cli") -> None:
    """Allow or forbid going back to the previous case (logged). Takes effect at the
    readers' next screen; answers already changed stay as they are."""
    if not isinstance(allowed, bool):
        raise StudyError("allow_back must be true or false")

    def tx(db) -> None:
        srow = study_row(db, study)
        db.execute("UPDATE studies SET allow_back = ? WHERE id = ?", [int(allowed), srow["id"]])
        log_action(db, actor, "set_allow_back", srow["id"], allowed=allowed,
                   previous=bool(srow.get("allow_back")))

    write(db_path, tx)


def _check_text(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise StudyError(f"{what} must be text")
    text = text.replace("\r\n", "\n").strip()
    if len(text) > MAX_TEXT or any(ord(c) < 32 and c not in "\n\t" for c in text):
        raise StudyError(f"{what} must be at most {MAX_TEXT} printable characters")
    return text


MAX_TITLE = 120
# What readers see as the title when the study team set none: never the internal name.
READER_TITLE_DEFAULT = "Reader study"


def check_reader_title(title: str | None) -> str | None:
    """The reader-facing title, one line of at most MAX_TITLE printable characters (None:
    leave as is; "" clears, so readers see READER_TITLE_DEFAULT)."""
    if title is None:
        return None
    if not isinstance(title, str):
        raise StudyError("title must be text")
    title = " ".join(title.split())  # one line: a title has no layout of its own
    if len(title) > MAX_TITLE or any(not c.isprintable() for c in title):
        raise StudyError(f"title must be one line of at most {MAX_TITLE} printable characters")
    return title


def check_profile_fields(fields) -> list[str]:
    """Study-defined profile fields: lower-case identifiers (letters, digits, _), not
    clashing with the built-in profile fields or the long export's columns."""
    if isinstance(fields, str):
        fields = [f for f in fields.split(",")]
    out: list[str] = []
    for f in fields or ():
        f = str(f).strip().lower()
        if not f:
            continue
        if not _FIELD.fullmatch(f):
            raise StudyError(f"profile field {f!r} must be a lower-case identifier "
                             "(letters, digits, _; at most 40)")
        if f in _RESERVED:
            raise StudyError(f"profile field {f!r} is built in or a column of the export")
        if f not in out:
            out.append(f)
    if len(out) > MAX_PROFILE_FIELDS:
        raise StudyError(f"at most {MAX_PROFILE_FIELDS} profile fields")
    return out


def set_texts(db_path: str | pathlib.Path, study: str, *, instructions: str | None = None,
              consent: str | None = None, profile_fields=None, ask_profile: bool | None = None,
              allow_back: bool | None = None, title: str | None = None,
              actor: str = "cli") -> StudyTexts:
    """Set the instructions and/or consent text shown before the first case (None: leave
    as is; "" clears), the reader-facing title (`check_reader_title`), the study's own reader profile fields (e.g. `site,country`),
    whether readers fill in their profile themselves before the first case (`ask_profile`)
    and/or whether readers may go back (`set_allow_back`), in one transaction."""
    if ask_profile is not None and not isinstance(ask_profile, bool):
        raise StudyError("ask_profile must be true or false")
    if allow_back is not None and not isinstance(allow_back, bool):
        raise StudyError("allow_back must be true or false")
    instructions = _check_text(instructions, "instructions")
    consent = _check_text(consent, "consent text")
    title = check_reader_title(title)
    fields = check_profile_fields(profile_fields) if profile_fields is not None else None

    def tx(db) -> None:
        srow = study_row(db, study)
        changes = {k: v for k, v in (("instructions", instructions), ("consent_text", consent),
                                     ("profile_fields", json.dumps(fields) if fields is not None
                                      else None),
                                     ("ask_profile", None if ask_profile is None
                                      else int(ask_profile)),
                                     ("allow_back", None if allow_back is None
                                      else int(allow_back)),
                                     ("reader_title", title)) if v is not None}
        if not changes:
            return
        db["studies"].update(srow["id"], changes)
        log_action(db, actor, "set_study_texts", srow["id"], changed=sorted(changes))

    write(db_path, tx)
    return study_texts(db_path, study)


def study_texts(db_path: str | pathlib.Path, study: str) -> StudyTexts:
    """Status, instructions, consent text, profile fields, going-back rule and
    reader-facing title of `study`."""
    with reading(db_path) as db:
        srow = study_row(db, study)
    return StudyTexts(status=srow.get("status") or "open", status_at=srow.get("status_at"),
                      instructions=srow.get("instructions") or "",
                      consent=srow.get("consent_text") or "",
                      profile_fields=json.loads(srow.get("profile_fields") or "[]"),
                      ask_profile=bool(srow.get("ask_profile")),
                      allow_back=bool(srow.get("allow_back", 1)),
                      reader_title=srow.get("reader_title") or "")


def has_readers(db_path: str | pathlib.Path, study: str) -> bool:
    """Whether any reader was ever invited to `study` (a study with none is a draft)."""
    with reading(db_path) as db:
        sid = study_row(db, study)["id"]
        return db.execute("SELECT 1 FROM readers WHERE study_id = ? LIMIT 1",
                          [sid]).fetchone() is not None


def study_statuses(db_path: str | pathlib.Path) -> dict[str, str]:
    """The stored status of every study, by name."""
    with reading(db_path) as db:
        return {n: st for n, st in db.execute("SELECT name, status FROM studies")}
