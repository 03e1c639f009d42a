"""--text-encoder: a local Hugging Face text model (here a tiny BERT with a handwritten vocabulary,
standing in for a clinical encoder such as BiomedBERT) for training from scratch and for
fine-tuning with a learnt projection; the saved pipelines load in the runtime and plain diffusers."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from runtime_fixtures import single_torch_thread, tiny_sd1_dir  # noqa: E402,F401
from test_train import _tiny_dataset  # noqa: E402

from model_runtime import finetune as ft  # noqa: E402
from model_runtime import loading  # noqa: E402
from model_runtime import train as train_mod  # noqa: E402
from model_runtime.generation import GenerationRequest, generate  # noqa: E402

WORDS = ("axial ct image of the head fundus fundoscopy photograph left retina chest x - ray with "
         "pleural effusion normal").split()
PROMPT = "fundoscopy image of the left retina"
BERT_WIDTH = 24


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + list("0123456789,.")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=BERT_WIDTH, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=48, max_position_embeddings=80)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _tiny_dataset(tmp_path_factory.mktemp("te") / "data", n=8)


def image_arrays(loaded, prompt=PROMPT):
    req = GenerationRequest(prompt=prompt, seed=0, steps=2, guidance_scale=4.0, width=32, height=32, num_images=1)
    return np.stack([np.asarray(g.image, dtype=np.float32) / 255 for g in generate(loaded, req)])


def plain_diffusers(folder, prompt=PROMPT):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_text_encoder_loader_reads_bert_and_clip_folders(tiny_bert_dir, tiny_sd1_dir, tmp_path):
    tok, model = train_mod.load_text_encoder(tiny_bert_dir)
    assert type(model).__name__ == "BertModel" and tok.model_max_length == 77
    assert tok.convert_ids_to_tokens(train_mod.tokenize(tok, [PROMPT])[0, :3].tolist()) == ["[CLS]", "fundoscopy", "image"]
    clip = tmp_path / "clip"
    shutil.copytree(tiny_sd1_dir / "text_encoder", clip)
    for f in (tiny_sd1_dir / "tokenizer").iterdir():
        shutil.copy(f, clip / f.name)
    tok, model = train_mod.load_text_encoder(clip)
    assert type(model).__name__ == "CLIPTextModel" and tok.model_max_length == 77
    with pytest.raises(ValueError, match="no config.json"):
        train_mod.load_text_encoder(tmp_path)


def test_from_scratch_under_a_clinical_text_encoder_saves_reloads_and_generates(tiny_bert_dir, data, tmp_path):
    from safetensors.torch import load_file

    cfg = train_mod.TrainConfig(size=32, vae_channels=(8, 16), vae_steps=6, vae_batch=4, unet_channels=(16, 32),
                                unet_heads=4, unet_steps=6, unet_batch=4, warmup_steps=2, log_every=3,
                                text_encoder=str(tiny_bert_dir))
    result = train_mod.train(data, tmp_path / "msdm", cfg, log=lambda m: None)
    index = json.loads((result.out_dir / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert index["tokenizer"][1] in ("BertTokenizer", "BertTokenizerFast")
    unet_config = json.loads((result.out_dir / "unet" / "config.json").read_text())
    assert unet_config["cross_attention_dim"] == BERT_WIDTH
    # frozen: the saved encoder is the clinical one, unchanged
    saved = load_file(str(result.out_dir / "text_encoder" / "model.safetensors"))
    original = load_file(str(tiny_bert_dir / "model.safetensors"))
    common = set(saved) & set(original)
    assert len(common) > 10 and all(torch.equal(saved[k], original[k]) for k in common)
    ours = image_arrays(loading.load(result.out_dir, device="cpu"))
    pipe = plain_diffusers(result.out_dir)
    theirs = np.asarray(pipe(PROMPT, num_inference_steps=2, guidance_scale=4.0, height=32, width=32,
                             generator=torch.Generator("cpu").manual_seed(0)).images[0], dtype=np.float32) / 255
    assert np.abs(ours[0] - theirs).max() <= 2 / 255


def test_finetune_with_a_wider_text_encoder_learns_a_projection(tiny_sd1_dir, tiny_bert_dir, data, tmp_path):
    cfg = ft.FinetuneConfig(steps=3, rank=4, resolution=32, lr=2e-2, checkpoint_every=3, validation_steps=2,
                            batch_size=2, text_encoder=str(tiny_bert_dir))
    result = ft.finetune(tiny_sd1_dir, data, tmp_path / "ft", cfg, device="cpu", progress=False, log=lambda m: None)
    assert result.weights == tmp_path / "ft" / "pipeline"
    unet_config = json.loads((result.weights / "unet" / "config.json").read_text())
    assert unet_config["encoder_hid_dim"] == BERT_WIDTH and unet_config["encoder_hid_dim_type"] == "text_proj"
    assert unet_config["cross_attention_dim"] == 8  # the base's width, reached through the projection
    # the projection is trained: it is not its seeded initial value
    from safetensors.torch import load_file
    unet = load_file(str(result.weights / "unet" / "diffusion_pytorch_model.safetensors"))
    torch.manual_seed(cfg.seed)
    initial = torch.nn.Linear(BERT_WIDTH, 8)
    assert not torch.allclose(unet["encoder_hid_proj.weight"], initial.weight)
    assert not any("lora" in k for k in unet)  # the LoRA is fused into the saved UNet
    ours = image_arrays(loading.load(result.weights, device="cpu"))
    pipe = plain_diffusers(result.weights)
    theirs = np.asarray(pipe(PROMPT, num_inference_steps=2, guidance_scale=4.0, height=32, width=32,
                             generator=torch.Generator("cpu").manual_seed(0)).images[0], dtype=np.float32) / 255
    assert np.abs(ours[0] - theirs).max() <= 2 / 255


def test_a_bad_text_encoder_is_one_clear_error(tiny_sd1_dir, data, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = ft.FinetuneConfig(steps=1, resolution=32, text_encoder=str(tmp_path / "empty"))
    with pytest.raises(ft.FinetuneError, match="--text-encoder .*no config.json"):
        ft.finetune(tiny_sd1_dir, data, tmp_path / "out", cfg, device="cpu", progress=False, log=lambda m: None)
