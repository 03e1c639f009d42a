"""Readers: invitations, access tokens and assignments.

`invite` creates the reader, stores their whole session (the slots of
`design.reader_order`) as assignment rows, and returns a fresh access token. The token
(`secrets.token_urlsafe(32)`, 256 bits) is shown once; only its SHA-256 is stored, so a
leaked database does not leak working links. Each assignment carries its own random
`view_id`, the only id a reader ever sees for an image: ids differ per reader and per
read, so a repeated case does not repeat its id and readers cannot compare ids.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import pathlib
import secrets

from studies import stimuli
from studies.database import log_action, order_secret, reading, study_row, utc_now, write
from studies.design import StudyOptions, reader_order
from studies.errors import ReaderError

DEFAULT_BASE_URL = "http://127.0.0.1:7860/"
MAX_READER_NAME = 100
_TOKEN_MAX = 256  # anything longer is not one of ours; refuse before hashing


@dataclasses.dataclass(frozen=True)
class ReaderRef:
    reader_id: int
    study_id: int
    study: str
    name: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def reader_link(token: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """The personal link a reader opens: `<base_url>/?token=<token>`."""
    return f"{base_url.rstrip('/')}/?token={token}"


def _check_reader_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ReaderError("reader name must not be empty")
    name = name.strip()
    if len(name) > MAX_READER_NAME or any(ord(c) < 32 for c in name):
        raise ReaderError(f"reader name must be at most {MAX_READER_NAME} printable characters")
    return name


def invite(db_path: str | pathlib.Path, study: str, reader: str, *, reissue: bool = False,
           actor: str = "cli") -> str:
    """Invite `reader` to `study` and return their raw access token (shown once).

    Reader names are unique per study: inviting an existing name raises ReaderError unless
    `reissue=True`, which replaces the token (the old link stops working) and keeps the
    reader's assignments and answers.
    """
    name = _check_reader_name(reader)
    token = secrets.token_urlsafe(32)
    digest = token_hash(token)

    def tx(db) -> None:
        srow = study_row(db, study)
        existing = db.execute("SELECT id FROM readers WHERE study_id = ? AND name = ?",
                              [srow["id"], name]).fetchone()
        now = utc_now()
        if existing:
            if not reissue:
                raise ReaderError(f"reader {name!r} is already invited to study {study!r} "
                                  "(use --reissue / reissue=True for a new link)")
            db.execute("UPDATE readers SET token_hash = ?, token_issued_at = ? WHERE id = ?",
                       [digest, now, existing[0]])
            log_action(db, actor, "reissue_token", srow["id"], reader=name)
            return
        if reissue:
            raise ReaderError(f"no reader {name!r} in study {study!r} to reissue a link for")
        ordinal = db.execute("SELECT count(*) FROM readers WHERE study_id = ?",
                             [srow["id"]]).fetchone()[0]
        reader_id = db["readers"].insert({
            "study_id": srow["id"], "name": name, "token_hash": digest, "ordinal": ordinal,
            "created_at": now, "token_issued_at": now,
        }).last_pk
        options = StudyOptions.from_dict(json.loads(srow["options"]))
        # The order is derived from case keys (stable across databases, so a --seed study
        # is reproducible), keyed by the study's secret; database ids follow manifest order.
        main, training, ids = [], [], {}
        for cid, key, role in db.execute(
                "SELECT id, case_key, role FROM cases WHERE study_id = ?", [srow["id"]]):
            ids[key] = cid
            (training if role == "training" else main).append(key)
        slots = reader_order(order_secret(db, srow["id"]), name, main, options,
                             training_ids=training, reader_index=ordinal)
        db["assignments"].insert_all(({
            "reader_id": reader_id, "case_id": ids[slot.case_id], "position": pos,
            "kind": slot.kind, "tasks": json.dumps(list(slot.tasks)), "n_tasks": len(slot.tasks),
            "expected": json.dumps({"scale": slot.scale_task, "value": slot.expected})
            if slot.expected is not None else None,
            "view_id": stimuli.new_stimulus_id(), "completed_at": None,
        } for pos, slot in enumerate(slots, start=1)), batch_size=1000)
        log_action(db, actor, "invite_reader", srow["id"], reader=name, slots=len(slots))

    write(db_path, tx)
    return token


def reader_for_token(db_path: str | pathlib.Path, token: str | None) -> ReaderRef | None:
    """The reader a token belongs to, or None. Only the token's hash is looked up, and the
    stored hash is compared in constant time."""
    if not isinstance(token, str) or not token or len(token) > _TOKEN_MAX:
        return None
    digest = token_hash(token)
    with reading(db_path) as db:
        row = db.execute(
            "SELECT r.id, r.study_id, s.name, r.name, r.token_hash FROM readers r "
            "JOIN studies s ON s.id = r.study_id WHERE r.token_hash = ?", [digest]).fetchone()
    if row is None or not hmac.compare_digest(row[4], digest):
        return None
    return ReaderRef(reader_id=row[0], study_id=row[1], study=row[2], name=row[3])


def list_readers(db_path: str | pathlib.Path, study: str) -> list[ReaderRef]:
    """The study's readers in invitation order."""
    with reading(db_path) as db:
        srow = study_row(db, study)
        rows = db.execute("SELECT id, name FROM readers WHERE study_id = ? ORDER BY ordinal",
                          [srow["id"]]).fetchall()
    return [ReaderRef(reader_id=r[0], study_id=srow["id"], study=srow["name"], name=r[1])
            for r in rows]
