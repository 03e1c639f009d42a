"""`medisyn study create|audit|invite|export|progress`: thin wrappers, one-line errors."""
import base64
import json
import re
import sqlite3
import uuid

import pandas as pd
import pytest
from click.testing import CliRunner

from studies.database import stimuli_dir
from studies.export import IMRMC_COLUMNS, LONG_COLUMNS
from studies.readers import reader_for_token
from studies.session import next_case, submit
from studio.cli import cli
from imaging_fixtures import write_native_vs_tiny
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
            "--size", 64, "--tasks", "turing,alignment,quality", "--training", 2, "--repeat-fraction", 0.2,
            "--attention-checks", 1, "--counterbalance", "--seed", 4)
    assert r.exit_code == 0, r.output
    assert "Created study 'pilot': 12 images (6 real, 6 synthetic; 2 held aside" in r.output
    assert "WARNING: reader orders derive from the given seed 4" in r.output
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
    # 2 repeats, 1 attention check; the 2 training cases skip the question with the text
    assert list(long.columns) == LONG_COLUMNS and len(long) == (12 + 2) * 3 + 1 - 2
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


def _secret_forms(secret: bytes) -> list[str]:
    """Every way the order secret could plausibly be printed."""
    b64 = base64.b64encode(secret).decode()
    url = base64.urlsafe_b64encode(secret).decode()
    forms = [secret.hex(), secret.hex().upper(), b64, b64.rstrip("="), url, url.rstrip("="),
             str(int.from_bytes(secret, "big")), repr(secret)[2:-1]]
    forms += [secret[:8].hex(), base64.b64encode(secret[:12]).decode()]  # partial prints
    return forms


def test_no_command_prints_logs_or_exports_the_order_secret(tmp_path, data):
    _, _, manifest = data
    db = tmp_path / "s.db"
    outputs = [run("study", "create", "--db", db, "--name", "p", "--manifest", manifest,
                   "--size", 32, "--training", 2, "--attention-checks", 2,
                   "--repeat-fraction", 0.2)]
    assert outputs[0].exit_code == 0, outputs[0].output
    assert "seed" not in outputs[0].output.lower()  # no seed given: none shown
    for reader in ("dr-a", "dr-b"):
        outputs.append(run("study", "invite", "--db", db, "--study", "p", "--reader", reader))
    token = LINK.match(outputs[1].output.strip()).group(1)
    ref = reader_for_token(db, token)
    while (view := next_case(db, ref.reader_id)) is not None:
        submit(db, ref.reader_id, view.assignment_id, view.pending[0]["task"], 2, 10,
               str(uuid.uuid4()))
    outputs.append(run("study", "invite", "--db", db, "--study", "p", "--reader", "dr-b",
                       "--reissue"))
    outputs.append(run("study", "progress", "--db", db, "--study", "p"))
    outputs.append(run("study", "audit", "--db", db, "--study", "p"))
    outputs.append(run("study", "audit", "--db", db, "--study", "p", "--recompute", "--json"))
    files = []
    for fmt in ("long", "imrmc"):
        out = tmp_path / f"{fmt}.csv"
        outputs.append(run("study", "export", "--db", db, "--study", "p", "--format", fmt,
                           "--out", out, *(["--all-responses"] if fmt == "long" else [])))
        files.append(out.read_text(encoding="utf-8"))
    assert all(r.exit_code == 0 for r in outputs), [r.output for r in outputs]
    with sqlite3.connect(db) as conn:
        (secret,) = conn.execute("SELECT order_secret FROM studies").fetchone()
        logged = [d for (d,) in conn.execute("SELECT detail FROM audit_log")]
        options = conn.execute("SELECT options FROM studies").fetchone()[0]
    assert isinstance(secret, bytes) and len(secret) >= 16
    from studies.ingest import audit_study, list_studies

    library = [json.dumps(list_studies(db), default=str), json.dumps(audit_study(db, "p"))]
    haystacks = [r.output for r in outputs] + files + logged + [options] + library
    for form in _secret_forms(secret):
        for text in haystacks:
            assert form not in text


def test_audit_json_flags_native_real_vs_tiny_synthetic(tmp_path):
    """Issue 10 item 9 through the CLI: real = shipped samples at native sizes, synthetic =
    7 blurry 64 px images. `audit --json` says flagged, with reasons."""
    root = tmp_path / "native"
    rows = write_native_vs_tiny(root)
    manifest = write_manifest(root / "cases.csv", rows)
    db = tmp_path / "s.db"
    r = run("study", "create", "--db", db, "--name", "n", "--manifest", manifest, "--size", 256)
    assert r.exit_code == 0, r.output
    assert "verdict: LEAK" in r.output and "WARNING: the leak audit flags this study" in r.output
    for extra in ([], ["--recompute"]):
        r = run("study", "audit", "--db", db, "--study", "n", "--json", *extra)
        assert r.exit_code == 0, r.output
        report = json.loads(r.output)
        assert report["flagged"] is True and report["verdict"] == "leak"
        assert isinstance(report["auc"], float)
        assert any("sizes are distributed differently" in x for x in report["reasons"])
        assert any("sharpness" in x for x in report["reasons"])


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
