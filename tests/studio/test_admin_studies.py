"""The admin's study tabs as plain Python: uploads (`studio.admin.uploads`), creating a
study, the overview and leak audit, inviting readers, settings and the dashboard."""
from __future__ import annotations

import io
import os
import pathlib
import stat
import zipfile

import pytest

from reader_fixtures import answer_all
from studio_fixtures import make_loud_study, write_loud_manifest

from studies import readers
from studies.errors import StudyError
from studies.stats import charts, report
from studio.admin import view as admin_view
from studio.admin import analysis_tab, new_study_tab, readers_tab, settings_tab, studies_tab
from studio.admin.uploads import UploadError, safe_extract_zip
from studio.reader import handlers as reader_handlers


def _zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize("entries,symlink,message", [
    ({"../evil.txt": b"x"}, None, "unsafe path"),
    ({"/abs/evil.txt": b"x"}, None, "unsafe path"),
    ({"a/../../evil.txt": b"x"}, None, "unsafe path"),
    ({"C:/evil.txt": b"x"}, None, "unsafe path"),
    ({"ok.txt": b"x"}, "link.png", "symbolic link"),
    ({"bomb.bin": b"\0" * (8 * 1024 * 1024)}, None, "zip bomb"),
])
def test_safe_extract_refuses_slip_links_and_bombs(tmp_path, entries, symlink, message):
    z = tmp_path / "in.zip"
    z.write_bytes(_zip(entries, symlink=symlink))
    with pytest.raises(UploadError, match=message):
        safe_extract_zip(z, tmp_path / "out", max_ratio=50)
    assert not (tmp_path / "evil.txt").exists() and not pathlib.Path("/abs/evil.txt").exists()


def test_safe_extract_total_size_limit(tmp_path):
    z = tmp_path / "in.zip"
    z.write_bytes(_zip({"a.bin": os.urandom(3000), "b.bin": os.urandom(3000)}))
    with pytest.raises(UploadError, match="expands"):
        safe_extract_zip(z, tmp_path / "out", max_bytes=5000)


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    """Gradio's upload folder, private to the test (Gradio reads GRADIO_TEMP_DIR per call)."""
    folder = tmp_path / "gradio-uploads"
    (folder / "0123abcd").mkdir(parents=True)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    return folder / "0123abcd"


def test_create_study_from_uploaded_zip_then_invite_and_progress(tmp_path, uploads):
    manifest, rows = write_loud_manifest(tmp_path / "src", 10)
    z = uploads / "upload.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(manifest, "study/cases.csv")
        for r in rows:
            zf.write(manifest.parent / r["path"], f"study/{r['path']}")
    db = tmp_path / "studio.db"
    opts = new_study_tab.study_options(["turing"], training_cases=0, seed=3)
    summary = new_study_tab.create_from_zip(db, "zipped", str(z), size=64, options=opts)
    assert summary.n_cases == 10 and summary.n_real == 5
    assert not z.exists()  # the upload (original file names) is removed after ingest
    table = studies_tab.studies_table(db)
    assert table.loc[0, "study"] == "zipped" and table.loc[0, "status"] == "draft"
    md, audit_text, leak = studies_tab.study_overview(db, "zipped")
    assert "draft" in md and "Leak audit" in audit_text
    assert settings_tab.study_settings(db, "zipped")[0].startswith("Status: **draft** — no reader")
    link = readers_tab.invite_reader(db, "zipped", "dr-z", "http://h:1/", acknowledge_leak=leak)
    assert link.startswith("http://h:1/?token=")
    assert studies_tab.studies_table(db).loc[0, "status"] == "open"
    assert settings_tab.study_settings(db, "zipped")[0] == "Status: **open**"
    token = link.split("token=", 1)[1]
    s = reader_handlers.start(db, token)
    reader_handlers.submit_answer(db, token, s.state, 6)
    prog = readers_tab.progress_table(db, "zipped")
    assert prog.loc[0, "reader"] == "dr-z" and prog.loc[0, "answered"] == "1 / 10"


