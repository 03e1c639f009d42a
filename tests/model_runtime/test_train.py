"""model_runtime.train on a tiny made-up data set: loss falls, the output is a standard diffusers
pipeline, and the same seed gives bit-identical weights."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from model_runtime import train as train_mod  # noqa: E402


def _tiny_dataset(folder, n=16):
    """Two 'modalities' a model can tell apart: bright discs and dark stripes, with captions."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    rows = []
    for i in range(n):
        if i % 2 == 0:
            r = rng.uniform(8, 13)
            img = np.zeros((32, 32, 3), np.uint8)
            img[(yy - 16) ** 2 + (xx - 16) ** 2 < r * r] = (220, 90, 40)
            caption = "fundoscopy image of the left retina"
        else:
            img = np.repeat((((xx + i) // 4) % 2 * 120).astype(np.uint8)[..., None], 3, axis=2)
            caption = "Axial CT image of the head"
        Image.fromarray(img).save(folder / f"{i}.png")
        rows.append({"path": f"{i}.png", "caption": caption})
    with open(folder / "captions.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "caption"])
        w.writeheader()
        w.writerows(rows)
    return folder


def _tiny_config(seed=0):
    return train_mod.TrainConfig(
        size=32, seed=seed, threads=1, vae_channels=(8, 16), vae_steps=24, vae_batch=8, vae_lr=3e-3,
        text_width=32, text_layers=1, text_heads=2, unet_channels=(16, 32), unet_heads=4, unet_steps=24,
        unet_batch=8, unet_lr=2e-3, warmup_steps=2, log_every=6,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    data = _tiny_dataset(base / "data")
    a = train_mod.train(data, base / "a", _tiny_config(0), log=lambda m: None)
    b = train_mod.train(data, base / "b", _tiny_config(0), log=lambda m: None)
    return a, b


def _weights(folder):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        for k, v in load_file(f).items():
            out[f"{f.parent.name}/{k}"] = v
    return out


def test_loss_decreases(runs):
    a, _ = runs
    with open(a.out_dir / "training_log.csv", newline="") as fh:
        log = list(csv.DictReader(fh))
    for phase in ("vae", "unet"):
        losses = [float(r["loss"]) for r in log if r["phase"] == phase]
        assert len(losses) == 4
        assert losses[-1] < losses[0], (phase, losses)


def test_same_seed_same_weights(runs):
    a, b = runs
    wa, wb = _weights(a.out_dir), _weights(b.out_dir)
    assert wa.keys() == wb.keys() and len(wa) > 50
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_other_seed_other_weights(tmp_path, runs):
    a, _ = runs
    data = _tiny_dataset(tmp_path / "data")
    cfg = _tiny_config(1)
    cfg.vae_steps = cfg.unet_steps = 2
    c = train_mod.train(data, tmp_path / "c", cfg, log=lambda m: None)
    wa, wc = _weights(a.out_dir), _weights(c.out_dir)
    assert not torch.equal(wa["unet/conv_in.weight"], wc["unet/conv_in.weight"])


def test_output_is_a_standard_pipeline(runs):
    from diffusers import DiffusionPipeline

    a, _ = runs
    index = json.loads((a.out_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["scheduler"][1] == "DPMSolverMultistepScheduler"
    for name in ("vocab.json", "merges.txt"):
        assert (a.out_dir / "tokenizer" / name).is_file()
    assert not list(a.out_dir.rglob("*.bin"))  # safetensors only
    pipe = DiffusionPipeline.from_pretrained(a.out_dir)
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer("Axial CT image of the head").input_ids
    assert max(ids) < pipe.text_encoder.config.vocab_size
    assert pipe.tokenizer.convert_ids_to_tokens(ids[1]) == "axial</w>"  # whole caption words are tokens
    pipe.set_progress_bar_config(disable=True)
    out = pipe("Axial CT image of the head", num_inference_steps=2, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    summary = json.loads((a.out_dir / "training.json").read_text())
    assert summary["result"]["vae_steps"] == 24 and summary["config"]["seed"] == 0


def test_bad_dataset_is_refused(tmp_path):
    (tmp_path / "captions.csv").write_text("path,caption\n")
    with pytest.raises(ValueError, match="lists no images"):
        train_mod.train(tmp_path, tmp_path / "out", _tiny_config(), log=lambda m: None)
