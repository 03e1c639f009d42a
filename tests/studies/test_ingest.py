"""studies.ingest: blinded stimuli, stored audit, and all-or-nothing creation on bad input."""
import json
import os
import pathlib
import shutil
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from studies import ingest, staging
from studies.storage.connections import open_db, stimuli_dir
from studies.design import StudyOptions
from studies.errors import IngestError, ManifestError, StudyError, StudyExists
from studies.ingest import audit_study, create_study
from studies.imaging.stimuli import png_chunk_types
from study_fixtures import files_under, make_manifest, write_images, write_manifest


def _study_count(db_path):
    db = open_db(db_path)
    try:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("studies", "stimuli", "cases")}
    finally:
        db.close()


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    return root, write_images(root)


def test_create_blinds_every_image(tmp_path, data):
    root, rows = data
    db_path = tmp_path / "s.db"
    summary = create_study(db_path, "pilot", manifest=write_manifest(root / "cases.csv", rows),
                           size=64, options=StudyOptions(seed=3))
    assert (summary.n_cases, summary.n_real, summary.n_synthetic) == (12, 6, 6)
    assert summary.generators == ["gen-a"] and summary.seed == 3
    files = sorted(stimuli_dir(db_path).iterdir())
    assert len(files) == 12
    originals = {os.path.splitext(os.path.basename(r["path"]))[0] for r in rows}
    db = open_db(db_path)
    try:
        cases = list(db.query("SELECT * FROM cases ORDER BY manifest_row"))
        stim_ids = {r["id"] for r in db.query("SELECT id FROM stimuli")}
        study = next(db.query("SELECT * FROM studies"))
    finally:
        db.close()
    assert {f.stem for f in files} == stim_ids
    for f in files:
        assert not any(o in f.name for o in originals)  # opaque names only
        data_ = f.read_bytes()
        assert png_chunk_types(data_) == ["IHDR", "IDAT", "IEND"]  # no metadata at all
        with Image.open(f) as im:
            assert (im.size, im.mode) == ((64, 64), "RGB")
    assert [c["source"] for c in cases] == [r["source"] for r in rows]
    assert [c["original_path"] for c in cases] == [r["path"] for r in rows]
    assert cases[0]["modality"] == "CT" and cases[0]["prompt"] == rows[0]["prompt"]
    report = json.loads(study["audit_report"])
    assert report["counts"] == {"real": 6, "synthetic": 6} and "auc" in report
    assert "Leak audit" in study["audit_text"]
    assert not any(p.name.startswith(".incoming") for p in stimuli_dir(db_path).iterdir())


def test_images_dir_shortcut(tmp_path, data):
    root, _ = data
    summary = create_study(tmp_path / "s.db", "dir", images_dir=root, size=32)
    assert (summary.n_real, summary.n_synthetic) == (6, 6)


def test_dicom_and_nifti_options_from_manifest(tmp_path, data):
    from pydicom.data import get_testdata_file

    root, rows = data
    for name in ("693_J2KI.dcm", "examples_ybr_color.dcm", "JPEG2000.dcm"):
        shutil.copyfile(get_testdata_file(name), root / "real" / name)
    rows = [dict(r, frame="", window="", slice="", axis="") for r in rows]
    rows += [
        dict(path="real/693_J2KI.dcm", source="real", modality="CT", prompt="ct", generator="",
             frame="", window="lung", slice="", axis=""),
        dict(path="real/examples_ybr_color.dcm", source="real", modality="US", prompt="us",
             generator="", frame="3", window="", slice="", axis=""),
        dict(path="real/JPEG2000.dcm", source="real", modality="NM", prompt="nm", generator="",
             frame="", window="", slice="", axis=""),
    ]
    nii = next(i for i, r in enumerate(rows) if r["path"].endswith(".nii"))
    rows[nii].update(axis="1", slice="20")
    summary = create_study(tmp_path / "s.db", "fmt", manifest=write_manifest(root / "m.csv", rows),
                           size=48)
    assert summary.n_real == 9
    db = open_db(tmp_path / "s.db")
    try:
        fmts = {r["original_format"] for r in db.query("SELECT original_format FROM stimuli")}
        opts = [json.loads(r["decode_options"]) for r in db.query(
            "SELECT decode_options FROM cases ORDER BY manifest_row")]
    finally:
        db.close()
    assert fmts == {"DICOM", "NIfTI", "PNG"}
    assert opts[-2]["frame"] == 3 and opts[-3]["window"] == "lung"
    assert opts[nii] == {"axis": 1, "slice_index": 20, "modality": "MRI"}