def test_create_from_folder_and_bad_inputs(tmp_path, uploads):
    manifest, _ = write_loud_manifest(tmp_path / "src", 10)
    db = tmp_path / "studio.db"
    opts = new_study_tab.study_options(["turing"])
    s = new_study_tab.create_from_folder(db, "fromfolder", str(manifest), size=64, options=opts)
    assert s.n_cases == 10
    with pytest.raises(UploadError, match="no such file"):
        new_study_tab.create_from_folder(db, "x", str(tmp_path / "missing"), options=opts)
    with pytest.raises(StudyError, match="at least one task"):
        new_study_tab.study_options([])
    notzip = uploads / "n.zip"
    notzip.write_text("hello")
    with pytest.raises(UploadError, match="not a readable zip"):
        new_study_tab.create_from_zip(db, "y", str(notzip), options=opts)
    assert not notzip.exists()


def test_zip_path_outside_the_upload_folder_is_neither_read_nor_deleted(tmp_path, uploads):
    """A forged FileData path: the admin form may only name a file Gradio received."""
    manifest, rows = write_loud_manifest(tmp_path / "src", 4)
    db = tmp_path / "studio.db"
    new_study_tab.create_from_folder(db, "existing", str(manifest), size=32,
                                  options=new_study_tab.study_options(["turing"]))
    good_zip = tmp_path / "study.zip"  # a valid study zip, but not an upload
    with zipfile.ZipFile(good_zip, "w") as zf:
        zf.write(manifest, "cases.csv")
        for r in rows:
            zf.write(manifest.parent / r["path"], r["path"])
    link = uploads / "link.zip"
    link.symlink_to(good_zip)
    escape = uploads / ".." / ".." / "study.zip"
    opts = new_study_tab.study_options(["turing"])
    for forged in (db, good_zip, link, escape):
        before = pathlib.Path(forged).resolve().read_bytes()
        with pytest.raises(UploadError, match="uploaded with this form.*Folder on the server"):
            new_study_tab.create_from_zip(db, "forged", str(forged), options=opts)
        assert pathlib.Path(forged).resolve().read_bytes() == before
    assert studies_tab.study_names(db) == ["existing"]
    with pytest.raises(UploadError, match="gone"):
        new_study_tab.create_from_zip(db, "forged", str(uploads / "missing.zip"), options=opts)


def test_invite_requires_acknowledgement_when_audit_flags_a_leak(tmp_path, monkeypatch):
    db, _, _ = make_loud_study(tmp_path, readers=())
    from studies import ingest

    report, _ = ingest.audit_study(db, "ten", recompute=True)  # drops the fixture's acknowledgement
    assert report["flagged"]
    with pytest.raises(StudyError, match="leak audit flags"):
        readers_tab.invite_reader(db, "ten", "dr-q", "http://h/")
    assert readers_tab.invite_reader(db, "ten", "dr-q", "http://h/", acknowledge_leak=True)


def test_overview_uses_the_audits_verdict_and_reasons(tmp_path, monkeypatch):
    """The overview shows the leak verdict: the reasons when flagged, "too few images to
    certify" below the documented count, and "no leak flagged" only for an unflagged,
    certified one (never for an obvious planted leak)."""
    db, _, _ = make_loud_study(tmp_path, readers=())
    md, _, flagged = studies_tab.study_overview(db, "ten")  # 10 images: never "ok"
    assert "no leak flagged" not in md
    assert ("possible leak" in md) == flagged or "too few images to certify" in md
    from studies import ingest

    real = ingest.audit_study
    cases = {
        "flagged": ({"flagged": True, "leak": True, "verdict": "leak",
                     "reasons": ["sharpness (variance of Laplacian) is lower in synthetic images",
                                 "original sizes are distributed differently"]}, True),
        "few": ({"flagged": False, "leak": False, "verdict": "too few images to certify",
                 "reasons": []}, False),
        "ok": ({"flagged": False, "leak": False, "verdict": "ok", "reasons": []}, False),
        "old": ({"leak": True}, True),  # stored before `flagged` existed
    }
    for name, (patch, want) in cases.items():
        monkeypatch.setattr(ingest, "audit_study",
                            lambda *a, patch=patch, **k: ({**real(*a, **k)[0], **patch}, "text"))
        if name == "old":
            monkeypatch.setattr(ingest, "audit_study",
                                lambda *a, **k: ({"leak": True}, "text"))
        md, _, flagged = studies_tab.study_overview(db, "ten")
        assert flagged is want, name
        if name == "flagged":
            assert "possible leak" in md and "sharpness" in md and "sizes" in md
        elif name == "few":
            assert "too few images to certify" in md and "no leak flagged" not in md
        elif name == "ok":
            assert "no leak flagged" in md
        else:
            assert "possible leak" in md


