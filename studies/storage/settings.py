"""Deployment settings stored in the study database (table `settings`).

`base_url`: the studio's public address for reader links. `medisyn studio` stores the
address it serves (its --base-url, else http://HOST:PORT/) at every start, so
`medisyn study invite` run later against the same database prints links that point at
the running studio instead of a guessed default.
"""
from __future__ import annotations

import pathlib
import sqlite3
from urllib.parse import urlsplit

from studies.storage.connections import reading
from studies.storage.group_commit import write
from studies.errors import DatabaseNotFound, StudyError

DEFAULT_BASE_URL = "http://127.0.0.1:7860/"


def check_base_url(url: str) -> str:
    parts = urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise StudyError(f"base URL {url!r} must be an http(s) address without ?query or #fragment")
    return str(url).strip()


def set_base_url(db_path: str | pathlib.Path, url: str) -> str:
    url = check_base_url(url)
    write(db_path, lambda db: db["settings"].upsert({"key": "base_url", "value": url}, pk="key"))
    return url


def base_url(db_path: str | pathlib.Path) -> str:
    """The stored public address (see module doc), else `DEFAULT_BASE_URL`."""
    try:
        with reading(db_path) as db:
            row = db.execute("SELECT value FROM settings WHERE key = 'base_url'").fetchone()
    except (DatabaseNotFound, FileNotFoundError, sqlite3.OperationalError):  # no db yet
        return DEFAULT_BASE_URL
    return row[0] if row and row[0] else DEFAULT_BASE_URL
