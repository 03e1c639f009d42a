"""LoRA adapters at load time: `medisyn generate --lora PATH[:SCALE]` (repeatable), provenance
(A1111 <lora:name:scale> + hashes, generation.csv), and the registry's Prompt-to-Polyp LoRA entries
once their weights are on disk (tested with locally made adapters in their layout)."""
import csv
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from runtime_fixtures import (FAMILY_EXTRA, single_torch_thread, tiny_flux_dir,  # noqa: E402,F401
                              tiny_kandinsky22_dir, tiny_sd1_dir)

from model_runtime import finetune as ft  # noqa: E402
from model_runtime import lora, provenance, registry  # noqa: E402
from model_runtime.generation import GenerationRequest, generate  # noqa: E402
from model_runtime.loading import ModelNotFoundError, load  # noqa: E402
from test_finetune import CAPTION, make_data  # noqa: E402


def quick_lora(base, data, out, steps=2):
    cfg = ft.FinetuneConfig(steps=steps, rank=4, resolution=32, lr=5e-2, checkpoint_every=steps, validation_steps=1,
                            batch_size=2)
    return ft.finetune(base, data, out, cfg, device="cpu", progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("loradata") / "data")


@pytest.fixture(scope="module")
def sd1_lora(tiny_sd1_dir, data, tmp_path_factory):
    return quick_lora(tiny_sd1_dir, data, tmp_path_factory.mktemp("l") / "retina-lora", steps=4)


def pixels(loaded, extra=None, prompt=CAPTION):
    req = GenerationRequest(prompt=prompt, seed=0, steps=2, guidance_scale=4.0, width=32, height=32,
                            extra=extra or {})
    return np.asarray(generate(loaded, req)[0].image, dtype=np.float32) / 255


@pytest.mark.parametrize("text, path, scale", [
    ("a.safetensors", "a.safetensors", 1.0),
    ("a.safetensors:0.7", "a.safetensors", 0.7),
    ("out/retina:-0.5", "out/retina", -0.5),
    ("C:\\loras\\a.safetensors", "C:\\loras\\a.safetensors", 1.0),
    ("C:\\loras\\a.safetensors:2", "C:\\loras\\a.safetensors", 2.0),
    ("weird:name.safetensors", "weird:name.safetensors", 1.0),
])
def test_spec_parsing(text, path, scale):
    assert lora.parse_spec(text) == lora.Lora(path, scale)


def test_a_folder_means_its_lora_file_and_names_it(sd1_lora, tmp_path):
    assert lora.weights_file(sd1_lora.out_dir) == sd1_lora.weights.resolve()
    assert lora.lora_name(sd1_lora.out_dir) == "retina-lora"
    assert lora.lora_name(sd1_lora.weights) == "retina-lora"  # the default file name says nothing
    single = tmp_path / "polyp_v2.safetensors"
    shutil.copy(sd1_lora.weights, single)
    assert lora.lora_name(single) == "polyp_v2" and lora.weights_file(single) == single.resolve()
    (tmp_path / "two").mkdir()
    for name in ("a", "b"):
        shutil.copy(sd1_lora.weights, tmp_path / "two" / f"{name}.safetensors")
    with pytest.raises(lora.LoraError, match="exactly one"):
        lora.weights_file(tmp_path / "two")


def test_scales_add_up_across_adapters(tiny_sd1_dir, sd1_lora, tmp_path):
    """Two copies at 0.5 each are one copy at 1.0: set_adapters weights are applied before fusing."""
    copy = tmp_path / "copy.safetensors"
    shutil.copy(sd1_lora.weights, copy)
    whole = pixels(load(tiny_sd1_dir, options={"loras": [f"{sd1_lora.out_dir}:1.0"]}))
    halves = pixels(load(tiny_sd1_dir, options={"loras": [f"{sd1_lora.out_dir}:0.5", f"{copy}:0.5"]}))
    half = pixels(load(tiny_sd1_dir, options={"loras": [f"{sd1_lora.out_dir}:0.5"]}))
    assert np.abs(whole - halves).max() <= 2 / 255
    assert np.abs(whole - half).mean() > 1e-3


