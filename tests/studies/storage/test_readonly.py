"""Read-only commands (`study progress`, `export`, `analyze`, `audit` without --recompute)
work on a database nobody may write to, and never write to it themselves.

Tests run as root in CI, and root ignores permission bits, so `chmod 0555` on the folder
proves nothing there. What a read-only folder does to SQLite is that the write-ahead log
and its index (`<db>-wal`, `<db>-shm`) cannot be created; a *folder* at those paths has the
same effect for every user, root included (SQLite cannot open a folder as a file), so that
is the root-proof stand-in used below: it proves the commands open the database without
creating or writing any file next to it (the code before this fix failed there). When the
tests do not run as root, the real `chmod 0555` folder / `0444` file case runs as well.
"""
import os
import shutil
import sqlite3

import pytest
from click.testing import CliRunner

from studies.storage import connections, group_commit, schema
from studies.storage.connections import open_db, reading
from studies.design import StudyOptions
from studies.errors import NotAStudyDatabase
from studies.readers import invite, reader_for_token
from studies.session import next_case, submit
from studio.cli import cli
from study_fixtures import make_study

READ_ONLY_COMMANDS = [
    ["study", "progress", "--study", "pilot"],
    ["study", "audit", "--study", "pilot"],
    ["study", "export", "--study", "pilot", "--format", "long", "--out", "OUT"],
    ["study", "analyze", "--study", "pilot", "--json"],
]


@pytest.fixture()
def answered(tmp_path):
    db, _ = make_study(tmp_path / "s", options=StudyOptions(seed=5))
    ref = reader_for_token(db, invite(db, "pilot", "ann"))
    for i in range(3):
        view = next_case(db, ref.reader_id)
        submit(db, ref.reader_id, view.assignment_id, "turing", 2 + i % 3, 900, f"c{i}")
    group_commit.release_writers()  # the last connection closes: WAL folded in, -wal/-shm gone
    assert not os.path.exists(f"{db}-wal") and not os.path.exists(f"{db}-shm")
    return db


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _run_read_only_commands(db, out_dir):
    outputs = {}
    for command in READ_ONLY_COMMANDS:
        args = [str(out_dir / "long.csv") if a == "OUT" else a for a in command]
        result = CliRunner().invoke(cli, args + ["--db", str(db)])
        assert result.exit_code == 0, (command, result.output)
        outputs[command[1]] = result.output
    assert "ann" in outputs["progress"]
    assert (out_dir / "long.csv").read_text().count("\n") == 4  # header + 3 answers
    return outputs


def test_read_only_commands_work_when_the_wal_index_cannot_be_created(answered, tmp_path):
    for suffix in ("-wal", "-shm"):  # cannot be created, as in a read-only folder
        (tmp_path / "s" / f"study.db{suffix}").mkdir()
    before = _files(tmp_path / "s")
    out = tmp_path / "out"
    out.mkdir()
    _run_read_only_commands(answered, out)
    assert _files(tmp_path / "s") == before  # not a byte written (no export log entry)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; covered above")
def test_read_only_commands_work_in_a_read_only_folder(answered, tmp_path):
    folder = tmp_path / "s"
    shutil.rmtree(folder / "study.stimuli")  # not needed by these commands
    os.chmod(answered, 0o444)
    os.chmod(folder, 0o555)
    try:
        out = tmp_path / "out"
        out.mkdir()
        _run_read_only_commands(answered, out)
    finally:
        os.chmod(folder, 0o755)


def test_reading_connections_cannot_write(answered):
    with reading(answered) as db:
        assert db.execute("SELECT count(*) FROM responses").fetchone()[0] == 3
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute("INSERT INTO audit_log (at, actor, action) VALUES ('t', 'x', 'y')")


def test_changes_in_the_write_ahead_log_are_read_or_refused_never_ignored(answered, tmp_path,
                                                                         monkeypatch):
    """A copy with a -wal file holding changes, in a folder where the WAL index cannot be
    made: the read-only connection reads the changes. If even that open fails, the fallback
    (`immutable=1`, which ignores the -wal) is refused rather than showing stale data."""
    writer = open_db(answered)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO audit_log (at, actor, action) VALUES ('t', 'x', 'late')")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(answered, copy / "study.db")
    shutil.copyfile(f"{answered}-wal", copy / "study.db-wal")
    writer.close()
    assert os.path.getsize(copy / "study.db-wal") > 0
    (copy / "study.db-shm").mkdir()
    with reading(copy / "study.db") as db:
        assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'late'").fetchone()[0] == 1
    real_connect = connections._connect_ro
    connections.release_readers()  # what follows is about opening afresh, not a kept connection

    def no_ro(uri):  # as if even a read-only open could not get at the WAL
        if "immutable=1" not in uri:
            exc = sqlite3.OperationalError("unable to open database file")
            exc.sqlite_errorname = "SQLITE_CANTOPEN"
            raise exc
        return real_connect(uri)

    monkeypatch.setattr(connections, "_connect_ro", no_ro)
    with pytest.raises(NotAStudyDatabase, match="write-ahead log"):
        with reading(copy / "study.db"):
            pass
    result = CliRunner().invoke(cli, ["study", "progress", "--study", "pilot", "--db",
                                      str(copy / "study.db")])
    assert result.exit_code == 1 and result.output.startswith("Error:") \
        and "write-ahead log" in result.output and "Traceback" not in result.output


def test_reading_an_older_schema_upgrades_it_when_writable(answered, monkeypatch):
    """Reads never migrate on their own connection, but a database from an older version
    is upgraded first (as before) rather than refused, when it can be written."""
    applied = []
    new_version = schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + [
        (new_version, lambda db: applied.append(1))])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", new_version)
    with reading(answered) as db:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == new_version
    assert applied == [1]
