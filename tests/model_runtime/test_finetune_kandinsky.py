"""Kandinsky 2.2 fine-tuning: a LoRA on the decoder UNet, conditioned on the prior's image embedding
of each caption (as at inference), saved as a whole pipeline that the runtime and plain diffusers load."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from runtime_fixtures import single_torch_thread, tiny_kandinsky22_dir  # noqa: E402,F401
from test_finetune import CAPTION, make_data  # noqa: E402

from model_runtime import finetune as ft  # noqa: E402
from model_runtime import loading  # noqa: E402
from model_runtime.generation import GenerationRequest, generate  # noqa: E402


def first_image(folder):
    loaded = loading.load(folder, device="cpu")
    req = GenerationRequest(prompt=CAPTION, seed=0, steps=2, guidance_scale=4.0, width=32, height=32, num_images=1,
                            extra={"prior_num_inference_steps": 2})
    return np.asarray(generate(loaded, req)[0].image, dtype=np.float32) / 255


def test_kandinsky22_decoder_lora_trains_saves_and_reloads(tiny_kandinsky22_dir, tmp_path):
    data = make_data(tmp_path / "data", n=4)
    cfg = ft.FinetuneConfig(steps=3, rank=4, resolution=32, lr=5e-2, checkpoint_every=3, validation_steps=2,
                            batch_size=2)
    result = ft.finetune(tiny_kandinsky22_dir, data, tmp_path / "out", cfg, device="cpu", progress=False,
                         log=lambda m: None)
    assert result.family == "kandinsky22" and result.weights == tmp_path / "out" / "pipeline"
    assert np.isfinite(result.losses).all() and result.trainable_parameters > 0
    index = json.loads((result.weights / "model_index.json").read_text())
    assert index["_class_name"] == "KandinskyV22CombinedPipeline"
    from safetensors.torch import load_file
    trained = load_file(str(result.weights / "unet" / "diffusion_pytorch_model.safetensors"))
    base = load_file(str(tiny_kandinsky22_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert trained.keys() == base.keys()  # the LoRA is fused: a plain UNet
    changed = [k for k in base if not torch.equal(base[k], trained[k])]
    assert changed and all(k.split(".")[-2] in ("to_q", "to_k", "to_v", "0") for k in changed)
    assert np.abs(first_image(result.weights) - first_image(tiny_kandinsky22_dir)).max() > 0
