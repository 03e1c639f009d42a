"""The demo study: seeded once with held-out real + freshly generated images, reused afterwards
(same demo reader link across restarts)."""
import pathlib

import pytest

pytest.importorskip("torch")

from studies import readers, serving, session  # noqa: E402
from studies.export import long_table  # noqa: E402
from studies.ingest import list_studies  # noqa: E402
from studio.demo import study as demo  # noqa: E402
from studio.web.auth import write_private  # noqa: E402

from paths import ROOT  # noqa: E402
MODEL = ROOT / "assets" / "medisyn-mini"

pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").is_file(), reason="embedded model not built")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    db = tmp_path_factory.mktemp("demo") / "studio.db"
    info = demo.seed_demo(db, keep_token=write_private, synthetic_per_modality=1)
    return db, info


def test_first_start_creates_the_demo_study(seeded):
    db, info = seeded
    assert info.created and info.study == demo.DEMO_STUDY
    assert len(info.modalities) >= 5
    assert info.n_real >= 5 and info.n_synthetic >= 5
    (row,) = list_studies(db)
    assert row["name"] == "demo" and set(row["tasks"]) == {"turing", "alignment"}
    assert row["n_real"] == info.n_real and row["n_synthetic"] == info.n_synthetic
    assert row["generators"] == [demo.GENERATOR]
    assert info.link.endswith(f"/?token={info.token}")
    ref = readers.reader_for_token(db, info.token)
    assert ref is not None and ref.name == demo.DEMO_READER and ref.study == "demo"


def test_reader_sees_both_tasks_and_the_prompt(seeded):
    db, info = seeded
    ref = readers.reader_for_token(db, info.token)
    view = session.next_case(db, ref.reader_id)
    # (a training case skips the question with the text unless the prompt audit cleared it)
    assert {t["task"] for t in view.tasks} | set(view.skipped) == {"turing", "alignment"}
    if "alignment" in {t["task"] for t in view.tasks}:
        assert view.prompt  # the alignment task shows the prompt
    png = serving.stimulus_png(db, ref.reader_id, view.stimulus_id)
    assert png.startswith(b"\x89PNG")


def test_every_modality_has_real_and_synthetic_cases(seeded):
    db, _ = seeded
    # the long table lists answered slots only, so read the cases through the database instead
    from studies.storage.connections import reading

    with reading(db) as conn:
        rows = conn.execute("SELECT modality, source FROM cases").fetchall()
    by_modality = {}
    for modality, source in rows:
        by_modality.setdefault(modality, set()).add(source)
    assert len(by_modality) >= 5
    assert all(sources == {"real", "synthetic"} for sources in by_modality.values()), by_modality
    assert long_table(db, "demo").empty  # nobody has answered yet


def test_second_start_reuses_the_study_and_prints_the_same_link(seeded):
    db, first = seeded
    again = demo.seed_demo(db, keep_token=write_private)
    assert not again.created and again.study == "demo"
    assert len(list_studies(db)) == 1
    # Same link as the first start, still valid: a demo tab left open survives a restart.
    assert again.link == first.link and again.token == first.token and again.link_kept
    assert readers.reader_for_token(db, again.token).name == demo.DEMO_READER
    assert [r.name for r in readers.list_readers(db, "demo")] == [demo.DEMO_READER]
    kept = demo.token_path(db)
    assert kept.read_text().strip() == first.token
    assert kept.stat().st_mode & 0o077 == 0  # owner only


def test_the_demo_says_when_it_fails_its_own_leak_audit(seeded):
    db, info = seeded
    (row,) = list_studies(db)
    assert info.leak == row["leak"]
    if row["leak"]:
        (note,) = info.notes
        assert "leak audit" in note and "distinguishable" in note and "not a study" in note
    else:
        assert info.notes == []


def test_cli_prints_link_and_admin_login(seeded, monkeypatch):
    from click.testing import CliRunner

    from studio.cli import cli

    db, first = seeded
    monkeypatch.delenv("MEDISYN_ADMIN_PASSWORD", raising=False)
    result = CliRunner().invoke(cli, ["demo", "--db", str(db), "--base-url", "http://example.org:7860/"])
    assert result.exit_code == 0, result.output
    assert "already exists" in result.output and "same link" in result.output
    assert "demo reader: http://example.org:7860/?token=" in result.output
    assert "admin login: admin / " in result.output
    token = result.output.split("?token=")[1].split()[0]
    assert token == first.token and readers.reader_for_token(db, token).name == demo.DEMO_READER
    assert ("note: the demo study fails its own leak audit" in result.output) == bool(first.leak)


def test_the_demo_uses_no_fixed_seed_for_the_reader_order(seeded):
    """The demo's order secret is random: a fixed study seed would let anyone who read the
    code predict the demo reader's every position."""
    import sqlite3

    from studies.design import seeded_order_secret

    db, _ = seeded
    (row,) = list_studies(db)
    assert row["seed"] is None and row["options"]["seed"] is None
    with sqlite3.connect(db) as conn:
        (secret,) = conn.execute("SELECT order_secret FROM studies").fetchone()
        first_tasks = [t for (t,) in conn.execute(
            "SELECT json_extract(tasks, '$[0]') FROM assignments WHERE kind != 'attention'")]
    assert isinstance(secret, bytes) and len(secret) == 32
    assert secret not in {seeded_order_secret(s) for s in range(1000)}
    assert first_tasks and set(first_tasks) == {"turing"}  # the prompt never comes first
