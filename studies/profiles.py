"""A reader's profile and consent: the profile fields every study asks (plus the study's
own), their checks, the reader's own profile form, and agreeing to (or declining) the
study's consent text.

The coordinator may fill profiles in at invitation (`readers.invite(profile=...)`, a readers
CSV); when the study asks (`lifecycle.set_texts(ask_profile=True)`) the reader also fills in
the form before the first case (`profile_form`, `update_profile(complete=True)`), with the
coordinator's values pre-filled: the reader may correct them (they know their own specialty
and experience best; a change is logged with the previous value).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib

from studies.errors import ReaderError
from studies.records import log_action
from studies.storage.connections import reading
from studies.storage.group_commit import write
from studies.storage.schema import utc_now

PROFILE_FIELDS = ("specialty", "years_experience")  # every study; more via study_texts
PROFILE_LABELS = {"specialty": "Specialty", "years_experience": "Years of experience"}
MAX_PROFILE_VALUE = 200
# Invisible characters that reorder or hide text (bidi overrides/isolates, zero-width
# space, BOM): a profile value is shown in the admin and exported, so it must read as typed.
_HIDDEN_CHARS = frozenset("\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                          "\u2066\u2067\u2068\u2069\ufeff")


def check_profile(profile: dict | None, extra_fields=()) -> dict:
    """A reader profile with only known fields (`PROFILE_FIELDS` plus the study's own),
    short printable text values and `years_experience` a whole number 0-70; empty values
    dropped. ReaderError otherwise."""
    out: dict = {}
    allowed = set(PROFILE_FIELDS) | set(extra_fields)
    for key, value in (profile or {}).items():
        key = str(key).strip().lower()
        if key not in allowed:
            raise ReaderError(f"unknown profile field {key!r}; this study has "
                              f"{', '.join(sorted(allowed))}")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        text = str(value).strip()
        if not text:
            continue
        if (len(text) > MAX_PROFILE_VALUE
                or any(ord(c) < 32 or 127 <= ord(c) < 160 or c in _HIDDEN_CHARS for c in text)):
            raise ReaderError(f"profile field {key!r} must be plain text of at most "
                              f"{MAX_PROFILE_VALUE} printable characters (one line)")
        if key == "years_experience":
            try:
                years = float(text)
            except ValueError:
                years = -1.0
            if not (0 <= years <= 70 and years == int(years)):
                raise ReaderError(f"years_experience {text!r} is not a whole number 0-70")
            out[key] = int(years)
        else:
            out[key] = text
    return out


def study_profile_fields(srow: dict) -> list[str]:
    try:
        return list(json.loads(srow.get("profile_fields") or "[]"))
    except ValueError:
        return []


def consent_pending(db_path: str | pathlib.Path, reader_id: int) -> str:
    """The study's consent text if the reader has not agreed to it yet, else "" (also when
    the study has none). One query: the reader page asks on every load and start."""
    with reading(db_path) as db:
        row = db.execute("SELECT s.consent_text, r.consented_at FROM readers r "
                         "JOIN studies s ON s.id = r.study_id WHERE r.id = ?",
                         [reader_id]).fetchone()
    if row is None or not (row[0] or "").strip() or row[1]:
        return ""
    return row[0]


def record_consent(db_path: str | pathlib.Path, reader_id: int) -> str:
    """Record that the reader agreed to the study's consent text; returns the consent time
    (the first one: agreeing again changes nothing)."""
    def tx(db) -> str:
        row = db.execute("SELECT consented_at, study_id FROM readers WHERE id = ?",
                         [reader_id]).fetchone()
        if row is None:
            raise ReaderError("unknown reader")
        if row[0]:
            return row[0]
        now = utc_now()
        db.execute("UPDATE readers SET consented_at = ? WHERE id = ?", [now, reader_id])
        log_action(db, "reader", "consent", row[1], reader_id=reader_id)
        return now

    return write(db_path, tx)


def record_consent_declined(db_path: str | pathlib.Path, reader_id: int) -> str:
    """Record (in the audit log) that the reader declined the study's consent text; returns
    the time. Nothing else changes: the reader sees no case, and may still agree later."""
    def tx(db) -> str:
        row = db.execute("SELECT study_id FROM readers WHERE id = ?", [reader_id]).fetchone()
        if row is None:
            raise ReaderError("unknown reader")
        now = utc_now()
        log_action(db, "reader", "consent_declined", row[0], reader_id=reader_id, at=now)
        return now

    return write(db_path, tx)


def profile_label(field: str) -> str:
    """What the reader's profile form calls a field (`site_name` -> "Site name")."""
    return PROFILE_LABELS.get(field) or field.replace("_", " ").capitalize()