def test_dashboard_and_exports_show_each_readers_results(tmp_path):
    db, _, tokens = make_loud_study(tmp_path, readers=("dr-a", "dr-b"))
    answer_all(db, tokens["dr-a"], rating=1)
    answer_all(db, tokens["dr-b"], rating=6)
    d = analysis_tab.dashboard(db, "ten")
    assert set(d.per_reader["reader"]) == {"dr-a", "dr-b"}
    acc = dict(zip(d.per_reader["reader"], d.per_reader["accuracy"]))
    assert acc == {"dr-a": "0.500", "dr-b": "0.500"}  # all-real / all-synthetic, 5/5 split
    assert d.pooled.loc[0, "n"] == 20
    # two readers of the turing task: forest, confusion, ROC and their pairwise agreement
    assert [title for title, _ in d.figures] == [
        charts.figure_title(k) for k in ("forest", "confusion", "roc", "agreement")]
    paths = analysis_tab.export_files(db, "ten", tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["ten-imrmc.csv", "ten-long.csv", "ten-report.html"]
    assert "dr-b" in (tmp_path / "out" / "ten-long.csv").read_text()
    assert "<html" in (tmp_path / "out" / "ten-report.html").read_text().lower()


def test_base_url_of():
    class R:
        headers = {"host": "example.org:8080"}
    assert admin_view.base_url_of(R(), None) == "http://example.org:8080/"
    assert admin_view.base_url_of(R(), "https://x/") == "https://x/"

def test_admin_csv_invite_readers_table_deactivation_and_study_status(tmp_path, uploads):
    from studies import lifecycle

    db, _, _ = make_loud_study(tmp_path, "csv", n_cases=4, size=64, readers=())
    study = "csv"
    up = uploads / "readers.csv"
    up.write_text("reader,specialty,years_experience\ndr-a,radiology,3\ndr-b,,\n",
                  encoding="utf-8")
    _, _, leak = studies_tab.study_overview(db, study)
    lines = readers_tab.invite_from_csv(db, study, str(up), "https://h.example/",
                                       acknowledge_leak=leak).splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["dr-a", "dr-b"]
    assert all(",https://h.example/?token=" in ln for ln in lines)
    assert not up.exists()  # the upload is removed
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("reader\ndr-c\n", encoding="utf-8")
    with pytest.raises(UploadError):
        readers_tab.invite_from_csv(db, study, str(outside), "https://h.example/",
                                   acknowledge_leak=True)
    assert outside.exists()
    table = readers_tab.readers_table(db, study)
    assert list(table.reader) == ["dr-a", "dr-b"] and "token" not in table.to_csv()
    assert table.loc[0, "profile"] == "specialty=radiology, years_experience=3"
    readers.set_reader_active(db, study, "dr-b", False)
    assert list(readers_tab.readers_table(db, study).link) == ["active", "deactivated"]
    lifecycle.set_status(db, study, "closed")
    assert studies_tab.studies_table(db).loc[0, "status"] == "closed"
    lifecycle.set_texts(db, study, instructions="Look.", consent="I agree.", profile_fields="site")
    status, instructions, consent, fields, ask = settings_tab.study_settings(db, study)
    assert "closed" in status and (instructions, consent, fields) == ("Look.", "I agree.", "site")
    assert ask is False  # the reader profile form is off unless the study asks for it