def test_training_cases_are_held_aside(tmp_path, data):
    root, rows = data
    create_study(tmp_path / "s.db", "t", manifest=write_manifest(root / "m.csv", rows), size=32,
                 options=StudyOptions(training_cases=2, seed=1))
    db = open_db(tmp_path / "s.db")
    try:
        roles = [tuple(r) for r in db.execute(
            "SELECT role, source FROM cases WHERE role = 'training' ORDER BY source")]
    finally:
        db.close()
    assert roles == [("training", "real"), ("training", "synthetic")]


def test_planted_brightness_leak_is_flagged(tmp_path):
    """All synthetic images much brighter than the real ones: the audit must flag it."""
    root = tmp_path / "leaky"
    rows = write_images(root, synthetic_per_real=2)
    for r in rows:
        if r["source"] == "synthetic":
            p = root / r["path"]
            a = np.asarray(Image.open(p), dtype=np.float64)
            Image.fromarray(np.clip(a * 0.3 + 180, 0, 255).astype(np.uint8)).save(p)
    summary = create_study(tmp_path / "s.db", "leaky", manifest=write_manifest(root / "m.csv", rows),
                           size=48, options=StudyOptions(seed=1))
    assert summary.audit["leak"] is True
    assert "LEAK" in summary.audit_text
    stored, text = audit_study(tmp_path / "s.db", "leaky")
    assert stored["leak"] is True and text == summary.audit_text
    recomputed, _ = audit_study(tmp_path / "s.db", "leaky", recompute=True)
    assert recomputed["auc"] == pytest.approx(summary.audit["auc"])


# --------------------------------------------------------------------------- bad input
def _assert_nothing_created(tmp_path, db_path):
    assert not db_path.exists(), "a failed create left a database file behind"
    assert not list(db_path.parent.glob(f".{db_path.name}.new-*")), "temporary database left"
    assert files_under(stimuli_dir(db_path)) == []
    assert not stimuli_dir(db_path).exists()


