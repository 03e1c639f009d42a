"""studies.imaging.manifest: columns, sources, path containment, --images folders."""
import os

import pytest

from studies.errors import ManifestError
from studies.imaging.manifest import read_images_dir, read_manifest
from study_fixtures import write_images, write_manifest


@pytest.fixture()
def data(tmp_path):
    root = tmp_path / "data"
    rows = write_images(root)
    return root, rows


def test_reads_valid_manifest(data):
    root, rows = data
    parsed = read_manifest(write_manifest(root / "cases.csv", rows))
    assert len(parsed) == len(rows) == 12
    assert {r.source for r in parsed} == {"real", "synthetic"}
    first = parsed[0]
    assert first.path == (root / rows[0]["path"]).resolve()
    assert first.case_id == rows[0]["path"]  # case_id defaults to the path
    assert first.modality == "CT" and first.prompt.startswith("axial CT")
    assert first.decode_options() == {"modality": "CT"}


def test_optional_columns_and_decode_options(data):
    root, rows = data
    rows = [dict(r, case_id=f"c{i}", group="g1", frame="0", window="40/400", slice="", axis="")
            for i, r in enumerate(rows)]
    rows[5].update(slice="10", axis="1", window="lung")
    parsed = read_manifest(write_manifest(root / "m.csv", rows))
    assert parsed[0].case_id == "c0" and parsed[0].group == "g1"
    assert parsed[0].decode_options() == {"frame": 0, "window": (40.0, 400.0), "modality": "CT"}
    assert parsed[5].decode_options() == {"frame": 0, "window": "lung", "slice_index": 10,
                                          "axis": 1, "modality": rows[5]["modality"]}


def test_header_is_case_insensitive_and_bom_tolerated(data):
    root, rows = data
    path = root / "bom.csv"
    text = "\ufeffPath,Source,MODALITY,prompt\n" + "".join(
        f"{r['path']},{r['source']},{r['modality']},x\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    assert len(read_manifest(path)) == len(rows)


@pytest.mark.parametrize("drop", ["path", "source", "modality", "prompt"])
def test_missing_required_column(data, drop):
    root, rows = data
    cols = [c for c in ("path", "source", "modality", "prompt") if c != drop]
    with pytest.raises(ManifestError, match=f"missing required column.*{drop}"):
        read_manifest(write_manifest(root / "m.csv", rows, cols))


def test_unknown_column_is_refused(data):
    root, rows = data
    rows = [dict(r, generater="x") for r in rows]
    with pytest.raises(ManifestError, match="unknown column 'generater'"):
        read_manifest(write_manifest(root / "m.csv", rows))


def test_unknown_source_names_row_and_column(data):
    root, rows = data
    rows[3]["source"] = "fake"
    with pytest.raises(ManifestError, match=r"m.csv row 4 \(line 5\), column 'source': unknown source 'fake'"):
        read_manifest(write_manifest(root / "m.csv", rows))


def test_missing_file_names_row(data):
    root, rows = data
    rows[2]["path"] = "real/nope.png"
    with pytest.raises(ManifestError, match=r"row 3 .*file not found: real/nope.png"):
        read_manifest(write_manifest(root / "m.csv", rows))


@pytest.mark.parametrize("bad", ["../outside.png", "real/../../outside.png"])
def test_dotdot_escape_is_refused(data, bad):
    root, rows = data
    (root.parent / "outside.png").write_bytes((root / rows[2]["path"]).read_bytes())
    rows[1]["path"] = bad
    with pytest.raises(ManifestError, match="row 2 .*escapes the manifest's folder"):
        read_manifest(write_manifest(root / "m.csv", rows))


def test_absolute_path_is_refused(data):
    root, rows = data
    rows[0]["path"] = str((root / rows[0]["path"]).resolve())
    with pytest.raises(ManifestError, match="row 1 .*absolute path"):
        read_manifest(write_manifest(root / "m.csv", rows))


def test_symlink_escaping_is_refused(data, tmp_path):
    root, rows = data
    secret = tmp_path / "secret.png"
    secret.write_bytes((root / rows[2]["path"]).read_bytes())
    os.symlink(secret, root / "real" / "link.png")
    rows[0]["path"] = "real/link.png"
    with pytest.raises(ManifestError, match="row 1 .*escapes"):
        read_manifest(write_manifest(root / "m.csv", rows))


def test_symlink_inside_folder_is_fine(data):
    root, rows = data
    os.symlink(root / rows[2]["path"], root / "real" / "inside.png")
    rows[0]["path"] = "real/inside.png"
    assert read_manifest(write_manifest(root / "m.csv", rows))[0].path == (root / rows[2]["path"]).resolve()


def test_duplicate_case_id(data):
    root, rows = data
    rows[4]["path"] = rows[0]["path"]
    with pytest.raises(ManifestError, match="row 5 .*duplicate case_id .*first used at .*row 1"):
        read_manifest(write_manifest(root / "m.csv", rows))


def test_bad_numbers(data):
    root, rows = data
    rows = [dict(r, frame="") for r in rows]
    rows[1]["frame"] = "middle"
    with pytest.raises(ManifestError, match="row 2 .*column 'frame': 'middle' is not a whole number"):
        read_manifest(write_manifest(root / "m.csv", rows))


def test_empty_and_missing_manifest(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ManifestError, match="empty"):
        read_manifest(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text("path,source,modality,prompt\n")
    with pytest.raises(ManifestError, match="lists no images"):
        read_manifest(tmp_path / "h.csv")
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "none.csv")


def test_images_dir_with_generators_and_sidecar_prompts(data):
    root, rows = data
    (root / "real" / f"{os.path.splitext(os.path.basename(rows[0]['path']))[0]}.txt").write_text("caption zero\n")
    (root / "synthetic" / ".hidden.png").write_bytes(b"junk")
    parsed = read_images_dir(root)
    assert len(parsed) == 12
    synth = [r for r in parsed if r.source == "synthetic"]
    assert {r.generator for r in synth} == {"gen-a"}
    assert all(r.modality == "" for r in parsed)
    by_id = {r.case_id: r for r in parsed}
    assert by_id[rows[0]["path"]].prompt == "caption zero"
    assert by_id[rows[2]["path"]].prompt == ""


def test_images_dir_without_subfolders(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ManifestError, match="expected subfolders real/ and synthetic/"):
        read_images_dir(tmp_path / "imgs")


def test_images_dir_symlink_escape(data, tmp_path):
    root, rows = data
    outside = tmp_path / "o.png"
    outside.write_bytes(b"x")
    os.symlink(outside, root / "synthetic" / "esc.png")
    with pytest.raises(ManifestError, match="synthetic/esc.png.*escapes"):
        read_images_dir(root)


def test_crop_column_is_parsed_and_checked(data):
    root, rows = data
    rows = [dict(r, crop="") for r in rows]
    rows[0]["crop"] = "2,3,40,30"
    parsed = read_manifest(write_manifest(root / "m.csv", rows))
    assert parsed[0].crop == (2, 3, 40, 30) and parsed[0].decode_options()["crop"] == (2, 3, 40, 30)
    assert parsed[1].crop is None and "crop" not in parsed[1].decode_options()
    for bad in ("1,2,3", "a,b,c,d", "-1,0,10,10", "0,0,0,10"):
        rows[0]["crop"] = bad
        with pytest.raises(ManifestError, match=r"row 1 .*column 'crop'"):
            read_manifest(write_manifest(root / "m.csv", rows))
