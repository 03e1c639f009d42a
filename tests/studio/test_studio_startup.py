"""Starting the studio (`medisyn studio`, `studio.web.app.prepare`): credentials, the demo
link, the banner, the CLI's options."""
from __future__ import annotations

import stat

import pytest

from studio_fixtures import make_loud_study, write_loud_manifest

from studio.admin import readers_tab


def _fake_demo(tmp_path, monkeypatch):
    """studio.demo.study with its image building (embedded model, tested by its own suite)
    replaced by a small real study; returns the list of models it was asked for."""
    from studio.demo import study as demo

    calls = []

    def fake_create(db_path, model, *, synthetic_per_modality, seed, log):
        calls.append(model)
        manifest, _ = write_loud_manifest(tmp_path / "demo-src", 4)
        from studies.ingest import create_study
        create_study(db_path, demo.DEMO_STUDY, manifest=manifest, size=32)
        return {}

    monkeypatch.setattr(demo, "_create", fake_create)
    return calls


def test_prepare_prints_credentials_once_and_a_working_demo_link(tmp_path, monkeypatch):
    from studies import readers
    from studio.web import app as app_mod
    from studio.demo import study as demo

    db = tmp_path / "data" / "studio.db"
    calls = _fake_demo(tmp_path, monkeypatch)
    first = app_mod.prepare(db, model="m", port=7999, env={}, echo=lambda m: None)
    banner = first.banner()
    assert first.admin_password and first.admin_password in banner
    assert "http://127.0.0.1:7999/admin" in banner and first.demo_link in banner
    token = first.demo_link.split("token=")[1]
    assert readers.reader_for_token(db, token).name == demo.DEMO_READER
    kept = demo.token_path(db)
    assert kept == db.parent / "studio.demo-reader"
    assert kept.read_text().strip() == token and stat.S_IMODE(kept.stat().st_mode) == 0o600
    # A restart prints the same link, and it still opens the demo: an open tab keeps working.
    second = app_mod.prepare(db, model="m", port=7999, env={}, echo=lambda m: None)
    assert second.admin_password is None and first.admin_password not in second.banner()
    assert second.admin_auth.creds.matches("admin", first.admin_password)
    assert second.demo_link == first.demo_link and first.demo_link in second.banner()
    assert readers.reader_for_token(db, token).name == demo.DEMO_READER
    assert calls == ["m"]  # the study was built once
    # The kept file is demo-only convenience: if it is lost, or an admin reissued the
    # link, the next start issues a new link (and keeps that one).
    kept.unlink()
    third = app_mod.prepare(db, model="m", port=7999, env={}, echo=lambda m: None)
    new_token = third.demo_link.split("token=")[1]
    assert new_token != token and readers.reader_for_token(db, token) is None
    assert kept.read_text().strip() == new_token
    readers_tab.invite_reader(db, demo.DEMO_STUDY, demo.DEMO_READER, "http://h/",
                             acknowledge_leak=True, reissue=True)
    fourth = app_mod.prepare(db, model="m", port=7999, env={}, echo=lambda m: None)
    assert fourth.demo_link != third.demo_link
    assert readers.reader_for_token(db, fourth.demo_link.split("token=")[1]) is not None
    # The token file is never served, even to the admin.
    assert str(kept) in app_mod.blocked_paths(db)
    # A database with only the user's own studies is never seeded.
    other = tmp_path / "other" / "s.db"
    other.parent.mkdir()
    make_loud_study(other.parent, readers=())
    fifth = app_mod.prepare(other.parent / "studio.db", model="m", env={}, echo=lambda m: None)
    assert fifth.demo_link is None and calls == ["m"]


@pytest.mark.parametrize("leak", [True, False])
def test_banner_says_when_the_demo_fails_its_leak_audit(tmp_path, monkeypatch, leak):
    from studio.web import app as app_mod
    from studio.demo import study as demo

    _fake_demo(tmp_path, monkeypatch)
    real = demo.audit_study
    monkeypatch.setattr(demo, "audit_study",
                        lambda *a, **k: ({**real(*a, **k)[0], "leak": leak, "flagged": leak,
                                          "auc": 0.83}, "LEAK"))
    info = app_mod.prepare(tmp_path / "studio.db", model="m", env={}, echo=lambda m: None)
    banner = info.banner()
    assert info.demo_link in banner
    mentions = "leak audit (classifier AUC 0.83)" in banner and "not a study" in banner
    assert mentions == leak, banner
    if leak:
        assert "distinguishable" in banner and "low-level features" in banner


def test_cli_studio_help_lists_options():
    from click.testing import CliRunner

    from studio.cli import cli

    out = CliRunner().invoke(cli, ["studio", "--help"])
    assert out.exit_code == 0
    for opt in ("--host", "--port", "--db", "--model", "--base-url", "--reset-admin-password"):
        assert opt in out.output
