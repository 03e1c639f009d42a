"""Study management: CSV invites with profiles, reader list without
tokens, deactivation, close/archive, instructions/consent, per-reader subsets, wash-out
repeats, the studio's stored address, modality from the folder layout, migration 5."""
import datetime as dt
import json
import re
import sqlite3
import uuid

import pytest
from click.testing import CliRunner

from studies.storage import settings
from studies.storage import schema

from studies import lifecycle, profiles, readers, washout
from studies.storage.connections import open_db
from studies.design import StudyOptions, parse_duration, reader_order, seeded_order_secret
from studies.errors import ReaderError, StudyError
from studies.export import long_table
from studies.stats.columns import LONG_COLUMNS
from studies.imaging.manifest import read_images_dir
from studies.session import next_case, submit
from studio.cli import cli
from study_fixtures import database_at_version, make_study, study, template  # noqa: F401 (fixtures)


def _answer_all(db, reader_id):
    while (view := next_case(db, reader_id)) is not None:
        q = view.pending[0]
        submit(db, reader_id, view.assignment_id, q["task"], q["scale"][0]["value"], 900,
               str(uuid.uuid4()))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ------------------------------------------------------------------ CSV invites, profiles
def test_invite_csv_stores_profiles_and_exports_them_with_each_answer(study, tmp_path):
    lifecycle.set_texts(study, "pilot", profile_fields="site")
    csv_path = tmp_path / "readers.csv"
    csv_path.write_text("Reader,specialty,years_experience,site\n"
                        "dr-a,radiology,12,Leiden\n"
                        "dr-b,ophthalmology,,Bergen\n", encoding="utf-8")
    invitations = readers.invite_csv(study, "pilot", csv_path)
    assert [i.reader for i in invitations] == ["dr-a", "dr-b"]
    ref = readers.reader_for_token(study, invitations[0].token)
    assert ref.name == "dr-a"
    _answer_all(study, ref.reader_id)
    df = long_table(study, "pilot")
    assert list(df.columns) == LONG_COLUMNS + ["site"]
    assert set(df.specialty) == {"radiology"} and set(df.years_experience) == {12}
    assert set(df.site) == {"Leiden"}
    table = {r.reader: r for r in readers.reader_table(study, "pilot")}
    assert table["dr-b"].profile == {"specialty": "ophthalmology", "site": "Bergen"}
    assert table["dr-a"].completed == table["dr-a"].total > 0


@pytest.mark.parametrize("text, message", [
    ("name\ndr-a\n", "needs a 'reader' column"),
    ("reader,hospital\ndr-a,x\n", "row 2: unknown profile field 'hospital'"),
    ("reader,years_experience\ndr-a,12\ndr-b,lots\n", "row 3: years_experience 'lots'"),
    ("reader\ndr-a\ndr-a\n", "row 3: reader 'dr-a' listed twice"),
    ("reader,specialty\ndr-a,x\n\n,radiology\n", "row 4: reader name must not be empty"),
])
def test_bad_readers_csv_invites_nobody(study, tmp_path, text, message):
    path = tmp_path / "r.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ReaderError, match=re.escape(message)):
        readers.invite_csv(study, "pilot", path)
    assert readers.list_readers(study, "pilot") == []


def test_csv_invite_is_all_or_nothing_when_a_name_exists(study, tmp_path):
    readers.invite(study, "pilot", "dr-b")
    path = tmp_path / "r.csv"
    path.write_text("reader\ndr-a\ndr-b\n", encoding="utf-8")
    with pytest.raises(ReaderError, match="row 3: reader 'dr-b' is already invited"):
        readers.invite_csv(study, "pilot", path)
    assert [r.name for r in readers.list_readers(study, "pilot")] == ["dr-b"]