@dataclasses.dataclass(frozen=True)
class ProfileForm:
    """The profile form a reader still has to fill in (`profile_form`)."""
    fields: tuple[str, ...]   # specialty, years_experience, then the study's own; all required
    labels: tuple[str, ...]   # what the form calls each field
    values: dict              # stored values (e.g. the coordinator's CSV), shown pre-filled


def profile_form(db_path: str | pathlib.Path, reader_id: int) -> ProfileForm | None:
    """The profile form to show this reader before their first case, or None when the study
    does not ask for one (`lifecycle.set_texts(ask_profile=...)`) or the reader has already
    submitted it (so a resumed session does not ask again). One query: the reader page asks
    on every load and start."""
    with reading(db_path) as db:
        row = db.execute("SELECT s.ask_profile, s.profile_fields, r.profile, "
                         "r.profile_completed_at FROM readers r JOIN studies s "
                         "ON s.id = r.study_id WHERE r.id = ?", [reader_id]).fetchone()
    if row is None or not row[0] or row[3]:
        return None
    fields = tuple(PROFILE_FIELDS) + tuple(study_profile_fields({"profile_fields": row[1]}))
    values = json.loads(row[2] or "{}")
    return ProfileForm(fields=fields, labels=tuple(profile_label(f) for f in fields),
                       values={f: values[f] for f in fields if f in values})


def update_profile(db_path: str | pathlib.Path, reader_id: int, profile: dict, *,
                   complete: bool = False, actor: str = "cli") -> dict:
    """Merge `profile` (checked by `check_profile` against the study's fields: short
    printable text, years_experience a whole number 0-70) into the reader's profile;
    returns the stored profile.

    `complete=True` is the reader's own profile form: every field of the form (built-in
    and the study's own) must be filled in — the submitted values replace what the
    coordinator's invitation stored (the reader may correct it) — and the time is recorded
    as `profile_completed_at` (the first submission's). ReaderError naming the missing or
    invalid fields otherwise, and nothing is stored. Changes are logged with the previous
    values, so a corrected invitation value stays traceable."""
    def tx(db) -> dict:
        row = db.execute("SELECT r.profile, s.profile_fields, r.study_id, "
                         "r.profile_completed_at FROM readers r "
                         "JOIN studies s ON s.id = r.study_id WHERE r.id = ?",
                         [reader_id]).fetchone()
        if row is None:
            raise ReaderError("unknown reader")
        fields = study_profile_fields({"profile_fields": row[1]})
        checked = check_profile(profile, fields)
        if complete:
            missing = [profile_label(f) for f in (*PROFILE_FIELDS, *fields) if f not in checked]
            if missing:
                raise ReaderError("Please fill in: " + ", ".join(missing))
        before = json.loads(row[0] or "{}")
        merged = before | checked
        changes = {k: [before.get(k), v] for k, v in checked.items() if before.get(k) != v}
        completed_at = row[3] or (utc_now() if complete else None)
        db.execute("UPDATE readers SET profile = ?, profile_completed_at = ? WHERE id = ?",
                   [json.dumps(merged), completed_at, reader_id])
        if changes or completed_at != row[3]:
            log_action(db, actor, "update_profile", row[2], reader_id=reader_id,
                       changed=changes, completed=bool(complete))
        return merged

    return write(db_path, tx)
