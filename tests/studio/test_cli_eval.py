"""medisyn eval novelty / fidelity / alignment: outputs, and one `Error:` line for bad input."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from eval_fixtures import normalised, plant, save, small_set, tiny_bert, tiny_clip, tiny_torchscript, tiny_vit
from imaging_fixtures import dicom_sample, nifti_sample, skimage_sample
from studio.cli import cli


def _run(*args):
    return CliRunner().invoke(cli, ["eval", *map(str, args)])


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """Reference: shipped DICOM / NIfTI / PNG / JPEG files as they are; synthetic: copies and others."""
    tmp = tmp_path_factory.mktemp("cli")
    ref = tmp / "ref"
    ref.mkdir()
    import shutil

    for src, name in [(dicom_sample("CT_small.dcm"), "ct.dcm"), (dicom_sample("MR_small.dcm"), "mr.dcm"),
                      (nifti_sample("anatomical.nii"), "t1.nii"), (skimage_sample("retina.jpg"), "retina.jpg"),
                      (skimage_sample("ihc.png"), "ihc.png"), (skimage_sample("camera.png"), "camera.png"),
                      (skimage_sample("coins.png"), "coins.png"), (skimage_sample("moon.png"), "moon.png")]:
        shutil.copy(src, ref / name)
    syn = tmp / "syn"
    rng = np.random.default_rng(0)
    plant(normalised(dicom_sample("CT_small.dcm")), "flip", rng, syn / "copy_ct")
    plant(normalised(skimage_sample("retina.jpg")), "jpeg70", rng, syn / "copy_retina")
    save(normalised(skimage_sample("horse.png")), syn / "horse.png")
    save(normalised(skimage_sample("rocket.jpg")), syn / "rocket.png")
    return tmp, ref, syn


def test_novelty_command_writes_the_three_outputs_and_prints_the_rule(shipped):
    tmp, ref, syn = shipped
    out = tmp / "out"
    r = _run("novelty", "--synthetic", syn, "--reference", ref, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    assert "split-conformal" in r.output and "flag rule" in r.output
    assert "held-out real images flagged:" in r.output and "95% CI" in r.output
    assert "closer to the training set than held-out real images?" in r.output
    rows = {row["synthetic"]: row for row in csv.DictReader(open(out / "novelty.csv"))}
    assert rows["copy_ct.png"]["flagged"] == "1" and rows["copy_ct.png"]["nearest_reference"] == "ct.dcm"
    assert rows["copy_retina.jpg"]["flagged"] == "1" and rows["copy_retina.jpg"]["nearest_reference"] == "retina.jpg"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_reference"] == 8 and summary["n_synthetic"] == 4
    assert (out / "report.html").stat().st_size > 1000
    r = _run("novelty", "--synthetic", syn, "--reference", ref, "--out", tmp / "out2", "--quiet",
             "--measures", "pixel", "--threshold", "0.9999")
    assert r.exit_code == 0 and "threshold pixel = 0.9999 (given (--threshold))" in r.output


def test_fidelity_command_json_html_and_caveat(shipped, tmp_path):
    _, ref, syn = shipped
    net = tiny_torchscript(tmp_path / "inc.pt")
    r = _run("fidelity", "--synthetic", syn, "--reference", ref, "--features", "inception", "--weights", net,
             "--kid-subset-size", "3", "--json", "--html", tmp_path / "f.html", "--quiet")
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["groups"][0]["fid"] is not None and payload["feature_dim"] == 16
    assert "Caveat: FID is biased upward below ~2,000 images" in r.stderr
    assert "Fidelity and diversity report" in (tmp_path / "f.html").read_text()
    r = _run("fidelity", "--synthetic", syn, "--reference", ref, "--features", str(tiny_vit(tmp_path / "vit")),
             "--kid-subset-size", "3", "--quiet")
    assert r.exit_code == 0 and "FID" in r.output and "Caveat" in r.output


def test_alignment_command(tmp_path):
    imgs = small_set(tmp_path / "imgs", 6, 1)
    with open(imgs / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "source", "modality", "prompt"])
        for i in range(6):
            w.writerow([f"img_{i:03d}.png", "synthetic", "", ["CT of the head", "fundus photograph"][i % 2]])
    clip = tiny_clip(tmp_path / "clip")
    r = _run("alignment", "--images", imgs / "manifest.csv", "--clip", clip, "--quiet")
    assert r.exit_code == 0, r.output
    assert "CLIP score" in r.output and "retrieval accuracy" in r.output and "chance 50.0%" in r.output
    r = _run("alignment", "--images", imgs / "manifest.csv", "--clip", clip, "--db", tmp_path / "x.db")
    assert r.exit_code == 2 and "--db and --study go together" in r.output


def _error_line(result):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_bad_input_gives_one_error_line(shipped, tmp_path):
    _, ref, syn = shipped
    (tmp_path / "empty").mkdir()
    assert "no image files" in _error_line(_run("novelty", "--synthetic", tmp_path / "empty", "--reference", ref,
                                                "--out", tmp_path / "o", "--quiet"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scan.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage")
    line = _error_line(_run("novelty", "--synthetic", bad, "--reference", ref, "--out", tmp_path / "o", "--quiet"))
    assert "unreadable image scan.dcm" in line
    line = _error_line(_run("fidelity", "--synthetic", syn, "--reference", ref, "--features",
                            str(tiny_bert(tmp_path / "bert")), "--quiet"))
    assert "not a vision model" in line
    line = _error_line(_run("fidelity", "--synthetic", syn, "--reference", ref, "--features",
                            str(tiny_vit(tmp_path / "vit1", num_channels=1)), "--quiet"))
    assert "mismatched channel counts" in line
    line = _error_line(_run("novelty", "--synthetic", syn, "--reference", ref, "--out", tmp_path / "o",
                            "--features", str(tiny_torchscript(tmp_path / "g.pt", in_channels=1)), "--quiet"))
    assert "mismatched channel counts" in line
    line = _error_line(_run("fidelity", "--synthetic", syn, "--reference", ref, "--features", "inception",
                            "--weights", tmp_path / "missing.pt", "--quiet"))
    assert "no such file" in line
    line = _error_line(_run("novelty", "--synthetic", syn, "--reference", ref, "--out", tmp_path / "o",
                            "--threshold", "0.5", "--quiet"))
    assert "MEASURE=VALUE" in line


def test_fidelity_out_folder_and_by_modality_with_a_study_layout_reference(shipped, tmp_path):
    """--out writes fidelity.csv/json and report.html (as eval novelty does); --by modality with a
    folder reference in the study layout (real/<modality>/...) compares each modality with its own
    real images, not with the whole reference set."""
    import shutil

    _, ref, _ = shipped
    study = tmp_path / "study"
    for modality, names in {"ct": ["ct.dcm", "mr.dcm", "t1.nii"], "fundus": ["retina.jpg", "ihc.png"]}.items():
        (study / "real" / modality).mkdir(parents=True)
        for name in names:
            shutil.copy(ref / name, study / "real" / modality / name)
    (study / "synthetic" / "gen").mkdir(parents=True)
    syn = small_set(tmp_path / "syn", 6, 2)
    with open(syn / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "source", "modality", "prompt"])
        for i in range(6):
            w.writerow([f"img_{i:03d}.png", "synthetic", ["ct", "fundus"][i % 2], "x"])
    save(normalised(skimage_sample("horse.png")), study / "synthetic" / "gen" / "horse.png")  # not a reference image
    for reference in (study, study / "real"):
        out = tmp_path / f"out_{reference.name}"
        r = _run("fidelity", "--synthetic", syn / "manifest.csv", "--reference", reference, "--features", "pixels",
                 "--by", "modality", "--kid-subset-size", "2", "--out", out, "--quiet")
        assert r.exit_code == 0, r.output
        groups = {g["group"]: g for g in json.loads((out / "fidelity.json").read_text())["groups"]}
        assert groups["all"]["n_reference"] == 5
        assert (groups["ct"]["n_synthetic"], groups["ct"]["n_reference"]) == (3, 3)
        assert (groups["fundus"]["n_synthetic"], groups["fundus"]["n_reference"]) == (3, 2)
        rows = {row["group"]: row for row in csv.DictReader(open(out / "fidelity.csv"))}
        assert set(rows) == {"all", "ct", "fundus"} and float(rows["ct"]["fid"]) == pytest.approx(groups["ct"]["fid"])
        assert "Fidelity and diversity report" in (out / "report.html").read_text()


def test_a_missing_inception_file_names_the_offline_alternative(shipped, tmp_path, monkeypatch):
    _, ref, syn = shipped
    line = _error_line(_run("fidelity", "--synthetic", syn, "--reference", ref, "--features", "inception",
                            "--weights", tmp_path / "missing.pt", "--quiet"))
    assert "--features pixels" in line
    from evaluation import features

    monkeypatch.delenv("MEDISYN_INCEPTION", raising=False)
    monkeypatch.setattr(features, "INCEPTION_CACHE", (tmp_path / "nowhere",))
    line = _error_line(_run("fidelity", "--synthetic", syn, "--reference", ref, "--quiet"))
    assert "not on this machine" in line and "--features pixels" in line
