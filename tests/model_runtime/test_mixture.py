"""model_runtime.mixture: weighted sources balanced by modality, streamed from tables, WebDataset
tar shards and datasets (Arrow/Parquet) folders; deterministic and resumable; and models trained
on a mixture (fine-tuned and from scratch) that save, reload and generate."""
import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from runtime_fixtures import single_torch_thread, tiny_sd1_dir  # noqa: E402,F401

from model_runtime import finetune as ft  # noqa: E402
from model_runtime import loading  # noqa: E402
from model_runtime import mixture as mx  # noqa: E402
from model_runtime import train as train_mod  # noqa: E402
from model_runtime.generation import GenerationRequest, generate  # noqa: E402

from mixture_fixtures import (  # noqa: E402
    CT, FUNDUS, arrow_source, disc, stripes, table_source, tar_source, write_toml,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    return {
        "ct_table": table_source(root / "ct", 24, stripes, CT),
        "fundus_table": table_source(root / "fundus", 4, disc, FUNDUS),
        "ct_tar": tar_source(root / "ct_tar", 3, 5, stripes, CT),
        "fundus_arrow": arrow_source(root / "fundus_arrow", 7, disc, FUNDUS),
        "fundus_parquet": arrow_source(root / "fundus_parquet", 7, disc, FUNDUS, parquet=True),
        "root": root,
    }


def test_balanced_by_modality_by_default_else_by_weight(sources, tmp_path):
    # 24 CT images against 4 fundus images, equal weights: half the draws are still fundus
    spec = write_toml(tmp_path / "m.toml", [{"path": str(sources["ct_table"])}, {"path": str(sources["fundus_table"])}])
    sampler = mx.MixtureSampler(mx.read_mixture(spec), seed=0)
    assert sampler.modality_names == ["CT", "fundus photograph"]  # inferred from the captions
    for step in range(1, 51):
        sampler.batch(step, 8)
    counts = sampler.counts()
    assert counts["modalities"]["CT"] + counts["modalities"]["fundus photograph"] == 400
    assert 160 <= counts["modalities"]["fundus photograph"] <= 240
    # two CT sources and one fundus source: the two CT sources split CT's half 3:1 by weight
    spec = write_toml(tmp_path / "w.toml", [{"path": str(sources["ct_table"]), "weight": 3},
                                           {"path": str(sources["ct_tar"]), "weight": 1},
                                           {"path": str(sources["fundus_table"]), "weight": 1}])
    p = mx.MixtureSampler(mx.read_mixture(spec), seed=0).p
    assert np.allclose(p, [0.375, 0.125, 0.5])
    spec = write_toml(tmp_path / "v.toml", [{"path": str(sources["ct_table"]), "weight": 3},
                                           {"path": str(sources["fundus_table"]), "weight": 1}], balance="weight")
    assert np.allclose(mx.MixtureSampler(mx.read_mixture(spec), seed=0).p, [0.75, 0.25])


def test_every_source_kind_streams_with_its_caption_template(sources, tmp_path):
    spec = tmp_path / "m.csv"
    with open(spec, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "weight", "caption", "modality"])
        w.writerow([str(sources["ct_tar"]), 1, "{modality}: {caption}", "CT"])
        w.writerow([str(sources["fundus_arrow"]), 1, "", ""])
        w.writerow([str(sources["fundus_parquet"]), 1, "", "fundus"])
    assert mx.is_mixture_file(spec) and not mx.is_mixture_file(sources["ct_table"] / "captions.csv")
    sampler = mx.MixtureSampler(mx.read_mixture(spec), seed=1)
    records = [r for step in range(1, 31) for r in sampler.batch(step, 4)]
    by_source = {i: [r for r in records if r.source == i] for i in range(3)}
    assert all(by_source[i] for i in range(3))
    assert all(r.caption.startswith(f"CT: {CT} number ") for r in by_source[0])
    assert all(r.caption.startswith(FUNDUS) for r in by_source[1] + by_source[2])
    for r in records:  # pixels match the caption's record number
        k = int(r.caption.rsplit(" ", 1)[1])
        expected = stripes(k) if r.source == 0 else disc(k)
        assert np.array_equal(np.asarray(r.image), np.asarray(expected))
    # the tar source went through more than one epoch and still saw every record in each
    tar_numbers = [int(r.caption.rsplit(" ", 1)[1]) for r in by_source[0]]
    assert sorted(tar_numbers[:15]) == list(range(15))


