"""Quality of the COMMITTED embedded model (assets/medisyn-mini), loaded through the runtime.

For each modality's prompt, a few images at the model's default settings must be
- recognised as that modality by a simple classifier fitted on real training images (>= 80%),
- neither blank nor noise: intensity mean and std inside the real images' range (>= 80%).
"""
import json
import pathlib

import pytest

torch = pytest.importorskip("torch")

from studio.demo import data as demo_data  # noqa: E402

from studio.demo import model_quality
from studio.demo.embedded_model import read_defaults  # noqa: E402

from paths import ROOT  # noqa: E402
MODEL = ROOT / "assets" / "medisyn-mini"
PER_MODALITY = 8

pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").is_file(), reason="embedded model not built")


@pytest.fixture(scope="module")
def loaded():
    from model_runtime.loading import load

    torch.set_num_threads(2)
    return load("embedded", options={"hash_weights": False})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    demo_data.build_training_set(out, samples=600, seed=7)  # another seed than training: fresh crops
    images, rows = model_quality.read_images(out)
    return model_quality.fit_reference(images, [r["modality"] for r in rows])


@pytest.fixture(scope="module")
def generated(loaded):
    from model_runtime.generation import GenerationRequest, generate

    defaults = read_defaults(MODEL)
    out = {}
    for i, (key, modality) in enumerate(demo_data.MODALITIES.items()):
        request = GenerationRequest(prompt=modality.prompt, num_images=PER_MODALITY, seed=5000 + 100 * i,
                                    steps=defaults.steps, guidance_scale=defaults.guidance_scale)
        out[key] = model_quality.to_uint8([g.image for g in generate(loaded, request)])
    return out


def test_weights_are_small_safetensors():
    files = list(MODEL.rglob("*"))
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert {f.parent.name for f in weights} == {"unet", "vae", "text_encoder"}
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".ckpt")]
    assert sum(f.stat().st_size for f in weights) <= 40 * 1024 * 1024


def test_loads_through_the_runtime_at_native_size(loaded):
    assert loaded.pipeline_class == "StableDiffusionPipeline"
    assert loaded.default_size() == (64, 64)
    defaults = json.loads((MODEL / "medisyn.json").read_text())
    assert defaults["size"] == 64 and defaults["steps"] >= 1


def test_reference_classifier_is_sound(reference):
    assert reference.cv_accuracy >= 0.95  # real images of the six modalities are easy to tell apart


@pytest.mark.parametrize("modality", list(demo_data.MODALITIES))
def test_generated_images_show_the_requested_modality(modality, reference, generated):
    s = model_quality.score(reference, modality, demo_data.MODALITIES[modality].prompt, generated[modality])
    assert s.recognised >= 0.8, s
    assert s.plausible >= 0.8, s


def test_different_prompts_give_different_images(generated):
    means = {k: v.astype(float).mean(axis=0) for k, v in generated.items()}
    keys = list(means)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert abs(means[a] - means[b]).mean() > 10, (a, b)


def test_declared_modalities_agree_across_registry_model_folder_and_card():
    import pathlib

    from model_runtime import modalities, registry
    from studio.demo.embedded_model import GenerationDefaults, read_defaults

    entry = registry.get("embedded")
    in_folder = modalities.declared(path=entry.local_path)
    assert set(in_folder) == set(entry.modalities) == set(GenerationDefaults().modalities)
    assert modalities.known(in_folder) == {"CT", "MRI", "ultrasound", "fundus photograph", "histology",
                                           "nuclear medicine"}
    assert read_defaults(entry.local_path).steps == 20  # the extra key does not disturb the defaults
    card = (pathlib.Path(registry.assets_dir()) / "MODEL_CARD.md").read_text(encoding="utf-8")
    line = next(line for line in card.splitlines() if line.startswith("| declared modalities"))
    for name in in_folder:
        assert f"`{name}`" in line
