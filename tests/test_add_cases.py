"""studies.ingest.add_cases: adding a batch to a draft study, all or nothing."""
import json

import pytest
from click.testing import CliRunner

from studies.database import open_db
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


def _batch(tmp_path, generator="gen-new"):
    rows = [r for r in write_images(tmp_path / "batch", generators=(generator,))
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
    from studio.generate_view import send_to_study

    db_path, _ = draft
    before = len(_cases(db_path))
    manifest = _batch(tmp_path)
    added = send_to_study(db_path, manifest.parent, "pilot", actor="admin:test")
    assert added.n_added > 0 and len(_cases(db_path)) == before + added.n_added
