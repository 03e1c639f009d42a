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