def test_profile_update_and_consent_are_recorded_once(study):
    ref = readers.reader_for_token(study, readers.invite(study, "pilot", "dr-a"))
    assert profiles.update_profile(study, ref.reader_id, {"specialty": "radiology"}) == {
        "specialty": "radiology"}
    with pytest.raises(ReaderError, match="unknown profile field"):
        profiles.update_profile(study, ref.reader_id, {"<script>": "x"})
    assert readers.reader_info(study, ref.reader_id).consented_at is None
    first = profiles.record_consent(study, ref.reader_id)
    assert profiles.record_consent(study, ref.reader_id) == first
    assert readers.reader_info(study, ref.reader_id).consented_at == first
    assert readers.reader_table(study, "pilot")[0].consented_at == first


# ------------------------------------------------------------------ links, deactivation
def test_reader_table_never_holds_a_token_and_deactivation_stops_the_link(study):
    token = readers.invite(study, "pilot", "dr-a")
    ref = readers.reader_for_token(study, token)
    view = next_case(study, ref.reader_id)
    submit(study, ref.reader_id, view.assignment_id, "turing", 2, 900, str(uuid.uuid4()))
    assert token not in repr(readers.reader_table(study, "pilot"))
    readers.set_reader_active(study, "pilot", "dr-a", False)
    assert readers.reader_for_token(study, token) is None
    assert readers.reader_status(study, token) == (None, "deactivated")
    assert readers.reader_status(study, "forged") == (None, "unknown")
    with pytest.raises(ReaderError, match="deactivated"):
        readers.invite(study, "pilot", "dr-a", reissue=True)
    assert readers.reader_table(study, "pilot")[0].link == "deactivated"
    assert len(long_table(study, "pilot")) == 1  # answers kept
    readers.set_reader_active(study, "pilot", "dr-a", True)
    assert readers.reader_for_token(study, token).reader_id == ref.reader_id


def test_closed_study_resolves_with_its_status_and_takes_no_new_readers(study):
    token = readers.invite(study, "pilot", "dr-a")
    lifecycle.set_status(study, "pilot", "closed")
    ref, status = readers.reader_status(study, token)
    assert status == "closed" and ref.study_status == "closed" and not ref.study_open
    with pytest.raises(ReaderError, match="closed"):
        readers.invite(study, "pilot", "dr-b")
    lifecycle.set_status(study, "pilot", "archived")
    assert readers.reader_for_token(study, token).study_status == "archived"
    lifecycle.set_status(study, "pilot", "open")
    assert readers.reader_for_token(study, token).study_open
    with pytest.raises(StudyError, match="unknown study status"):
        lifecycle.set_status(study, "pilot", "deleted")


def test_instructions_and_consent_texts(study):
    texts = lifecycle.set_texts(study, "pilot", instructions="Read each image.\r\nTake time.",
                                consent="I agree.")
    assert texts.instructions == "Read each image.\nTake time." and texts.consent == "I agree."
    assert lifecycle.set_texts(study, "pilot", consent="").consent == ""
    assert lifecycle.study_texts(study, "pilot").instructions == "Read each image.\nTake time."
    with pytest.raises(StudyError, match="built in or a column"):
        lifecycle.set_texts(study, "pilot", profile_fields="site,rating")
    with pytest.raises(StudyError, match="lower-case identifier"):
        lifecycle.set_texts(study, "pilot", profile_fields="Site Name")


