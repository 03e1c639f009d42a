"""A file at the --db path that is not a study database is refused with one `Error:` line and
left untouched: empty (0 bytes), not SQLite, another program's SQLite file, a folder."""
import re
import sqlite3

import pytest
from click.testing import CliRunner

from studies.storage.connections import open_db
from studies.errors import NotAStudyDatabase
from studio.cli import cli


def _one_error(result, pattern):
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.output
    assert "Traceback" not in result.output


def _bad_files(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    text = tmp_path / "not-a-database"
    text.write_text("hello, I am a text file\n")
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE bookmarks (url TEXT)")
    conn.commit()
    conn.close()
    return {  # (a folder is refused by click's own --db check, also in one line)
        empty: r"empty file \(0 bytes\).*delete it",
        text: r"not a study database \(not an SQLite file\)",
        other: r"an SQLite database but not a study database",
    }


def _snapshot(tmp_path):
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in tmp_path.iterdir()}


def test_studio_refuses_a_file_that_is_not_a_study_database(tmp_path, monkeypatch):
    from studio.web import app as app_mod

    launched = []
    monkeypatch.setattr(app_mod, "launch", lambda *a, **k: launched.append(a))
    monkeypatch.delenv("MEDISYN_ADMIN_PASSWORD", raising=False)
    for path, pattern in _bad_files(tmp_path).items():
        before = _snapshot(tmp_path)
        result = CliRunner().invoke(cli, ["studio", "--db", str(path), "--no-demo"])
        _one_error(result, pattern)
        assert _snapshot(tmp_path) == before  # nothing written, not even admin credentials
    assert launched == []


@pytest.mark.parametrize("command", [
    ["study", "progress", "--study", "x"],
    ["study", "audit", "--study", "x"],
    ["study", "export", "--study", "x", "--format", "long", "--out", "OUT"],
])
def test_study_commands_refuse_a_file_that_is_not_a_study_database(tmp_path, command):
    for path, pattern in _bad_files(tmp_path).items():
        before = _snapshot(tmp_path)
        args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
        _one_error(CliRunner().invoke(cli, args + ["--db", str(path)]), pattern)
        assert _snapshot(tmp_path) == before


def test_open_db_creates_a_missing_file_but_never_an_empty_one(tmp_path):
    open_db(tmp_path / "new.db").close()  # a path that does not exist: a new database
    (tmp_path / "empty.db").write_bytes(b"")
    with pytest.raises(NotAStudyDatabase, match="empty file"):
        open_db(tmp_path / "empty.db")
    assert (tmp_path / "empty.db").read_bytes() == b""
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(NotAStudyDatabase, match="folder"):
        open_db(tmp_path / "folder.db")