def test_a_resumed_sampler_reads_what_an_uninterrupted_one_reads(sources, tmp_path):
    spec = write_toml(tmp_path / "m.toml", [{"path": str(sources["ct_tar"])}, {"path": str(sources["fundus_table"])}])
    whole = mx.MixtureSampler(mx.read_mixture(spec), seed=3)
    a = [(r.caption, np.asarray(r.image).tobytes()) for s in range(1, 13) for r in whole.batch(s, 3)]
    resumed = mx.MixtureSampler(mx.read_mixture(spec), seed=3)
    b = [(r.caption, np.asarray(r.image).tobytes()) for s in range(7, 13) for r in resumed.batch(s, 3)]
    assert a[18:] == b
    assert resumed.counts()["sources"] == whole.counts()["sources"]


def test_bad_mixture_files_are_one_clear_error(sources, tmp_path):
    cases = {
        "missing": ([{"path": "nowhere"}], "not found"),
        "weight": ([{"path": str(sources["ct_table"]), "weight": -1}], "weight must be > 0"),
        "template": ([{"path": str(sources["ct_table"]), "caption": "{diagnosis}"}], "caption template"),
    }
    for name, (entries, needle) in cases.items():
        with pytest.raises(mx.MixtureError, match=needle):
            mx.read_mixture(write_toml(tmp_path / f"{name}.toml", entries))
    bad = tmp_path / "bad.toml"
    bad.write_text("[[source]\n")
    with pytest.raises(mx.MixtureError, match="not valid TOML"):
        mx.read_mixture(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(mx.MixtureError, match="neither .tar"):
        mx.MixtureSampler(mx.read_mixture(write_toml(tmp_path / "e.toml", [{"path": str(empty)}])))


def test_finetune_on_a_mixture_records_the_draws_and_resumes_exactly(tiny_sd1_dir, sources, tmp_path):
    from safetensors.torch import load_file

    spec = write_toml(tmp_path / "m.toml", [{"path": str(sources["ct_tar"])}, {"path": str(sources["fundus_table"])}])
    cfg = dict(steps=4, rank=4, resolution=32, lr=2e-2, checkpoint_every=2, validation_steps=2, batch_size=2)
    whole = ft.finetune(tiny_sd1_dir, spec, tmp_path / "whole", ft.FinetuneConfig(**cfg), device="cpu",
                        progress=False, log=lambda m: None)
    record = json.loads((whole.out_dir / "training.json").read_text())
    sampled = record["data"]["sampled"]
    assert sampled["steps"] == 4 and sum(sampled["modalities"].values()) == 8
    assert [s["modality"] for s in sampled["sources"]] == ["CT", "fundus photograph"]
    # interrupted after step 2, then resumed: the same weights as the uninterrupted run
    part = tmp_path / "part"
    ft.finetune(tiny_sd1_dir, spec, part, ft.FinetuneConfig(**{**cfg, "steps": 2}), device="cpu",
                progress=False, log=lambda m: None)
    resumed = ft.finetune(tiny_sd1_dir, spec, part, ft.FinetuneConfig(**cfg), resume=True, device="cpu",
                          progress=False, log=lambda m: None)
    assert resumed.resumed_from == 2
    a, b = load_file(str(whole.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((part / "training.json").read_text())["data"]["sampled"] == sampled
    # the LoRA loads and generates
    loaded = loading.load(tiny_sd1_dir, device="cpu", options={"lora": str(whole.out_dir)})
    req = GenerationRequest(prompt=FUNDUS, seed=0, steps=2, guidance_scale=5.0, width=32, height=32, num_images=1)
    assert generate(loaded, req)[0].image.size == (32, 32)


def test_a_model_trained_from_scratch_on_a_mixture_saves_reloads_and_generates(sources, tmp_path):
    spec = write_toml(tmp_path / "m.toml", [{"path": str(sources["ct_tar"])},
                                           {"path": str(sources["fundus_arrow"]), "caption": "{caption}, colour"}])
    cfg = train_mod.TrainConfig(size=32, vae_channels=(8, 16), vae_steps=6, vae_batch=4, text_width=16,
                                text_layers=1, text_heads=2, unet_channels=(16, 32), unet_heads=4, unet_steps=6,
                                unet_batch=4, warmup_steps=2, log_every=3)
    result = train_mod.train(spec, tmp_path / "model", cfg, log=lambda m: None)
    summary = json.loads((result.out_dir / "training.json").read_text())
    assert set(summary["result"]["sampled"]["modalities"]) == {"CT", "fundus photograph"}
    assert summary["result"]["sampled"]["steps"] == 6 + 1 + 6  # VAE draws, the latent-scale probe, UNet draws
    assert summary["data"]["mixture"][1]["caption"] == "{caption}, colour"
    loaded = loading.load(result.out_dir, device="cpu")
    req = GenerationRequest(prompt=FUNDUS + ", colour", seed=0, steps=2, guidance_scale=3.0, width=32, height=32,
                            num_images=1)
    assert generate(loaded, req)[0].image.size == (32, 32)
