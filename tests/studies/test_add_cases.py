"""studies.ingest.add_cases: adding a batch to a draft study, all or nothing."""
import json

import pytest
from click.testing import CliRunner

from studies.storage.connections import open_db
from studies.errors import ManifestError, StudyError
from studies.ingest import add_cases
from studies.readers import invite
from study_fixtures import make_study, stimulus_files, write_images, write_manifest


def _cases(db_path, study="pilot"):
    with open_db(db_path, create=False) as db:
        return list(db.query(
            "SELECT c.* FROM cases c JOIN studies s ON s.id = c.study_id WHERE s.name = ?",
            [study]))


@pytest.fixture
def draft(tmp_path):
    db_path, summary = make_study(tmp_path, "pilot", tasks=("turing",))
    return db_path, summary


def _batch(tmp_path, generator="gen-new", seed=1):
    # seed 1: pixels unlike the draft's own synthetic images (seed 0), which add refuses
    rows = [r for r in write_images(tmp_path / "batch", generators=(generator,), seed=seed)
            if r["source"] == "synthetic"]
    for r in rows:
        r["case_id"] = "new-" + r["path"]
    return write_manifest(tmp_path / "batch" / "manifest.csv", rows)


def test_adds_blinded_cases_and_reaudits(tmp_path, draft):
    db_path, summary = draft
    before = _cases(db_path)
    added = add_cases(db_path, "pilot", manifest=_batch(tmp_path))
    after = _cases(db_path)
    assert added.n_added == added.n_synthetic == len(after) - len(before) > 0
    assert added.n_cases == len(after)
    new = [c for c in after if c["case_key"].startswith("new-")]
    assert {c["generator"] for c in new} == {"gen-new"}
    assert {c["role"] for c in new} == {"main"}
    assert len(stimulus_files(db_path)) == len(after)
    with open_db(db_path, create=False) as db:
        report = json.loads(db.execute("SELECT audit_report FROM studies").fetchone()[0])
    # the stored audit now counts every case, old and new
    assert sum(report["counts"].values()) == len(after)


def test_refused_once_readers_are_invited(tmp_path, draft):
    db_path, _ = draft
    invite(db_path, "pilot", "dr-a")
    before = stimulus_files(db_path)
    with pytest.raises(StudyError, match="already has invited readers"):
        add_cases(db_path, "pilot", manifest=_batch(tmp_path))
    assert stimulus_files(db_path) == before


def test_duplicate_case_and_bad_file_add_nothing(tmp_path, draft):
    db_path, _ = draft
    before_cases, before_files = len(_cases(db_path)), stimulus_files(db_path)
    dup_rows = [{"path": "real/" + p.split("/")[-1], "source": "real", "modality": "CT",
                 "prompt": "x", "case_id": _cases(db_path)[0]["case_key"]}
                for p in [_cases(db_path)[0]["original_path"]]]
    (tmp_path / "dup" / "real").mkdir(parents=True)
    src = tmp_path / "data" / _cases(db_path)[0]["original_path"]
    (tmp_path / "dup" / "real" / src.name).write_bytes(src.read_bytes())
    with pytest.raises(ManifestError, match="already in study"):
        add_cases(db_path, "pilot", manifest=write_manifest(tmp_path / "dup" / "m.csv", dup_rows))
    manifest = _batch(tmp_path)
    (tmp_path / "batch" / "synthetic" / "gen-new" / "s03_0.png").write_bytes(b"not a png")
    with pytest.raises(StudyError, match="s03_0.png"):
        add_cases(db_path, "pilot", manifest=manifest)
    assert len(_cases(db_path)) == before_cases
    assert stimulus_files(db_path) == before_files


def test_cli_add(tmp_path, draft):
    from studio.cli import cli

    db_path, _ = draft
    result = CliRunner().invoke(cli, ["study", "add", "--db", str(db_path), "--study", "pilot",
                                      "--manifest", str(_batch(tmp_path))])
    assert result.exit_code == 0, result.output
    assert "synthetic) to 'pilot'" in result.output
    result = CliRunner().invoke(cli, ["study", "add", "--db", str(db_path), "--study", "nope",
                                      "--manifest", str(_batch(tmp_path, "g2"))])
    assert result.exit_code != 0 and "nope" in result.output