# ------------------------------------------------------------------ incomplete designs
def test_cases_per_reader_is_balanced_and_covers_every_case_evenly(tmp_path):
    opts = StudyOptions(cases_per_reader=6, readers_per_case=2)
    db, _ = make_study(tmp_path, "pilot", options=opts)  # 6 real + 6 synthetic
    cov = readers.coverage(db, "pilot")
    assert (cov.n_units, cov.min_assigned, cov.readers_needed) == (12, 0, 4)
    for name in ("a", "b", "c", "d"):
        readers.invite(db, "pilot", name)
    with open_db(db) as conn:
        per_reader = conn.execute(
            "SELECT a.reader_id, sum(c.source = 'real'), sum(c.source = 'synthetic') "
            "FROM assignments a JOIN cases c ON c.id = a.case_id GROUP BY a.reader_id").fetchall()
        per_case = [n for (n,) in conn.execute(
            "SELECT count(a.id) FROM cases c LEFT JOIN assignments a ON a.case_id = c.id "
            "GROUP BY c.id")]
    assert all(r == s == 3 for _, r, s in per_reader)
    assert per_case == [2] * 12
    cov = readers.coverage(db, "pilot")
    assert (cov.min_assigned, cov.max_assigned, cov.readers_needed) == (2, 2, 0)
    assert (cov.min_reads, cov.max_reads) == (0, 0)  # invited, nothing read yet


def test_analysis_handles_the_incomplete_design(tmp_path):
    from studies.export import analyze_db

    db, _ = make_study(tmp_path, "pilot", options=StudyOptions(cases_per_reader=6))
    for name in ("a", "b", "c", "d"):
        _answer_all(db, readers.reader_for_token(db, readers.invite(db, "pilot", name)).reader_id)
    result = analyze_db(db, "pilot")
    turing = result["turing"]
    assert turing["n_readers"] == 4 and turing["n_cases"] == 12
    assert all(p["n"] == 6 for p in turing["per_reader"].values())
    assert turing["accuracy_random_readers"]["n_readers"] == 4
    assert turing["accuracy_random_readers"]["mean"] is not None
    # no case is read by every reader: MRMC and Fleiss say so instead of a number
    assert turing["mrmc"]["auc"] is None and "MRMC: no fully crossed block" in turing["mrmc"]["block"]
    assert turing["fleiss_kappa"]["kappa_reason"] == "no subject was rated by every reader"
    assert turing["cohen_kappa"]["pairs"]  # pairwise κ uses the cases both readers read
    json.dumps(result, allow_nan=False)


# ------------------------------------------------------------------ wash-out repeats
def test_parse_duration():
    assert [parse_duration(x) for x in ("7d", "36h", "90m", "45s", "2w", "60", None)] == [
        604800, 129600, 5400, 45, 1209600, 60, 0]
    for bad in ("7 days", "d", "-1d", "400d"):
        with pytest.raises(StudyError):
            parse_duration(bad)
    with pytest.raises(StudyError, match="needs repeats"):
        StudyOptions(repeat_after_s=60).validated()


def test_repeat_after_puts_delayed_repeats_after_the_main_block():
    opts = StudyOptions(repeat_fraction=0.5, repeat_after_s=7 * 86400).validated()
    slots = reader_order(seeded_order_secret(1), "dr-a", [f"c{i}" for i in range(8)], opts)
    kinds = [s.kind for s in slots]
    assert kinds == ["main"] * 8 + ["repeat"] * 4
    assert all(s.min_delay_s == 7 * 86400 for s in slots if s.kind == "repeat")
    assert all(s.min_delay_s is None for s in slots if s.kind == "main")


def test_pick_next_waits_for_the_delay_after_the_first_read():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    pending = [washout.PendingRead(10, 1, None, 86400), washout.PendingRead(11, 2, None, 86400)]
    first = {(1, None): "2026-01-01T00:00:00.000Z", (2, None): "2026-01-01T06:00:00.000Z"}
    a = washout.pick_next(pending, first, t0 + dt.timedelta(hours=23))
    assert a.assignment_id is None and a.wait_until == t0 + dt.timedelta(days=1)
    assert washout.pick_next(pending, first, t0 + dt.timedelta(days=1)).assignment_id == 10
    assert washout.pick_next(pending[1:], {}, t0 + dt.timedelta(days=9)).assignment_id is None
    assert washout.pick_next([washout.PendingRead(5, 3)], {}, t0).assignment_id == 5
    assert washout.pick_next([], {}, t0).finished


