"""Stimulus size from the data: `--size auto` and the scaling audit."""
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from studies import audit

from studies.imaging import sizing
from studies.ingest import audit_study, create_study
from studio.cli import cli
from study_fixtures import _pydicom_file


@pytest.mark.parametrize("sides, expected", [
    ([1411, 1411, 1500, 64], 1024),       # big fundus photos: capped at 1024
    ([64, 64, 64, 512, 512], 256),        # mostly tiny: floor 256
    ([600, 700, 800, 900], 640),          # lower median 700 -> 640 (multiple of 64)
    ([500, 520, 530], 512),
    ([None, None], sizing.FALLBACK),
])
def test_auto_size_rule(sides, expected):
    assert sizing.auto_size(sides) == expected


def test_probe_size_reads_headers_without_decoding(tmp_path):
    Image.new("L", (300, 200)).save(tmp_path / "a.png")
    assert sizing.probe_size(tmp_path / "a.png") == (300, 200)
    assert sizing.probe_size(_pydicom_file("CT_small.dcm")) == (128, 128)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert sizing.probe_size(tmp_path / "bad.png") is None


def test_scaling_check_lists_the_worst_first():
    check = audit.scaling_check([("tiny", 64, 64), ("ok", 500, 400), ("huge", 4000, 3000),
                                 ("small", 200, 100)], 512)
    assert (check["n_upscaled"], check["n_downscaled"]) == (2, 1)
    assert [r["case"] for r in check["worst"]] == ["tiny", "huge", "small"]
    text = audit.format_scaling(check)
    assert "tiny: 64x64 enlarged 8.0x" in text and "huge: 4000x3000 reduced 7.8x" in text
    assert audit.format_scaling(audit.scaling_check([("ok", 500, 500)], 512)) == ""


def _images(root, sizes):
    for i, (w, h) in enumerate(sizes):
        for source in ("real", "synthetic"):
            p = root / source / (f"g/x{i}.png" if source == "synthetic" else f"x{i}.png")
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (w, h), color=40 + i).save(p)
    return root


def test_create_study_auto_size_and_stored_scaling_warning(tmp_path):
    root = _images(tmp_path / "imgs", [(700, 600), (720, 700), (64, 64)])
    s = create_study(tmp_path / "s.db", "auto", images_dir=root, size="auto")
    assert s.size == 640  # lower median of the longest sides 64,64,700,700,720,720 = 700
    scaling = s.audit["scaling"]
    assert (scaling["size"], scaling["n_upscaled"], scaling["n_downscaled"]) == (640, 2, 0)
    assert {r["case"] for r in scaling["worst"]} == {"real/x2.png", "synthetic/g/x2.png"}
    assert "enlarged 10.0x" in s.audit_text
    assert "verdict" in s.audit or "leak" in s.audit  # the leak audit's own keys are kept
    report, text = audit_study(tmp_path / "s.db", "auto", recompute=True)
    assert report["scaling"]["n_upscaled"] == 2 and "enlarged 10.0x" in text


def test_cli_size_default_is_auto_and_bad_size_is_one_line(tmp_path):
    root = _images(tmp_path / "imgs", [(300, 300), (320, 320)])
    res = CliRunner().invoke(cli, ["study", "create", "--db", str(tmp_path / "s.db"),
                                   "--name", "a", "--images", str(root)])
    assert res.exit_code == 0, res.output
    assert "256x256 PNG" in res.output
    bad = CliRunner().invoke(cli, ["study", "create", "--db", str(tmp_path / "s.db"),
                                   "--name", "b", "--images", str(root), "--size", "big"])
    assert bad.exit_code == 1 and "Error: --size must be auto or a whole number" in bad.output
