"""`medisyn experiment generalist`: a generalist and one specialist per modality at equal total
compute, compared per modality, on tiny models and a two-modality mixture."""
import json

import pytest

torch = pytest.importorskip("torch")

from runtime_fixtures import single_torch_thread  # noqa: E402,F401
from mixture_fixtures import CT, FUNDUS, disc, stripes, table_source, write_toml  # noqa: E402

from model_runtime import train as train_mod  # noqa: E402
from studio.experiment import generalist  # noqa: E402


def test_generalist_and_specialists_get_equal_compute_and_are_compared_per_modality(tmp_path):
    spec = write_toml(tmp_path / "m.toml", [{"path": str(table_source(tmp_path / "ct", 8, stripes, CT))},
                                           {"path": str(table_source(tmp_path / "fundus", 8, disc, FUNDUS))}])
    cfg = train_mod.TrainConfig(size=32, vae_channels=(8, 16), vae_batch=4, text_width=16, text_layers=1,
                                text_heads=2, unet_channels=(16, 32), unet_heads=4, unet_batch=4, warmup_steps=1,
                                log_every=2)
    result = generalist.run_generalist(spec, tmp_path / "out", 4, config=cfg, per_modality=6, sample_steps=2,
                                       log=lambda m: None)
    assert result.modalities == ["CT", "fundus photograph"]
    assert sorted((r["arm"], r["modality"]) for r in result.rows) == [
        ("generalist", "CT"), ("generalist", "fundus photograph"),
        ("specialist", "CT"), ("specialist", "fundus photograph")]
    cost = result.cost
    assert cost["generalist"]["unet_samples"] == sum(c["unet_samples"] for a, c in cost.items() if a != "generalist")
    assert cost["specialist:CT"]["unet_steps"] == 2
    for row in result.rows:
        assert row["n"] == 6 and 0 <= row["precision"] <= 1 and 0 <= row["classifier_accuracy"] <= 1
        assert row["fid"] is not None and row["fid"] >= 0
    saved = json.loads((tmp_path / "out" / "generalist.json").read_text())
    assert saved["rows"] == result.rows and saved["budget"] == 4
    assert "| CT | generalist |" in (tmp_path / "out" / "generalist.md").read_text()


def test_one_modality_is_one_clear_error(tmp_path):
    from click.testing import CliRunner

    from studio.cli import cli

    spec = write_toml(tmp_path / "m.toml", [{"path": str(table_source(tmp_path / "ct", 4, stripes, CT))}])
    result = CliRunner().invoke(cli, ["experiment", "generalist", "--data", str(spec), "--budget", "4",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "one modality" in lines[0], result.output
