"""The study database's schema: its migrations, in order, and the timestamps it stores.

`SCHEMA_VERSION` is the version this software writes; `MIGRATIONS` brings any older file up
to it (applied by `connections.open_db` under the write lock). Append new migrations; never
edit an applied one.
"""
from __future__ import annotations

import datetime as _dt
import json
import secrets
import sqlite3
from collections.abc import Callable

from sqlite_utils import Database

SCHEMA_VERSION = 10


def utc_text(t: _dt.datetime) -> str:
    """How a time is stored: ISO-8601 UTC with milliseconds and a Z (sorts lexically =
    chronologically); a time without a zone is taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    """The current time as stored (`utc_text`)."""
    return utc_text(_dt.datetime.now(_dt.timezone.utc))


def _migration_1(db: Database) -> None:
    db["studies"].create(
        {
            "id": int, "name": str, "created_at": str, "size": int, "tasks": str,
            "options": str, "seed": int, "audit_report": str, "audit_text": str,
        },
        pk="id", not_null={"name", "created_at", "size", "tasks", "options", "seed"},
    )
    db["studies"].create_index(["name"], unique=True)
    db["stimuli"].create(
        {
            "id": str, "study_id": int, "sha256": str, "width": int, "height": int,
            "original_format": str, "original_width": int, "original_height": int,
            "original_mode": str, "original_bit_depth": int, "original_bytes": int,
        },
        pk="id", foreign_keys=[("study_id", "studies", "id")],
        not_null={"study_id", "sha256", "width", "height"},
    )
    db["stimuli"].create_index(["study_id"])
    db["cases"].create(
        {
            "id": int, "study_id": int, "case_key": str, "stimulus_id": str, "source": str,
            "modality": str, "prompt": str, "generator": str, "group_name": str,
            "original_path": str, "decode_options": str, "role": str, "manifest_row": int,
        },
        pk="id",
        foreign_keys=[("study_id", "studies", "id"), ("stimulus_id", "stimuli", "id")],
        not_null={"study_id", "case_key", "stimulus_id", "source", "role"},
    )
    db["cases"].create_index(["study_id", "case_key"], unique=True)
    db["cases"].create_index(["stimulus_id"], unique=True)
    db["readers"].create(
        {"id": int, "study_id": int, "name": str, "token_hash": str, "ordinal": int,
         "created_at": str, "token_issued_at": str},
        pk="id", foreign_keys=[("study_id", "studies", "id")],
        not_null={"study_id", "name", "token_hash", "ordinal", "created_at"},
    )
    db["readers"].create_index(["study_id", "name"], unique=True)
    db["readers"].create_index(["token_hash"], unique=True)
    db["assignments"].create(
        {
            "id": int, "reader_id": int, "case_id": int, "position": int, "kind": str,
            "tasks": str, "n_tasks": int, "expected": str, "view_id": str,
            "completed_at": str,
        },
        pk="id",
        foreign_keys=[("reader_id", "readers", "id"), ("case_id", "cases", "id")],
        not_null={"reader_id", "case_id", "position", "kind", "tasks", "n_tasks", "view_id"},
    )
    db["assignments"].create_index(["reader_id", "position"], unique=True)
    db["assignments"].create_index(["view_id"], unique=True)
    db["assignments"].create_index(["reader_id", "completed_at", "position"])
    db["responses"].create(
        {
            "id": int, "client_id": str, "reader_id": int, "assignment_id": int,
            "case_id": int, "task": str, "answer": str, "rating": int, "duration_ms": int,
            "shown_at": str, "answered_at": str,
        },
        pk="id",
        foreign_keys=[
            ("reader_id", "readers", "id"), ("assignment_id", "assignments", "id"),
            ("case_id", "cases", "id"),
        ],
        not_null={"client_id", "reader_id", "assignment_id", "case_id", "task", "answer",
                  "rating", "duration_ms", "answered_at"},
    )
    db["responses"].create_index(["client_id"], unique=True)
    db["responses"].create_index(["assignment_id", "task"])
    db["responses"].create_index(["reader_id"])
    db["audit_log"].create(
        {"id": int, "at": str, "actor": str, "action": str, "study_id": int, "detail": str},
        pk="id", foreign_keys=[("study_id", "studies", "id")],
        not_null={"at", "actor", "action"},
    )
    db["audit_log"].create_index(["study_id", "at"])
    # Append-only responses: the database itself refuses edits and deletes.
    db.execute(
        "CREATE TRIGGER responses_no_update BEFORE UPDATE ON responses "
        "BEGIN SELECT RAISE(ABORT, 'responses are append-only'); END"
    )
    db.execute(
        "CREATE TRIGGER responses_no_delete BEFORE DELETE ON responses "
        "BEGIN SELECT RAISE(ABORT, 'responses are append-only'); END"
    )


def _migration_2(db: Database) -> None:
    """Per-study order secret (256 random bits; never printed, exported or shown): each
    reader's case order is derived from it, not from a seed a user typed. Existing studies
    get a fresh random secret (their invited readers keep their stored orders; their old
    seed no longer determines anything, so it is cleared from the options)."""
    db["studies"].add_column("order_secret", bytes)
    for sid, options in db.execute("SELECT id, options FROM studies").fetchall():
        try:
            opts = json.loads(options)
        except (TypeError, ValueError):
            opts = None
        if isinstance(opts, dict) and "seed" in opts:
            opts["seed"] = None
            options = json.dumps(opts)
        db.execute("UPDATE studies SET order_secret = ?, options = ? WHERE id = ?",
                   [secrets.token_bytes(32), options, sid])


def _migration_3(db: Database) -> None:
    # 1 where the browser's time on case was implausibly short (< 50 ms) and the server's
    # figure was stored instead (studio.reader.handlers.answer_duration_ms). Existing rows were
    # never replaced: 0. ADD COLUMN is not an UPDATE, so the append-only triggers allow it.
    db.execute("ALTER TABLE responses ADD COLUMN duration_flagged INTEGER NOT NULL DEFAULT 0")


def _migration_5(db: Database) -> None:
    """Study management: study status (open | closed | archived) and the texts
    shown before the first case; reader profile, consent and deactivation; wash-out delays
    on repeat reads; the second case of a paired (2AFC) read; deployment settings (the
    studio's public address). Existing studies are open, existing readers active."""
    for col, typ in (("status", str), ("status_at", str), ("instructions", str),
                     ("consent_text", str), ("profile_fields", str)):
        db["studies"].add_column(col, typ)
    db.execute("UPDATE studies SET status = 'open', profile_fields = '[]'")
    for col, typ in (("profile", str), ("consented_at", str), ("deactivated_at", str)):
        db["readers"].add_column(col, typ)
    db.execute("UPDATE readers SET profile = '{}'")
    # min_delay_s: a repeat read becomes available this long after the first read of the
    # same case was completed. pair_case_id / pair_view_id: the right-hand image of a pair.
    for col, typ in (("min_delay_s", int), ("pair_case_id", int), ("pair_view_id", str)):
        db["assignments"].add_column(col, typ)
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS idx_assignments_pair_view_id "
               "ON assignments(pair_view_id)")
    db["settings"].create({"key": str, "value": str}, pk="key")


