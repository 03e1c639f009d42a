"""`medisyn generate`: a thin wrapper over model_runtime.batch_job.run_generate_job."""
import csv

import pytest
import torch
from click.testing import CliRunner

from runtime_fixtures import single_torch_thread, tiny_sd1_dir  # noqa: F401
from studio.cli import cli

COMMON = ["--steps", "2", "--width", "32", "--height", "32", "--threads", "1"]


def invoke(*args):
    return CliRunner().invoke(cli, ["generate", *args], catch_exceptions=False)


def test_help_lists_the_options():
    result = invoke("--help")
    assert result.exit_code == 0
    for option in ("--model", "--prompt", "--prompts", "--out", "--n", "--seed", "--steps", "--guidance",
                   "--scheduler", "--width", "--height", "--batch-size", "--engine", "--address"):
        assert option in result.output


def test_generate_from_a_prompt(tmp_path, tiny_sd1_dir):
    out = tmp_path / "out"
    result = invoke("--model", str(tiny_sd1_dir), "--prompt", "Axial CT image of the chest", "--n", "2",
                    "--seed", "5", "--scheduler", "Euler a", "--modality", "CT", "--out", str(out), *COMMON)
    assert result.exit_code == 0, result.output
    assert "2 generated, 0 already done" in result.output
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == ["images/r00000_000.png", "images/r00000_001.png"]
    assert rows[0]["modality"] == "CT" and rows[0]["source"] == "synthetic"
    with open(out / "generation.csv", newline="") as fh:
        details = list(csv.DictReader(fh))
    assert [d["seed"] for d in details] == ["5", "6"] and details[0]["scheduler"] == "Euler a"
    assert details[0]["dtype"] == "fp32"
    again = invoke("--model", str(tiny_sd1_dir), "--prompt", "Axial CT image of the chest", "--n", "2",
                   "--seed", "5", "--scheduler", "Euler a", "--modality", "CT", "--out", str(out), *COMMON)
    assert "0 generated, 2 already done" in again.output


