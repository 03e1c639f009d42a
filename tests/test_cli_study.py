"""`medisyn study create|audit|invite|export|progress`: thin wrappers, one-line errors."""
import re
import uuid

import pandas as pd
import pytest
from click.testing import CliRunner

from studies.database import stimuli_dir
from studies.export import IMRMC_COLUMNS, LONG_COLUMNS
from studies.readers import reader_for_token
from studies.session import next_case, submit
from studio.cli import cli
from study_fixtures import files_under, write_images, write_manifest

LINK = re.compile(r"^http://127\.0\.0\.1:7860/\?token=([A-Za-z0-9_-]{43,})$")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, pattern):
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.output
    assert "Traceback" not in result.output


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    rows = write_images(root)
    return root, rows, write_manifest(root / "cases.csv", rows)


def test_full_cli_flow(tmp_path, data):
    root, rows, manifest = data
    db = tmp_path / "s.db"
    r = run("study", "create", "--db", db, "--name", "pilot", "--manifest", manifest,
            "--size", 64, "--tasks", "turing,quality", "--training", 2, "--repeat-fraction", 0.2,
            "--attention-checks", 1, "--counterbalance", "--seed", 4)
    assert r.exit_code == 0, r.output
    assert "Created study 'pilot': 12 images (6 real, 6 synthetic; 2 held aside" in r.output
    assert "Leak audit" in r.output and "stimulus classifier AUC" in r.output
    assert len(files_under(stimuli_dir(db))) == 12

    r = run("study", "audit", "--db", db, "--study", "pilot")
    assert r.exit_code == 0 and "Leak audit" in r.output

    r = run("study", "invite", "--db", db, "--study", "pilot", "--reader", "dr-a")
    assert r.exit_code == 0, r.output
    token = LINK.match(r.output.strip()).group(1)
    ref = reader_for_token(db, token)
    assert ref.name == "dr-a"
    r = run("study", "invite", "--db", db, "--study", "pilot", "--reader", "dr-b",
            "--base-url", "https://reader.example.org/")
    assert r.output.startswith("https://reader.example.org/?token=")

    while (view := next_case(db, ref.reader_id)) is not None:
        q = view.pending[0]
        submit(db, ref.reader_id, view.assignment_id, q["task"], 1, 10, str(uuid.uuid4()))

    r = run("study", "progress", "--db", db, "--study", "pilot")
    assert r.exit_code == 0 and re.search(r"dr-a\s+15/15", r.output) and "dr-b" in r.output

    out = tmp_path / "long.csv"
    r = run("study", "export", "--db", db, "--study", "pilot", "--format", "long", "--out", out)
    assert r.exit_code == 0, r.output
    long = pd.read_csv(out)
    assert list(long.columns) == LONG_COLUMNS and len(long) == (12 + 2) * 2 + 1  # 2 repeats, 1 attention check
    assert f"Wrote {len(long)} rows" in r.output
    out = tmp_path / "imrmc.csv"
    r = run("study", "export", "--db", db, "--study", "pilot", "--format", "imrmc", "--out", out)
    assert r.exit_code == 0 and list(pd.read_csv(out).columns) == IMRMC_COLUMNS


def test_images_folder(tmp_path, data):
    root, _, _ = data
    r = run("study", "create", "--db", tmp_path / "s.db", "--name", "dir", "--images", root,
            "--size", 32)
    assert r.exit_code == 0, r.output
    assert "6 real, 6 synthetic" in r.output


@pytest.mark.parametrize("mutate, pattern", [
    (lambda root, rows: rows[2].update(source="fake"), r"cases\.csv row 3 .*unknown source 'fake'"),
    (lambda root, rows: rows[0].update(path="../x.png"), r"row 1 .*escapes"),
    (lambda root, rows: (root / rows[4]["path"]).write_bytes(b"junk"), r"row 5 .*microaneurysms\.png"),
    (lambda root, rows: rows.__setitem__(slice(None), rows[::2]), r"no synthetic images"),
])
def test_create_bad_input(tmp_path, data, mutate, pattern):
    root, rows, _ = data
    mutate(root, rows)
    manifest = write_manifest(root / "cases.csv", rows)
    db = tmp_path / "s.db"
    r = run("study", "create", "--db", db, "--name", "bad", "--manifest", manifest, "--size", 32)
    assert_one_line_error(r, pattern)
    assert not db.exists() and not stimuli_dir(db).exists()


def test_create_duplicate_name_and_bad_options(tmp_path, data):
    _, _, manifest = data
    db = tmp_path / "s.db"
    assert run("study", "create", "--db", db, "--name", "a", "--manifest", manifest,
               "--size", 32).exit_code == 0
    assert_one_line_error(run("study", "create", "--db", db, "--name", "a", "--manifest",
                              manifest, "--size", 32), "already exists")
    assert_one_line_error(run("study", "create", "--db", db, "--name", "b", "--manifest",
                              manifest, "--tasks", "turing,vibes"), "unknown task 'vibes'")
    assert_one_line_error(run("study", "create", "--db", db, "--name", "b", "--manifest",
                              manifest, "--repeat-fraction", 2), "repeat fraction")
    assert_one_line_error(run("study", "create", "--db", db, "--name", "b"), "exactly one")
    assert_one_line_error(run("study", "create", "--db", tmp_path / "no" / "s.db", "--name", "b",
                              "--manifest", manifest), "does not exist")


def test_other_commands_bad_input(tmp_path, data):
    _, _, manifest = data
    db = tmp_path / "s.db"
    assert_one_line_error(run("study", "audit", "--db", db, "--study", "x"), "database not found")
    assert not db.exists()  # reading commands never create a database
    run("study", "create", "--db", db, "--name", "a", "--manifest", manifest, "--size", 32)
    assert_one_line_error(run("study", "audit", "--db", db, "--study", "x"), "no study named 'x'")
    assert_one_line_error(run("study", "invite", "--db", db, "--study", "x", "--reader", "r"),
                          "no study named")
    assert run("study", "invite", "--db", db, "--study", "a", "--reader", "r").exit_code == 0
    assert_one_line_error(run("study", "invite", "--db", db, "--study", "a", "--reader", "r"),
                          "already invited")
    r = run("study", "invite", "--db", db, "--study", "a", "--reader", "r", "--reissue")
    assert r.exit_code == 0 and LINK.match(r.output.strip())
    assert_one_line_error(run("study", "export", "--db", db, "--study", "a", "--format", "long",
                              "--out", tmp_path / "no" / "x.csv"), "output folder does not exist")
    notdb = tmp_path / "not.db"
    notdb.write_bytes(b"this is not sqlite" * 100)
    assert_one_line_error(run("study", "audit", "--db", notdb, "--study", "a"), "database")


def test_create_names_images_that_show_nothing(tmp_path, data):
    import numpy as np
    from PIL import Image

    root, rows, _ = data
    Image.fromarray(np.full((40, 40), 77, np.uint8)).save(root / "real" / "flat.png")
    rows[0]["path"] = "real/flat.png"
    manifest = write_manifest(root / "m.csv", rows)
    r = run("study", "create", "--db", tmp_path / "s.db", "--name", "p", "--manifest", manifest,
            "--size", 32)
    assert r.exit_code == 0, r.output
    assert "Content warnings: 1 image(s)" in r.output
    assert "m.csv row 1 (line 2): real/flat.png: constant" in r.output
    assert "WARNING: 1 image(s) show little or nothing" in r.output
    audit = run("study", "audit", "--db", tmp_path / "s.db", "--study", "p")
    assert "m.csv row 1 (line 2): real/flat.png: constant" in audit.output
