"""Tiny random-weight diffusers pipelines, built offline, for the runtime tests.

Each builder follows the shape of diffusers' own ``get_dummy_components()`` but builds its
tokenizers locally (no Hub): a CLIP BPE tokenizer from a hand-written ``vocab.json`` +
``merges.txt`` and a T5 Unigram tokenizer from an explicit piece list. Every pipeline is
``save_pretrained`` to a directory so tests load it through ``model_runtime.loading.load``
exactly like a real checkpoint.

Fixtures are session-scoped and built lazily per family, so a test file only pays for the
families it uses. Import the fixtures you need into a test module:
``from runtime_fixtures import single_torch_thread, tiny_sd1_dir  # noqa: F401``
(``single_torch_thread`` is autouse: importing it applies it to the module).
"""
from __future__ import annotations

import json
import os
import pathlib

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Words that get their own BPE merges / Unigram pieces; the rest falls back to single
# characters, so any ASCII prompt tokenizes without <unk>.
_WORDS = ["chest", "x-ray", "ray", "image", "of", "the", "a", "with", "patient", "normal",
          "retina", "ct", "mri", "fundus", "male", "female", "left", "right", "frontal"]


def _clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Byte-level alphabet (twice: mid-word and word-final), a few whole-word merges, then
    the two special tokens. ~560 ids, below the text encoders' vocab size of 1000."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges: list[str] = []
    for word in ("chest", "image", "retina", "patient", "normal", "frontal"):
        # left-to-right merges: c h -> ch, ch e -> che, ..., ches t</w> -> chest</w>
        current = word[0]
        for i, ch in enumerate(word[1:], start=1):
            right = ch + ("</w>" if i == len(word) - 1 else "")
            merges.append(f"{current} {right}")
            current = current + right
            if current not in vocab:
                vocab[current] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def build_clip_tokenizer(directory: pathlib.Path, *, pad_token: str = "<|endoftext|>"):
    """Write vocab.json + merges.txt and load them as a CLIPTokenizer (model_max_length 77)."""
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=77, pad_token=pad_token)


def build_t5_tokenizer():
    """A T5 (Unigram) tokenizer from an explicit piece list: specials, whole words, characters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -3.0) for w in _WORDS]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.,;:()'/%"
    pieces += [(c, -6.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_text_config(tokenizer, hidden: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_size=hidden, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=2, num_hidden_layers=2, vocab_size=1000, **extra,
    )


def _t5_encoder(tokenizer, d_model: int = 32):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, is_encoder_decoder=False,
                      use_cache=False, feed_forward_proj="gated-gelu")
    return T5EncoderModel(config).eval()


def _tiny_vae(latent_channels: int = 4, block_out_channels=(4, 8), **extra):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = len(block_out_channels)
    return AutoencoderKL(
        block_out_channels=list(block_out_channels), in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks, up_block_types=["UpDecoderBlock2D"] * blocks,
        latent_channels=latent_channels, norm_num_groups=2, **extra,
    )


def _sd_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                         prediction_type=prediction_type)


def build_sd(out: pathlib.Path, *, version: int = 1, unet_channels=(4, 8), text_hidden: int = 8,
             vae_channels=(4, 8), sample_size: int = 16) -> pathlib.Path:
    """SD 1.x (epsilon) or, with version=2, SD 2.x (v-prediction, linear projections, '!' pad).

    The defaults are the test-sized model (32x32 images); benchmarks pass wider channels."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = build_clip_tokenizer(out / "_tok", pad_token="!" if version == 2 else "<|endoftext|>")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=tuple(unet_channels), layers_per_block=1, sample_size=sample_size, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(unet_channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(unet_channels) - 1) + ("UpBlock2D",),
        cross_attention_dim=text_hidden, norm_num_groups=2,
        attention_head_dim=(2, 4) if version == 2 else 8, use_linear_projection=version == 2,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer, text_hidden,
                                                   hidden_act="gelu" if version == 2 else "quick_gelu"))
    pipe = StableDiffusionPipeline(
        unet=unet, vae=_tiny_vae(block_out_channels=list(vae_channels)), text_encoder=text_encoder,
        tokenizer=tokenizer, scheduler=_sd_scheduler("v_prediction" if version == 2 else "epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return _save(pipe, out)


def build_sdxl(out: pathlib.Path) -> pathlib.Path:
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = build_clip_tokenizer(out / "_tok")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 8,
        cross_attention_dim=16, norm_num_groups=2,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config(tokenizer, 8, hidden_act="gelu"))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(tokenizer, 8, hidden_act="gelu", projection_dim=8))
    sched = _sd_scheduler()
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=sched, add_watermarker=False,
    )
    return _save(pipe, out)


def build_pixart(out: pathlib.Path) -> pathlib.Path:
    import torch
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    tokenizer = build_t5_tokenizer()
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )
    pipe = PixArtAlphaPipeline(transformer=transformer.eval(), vae=_tiny_vae(), scheduler=DDIMScheduler(),
                               text_encoder=_t5_encoder(tokenizer), tokenizer=tokenizer)
    return _save(pipe, out)