def test_steps_and_guidance_default_to_the_model_folder_recommendation(tmp_path, tiny_sd1_dir):
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_sd1_dir, model)
    (model / "medisyn.json").write_text(json.dumps({"steps": 3, "guidance_scale": 2.5}))
    out = tmp_path / "out"
    result = invoke("--model", str(model), "--prompt", "ct", "--out", str(out), "--width", "32", "--height", "32",
                    "--threads", "1")
    assert result.exit_code == 0, result.output
    with open(out / "generation.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    assert (row["steps"], row["guidance_scale"]) == ("3", "2.5")


def test_clear_errors(tmp_path, tiny_sd1_dir):
    out = str(tmp_path / "out")
    result = invoke("--model", str(tmp_path / "nope"), "--prompt", "x", "--out", out, *COMMON)
    assert result.exit_code == 1 and "not found" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,n\nok,1\nbroken,many\n", encoding="utf-8")
    result = invoke("--model", str(tiny_sd1_dir), "--prompts", str(bad), "--out", out, *COMMON)
    assert result.exit_code == 1 and "bad.csv line 3, column 'n'" in result.output
    result = invoke("--model", str(tiny_sd1_dir), "--prompt", "x", "--scheduler", "Warp", "--out", out, *COMMON)
    assert result.exit_code == 1 and "unknown or unsupported scheduler" in result.output
    result = invoke("--model", str(tiny_sd1_dir), "--out", out, *COMMON)
    assert result.exit_code == 2 and "exactly one of --prompt or --prompts" in result.output


def one_line_error(result, exit_code=1) -> str:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_one_error_line_before_any_work(tmp_path):
    out = tmp_path / "out"
    # the model does not even exist: the device is checked first, before anything is read
    result = invoke("--model", str(tmp_path / "nope"), "--prompt", "x", "--device", "cuda", "--out", str(out),
                    *COMMON)
    assert "CUDA is not available" in one_line_error(result)
    assert not out.exists()


def test_bad_device_dtype_size_and_guidance_are_one_error_line(tmp_path, tiny_sd1_dir):
    out = str(tmp_path / "out")
    base = ["--model", str(tiny_sd1_dir), "--prompt", "x", "--out", out, "--steps", "2", "--threads", "1"]
    assert "unknown device 'gpu'" in one_line_error(invoke(*base, "--device", "gpu"))
    assert "unknown dtype 'int8'" in one_line_error(invoke(*base, "--dtype", "int8"))
    assert "36 is not a multiple of 8" in one_line_error(invoke(*base, "--width", "36", "--height", "32"), 2)
    assert "guidance_scale must be a finite number" in one_line_error(
        invoke(*base, "--width", "32", "--height", "32", "--guidance", "nan"))
    assert not (tmp_path / "out").exists()


def test_corrupted_weights_are_one_error_line_and_write_no_image(tmp_path, tiny_sd1_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "corrupt"
    shutil.copytree(tiny_sd1_dir, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(weights))
    out = tmp_path / "out"
    result = invoke("--model", str(model), "--prompt", "Axial CT image of the chest", "--n", "2", "--out", str(out),
                    *COMMON)
    assert "NaN/infinite values" in one_line_error(result)
    assert not list((out / "images").glob("*.png"))
    with open(out / "manifest.csv", newline="") as fh:
        assert list(csv.DictReader(fh)) == []  # no row for an image that was never written


def test_dicom_beside_each_png(tmp_path, tiny_sd1_dir):
    import pydicom

    out = tmp_path / "out"
    result = invoke("--model", str(tiny_sd1_dir), "--prompt", "Axial CT image of the chest", "--modality", "CT",
                    "--dicom", "--out", str(out), *COMMON)
    assert result.exit_code == 0, result.output
    ds = pydicom.dcmread(out / "images" / "r00000_000.dcm")
    assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    assert "PatientOrientation" in ds and not ds.PatientOrientation
    assert ds.ConversionType == "SYN"
    # a colour modality keeps its colour; a resumed job adds the .dcm of PNGs made without --dicom
    out2 = tmp_path / "out2"
    invoke("--model", str(tiny_sd1_dir), "--prompt", "fundoscopy image of the left retina", "--modality",
           "fundus photograph", "--out", str(out2), *COMMON)
    assert not (out2 / "images" / "r00000_000.dcm").exists()
    again = invoke("--model", str(tiny_sd1_dir), "--prompt", "fundoscopy image of the left retina", "--modality",
                   "fundus photograph", "--dicom", "--out", str(out2), *COMMON)
    assert "0 generated, 1 already done" in again.output
    ds = pydicom.dcmread(out2 / "images" / "r00000_000.dcm")
    assert ds.Modality == "OP" and ds.PhotometricInterpretation == "RGB"


def test_a_modality_the_model_does_not_know_is_a_warning_on_stderr(tmp_path):
    result = CliRunner().invoke(cli, ["generate", "--model", "embedded", "--prompt",
                                      "AP Frontal Chest X-ray (CXR) of a male patient", "--out", str(tmp_path / "o"),
                                      "--steps", "1", "--threads", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warning) == 1 and "does not know chest X-ray" in warning[0] and "--prompt" in warning[0]
    assert "Warning" not in result.stdout
    ok = CliRunner().invoke(cli, ["generate", "--model", "embedded", "--prompt", "Axial CT image of the head",
                                  "--out", str(tmp_path / "o2"), "--steps", "1", "--threads", "1"],
                            catch_exceptions=False)
    assert ok.exit_code == 0 and "Warning" not in ok.stderr


def test_a_successful_run_prints_no_library_noise(tmp_path, tiny_sd1_dir):
    """A fresh process (library warnings are printed once per process): stderr holds only our
    progress bar."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CI="")
    code = "from studio.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "generate", "--model", str(tiny_sd1_dir), "--prompt",
                           "Axial CT image of the chest", "--out", str(tmp_path / "out"), *COMMON],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(line.startswith("generate:") for line in lines), lines
