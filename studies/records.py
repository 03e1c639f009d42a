"""The study flow's records in the database: a study's row by name, its order secret, and
the audit log (who did what when)."""
from __future__ import annotations

import json
import secrets

from sqlite_utils import Database

from studies.errors import StudyNotFound
from studies.storage.schema import utc_now

_SECRET_COLUMNS = ("order_secret",)


def study_row(db: Database, name: str) -> dict:
    """The studies row called `name` (without its order secret, so no caller can print or
    export it by accident; see `order_secret`); StudyNotFound otherwise."""
    rows = [{k: v for k, v in r.items() if k not in _SECRET_COLUMNS}
            for r in db.query("SELECT * FROM studies WHERE name = ?", [name])]
    if not rows:
        known = [r["name"] for r in db.query("SELECT name FROM studies ORDER BY name")]
        hint = f" (studies in this database: {', '.join(known)})" if known else " (no studies yet)"
        raise StudyNotFound(f"no study named {name!r}{hint}")
    return rows[0]


def order_secret(db: Database, study_id: int) -> bytes:
    """The study's order secret (readers.invite derives each reader's order from it).
    A study without one (should not happen after migration 2) gets a fresh random one."""
    row = db.execute("SELECT order_secret FROM studies WHERE id = ?", [study_id]).fetchone()
    secret = row[0] if row else None
    if not isinstance(secret, bytes) or len(secret) < 16:
        secret = secrets.token_bytes(32)
        db.execute("UPDATE studies SET order_secret = ? WHERE id = ?", [secret, study_id])
    return secret


def log_action(db: Database, actor: str, action: str, study_id: int | None = None,
               **detail: object) -> None:
    """Append to audit_log (who did what when); call inside the write transaction."""
    db["audit_log"].insert({
        "at": utc_now(), "actor": actor, "action": action, "study_id": study_id,
        "detail": json.dumps(detail, sort_keys=True, default=str),
    })