def _bomb_png(path, width=20_000, height=20_000):
    """A tiny file whose header claims 400 Mpx (a decompression bomb)."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))


BAD_CASES = {
    "missing_file": (lambda root, rows: rows[3].update(path="real/gone.png"),
                     ManifestError, r"row 4 .*file not found"),
    "corrupt_file": (lambda root, rows: (root / rows[5]["path"]).write_bytes(b"\x89PNG\r\n\x1a\nnot really"),
                     IngestError, r"row 6 \(line 7\): .*s02_0.png"),
    "truncated_dicom": (lambda root, rows: (root / rows[0]["path"]).write_bytes(
        (root / rows[0]["path"]).read_bytes()[:2000]), IngestError, r"row 1 .*CT_small.dcm"),
    "unsupported_file": (lambda root, rows: (shutil.copyfile(
        os.path.join(os.path.dirname(__import__("skimage").__file__), "data", "no_time_for_that_tiny.gif"),
        root / "real" / "anim.gif"), rows[0].update(path="real/anim.gif")),
        IngestError, r"row 1 .*anim.gif"),
    "unknown_source": (lambda root, rows: rows[2].update(source="generated"),
                       ManifestError, r"row 3 .*unknown source 'generated'"),
    "escaping_path": (lambda root, rows: rows[1].update(path="../../etc/passwd"),
                      ManifestError, r"row 2 .*escapes"),
    "absolute_path": (lambda root, rows: rows[1].update(path="/etc/hostname"),
                      ManifestError, r"row 2 .*absolute"),
    "decompression_bomb": (lambda root, rows: _bomb_png(root / rows[7]["path"]),
                           IngestError, r"row 8 .*s03_0.png"),
    "no_synthetic": (lambda root, rows: rows.__setitem__(slice(None), [r for r in rows if r["source"] == "real"]),
                     StudyError, "no synthetic images"),
    "no_real": (lambda root, rows: rows.__setitem__(slice(None), [r for r in rows if r["source"] == "synthetic"]),
                StudyError, "no real images"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_creates_nothing(tmp_path, data, case):
    root, rows = data
    mutate, exc, pattern = BAD_CASES[case]
    mutate(root, rows)
    manifest = write_manifest(root / "m.csv", rows)
    db_path = tmp_path / "s.db"
    with pytest.raises(exc, match=pattern) as info:
        create_study(db_path, "bad", manifest=manifest, size=32)
    assert "\n" not in str(info.value)
    _assert_nothing_created(tmp_path, db_path)


def test_manifest_missing_column_creates_nothing(tmp_path, data):
    root, rows = data
    manifest = write_manifest(root / "m.csv", rows, ["path", "source", "prompt"])
    with pytest.raises(ManifestError, match="missing required column.*modality"):
        create_study(tmp_path / "s.db", "bad", manifest=manifest)
    _assert_nothing_created(tmp_path, tmp_path / "s.db")


def test_failure_keeps_existing_study_untouched(tmp_path, data):
    root, rows = data
    db_path = tmp_path / "s.db"
    create_study(db_path, "first", manifest=write_manifest(root / "m.csv", rows), size=32)
    before_files, before_counts = files_under(stimuli_dir(db_path)), _study_count(db_path)
    (root / rows[-1]["path"]).write_bytes(b"garbage")  # fails on the last image
    with pytest.raises(IngestError, match="row 12"):
        create_study(db_path, "second", manifest=write_manifest(root / "m.csv", rows), size=32)
    assert files_under(stimuli_dir(db_path)) == before_files
    assert _study_count(db_path) == before_counts


def test_duplicate_study_name(tmp_path, data):
    root, rows = data
    db_path = tmp_path / "s.db"
    manifest = write_manifest(root / "m.csv", rows)
    create_study(db_path, "same", manifest=manifest, size=32)
    before_files, before_counts = files_under(stimuli_dir(db_path)), _study_count(db_path)
    with pytest.raises(StudyExists, match="'same' already exists"):
        create_study(db_path, "same", manifest=manifest, size=32)
    assert files_under(stimuli_dir(db_path)) == before_files
    assert _study_count(db_path) == before_counts


def test_failure_while_moving_stimuli_in_rolls_everything_back(tmp_path, data, monkeypatch):
    """The transaction is open and some stimuli are already in place when the failure hits:
    the moved files are removed and no row survives."""
    root, rows = data
    db_path = tmp_path / "s.db"
    calls = []
    real_replace = os.replace

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 5:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(staging.os, "replace", flaky_replace)  # moving stimuli in
    with pytest.raises(OSError, match="disk full"):
        create_study(db_path, "x", manifest=write_manifest(root / "m.csv", rows), size=32)
    assert len(calls) == 5
    _assert_nothing_created(tmp_path, db_path)


def test_alignment_needs_prompts(tmp_path, data):
    root, rows = data
    rows[4]["prompt"] = ""
    with pytest.raises(ManifestError, match="row 5 .*alignment"):
        create_study(tmp_path / "s.db", "a", manifest=write_manifest(root / "m.csv", rows),
                     tasks=("turing", "alignment"))
    _assert_nothing_created(tmp_path, tmp_path / "s.db")


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(size=8), "size must be"),
    (dict(tasks="turing,bogus"), "unknown task 'bogus'"),
    (dict(options=StudyOptions(training_cases=12)), "training cases"),
    (dict(options=StudyOptions(training_cases=11)), "no (real|synthetic) images remain"),
])
def test_bad_options(tmp_path, data, kwargs, pattern):
    root, rows = data
    with pytest.raises(StudyError, match=pattern):
        create_study(tmp_path / "s.db", "o", manifest=write_manifest(root / "m.csv", rows), **kwargs)
    _assert_nothing_created(tmp_path, tmp_path / "s.db")


def test_needs_exactly_one_source(tmp_path, data):
    root, rows = data
    with pytest.raises(StudyError, match="exactly one"):
        create_study(tmp_path / "s.db", "x")
    with pytest.raises(StudyError, match="exactly one"):
        create_study(tmp_path / "s.db", "x", manifest=make_manifest(tmp_path / "m"), images_dir=root)


def test_list_studies(tmp_path, data):
    from studies.ingest import list_studies
    from studies.readers import invite

    root, rows = data
    db_path = tmp_path / "s.db"
    create_study(db_path, "one", manifest=write_manifest(root / "m.csv", rows), size=32,
                 tasks=("turing", "quality"), options=StudyOptions(training_cases=2, seed=4))
    create_study(db_path, "two", images_dir=root, size=32)
    invite(db_path, "two", "r1", acknowledge_leak=True)
    two, one = list_studies(db_path)  # newest first
    assert (one["name"], one["tasks"], one["n_cases"], one["n_real"], one["n_synthetic"]) == \
        ("one", ["turing", "quality"], 12, 6, 6)
    assert (one["n_training"], one["seed"], one["size"], one["n_readers"]) == (2, 4, 32, 0)
    assert one["generators"] == ["gen-a"]
    assert one["leak"] is audit_study(db_path, "one")[0]["leak"]
    assert one["options"]["training_cases"] == 2 and one["created_at"].endswith("Z")
    assert (two["name"], two["n_readers"], two["tasks"]) == ("two", 1, ["turing"])
    with pytest.raises(StudyError, match="database not found"):
        list_studies(tmp_path / "none.db")


def test_stale_incoming_folder_of_a_killed_create_is_swept(tmp_path, data):
    root, rows = data
    db_path = tmp_path / "s.db"
    sdir = stimuli_dir(db_path)
    stale, fresh = sdir / ".incoming-dead", sdir / ".incoming-busy"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "x.png").write_bytes(b"x")
    os.utime(stale, (0, 0))
    create_study(db_path, "s", manifest=write_manifest(root / "m.csv", rows), size=32)
    assert not stale.exists() and fresh.exists()  # a concurrent create's folder is left alone


def test_failing_create_never_deletes_the_database_a_concurrent_create_commits(tmp_path, data,
                                                                             monkeypatch):
    """Two creates on a new path. A starts first (no database yet); while A decodes its
    images, B runs up to its write transaction and pauses there; A then fails (a corrupt
    image) and cleans up; B is let go at the last moment before A's clean-up would delete
    any file named like the database (or after A's failure if it deletes none), and
    commits. B's study must survive: A removes only what A made."""
    root, rows = data
    db_path = tmp_path / "s.db"
    good = write_manifest(root / "b.csv", rows)
    (root / "real" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    bad = write_manifest(root / "a.csv", rows + [dict(rows[0], path="real/bad.png")])
    b_in_tx, go = threading.Event(), threading.Event()
    real_insert = ingest._insert_cases

    def paused_insert(*args, **kwargs):
        if threading.current_thread().name == "create-b":
            b_in_tx.set()
            assert go.wait(60)
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(ingest, "_insert_cases", paused_insert)
    b_errors = []

    def run_b():
        try:
            create_study(db_path, "b", manifest=good, size=32, options=StudyOptions(seed=1))
        except BaseException as exc:  # reported by the assertion below
            b_errors.append(exc)

    b = threading.Thread(target=run_b, name="create-b")
    real_decode = ingest._decode

    def decode_a(row, size):
        if threading.current_thread() is threading.main_thread() and row.rel_path.endswith("bad.png"):
            b.start()
            assert b_in_tx.wait(60)
        return real_decode(row, size)

    monkeypatch.setattr(ingest, "_decode", decode_a)

    def let_b_commit():
        if not go.is_set():
            go.set()
            b.join(60)

    real_unlink = pathlib.Path.unlink

    def watched_unlink(self, *args, **kwargs):
        if threading.current_thread() is threading.main_thread() \
                and self.name.startswith(db_path.name):
            let_b_commit()  # the race: B commits between A's checks and A's deletion
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "unlink", watched_unlink)
    with pytest.raises(IngestError, match="bad.png"):
        create_study(db_path, "a", manifest=bad, size=32, options=StudyOptions(seed=1))
    let_b_commit()
    assert not b.is_alive() and b_errors == []
    db = open_db(db_path, create=False)
    try:
        assert [r["name"] for r in db.query("SELECT name FROM studies")] == ["b"]
    finally:
        db.close()
    assert len(files_under(stimuli_dir(db_path))) == len(rows)
    assert not list(tmp_path.glob(".s.db.new-*"))


def test_create_joins_a_database_that_appeared_while_it_worked(tmp_path, data, monkeypatch):
    """A new database path is taken by another create while this one decodes its images:
    ours is not linked over it but stored into it, and both studies are kept."""
    root, rows = data
    db_path = tmp_path / "s.db"
    manifest = write_manifest(root / "m.csv", rows)
    real_prepare = ingest._prepare
    done = []

    def prepare_then_race(*args, **kwargs):
        out = real_prepare(*args, **kwargs)
        if not done:
            done.append(1)
            create_study(db_path, "other", manifest=manifest, size=32)
        return out

    monkeypatch.setattr(ingest, "_prepare", prepare_then_race)
    create_study(db_path, "mine", manifest=manifest, size=32)
    assert _study_count(db_path) == {"studies": 2, "stimuli": 24, "cases": 24}
    assert len(files_under(stimuli_dir(db_path))) == 24
    assert not list(tmp_path.glob(".s.db.new-*"))


def test_images_that_show_nothing_are_named_in_the_create_output_and_audit(tmp_path, data):
    """A constant image and a 1x1 image are ingested (they may be meant) but named by
    manifest row in the summary and the stored audit (kept by --recompute); an all-NaN
    NIfTI is an error naming its row."""
    root, rows = data
    Image.fromarray(np.full((48, 48), 120, np.uint8)).save(root / "real" / "flat.png")
    Image.fromarray(np.array([[7]], np.uint8)).save(root / "synthetic" / "dot.png")
    rows[2]["path"], rows[7]["path"] = "real/flat.png", "synthetic/dot.png"
    assert rows[2]["source"] == "real" and rows[7]["source"] == "synthetic"
    db_path = tmp_path / "s.db"
    summary = create_study(db_path, "s", manifest=write_manifest(root / "m.csv", rows), size=32)
    got = [(w["row"], w["path"], w["problem"]) for w in summary.content_warnings]
    assert got == [("m.csv row 3 (line 4)", "real/flat.png", "constant (every pixel shows the same value)"),
                   ("m.csv row 8 (line 9)", "synthetic/dot.png", "1x1 pixel")]
    assert "Content warnings: 2 image(s)" in summary.audit_text
    assert "m.csv row 8 (line 9): synthetic/dot.png: 1x1 pixel" in summary.audit_text
    for recompute in (False, True):
        report, text = audit_study(db_path, "s", recompute=recompute)
        assert report["content_warnings"] == summary.content_warnings
        assert "m.csv row 3 (line 4): real/flat.png: constant" in text

    import nibabel as nib

    nib.save(nib.Nifti1Image(np.full((8, 8, 3), np.nan, np.float32), np.eye(4)),
             root / "real" / "nan.nii.gz")
    rows[4]["path"] = "real/nan.nii.gz"
    with pytest.raises(IngestError, match=r"row 5 .*nan\.nii\.gz: image has no content"):
        create_study(tmp_path / "t.db", "t", manifest=write_manifest(root / "m.csv", rows), size=32)
    _assert_nothing_created(tmp_path, tmp_path / "t.db")


# --------------------------------------------------------------------------------------
# greyscale strata, burned-in text, crop

def _texture(rng, n=48):
    from scipy import ndimage

    f = ndimage.gaussian_filter(rng.normal(size=(n, n)), 2.0)
    return np.clip(0.45 + 0.15 * f / f.std(), 0, 1)


def _sd_like(grey, rng):
    """Stable Diffusion-class output for a greyscale prompt: R, B off by 1-4 levels."""
    g = np.rint(grey * 255)
    return np.clip(np.stack([g + rng.integers(1, 5), g, g - rng.integers(1, 4)], -1),
                   0, 255).astype(np.uint8)


def _grey_study_rows(root, modality_real, modality_synth, *, n=6, colour_real=False, seed=0):
    rng = np.random.default_rng(seed)
    (root / "real").mkdir(parents=True)
    (root / "synthetic").mkdir()
    rows = []
    for i in range(n):
        g = _texture(rng)
        if colour_real:
            arr = np.stack([g, g * 0.6, g * 0.3], -1)
            Image.fromarray(np.rint(arr * 255).astype(np.uint8)).save(root / f"real/r{i}.png")
        else:
            Image.fromarray(np.rint(g * 255).astype(np.uint8)).save(root / f"real/r{i}.png")
        Image.fromarray(_sd_like(_texture(rng), rng)).save(root / f"synthetic/s{i}.png")
        rows.append({"path": f"real/r{i}.png", "source": "real", "modality": modality_real,
                     "prompt": "p"})
        rows.append({"path": f"synthetic/s{i}.png", "source": "synthetic",
                     "modality": modality_synth, "prompt": "p", "generator": "sd"})
    return write_manifest(root / "cases.csv", rows)


def _stored(db_path, source):
    db = open_db(db_path)
    try:
        ids = [r[0] for r in db.execute("SELECT stimulus_id FROM cases WHERE source = ?", [source])]
    finally:
        db.close()
    return [np.asarray(Image.open(stimuli_dir(db_path) / f"{i}.png")) for i in ids]


@pytest.mark.parametrize("modality", ["chest X-ray", ""])
def test_tinted_synthetic_images_of_a_greyscale_modality_are_stored_exactly_grey(tmp_path, modality):
    manifest = _grey_study_rows(tmp_path / "d", modality, modality.upper())
    db_path = tmp_path / "s.db"
    summary = create_study(db_path, "grey", manifest=manifest, size=48)
    for px in _stored(db_path, "synthetic"):
        assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])
    g = summary.audit["greyscale"]
    assert len(g["converted"]) == 6 and g["near_grey_levels"] == 12
    assert all(1 <= c["spread"] <= 7 for c in g["converted"])
    assert "stored as exact grey (luma)" in summary.audit_text
    assert not any("tint" in r for r in summary.audit["reasons"])
    # recomputing keeps the record of what was converted
    report, text = audit_study(db_path, "grey", recompute=True)
    assert len(report["greyscale"]["converted"]) == 6 and "exact grey" in text