def test_generate_cli_records_loras_in_png_and_generation_csv(tiny_sd1_dir, sd1_lora, tmp_path):
    from click.testing import CliRunner

    from studio.cli import cli

    out = tmp_path / "gen"
    result = CliRunner().invoke(cli, ["generate", "--model", str(tiny_sd1_dir), "--prompt", CAPTION, "--out", str(out),
                                      "--steps", "2", "--n", "2", "--lora", f"{sd1_lora.out_dir}:0.5"])
    assert result.exit_code == 0, result.output
    short = provenance.file_sha256(sd1_lora.weights)[:12]
    text, rec = provenance.read_png(out / "images" / "r00000_000.png")
    assert text.splitlines()[0] == f"{CAPTION} <lora:retina-lora:0.5>"
    assert f'Lora hashes: "retina-lora: {short}"' in text.splitlines()[-1]
    assert rec["loras"] == [{"name": "retina-lora", "scale": 0.5, "sha256": provenance.file_sha256(sd1_lora.weights)}]
    assert rec["parameters"]["prompt"] == CAPTION  # the JSON keeps the prompt itself
    with open(out / "generation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["loras"], r["lora_sha256"]) for r in rows] == [("<lora:retina-lora:0.5>", short)] * 2
    # the same job without the LoRA is other images (the fingerprint covers adapters): regenerated
    again = CliRunner().invoke(cli, ["generate", "--model", str(tiny_sd1_dir), "--prompt", CAPTION, "--out", str(out),
                                     "--steps", "2", "--n", "2"])
    assert again.exit_code == 0 and "2 generated, 0 already done" in again.output
    text, rec = provenance.read_png(out / "images" / "r00000_000.png")
    assert "<lora:" not in text and "loras" not in rec


def test_generate_cli_bad_lora_is_one_error_line(tiny_sd1_dir, tmp_path):
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from studio.cli import cli

    def run(spec):
        return CliRunner().invoke(cli, ["generate", "--model", str(tiny_sd1_dir), "--prompt", CAPTION,
                                        "--out", str(tmp_path / "o"), "--steps", "1", "--lora", spec])

    missing = run(str(tmp_path / "nope.safetensors"))
    assert missing.exit_code == 1 and missing.output.strip().startswith("Error:") and "not found" in missing.output
    # a LoRA for a transformer model: diffusers would silently load nothing into an SD UNet
    alien = tmp_path / "flux_lora.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 16),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(16, 2)}, str(alien))
    wrong = run(str(alien))
    assert wrong.exit_code == 1, wrong.output
    errors = [line for line in wrong.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "fit" in errors[0]
    assert not list((tmp_path / "o").glob("images/*.png"))


# --- the registry's Prompt-to-Polyp LoRA entries ----------------------------------------

@pytest.fixture
def assets(tmp_path, monkeypatch):
    folder = tmp_path / "assets"
    folder.mkdir()
    shutil.copy(registry.assets_dir() / "models.json", folder / "models.json")
    monkeypatch.setenv("MEDISYN_ASSETS", str(folder))
    return folder


def point_base(assets, key, base):
    data = json.loads((assets / "models.json").read_text())
    for entry in data["models"]:
        if entry["key"] == key:
            entry["base"] = str(base)
    (assets / "models.json").write_text(json.dumps(data))


def test_prompt_to_polyp_entries_say_what_is_missing(assets, tiny_flux_dir, data):
    entry = registry.get("prompt-to-polyp-flux")
    assert entry.loadable and entry.base == "black-forest-labs/FLUX.1-dev"
    assert entry.lora_path == assets / "loras" / "prompt-to-polyp-flux"
    with pytest.raises(ModelNotFoundError, match="needs its LoRA weights"):
        load("prompt-to-polyp-flux")
    assert not entry.available()
    # adapter present, base not in the (offline) cache: the message says how to get the base
    quick_lora(tiny_flux_dir, data, entry.lora_path)
    with pytest.raises(ModelNotFoundError, match="hf download black-forest-labs/FLUX.1-dev"):
        load("prompt-to-polyp-flux")


def test_prompt_to_polyp_flux_loads_with_a_local_lora(assets, tiny_flux_dir, data):
    point_base(assets, "prompt-to-polyp-flux", tiny_flux_dir)
    entry = registry.get("prompt-to-polyp-flux")
    quick_lora(tiny_flux_dir, data, entry.lora_path)
    assert entry.available()
    loaded = load("prompt-to-polyp-flux")
    assert loaded.model_id == "prompt-to-polyp-flux" and loaded.pipeline_class == "FluxPipeline"
    assert [item["name"] for item in loaded.loras] == ["prompt-to-polyp-flux"]
    assert np.abs(pixels(loaded) - pixels(load(tiny_flux_dir))).max() > 1e-3
    image = generate(loaded, GenerationRequest(prompt=CAPTION, seed=0, steps=1, width=32, height=32))[0]
    assert image.provenance()["loras"][0]["name"] == "prompt-to-polyp-flux"


def test_prompt_to_polyp_kandinsky_loads_a_decoder_unet_lora(assets, tiny_kandinsky22_dir):
    """Kandinsky's combined pipeline has no LoRA loader mixin: the adapter goes onto the decoder UNet."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    point_base(assets, "prompt-to-polyp-kandinsky", tiny_kandinsky22_dir)
    unet = UNet2DConditionModel.from_pretrained(str(tiny_kandinsky22_dir / "unet"))
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # peft starts B at zero: make the adapter do something
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    target = registry.get("prompt-to-polyp-kandinsky").lora_path
    target.mkdir(parents=True)
    save_file({f"unet.{k}": v.contiguous() for k, v in state.items()}, str(target / "pytorch_lora_weights.safetensors"))
    loaded = load("prompt-to-polyp-kandinsky")
    extra = FAMILY_EXTRA["kandinsky22"]
    assert [item["name"] for item in loaded.loras] == ["prompt-to-polyp-kandinsky"]
    assert np.abs(pixels(loaded, extra) - pixels(load(tiny_kandinsky22_dir), extra)).max() > 1e-3