def test_next_available_on_a_stored_session(tmp_path):
    opts = StudyOptions(repeat_fraction=0.5, repeat_after_s=3600)
    db, _ = make_study(tmp_path, "pilot", options=opts)
    ref = readers.reader_for_token(db, readers.invite(db, "pilot", "dr-a"))
    with open_db(db) as conn:
        first = washout.next_available(conn, ref.reader_id)
        n_main = conn.execute("SELECT count(*) FROM assignments WHERE reader_id = ? AND kind = "
                              "'main'", [ref.reader_id]).fetchone()[0]
    assert first.assignment_id is not None
    for _ in range(n_main):  # the main block, as the page serves it today
        view = next_case(db, ref.reader_id)
        submit(db, ref.reader_id, view.assignment_id, "turing", 2, 900, str(uuid.uuid4()))
    with open_db(db) as conn:
        now = dt.datetime.now(dt.timezone.utc)
        waiting = washout.next_available(conn, ref.reader_id, now)
        later = washout.next_available(conn, ref.reader_id, now + dt.timedelta(hours=2))
        kind = conn.execute("SELECT kind FROM assignments WHERE id = ?",
                            [later.assignment_id]).fetchone()[0]
    assert waiting.assignment_id is None and waiting.wait_until > now
    assert kind == "repeat"