def test_synthetic_images_stay_in_colour_where_the_real_ones_are_colour(tmp_path):
    manifest = _grey_study_rows(tmp_path / "d", "fundus", "fundus", colour_real=True)
    db_path = tmp_path / "s.db"
    summary = create_study(db_path, "colour", manifest=manifest, size=48)
    assert summary.audit["greyscale"]["converted"] == []
    assert any(not np.array_equal(px[..., 0], px[..., 2]) for px in _stored(db_path, "synthetic"))


def test_a_colourful_synthetic_image_in_a_greyscale_modality_is_left_and_reported(tmp_path):
    root = tmp_path / "d"
    manifest = _grey_study_rows(root, "CT", "CT")
    rng = np.random.default_rng(1)
    g = _texture(rng)
    Image.fromarray(np.rint(np.stack([g, g * 0.5, g * 0.2], -1) * 255).astype(np.uint8)).save(
        root / "synthetic/s0.png")
    summary = create_study(tmp_path / "s.db", "ct", manifest=manifest, size=48)
    g = summary.audit["greyscale"]
    assert len(g["converted"]) == 5
    assert [c["case_id"] for c in g["left_in_colour"]] == ["synthetic/s0.png"]
    assert "left as they are" in summary.audit_text


def _dicom_variant(tmp_path, name, **attrs):
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    path = tmp_path / name
    ds.save_as(path)
    return path