def build_sd3(out: pathlib.Path) -> pathlib.Path:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    clip_tok = build_clip_tokenizer(out / "_tok")
    t5_tok = build_t5_tokenizer()
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
        pooled_projection_dim=64, out_channels=4,
    )
    clip_config = _clip_text_config(clip_tok, 32, hidden_act="gelu", projection_dim=32)
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(clip_config)
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=text_encoder, tokenizer=clip_tok, text_encoder_2=text_encoder_2, tokenizer_2=clip_tok,
        text_encoder_3=_t5_encoder(t5_tok), tokenizer_3=t5_tok,
    )
    return _save(pipe, out)


def build_flux(out: pathlib.Path) -> pathlib.Path:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    clip_tok = build_clip_tokenizer(out / "_tok")
    t5_tok = build_t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_text_config(clip_tok, 32, hidden_act="gelu", projection_dim=32))
    pipe = FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_tiny_vae(latent_channels=1, use_quant_conv=False, use_post_quant_conv=False,
                      shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=text_encoder, tokenizer=clip_tok, text_encoder_2=_t5_encoder(t5_tok), tokenizer_2=t5_tok,
    )
    return _save(pipe, out)


def build_kandinsky22(out: pathlib.Path) -> pathlib.Path:
    """Kandinsky 2.2 as its combined text-to-image pipeline: CLIP prior + UNet/MoVQ decoder."""
    import torch
    from diffusers import (DDIMScheduler, KandinskyV22CombinedPipeline, PriorTransformer,
                           UNet2DConditionModel, UnCLIPScheduler, VQModel)
    from transformers import (CLIPImageProcessor, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    tokenizer = build_clip_tokenizer(out / "_tok")
    emb = 32
    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=emb, num_layers=1)
    # clip_std starts at 0, which would make every image embedding 0
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(_clip_text_config(tokenizer, emb, projection_dim=emb))
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=emb, image_size=32, projection_dim=emb, intermediate_size=37, num_attention_heads=4,
        num_channels=3, num_hidden_layers=2, patch_size=8))
    image_processor = CLIPImageProcessor(crop_size=32, size=32, do_center_crop=True, do_normalize=True,
                                         do_resize=True, resample=3)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(8, 16), layers_per_block=1,
        encoder_hid_dim=emb, encoder_hid_dim_type="image_proj", cross_attention_dim=16,
        attention_head_dim=4, resnet_time_scale_shift="scale_shift", class_embed_type=None, norm_num_groups=4,
    )
    torch.manual_seed(0)
    movq = VQModel(
        # MoVQ's spatial norm hard-codes 32 groups, so its channels stay multiples of 32
        block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        in_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
        num_vq_embeddings=12, out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        vq_embed_dim=4,
    )
    pipe = KandinskyV22CombinedPipeline(
        unet=unet, movq=movq,
        scheduler=DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085,
                                beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                prediction_type="epsilon", thresholding=False),
        prior_prior=prior, prior_image_encoder=image_encoder, prior_text_encoder=text_encoder,
        prior_tokenizer=tokenizer, prior_image_processor=image_processor,
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                        num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0),
    )
    return _save(pipe, out)


def _save(pipe, out: pathlib.Path) -> pathlib.Path:
    target = out / "pipeline"
    pipe.save_pretrained(str(target))
    return target


def with_scheduler(src: pathlib.Path, dst: pathlib.Path, scheduler) -> pathlib.Path:
    """A copy of the saved pipeline ``src`` whose own scheduler is ``scheduler`` (as if it had been
    saved with it: LCM distillations, Playground's EDM schedulers, tuned DPM-Solver configs)."""
    import shutil

    shutil.copytree(src, dst)
    shutil.rmtree(dst / "scheduler")
    scheduler.save_pretrained(str(dst / "scheduler"))
    index = json.loads((dst / "model_index.json").read_text(encoding="utf-8"))
    index["scheduler"] = ["diffusers", type(scheduler).__name__]
    (dst / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return dst


BUILDERS = {
    "sd1": lambda out: build_sd(out, version=1),
    "sd2": lambda out: build_sd(out, version=2),
    "sdxl": build_sdxl,
    "pixart": build_pixart,
    "sd3": build_sd3,
    "flux": build_flux,
    "kandinsky22": build_kandinsky22,
}

# Per-family call options a tiny checkpoint needs (real checkpoints need none of these):
# PixArt's resolution binning only knows sample sizes 32/64/128; the Kandinsky prior runs
# 25 steps by default.
FAMILY_EXTRA = {
    "pixart": {"use_resolution_binning": False},
    "kandinsky22": {"prior_num_inference_steps": 2},
}


@pytest.fixture(autouse=True)
def single_torch_thread():
    """One intra-op thread per test: with tiny models on a shared 2-core machine, OpenMP
    threads waiting on each other cost 10x more than the arithmetic. Bit-exact comparisons
    within a test also rely on a fixed thread count. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _family_fixture(name: str):
    def _build(tmp_path_factory) -> pathlib.Path:
        return BUILDERS[name](tmp_path_factory.mktemp(f"tiny-{name}"))

    return pytest.fixture(scope="session", name=f"tiny_{name}_dir")(_build)


# SD 1.x is what MediSyn, RoentGen and MINIM are built on: most tests use tiny_sd1_dir.
tiny_sd1_dir = _family_fixture("sd1")
tiny_sd2_dir = _family_fixture("sd2")
tiny_sdxl_dir = _family_fixture("sdxl")
tiny_pixart_dir = _family_fixture("pixart")
tiny_sd3_dir = _family_fixture("sd3")
tiny_flux_dir = _family_fixture("flux")
tiny_kandinsky22_dir = _family_fixture("kandinsky22")