def test_studio_send_to_study_adds_a_batch(tmp_path, draft):
    from studio.admin.generate import send_to_study

    db_path, _ = draft
    before = len(_cases(db_path))
    manifest = _batch(tmp_path)
    added = send_to_study(db_path, manifest.parent, "pilot", actor="admin:test")
    assert added.n_added > 0 and len(_cases(db_path)) == before + added.n_added


# ------------------------------------------------------------ duplicates, unreadable files
def _run(*args):
    from studio.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def test_adding_the_same_pixels_again_is_refused_unless_allowed(tmp_path, draft):
    db_path, _ = draft
    before = len(_cases(db_path))
    again = _batch(tmp_path, seed=0)  # the draft's own synthetic pixels under new case ids
    r = _run("study", "add", "--db", db_path, "--study", "pilot", "--manifest", again)
    assert r.exit_code == 1 and len(_cases(db_path)) == before
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "6 of 6 image(s) have exactly the same pixels" in errors[0]
    assert "--allow-duplicates" in errors[0]
    r = _run("study", "add", "--db", db_path, "--study", "pilot", "--manifest", again,
             "--allow-duplicates")
    assert r.exit_code == 0, r.output
    assert len(_cases(db_path)) == before + 6
    assert r.output.count("DUPLICATE ") == 6 and "WARNING: 6 image(s) duplicate" in r.output


def test_duplicates_within_one_batch_are_refused_too(tmp_path, draft):
    db_path, _ = draft
    manifest = _batch(tmp_path)
    rows = manifest.read_text().splitlines()
    path_col = rows[0].split(",").index("path")
    first = rows[1].split(",")
    copy = list(first)
    copy[rows[0].split(",").index("case_id")] = "copy-of-first"
    manifest.write_text("\n".join(rows + [",".join(copy)]) + "\n")
    assert first[path_col]
    with pytest.raises(StudyError, match="1 of 7 image"):
        add_cases(db_path, "pilot", manifest=manifest)


def test_skip_unreadable_leaves_out_and_lists_the_bad_files(tmp_path, draft):
    db_path, _ = draft
    before, files = len(_cases(db_path)), stimulus_files(db_path)
    manifest = _batch(tmp_path)
    (tmp_path / "batch" / "synthetic" / "gen-new" / "s03_0.png").write_bytes(b"not a png")
    r = _run("study", "add", "--db", db_path, "--study", "pilot", "--manifest", manifest)
    assert r.exit_code == 1 and "s03_0.png" in r.output  # default: all or nothing
    assert len(_cases(db_path)) == before and stimulus_files(db_path) == files
    r = _run("study", "add", "--db", db_path, "--study", "pilot", "--manifest", manifest,
             "--skip-unreadable")
    assert r.exit_code == 0, r.output
    assert len(_cases(db_path)) == before + 5
    skipped = [ln for ln in r.output.splitlines() if ln.startswith("SKIPPED ")]
    assert len(skipped) == 1 and "s03_0.png" in skipped[0]
    assert "WARNING: 1 unreadable image(s) left out" in r.output


def test_create_with_skip_unreadable(tmp_path):
    rows = write_images(tmp_path / "data")
    (tmp_path / "data" / rows[1]["path"]).write_bytes(b"\x00" * 300)
    manifest = write_manifest(tmp_path / "data" / "cases.csv", rows)
    r = _run("study", "create", "--db", tmp_path / "a.db", "--name", "p", "--manifest", manifest,
             "--size", 32)
    assert r.exit_code == 1 and not (tmp_path / "a.db").exists()
    r = _run("study", "create", "--db", tmp_path / "b.db", "--name", "p", "--manifest", manifest,
             "--size", 32, "--skip-unreadable")
    assert r.exit_code == 0, r.output
    assert "11 images" in r.output and "SKIPPED " in r.output and rows[1]["path"] in r.output
