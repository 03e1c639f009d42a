"""`medisyn study create|audit|invite|export|progress`: thin wrappers, one-line errors."""
import base64
import json
import re
import sqlite3
import uuid

import pandas as pd
import pytest
from click.testing import CliRunner

from studies.storage.connections import stimuli_dir
from studies.stats.columns import IMRMC_COLUMNS, LONG_COLUMNS
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

    # The study fails the leak audit (DICOM/NIfTI vs PNG originals): the same gate as the
    # admin's, so the invitation needs an explicit acknowledgement.
    r = run("study", "invite", "--db", db, "--study", "pilot", "--reader", "dr-a")
    assert r.exit_code == 1 and r.output.startswith("Error: the leak audit flags study 'pilot'")
    assert "--acknowledge-leak" in r.output and len(r.output.strip().splitlines()) == 1
    r = run("study", "invite", "--db", db, "--study", "pilot", "--reader", "dr-a",
            "--acknowledge-leak")
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
    # 2 repeats, 1 attention check; the fixture's prompts are the real captions, so the
    # prompt audit says "ok" and training asks the question with the text too
    assert list(long.columns) == LONG_COLUMNS and len(long) == (12 + 2) * 3 + 1
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
    assert run("study", "invite", "--db", db, "--study", "a", "--reader", "r",
               "--acknowledge-leak").exit_code == 0
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
        outputs.append(run("study", "invite", "--db", db, "--study", "p", "--reader", reader,
                           "--acknowledge-leak"))
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
    """A planted size leak through the CLI: real = shipped samples at native sizes, synthetic =
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


def test_one_leak_gate_for_the_cli_the_admin_and_the_library(tmp_path, data):
    """Inviting into a flagged study needs an acknowledgement, whichever way one invites;
    it is remembered (report and audit log) until the audit is re-run."""
    import json

    from studies.storage.connections import open_db
    from studies.errors import ReaderError
    from studies.ingest import audit_study, create_study
    from studies.readers import invite, invite_csv, leak_acknowledgement
    from studio.admin.readers_tab import invite_reader
    from studio.admin.studies_tab import study_overview

    _, _, manifest = data
    db = tmp_path / "s.db"
    create_study(db, "g", manifest=manifest, size=32)
    assert leak_acknowledgement(db, "g")["acknowledged"] is None
    with pytest.raises(ReaderError, match="leak audit flags study 'g'"):
        invite(db, "g", "lib")
    readers_csv = tmp_path / "readers.csv"
    readers_csv.write_text("reader\ncsv-1\n")
    with pytest.raises(ReaderError, match="acknowledge-leak"):
        invite_csv(db, "g", readers_csv)
    with pytest.raises(Exception, match="leak audit flags"):
        invite_reader(db, "g", "adm", "http://127.0.0.1:7860/")
    assert study_overview(db, "g")[2] is True
    assert invite_reader(db, "g", "adm", "http://127.0.0.1:7860/", acknowledge_leak=True,
                         actor="admin:boss").startswith("http://127.0.0.1:7860/?token=")
    ack = leak_acknowledgement(db, "g")["acknowledged"]
    assert ack["by"] == "admin:boss"
    invite(db, "g", "lib")  # acknowledged once for this audit: the CLI/library go on
    with open_db(db) as conn:
        actions = [r[0] for r in conn.execute(
            "SELECT action FROM audit_log WHERE action = 'acknowledge_leak'")]
    assert actions == ["acknowledge_leak"]
    # A re-run audit is a new report: the acknowledgement does not carry over.
    audit_study(db, "g", recompute=True)
    with pytest.raises(ReaderError, match="leak audit flags"):
        invite(db, "g", "late")
    assert [i.reader for i in invite_csv(db, "g", readers_csv, acknowledge_leak=True)] == ["csv-1"]
    report, _ = audit_study(db, "g")
    assert json.dumps(report["acknowledged"]) and report["flagged"]


def test_audit_html_writes_a_self_contained_escaped_contact_sheet(tmp_path, data):
    import re as re_

    root, rows, _ = data
    rows[0]["case_id"] = "<script>alert(1)</script>"
    rows[1]["generator"] = "gen-<b>x</b>"
    manifest = write_manifest(root / "hostile.csv", rows,
                              ["path", "source", "modality", "prompt", "generator", "case_id"])
    db = tmp_path / "s.db"
    assert run("study", "create", "--db", db, "--name", "p<i>", "--manifest", manifest,
               "--size", 32).exit_code == 0
    out = tmp_path / "sheet.html"
    r = run("study", "audit", "--db", db, "--study", "p<i>", "--html", out)
    assert r.exit_code == 0, r.output
    assert f"Contact sheet: {out}" in r.output
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page and "<b>x" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "default-src 'none'; img-src data:" in page
    srcs = re_.findall(r"""src=['"]([^'"]*)""", page)
    assert len(srcs) == 12 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re_.search(r"https?://", page)
    assert page.count("Real: ") == page.count("Synthetic: ") == 5  # 5 modalities
    assert "LEAK" in page and "original formats are distributed differently" in page
    assert_one_line_error(run("study", "audit", "--db", db, "--study", "p<i>", "--html",
                              tmp_path / "no" / "x.html"), "output folder does not exist")


def test_the_admin_shows_the_same_contact_sheet_in_a_sandboxed_frame(tmp_path, data):
    import html

    from studies.contact_sheet import contact_sheet_html
    from studies.ingest import create_study
    from studio.admin.studies_tab import contact_sheet_frame

    _, _, manifest = data
    db = tmp_path / "s.db"
    create_study(db, "f'x", manifest=manifest, size=32)
    frame = contact_sheet_frame(db, "f'x")
    assert frame.startswith("<iframe sandbox ") and "allow-scripts" not in frame
    srcdoc = frame.split('srcdoc="', 1)[1].split('" style=', 1)[0]
    assert html.unescape(srcdoc) == contact_sheet_html(db, "f'x")
    assert "'x" not in frame.split("srcdoc")[0].replace("&#x27;x", "")  # the title is escaped


def test_reader_title_set_at_create_and_by_configure(tmp_path, data):
    """`study create --title` and `study configure --title` set the title readers see (the
    library's set_texts / study_texts); "" clears it; a title that is not one printable
    line is one Error: line and changes nothing."""
    from studies.lifecycle import study_texts

    root, rows, manifest = data
    db = tmp_path / "s.db"
    r = run("study", "create", "--db", db, "--name", "pilot-sdxl", "--manifest", manifest,
            "--size", 64, "--title", "  Chest   imaging study ")
    assert r.exit_code == 0, r.output
    assert study_texts(db, "pilot-sdxl").reader_title == "Chest imaging study"
    r = run("study", "configure", "--db", db, "--study", "pilot-sdxl", "--title", "Retina study")
    assert r.exit_code == 0 and "reader title 'Retina study'" in r.output, r.output
    assert study_texts(db, "pilot-sdxl").reader_title == "Retina study"
    assert_one_line_error(run("study", "configure", "--db", db, "--study", "pilot-sdxl",
                              "--title", "x" * 121), "title must be one line")
    assert study_texts(db, "pilot-sdxl").reader_title == "Retina study"
    r = run("study", "configure", "--db", db, "--study", "pilot-sdxl", "--title", "")
    assert r.exit_code == 0 and 'no reader title (readers see "Reader study")' in r.output
    assert study_texts(db, "pilot-sdxl").reader_title == ""
    assert_one_line_error(run("study", "create", "--db", db, "--name", "other", "--manifest",
                              manifest, "--size", 64, "--title", "a\x07b"),
                          "title must be one line")