def _migration_6(db: Database) -> None:
    """Going back and per-case remarks. responses: the reader's optional
    comment and 'non-diagnostic image' flag, sent with the answer (existing answers: none,
    0). assignments.reopened_after: when a reader went back to a read, the id of its last
    response then; only later responses count towards re-completing it (NULL: never
    reopened). studies.allow_back: readers may go back to the previous case. New studies
    allow it; studies that already exist keep the protocol they
    started with (no going back) until a coordinator allows it."""
    # ADD COLUMN is not an UPDATE: the append-only triggers on responses allow it.
    db.execute("ALTER TABLE responses ADD COLUMN comment TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE responses ADD COLUMN non_diagnostic INTEGER NOT NULL DEFAULT 0")
    db["assignments"].add_column("reopened_after", int)
    db.execute("ALTER TABLE studies ADD COLUMN allow_back INTEGER NOT NULL DEFAULT 1")
    db.execute("UPDATE studies SET allow_back = 0")
    # next_case looks for a reopened read first: a partial index keeps that lookup to the
    # (few, usually no) reopened reads instead of every open slot of the reader.
    db.execute("CREATE INDEX assignments_reopened ON assignments (reader_id) "
               "WHERE reopened_after IS NOT NULL AND completed_at IS NULL")


def _migration_8(db: Database) -> None:
    """The reader's own profile form: `studies.ask_profile` (1: the reader
    page asks for the profile before the first case) and `readers.profile_completed_at`
    (when the reader submitted it). Existing studies do not ask; existing
    readers have not submitted one."""
    db.execute("ALTER TABLE studies ADD COLUMN ask_profile INTEGER NOT NULL DEFAULT 0")
    db["readers"].add_column("profile_completed_at", str)


def _migration_9(db: Database) -> None:
    """One current answer per read and task: `responses.read_round` is the read's
    `reopened_after` (0 before any going back) when the answer was stored, and a unique
    index over (assignment, task, round) lets the database itself refuse a second answer to
    a question already answered in that round (two tabs, or an answer sent again after a
    reload). Existing rows keep NULL (append-only: they cannot be filled in, and may
    already hold such pairs): the index leaves them out."""
    db.execute("ALTER TABLE responses ADD COLUMN read_round INTEGER")
    db.execute("CREATE UNIQUE INDEX responses_one_per_round ON responses "
               "(assignment_id, task, read_round) WHERE read_round IS NOT NULL")


def _migration_10(db: Database) -> None:
    """`studies.reader_title`: the title readers see on the reader page, set by the study
    team (NULL: a neutral "Reader study"), so that the internal study name, which may
    describe the design, never reaches a reader."""
    db["studies"].add_column("reader_title", str)


# Ordered list of (version, migration). Append new ones; never edit an applied one.
MIGRATIONS: list[tuple[int, Callable[[Database], None]]] = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (5, _migration_5),
    (6, _migration_6),
    (8, _migration_8),
    (9, _migration_9),
    (10, _migration_10),
]
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


def current_version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    return row[0] or 0

