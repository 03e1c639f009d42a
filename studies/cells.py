"""CSV cells that no spreadsheet opens as a formula: `spreadsheet_safe` and its inverse, and
the table writer and reader built on them (`write_csv`, `read_csv`).

One rule for every CSV the project writes for people (study exports, evaluation tables).
A CSV cell is opened by Excel/LibreOffice/Sheets as a
formula when it starts with `=`, `+`, `-` or `@` (and tab/CR can smuggle one in), so a
prompt such as `=HYPERLINK(...)` would become live. Following OWASP's CSV-injection advice,
every text cell starting with one of those characters is written with a leading `'`
(which spreadsheets show as text, not as part of the value); a cell that is a plain
number, such as `-3` or `+2.5`, is left alone, and numeric columns are never touched.
So that the escape is reversible, a text cell that already starts with `'` followed by
one of those characters gets one more `'`. `spreadsheet_unsafe` undoes it.
The same rule applies after every separator a spreadsheet may split on (`,` `;` `|` tab,
CR, LF): opened with `;` as the separator, an unquoted cell `Berlin;=HYPERLINK(...)` is two
cells, the second a formula. So each piece after a separator is escaped as if it began a
cell: `Berlin;'=HYPERLINK(...)` (pieces that are plain numbers are left alone).
"""
from __future__ import annotations

import csv
import os
import pathlib
import re
import tempfile

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# What spreadsheets split cells on (import dialogs offer these); the piece after each one
# is a cell of its own there. Splitting keeps them (capturing group).
_SEPARATORS = re.compile(r"([,;|\t\r\n])")


def _safe_start(value: str) -> str:
    if value.startswith(FORMULA_PREFIXES) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    if value.startswith("'") and _safe_start(value.lstrip("'")) != value.lstrip("'"):
        return "'" + value  # keeps the escape reversible for text typed with a leading '
    return value


def _unsafe_start(value: str) -> str:
    if value.startswith("'") and _safe_start(value[1:]) == value:
        return value[1:]
    return value


def spreadsheet_safe(value):
    """A CSV cell value that no spreadsheet opens as a formula, whatever it splits cells on
    (see the module doc)."""
    if not isinstance(value, str) or not value:
        return value
    value = _safe_start(value)
    if not _SEPARATORS.search(value):
        return value
    parts = _SEPARATORS.split(value)  # text, separator, text, ...: odd indexes separate
    return "".join(part if i % 2 or i == 0 else _safe_start(part)
                   for i, part in enumerate(parts))


def spreadsheet_unsafe(value):
    """Inverse of `spreadsheet_safe` (for reading an exported CSV back)."""
    if not isinstance(value, str) or not value:
        return value
    if _SEPARATORS.search(value):
        parts = _SEPARATORS.split(value)
        value = "".join(part if i % 2 or i == 0 else _unsafe_start(part)
                        for i, part in enumerate(parts))
    return _unsafe_start(value)


def write_csv(path: str | pathlib.Path, rows: list[dict], columns, *, safe: bool = True) -> pathlib.Path:
    """A table as CSV, written to a temporary file and renamed, so a crash never leaves half a
    table. Missing columns are empty; keys not in `columns` are ignored. `safe` (tables for
    people: results, summaries) sends every text cell through `spreadsheet_safe`; files the
    project reads back as they are (manifests) pass `safe=False`."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".table-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} if safe else row
                             for row in rows)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_csv(path: str | pathlib.Path) -> list[dict]:
    """The rows of a table written by `write_csv`, every cell as written before
    `spreadsheet_safe` (so what a program writes with `write_csv` it reads back unchanged;
    empty cells, like missing ones, come back as '')."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: spreadsheet_unsafe(v) for k, v in row.items()} for row in csv.DictReader(fh)]