def test_burned_in_text_is_warned_and_a_crop_box_is_applied(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    _dicom_variant(root, "us.dcm", Modality="US")
    _dicom_variant(root, "yes.dcm", BurnedInAnnotation="YES")
    _dicom_variant(root, "us_no.dcm", Modality="US", BurnedInAnnotation="NO")
    _dicom_variant(root, "ct.dcm")
    rng = np.random.default_rng(0)
    rows = []
    for name in ("us.dcm", "yes.dcm", "us_no.dcm", "ct.dcm"):
        rows.append({"path": name, "source": "real", "modality": "", "prompt": "",
                     "crop": "0,8,128,100" if name == "yes.dcm" else ""})
    for i in range(4):
        Image.fromarray(np.rint(_texture(rng, 64) * 255).astype(np.uint8)).save(root / f"s{i}.png")
        rows.append({"path": f"s{i}.png", "source": "synthetic", "modality": "", "prompt": "",
                     "crop": ""})
    db_path = tmp_path / "s.db"
    summary = create_study(db_path, "burn", manifest=write_manifest(root / "cases.csv", rows),
                           size=64)
    burned = {b["path"]: b for b in summary.audit["burned_in"]}
    assert set(burned) == {"us.dcm", "yes.dcm"}
    assert "without BurnedInAnnotation" in burned["us.dcm"]["reason"]
    assert "is YES" in burned["yes.dcm"]["reason"] and burned["yes.dcm"]["crop"] == [0, 8, 128, 100]
    assert "Burned-in text: 2 DICOM image(s)" in summary.audit_text
    db = open_db(db_path)
    try:
        w, h = db.execute("SELECT s.original_width, s.original_height FROM cases c JOIN stimuli s "
                          "ON s.id = c.stimulus_id WHERE c.original_path = 'yes.dcm'").fetchone()
    finally:
        db.close()
    assert (w, h) == (128, 100)  # the crop, not the file's 128x128


def test_a_crop_outside_the_image_is_one_error_line(tmp_path):
    root = tmp_path / "d"
    manifest = _grey_study_rows(root, "CT", "CT")
    text = manifest.read_text().splitlines()
    text[0] += ",crop"
    text[1] += ',"10,10,100,20"'  # the images are 48x48
    text[2:] = [t + "," for t in text[2:]]
    manifest.write_text("\n".join(text) + "\n")
    with pytest.raises(IngestError, match=r"row 1 .*crop 10,10,100,20 reaches outside the image \(48x48"):
        create_study(tmp_path / "s.db", "c", manifest=manifest, size=48)
    assert not (tmp_path / "s.db").exists()


def test_added_synthetic_images_follow_the_stored_real_images_greyscale(tmp_path):
    from studies.ingest import add_cases

    root = tmp_path / "d"
    manifest = _grey_study_rows(root, "CT", "CT", n=4)
    db_path = tmp_path / "s.db"
    create_study(db_path, "grey", manifest=manifest, size=48)
    rng = np.random.default_rng(5)
    extra = tmp_path / "more"
    extra.mkdir()
    Image.fromarray(_sd_like(_texture(rng), rng)).save(extra / "late.png")
    add = write_manifest(extra / "add.csv", [{"path": "late.png", "source": "synthetic",
                                              "modality": "ct", "prompt": "p", "generator": "sd"}])
    summary = add_cases(db_path, "grey", manifest=add)
    converted = [c["case_id"] for c in summary.audit["greyscale"]["converted"]]
    assert len(converted) == 5 and converted[-1] == "late.png"  # 4 at creation, kept
    for px in _stored(db_path, "synthetic"):
        assert np.array_equal(px[..., 0], px[..., 2])