# ------------------------------------------------------------------ CLI, base URL
def test_cli_invite_csv_uses_the_stored_studio_address_and_management_commands(study, tmp_path):
    settings.set_base_url(study, "https://reading.example.org/room/")
    path = tmp_path / "r.csv"
    path.write_text("reader,specialty\ndr-a,radiology\ndr-b,\n", encoding="utf-8")
    result = run("study", "invite", "--db", study, "--study", "pilot", "--csv", path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["dr-a", "dr-b"]
    assert all(re.fullmatch(r"dr-[ab],https://reading\.example\.org/room/\?token=[\w-]{43}", ln)
               for ln in lines)
    out = run("study", "readers", "--db", study, "--study", "pilot").output
    assert "dr-a" in out and "specialty=radiology" in out and "token=" not in out
    assert run("study", "deactivate", "--db", study, "--study", "pilot",
               "--reader", "dr-b").exit_code == 0
    assert "deactivated" in run("study", "readers", "--db", study, "--study", "pilot").output
    assert run("study", "close", "--db", study, "--study", "pilot").exit_code == 0
    bad = run("study", "invite", "--db", study, "--study", "pilot", "--reader", "dr-c")
    assert bad.exit_code == 1 and "Error: study 'pilot' is closed" in bad.output
    instructions = tmp_path / "i.txt"
    instructions.write_text("Look closely.", encoding="utf-8")
    res = run("study", "configure", "--db", study, "--study", "pilot",
              "--instructions-file", instructions, "--profile-fields", "site")
    assert res.exit_code == 0 and "profile fields specialty, years_experience, site" in res.output
    assert lifecycle.study_texts(study, "pilot").instructions == "Look closely."
    both = run("study", "invite", "--db", study, "--study", "pilot")
    assert both.exit_code == 1 and "exactly one of --reader or --csv" in both.output


def test_base_url_default_and_validation(tmp_path):
    assert settings.base_url(tmp_path / "none.db") == settings.DEFAULT_BASE_URL
    with pytest.raises(StudyError):
        settings.check_base_url("javascript:alert(1)")


# ------------------------------------------------------------------ folder layout
def test_modality_from_the_real_and_synthetic_folder_layout(tmp_path):
    from PIL import Image

    for rel in ("real/xray/a.png", "real/b.png", "synthetic/sd/xray/c.png", "synthetic/sd/d.png"):
        p = tmp_path / "imgs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(p)
    rows = {r.rel_path: (r.modality, r.generator) for r in read_images_dir(tmp_path / "imgs")}
    assert rows == {"real/xray/a.png": ("xray", ""), "real/b.png": ("", ""),
                    "synthetic/sd/xray/c.png": ("xray", "sd"), "synthetic/sd/d.png": ("", "sd")}


# ------------------------------------------------------------------ migration 5
def test_migration_5_upgrades_a_schema_2_database(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    with database_at_version(path, 2, monkeypatch) as db:
        sid = db["studies"].insert({"name": "s", "created_at": "x", "size": 64,
                                    "tasks": '["turing"]', "options": "{}", "seed": 0}).last_pk
        db["readers"].insert({"study_id": sid, "name": "r", "token_hash": "h", "ordinal": 0,
                              "created_at": "x"})
    db = open_db(path)
    try:
        assert db.execute("SELECT status, profile_fields FROM studies").fetchone() == ("open", "[]")
        assert db.execute("SELECT profile, deactivated_at FROM readers").fetchone() == ("{}", None)
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == \
            schema.SCHEMA_VERSION
    finally:
        db.close()


def test_medisyn_studio_stores_its_address_for_later_cli_invites(study, monkeypatch):
    from studio.web import app as app_mod

    monkeypatch.setattr(app_mod, "launch", lambda *a, **k: None)
    monkeypatch.setenv("MEDISYN_ADMIN_USER", "admin")
    monkeypatch.setenv("MEDISYN_ADMIN_PASSWORD", "correct-horse-battery-staple-42")
    res = run("studio", "--db", study, "--no-demo", "--base-url", "https://studio.example.org/x/")
    assert res.exit_code == 0, res.output
    out = run("study", "invite", "--db", study, "--study", "pilot", "--reader", "dr-z")
    assert re.fullmatch(r"https://studio\.example\.org/x/\?token=[\w-]{43}\n", out.output)


# ------------------------------------------------------------------ enforced on the reader side
def test_closed_study_and_deactivated_reader_take_no_answers(study):
    from studies.errors import NotAuthorised
    from studies.session import StudyClosed

    token = readers.invite(study, "pilot", "dr-a")
    ref = readers.reader_for_token(study, token)
    view = next_case(study, ref.reader_id)
    acked_id, first_aid = str(uuid.uuid4()), view.assignment_id
    ack = submit(study, ref.reader_id, first_aid, "turing", 2, 900, acked_id)
    view = next_case(study, ref.reader_id)
    lifecycle.set_status(study, "pilot", "closed")
    with pytest.raises(StudyClosed, match="closed"):
        submit(study, ref.reader_id, view.assignment_id, "turing", 2, 900, str(uuid.uuid4()))
    # a retry of an answer acknowledged before the close still gets its acknowledgement
    retry = submit(study, ref.reader_id, first_aid, "turing", 2, 900, acked_id)
    assert retry.duplicate and retry.response_id == ack.response_id
    assert len(long_table(study, "pilot")) == 1
    lifecycle.set_status(study, "pilot", "open")
    readers.set_reader_active(study, "pilot", "dr-a", False)
    with pytest.raises(NotAuthorised, match="deactivated"):
        submit(study, ref.reader_id, view.assignment_id, "turing", 2, 900, str(uuid.uuid4()))
    readers.set_reader_active(study, "pilot", "dr-a", True)
    assert not submit(study, ref.reader_id, view.assignment_id, "turing", 2, 900,
                      str(uuid.uuid4())).duplicate
    assert len(long_table(study, "pilot")) == 2


def test_reader_page_shows_a_closed_page_and_the_washout_wait(tmp_path):
    from studio.reader import handlers as reader_handlers

    opts = StudyOptions(repeat_fraction=0.5, repeat_after_s=3600)
    db, _ = make_study(tmp_path, "pilot", options=opts)
    token = readers.invite(db, "pilot", "dr-a")
    ref = readers.reader_for_token(db, token)
    lifecycle.set_status(db, "pilot", "closed")
    for handler in (reader_handlers.open_page, reader_handlers.start, reader_handlers.continue_after_feedback):
        screen = reader_handlers.storage_safe(handler)(db, token)
        assert screen.kind == "finished" and "closed" in screen.message
    lifecycle.set_status(db, "pilot", "open")
    assert reader_handlers.storage_safe(reader_handlers.open_page)(db, token).kind == "intro"
    with open_db(db) as conn:
        n_main = conn.execute("SELECT count(*) FROM assignments WHERE reader_id = ? AND kind = "
                              "'main'", [ref.reader_id]).fetchone()[0]
    for _ in range(n_main):
        view = next_case(db, ref.reader_id)
        submit(db, ref.reader_id, view.assignment_id, "turing", 2, 900, str(uuid.uuid4()))
    # only delayed repeats are left: the page says when to come back, nothing is served
    screen = reader_handlers.storage_safe(reader_handlers.start)(db, token)
    assert screen.kind == "unavailable" and "wash-out" in screen.message
    assert re.search(r"opens on \d{4}-\d\d-\d\d \d\d:\d\d UTC", screen.message)
    # two hours later (first reads moved back in time) the repeats are served
    with open_db(db) as conn:
        conn.execute("UPDATE assignments SET completed_at = '2000-01-01T00:00:00.000Z' "
                     "WHERE reader_id = ? AND completed_at IS NOT NULL", [ref.reader_id])
    view = next_case(db, ref.reader_id)
    with open_db(db) as conn:
        kind = conn.execute("SELECT kind FROM assignments WHERE id = ?",
                            [view.assignment_id]).fetchone()[0]
    assert kind == "repeat"
    assert reader_handlers.storage_safe(reader_handlers.start)(db, token).kind == "case"


def test_reader_page_shows_instructions_and_consent_and_start_records_it(study):
    from studio.reader import handlers as reader_handlers

    lifecycle.set_texts(study, "pilot", instructions="Read each image at full size.\n\nTake breaks.",
                        consent="I agree that my answers are used ![x](http://127.0.0.1:9/t.png).")
    token = readers.invite(study, "pilot", "dr-a")
    ref = readers.reader_for_token(study, token)
    screen = reader_handlers.open_page(study, token)
    assert screen.kind == "intro"
    assert "Read each image at full size." in screen.intro and "Take breaks." in screen.intro
    assert "full size.\n\nTake breaks" in screen.intro  # paragraphs kept
    assert "Tick **I agree** below and press **Start**" in screen.intro
    assert "![x]" not in screen.intro and "\\!\\[x\\]" in screen.intro  # shown as typed
    assert profiles.consent_pending(study, ref.reader_id)
    assert readers.reader_info(study, ref.reader_id).consented_at is None
    assert reader_handlers.start(study, token).kind == "case"
    assert readers.reader_info(study, ref.reader_id).consented_at is not None
    assert profiles.consent_pending(study, ref.reader_id) == ""
    # resumed after consent: straight back to the case, no intro
    view = next_case(study, ref.reader_id)
    submit(study, ref.reader_id, view.assignment_id, "turing", 2, 900, str(uuid.uuid4()))
    assert reader_handlers.open_page(study, token).kind == "case"
    # a study without consent text asks for nothing
    other = readers.invite(study, "pilot", "dr-b")
    lifecycle.set_texts(study, "pilot", consent="")
    assert "Consent" not in reader_handlers.open_page(study, other).intro


def test_a_deactivated_link_fetches_no_image(study):
    from studies.errors import NotAuthorised
    from studies.serving import current_stimulus_png

    token = readers.invite(study, "pilot", "dr-a")
    view = next_case(study, readers.reader_for_token(study, token).reader_id)
    assert current_stimulus_png(study, token, view.stimulus_id)[1].startswith(b"\x89PNG")
    readers.set_reader_active(study, "pilot", "dr-a", False)
    with pytest.raises(NotAuthorised):
        current_stimulus_png(study, token, view.stimulus_id)
