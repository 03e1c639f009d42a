"""`medisyn generate`: a thin wrapper over model_runtime.batch_job.run_generate_job."""
import csv

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
