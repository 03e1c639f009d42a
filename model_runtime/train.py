"""Train a small text-to-image latent diffusion model from scratch on CPU. Read it top to bottom.

    python -m model_runtime.train --data DIR|MIXTURE --out DIR [--text-encoder PATH] [--seed 0]
                                  [--vae-steps N] [--unet-steps N] [--minutes M]

Input: ``DIR/captions.csv`` with columns ``path`` (relative to DIR) and ``caption``; images of any size
(resized to ``--size``), all held in memory. Or a mixture file (``model_runtime.mixture``: weighted
sources balanced by modality, streamed from tables, WebDataset shards or datasets folders; images
are decoded, and for the denoiser VAE-encoded, per step, so memory does not grow with the data;
what was sampled is written to ``training.json``). Output: a standard diffusers ``StableDiffusionPipeline`` directory with
safetensors weights, loadable with ``diffusers.DiffusionPipeline.from_pretrained(out)`` exactly like
any other checkpoint, plus ``training_log.csv`` (loss curve) and ``training.json`` (the full recipe).

Recipe (the MediSyn idea in miniature: one text-guided latent diffusion model for every modality):
  1. tokenizer: byte-pair encoding learnt from the captions (HF ``tokenizers``), saved as a CLIP
     tokenizer (vocab.json + merges.txt, model_max_length 77); or, with ``--text-encoder PATH``, a
     pretrained local Hugging Face text model and its tokenizer (a BERT-style clinical encoder such
     as BiomedBERT, or a CLIP text model), frozen, the UNet's cross-attention as wide as its hidden
     states (the MSDM route: a compact denoiser from scratch under a clinical text encoder);
  2. VAE: ``AutoencoderKL`` with 4x downsampling to 8 latent channels, L1 reconstruction + L1 on
     image gradients (against blur) + a small KL;
  3. latents of every training image, scaled to unit variance (``scaling_factor``);
  4. denoiser: ``UNet2DConditionModel`` and a small ``CLIPTextModel`` trained jointly from scratch
     (or the UNet alone under the pretrained encoder),
     v-prediction on a cosine noise schedule, min-SNR loss weighting, 10% empty captions (so
     classifier-free guidance works), an exponential moving average of the weights;
  5. save with a ``DPMSolverMultistepScheduler`` (few-step sampling on CPU).

Deterministic: the same data, seed, step counts and thread count give bit-identical weights
(``torch.use_deterministic_algorithms``; one seeded generator for every random draw). ``--minutes``
instead *chooses* the step counts by timing a few steps on this machine; the counts it picked are
written to ``training.json`` so the run can be repeated exactly with ``--vae-steps/--unet-steps``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import pathlib
import shutil
import string
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass
class TrainConfig:
    size: int = 64  # native image size (square, RGB)
    seed: int = 0
    threads: int = 1  # one thread: on a shared CPU two threads spin-wait on each other (5x slower here)
    # VAE: 64 -> 16 (two downsamplings), 8 latent channels
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 8
    vae_steps: int = 1000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    edge_weight: float = 1.0  # L1 on image gradients: sharper reconstructions than L1 alone
    # text encoder
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    vocab_size: int = 512  # upper bound for the learnt BPE vocabulary
    # UNet
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = 1
    unet_heads: int = 8
    unet_steps: int = 4000
    unet_batch: int = 32
    unet_lr: float = 3e-4
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0
    ema_decay: float = 0.999
    # noise schedule and default sampling
    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    log_every: int = 25
    text_encoder: str | None = None  # a local Hugging Face text model folder; None: learn a small CLIP one
    train_text_encoder: bool | None = None  # None: train the learnt one, freeze a pretrained one


@dataclass
class TrainResult:
    out_dir: pathlib.Path
    vae_steps: int
    unet_steps: int
    seconds: float
    vae_seconds: float
    unet_seconds: float
    final_vae_loss: float
    final_unet_loss: float
    samples: int
    captions: list[str] = field(default_factory=list)
    sampled: dict | None = None  # a mixture's per-source and per-modality draws


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def read_dataset(data_dir, size: int) -> tuple[torch.Tensor, list[str]]:
    """All images as one float tensor N x 3 x size x size in [-1, 1], and their captions."""
    data_dir = pathlib.Path(data_dir)
    with open(data_dir / "captions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{data_dir / 'captions.csv'} lists no images")
    images = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    for i, row in enumerate(rows):
        with Image.open(data_dir / row["path"]) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.LANCZOS)
            images[i] = np.asarray(im)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, [row["caption"] for row in rows]


# ---------------------------------------------------------------------------------------------
# 1. tokenizer
# ---------------------------------------------------------------------------------------------

# CLIP's pre-tokenisation: words, single digits, runs of punctuation.
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def build_tokenizer(captions: list[str], folder: pathlib.Path, vocab_size: int):
    """Learn a BPE vocabulary from the captions and load it as a CLIPTokenizer (ids 0/1 = bos/eos)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.normalizer = normalizers.Lowercase()
    bpe.pre_tokenizer = pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True)
    # Every printable character, alone and word-final, so unseen words still spell out.
    alphabet = [c for c in string.printable if not c.isspace()]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=alphabet, end_of_word_suffix="</w>", show_progress=False,
    )
    bpe.train_from_iterator(sorted(set(captions)) + [" ".join(alphabet)], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = bpe.model.save(str(folder))
    return CLIPTokenizer(vocab_file, merges_file, model_max_length=77)


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def load_text_encoder(path, max_length: int = 77):
    """A local Hugging Face text model folder and its tokenizer: BERT-style (AutoModel) or CLIP (the
    text tower of a full CLIP checkpoint too). Prompts are cut at ``max_length`` tokens, as SD's are."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

    path = pathlib.Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"--text-encoder {path}: not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if config.model_type in ("clip", "clip_text_model"):
        model = CLIPTextModel.from_pretrained(path, local_files_only=True)
    else:
        model = AutoModel.from_pretrained(path, local_files_only=True)
    if not hasattr(model.config, "hidden_size"):
        raise ValueError(f"--text-encoder {path}: {type(model).__name__} has no hidden_size (not a text encoder)")
    limit = getattr(model.config, "max_position_embeddings", max_length) or max_length
    tokenizer.model_max_length = min(max_length, int(limit))
    return tokenizer, model


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def make_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels, sample_size=cfg.size,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=8,
    )


def make_text_encoder(cfg: TrainConfig, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=cfg.text_width, intermediate_size=cfg.text_width * 4,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads, max_position_embeddings=77,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))


def make_unet(cfg: TrainConfig, cross_attention_dim: int | None = None):
    from diffusers import UNet2DConditionModel

    latent = cfg.size // 2 ** (len(cfg.vae_channels) - 1)
    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.unet_layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim or cfg.text_width, attention_head_dim=cfg.unet_heads, norm_num_groups=16,
    )


def make_noise_scheduler(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type)


# ---------------------------------------------------------------------------------------------
# 2. VAE
# ---------------------------------------------------------------------------------------------

def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def vae_step(vae, batch: torch.Tensor, generator: torch.Generator, kl_weight: float,
             edge_weight: float = 0.0) -> torch.Tensor:
    posterior = vae.encode(batch).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    reconstruction = vae.decode(z).sample
    loss = F.l1_loss(reconstruction, batch) + kl_weight * posterior.kl().mean()
    if edge_weight:
        # L1 on image gradients: a cheap stand-in for a perceptual loss against blurry edges.
        loss = loss + edge_weight * sum(F.l1_loss(a, b) for a, b in zip(_gradients(reconstruction), _gradients(batch)))
    return loss


# ---------------------------------------------------------------------------------------------
# 4. denoiser
# ---------------------------------------------------------------------------------------------

def unet_step(unet, text_encoder, scheduler, latents, ids, generator, snr_gamma: float) -> torch.Tensor:
    from diffusers.training_utils import compute_snr

    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    noisy = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" else noise
    prediction = unet(noisy, t, encoder_hidden_states=text_encoder(ids).last_hidden_state).sample
    # min-SNR-gamma weighting (Hang et al. 2023): faster convergence than uniform MSE.
    snr = compute_snr(scheduler, t)
    weight = torch.clamp(snr, max=snr_gamma) / (snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr)
    loss = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
    return (loss * weight).mean()


def _lr_lambda(warmup: int, total: int, floor: float = 0.1):
    """Linear warm-up, then cosine decay to ``floor`` times the peak rate."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _choose_steps(cfg, minutes, pixels, ids, new_text_encoder, cross_dim, log) -> tuple[int, int]:
    """Pick step counts that fill ``minutes``: time a few steps on throwaway models (separate RNG)."""
    g = torch.Generator().manual_seed(12345)
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    vae_t = []
    for _ in range(4):
        t0 = time.perf_counter()
        loss = vae_step(vae, pixels[: cfg.vae_batch], g, cfg.kl_weight, cfg.edge_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        vae_t.append(time.perf_counter() - t0)
    unet, te, sch = make_unet(cfg, cross_dim), new_text_encoder(), make_noise_scheduler(cfg)
    opt = torch.optim.AdamW(list(unet.parameters()) + [q for q in te.parameters() if q.requires_grad], lr=cfg.unet_lr)
    latent = cfg.size // 2 ** (len(cfg.vae_channels) - 1)
    unet_t = []
    for _ in range(4):
        t0 = time.perf_counter()
        z = torch.randn((cfg.unet_batch, cfg.latent_channels, latent, latent), generator=g)
        loss = unet_step(unet, te, sch, z, ids[: cfg.unet_batch], g, cfg.snr_gamma)
        opt.zero_grad()
        loss.backward()
        opt.step()
        unet_t.append(time.perf_counter() - t0)
    per_vae, per_unet = float(np.median(vae_t[1:])), float(np.median(unet_t[1:]))
    # A quarter of the budget for the VAE, the rest (minus ~5% for encoding/saving) for the UNet.
    budget = minutes * 60 * 0.95
    vae_steps = max(50, int(budget * 0.25 / per_vae))
    unet_steps = max(50, int(budget * 0.75 / per_unet / 1.1))  # EMA update costs ~10%
    log(f"calibration: {per_vae:.3f} s/VAE step, {per_unet:.3f} s/UNet step -> "
        f"{vae_steps} VAE steps, {unet_steps} UNet steps for {minutes} min")
    return vae_steps, unet_steps


def train(data_dir, out_dir, cfg: TrainConfig | None = None, *, minutes: float | None = None,
          log=print) -> TrainResult:
    """Train the VAE, then the text encoder + UNet, and save a StableDiffusionPipeline to ``out_dir``."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return _train(data_dir, out_dir, copy.deepcopy(cfg or TrainConfig()), minutes, log)
    finally:  # leave the process as we found it (tests, the studio)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(data_dir, out_dir, cfg: TrainConfig, minutes: float | None, log) -> TrainResult:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from diffusers.training_utils import EMAModel

    from model_runtime import mixture

    out_dir = pathlib.Path(out_dir)
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # every random draw of the run comes from here

    # A folder is read into memory once; a mixture is streamed: its sampler numbers the draws of
    # both phases consecutively (VAE steps, then UNet steps) so every draw is a function of the seed.
    sampler = None
    if mixture.is_mixture_file(data_dir):
        sampler = mixture.MixtureSampler(mixture.read_mixture(data_dir), seed=cfg.seed)
        captions = sampler.captions()
        log(f"mixture of {len(sampler.readers)} sources, modalities {sorted(set(sampler.modality_names))}")
    else:
        pixels, captions = read_dataset(data_dir, cfg.size)
        log(f"{len(captions)} images, {len(set(captions))} distinct captions")

    def draw_pixels(step: int, batch: int, order) -> tuple[torch.Tensor, list[str]]:
        if sampler is None:
            idx = next(order)
            return pixels[idx], [captions[i] for i in idx.tolist()]
        records = sampler.batch(step, batch)
        images = np.stack([np.asarray(r.image.resize((cfg.size, cfg.size), Image.Resampling.LANCZOS)
                                      if r.image.size != (cfg.size, cfg.size) else r.image) for r in records])
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0, [r.caption for r in records]

    # 1. tokenizer (and, for a pretrained one, its text encoder) ----------------------------------
    tokenizer_files = pathlib.Path(tempfile.mkdtemp(prefix="medisyn-bpe-"))
    if cfg.text_encoder:
        tokenizer, pretrained = load_text_encoder(cfg.text_encoder)
        cross_dim = int(pretrained.config.hidden_size)
        train_text = bool(cfg.train_text_encoder)
        pretrained.requires_grad_(train_text).train(train_text)
        new_text_encoder = lambda: copy.deepcopy(pretrained)  # noqa: E731 - calibration's throwaway copy
        log(f"text encoder {type(pretrained).__name__} from {cfg.text_encoder} ({cross_dim} wide, "
            f"{'trained' if train_text else 'frozen'})")
    else:
        tokenizer = build_tokenizer(captions, tokenizer_files, cfg.vocab_size)
        cross_dim, train_text, pretrained = cfg.text_width, cfg.train_text_encoder is not False, None
        new_text_encoder = lambda: make_text_encoder(cfg, len(tokenizer))  # noqa: E731
    empty_ids = tokenize(tokenizer, [""])[0]
    caption_ids = tokenize(tokenizer, captions) if sampler is None else None

    if minutes is not None:
        if sampler is None:
            probe, probe_ids = pixels, caption_ids
        else:
            probe, probe_captions = draw_pixels(0, cfg.unet_batch, None)
            probe_ids = tokenize(tokenizer, probe_captions)
        cfg.vae_steps, cfg.unet_steps = _choose_steps(cfg, minutes, probe, probe_ids, new_text_encoder, cross_dim, log)
        torch.manual_seed(cfg.seed)
        if sampler is not None:
            sampler.replay(0, 1)

    log_rows: list[dict] = []

    def record(phase, step, losses, t0):
        log_rows.append({"phase": phase, "step": step, "loss": float(np.mean(losses)),
                         "seconds": round(time.perf_counter() - t0, 2)})
        log(f"{phase} step {step}: loss {log_rows[-1]['loss']:.4f} ({log_rows[-1]['seconds']:.0f} s)")

    def batches(n_items: int, batch: int):
        while True:  # reshuffled epochs from the run's generator
            order = torch.randperm(n_items, generator=generator)
            for i in range(0, n_items - batch + 1, batch):
                yield order[i : i + batch]

    n_items = len(captions) if sampler is None else 1 << 30

    # 2. VAE ------------------------------------------------------------------------------------
    vae = make_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.vae_steps))
    t0, window = time.perf_counter(), []
    vae_batch = min(cfg.vae_batch, n_items)
    draw = batches(n_items, vae_batch) if sampler is None else None
    for step in range(1, cfg.vae_steps + 1):
        loss = vae_step(vae, draw_pixels(step, vae_batch, draw)[0], generator, cfg.kl_weight, cfg.edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.vae_steps:
            record("vae", step, window, t0)
            window = []
    vae_seconds = time.perf_counter() - t0
    final_vae_loss = log_rows[-1]["loss"] if log_rows else float("nan")
    vae.eval().requires_grad_(False)

    # 3. latents: all of them in memory for a folder; a mixture encodes each batch as it is drawn ---
    @torch.no_grad()
    def encode(batch_pixels):
        dists = [vae.encode(batch_pixels[i : i + 256]).latent_dist for i in range(0, len(batch_pixels), 256)]
        return torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])

    if sampler is None:
        mean, std = encode(pixels)
    else:  # the scale from a probe of up to 256 drawn images (numbered after the VAE's draws)
        mean, std = encode(draw_pixels(cfg.vae_steps + 1, 256, None)[0])
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    scaling = float(1.0 / sample.std())
    vae.register_to_config(scaling_factor=scaling)
    log(f"latents {tuple(mean.shape[1:])}, scaling_factor {scaling:.4f}")

    # 4. text encoder + UNet ---------------------------------------------------------------------
    text_encoder, unet, noise_scheduler = pretrained or new_text_encoder(), make_unet(cfg, cross_dim), make_noise_scheduler(cfg)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text else [])
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps, cfg.unet_steps))
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=0.75)
    t0, window = time.perf_counter(), []
    unet_batch = min(cfg.unet_batch, n_items)
    draw = batches(n_items, unet_batch) if sampler is None else None
    for step in range(1, cfg.unet_steps + 1):
        if sampler is None:
            idx = next(draw)
            m, s, texts = mean[idx], std[idx], [captions[i] for i in idx.tolist()]
        else:
            batch_pixels, texts = draw_pixels(cfg.vae_steps + 1 + step, unet_batch, None)
            m, s = encode(batch_pixels)
        latents = (m + s * torch.randn(m.shape, generator=generator)) * scaling
        ids = caption_ids[idx].clone() if sampler is None else tokenize(tokenizer, texts)
        drop = torch.rand(len(texts), generator=generator) < cfg.caption_dropout
        ids[drop] = empty_ids
        loss = unet_step(unet, text_encoder, noise_scheduler, latents, ids, generator, cfg.snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        window.append(loss.item())
        if step % cfg.log_every == 0 or step == cfg.unet_steps:
            record("unet", step, window, t0)
            window = []
    unet_seconds = time.perf_counter() - t0
    ema.copy_to(params)
    final_unet_loss = log_rows[-1]["loss"]

    # 5. save --------------------------------------------------------------------------------------
    # steps_offset=1 only silences a StableDiffusionPipeline deprecation check: "trailing" spacing ignores it.
    scheduler = DPMSolverMultistepScheduler.from_config(
        noise_scheduler.config, timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    if pretrained is None:
        # Keep the plain CLIP files too (vocab.json, merges.txt), for readers and older transformers.
        for name in ("vocab.json", "merges.txt"):
            shutil.move(tokenizer_files / name, out_dir / "tokenizer" / name)
    shutil.rmtree(tokenizer_files, ignore_errors=True)
    with open(out_dir / "training_log.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["phase", "step", "loss", "seconds"])
        writer.writeheader()
        writer.writerows(log_rows)
    seconds = time.perf_counter() - started
    result = TrainResult(
        out_dir=out_dir, vae_steps=cfg.vae_steps, unet_steps=cfg.unet_steps, seconds=round(seconds, 1),
        vae_seconds=round(vae_seconds, 1), unet_seconds=round(unet_seconds, 1),
        final_vae_loss=final_vae_loss, final_unet_loss=final_unet_loss,
        samples=len(captions) if sampler is None else sum(sampler.drawn),
        captions=sorted(set(captions))[:1000], sampled=sampler.counts() if sampler else None,
    )
    result_dict = {k: v for k, v in dataclasses.asdict(result).items() if k != "out_dir"}
    summary = {"config": dataclasses.asdict(cfg), "result": result_dict, "torch": torch.__version__}
    if sampler is not None:
        summary["data"] = {"source": str(data_dir), "mixture": sampler.mixture.describe(),
                           "sha256": sampler.signature()}
    (out_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log(f"saved {out_dir} in {seconds / 60:.1f} min")
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with captions.csv (path, caption), or a mixture file")
    p.add_argument("--out", required=True, help="output pipeline directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vae-steps", type=int)
    p.add_argument("--unet-steps", type=int)
    p.add_argument("--minutes", type=float, help="choose step counts to fill this wall time")
    p.add_argument("--text-encoder", help="local Hugging Face text model folder (BERT-style or CLIP), frozen")
    p.add_argument("--train-text-encoder", action="store_true", help="train the --text-encoder too")
    args = p.parse_args(argv)
    cfg = TrainConfig(seed=args.seed, threads=args.threads, text_encoder=args.text_encoder,
                      train_text_encoder=True if args.train_text_encoder else None)
    if args.vae_steps:
        cfg.vae_steps = args.vae_steps
    if args.unet_steps:
        cfg.unet_steps = args.unet_steps
    from model_runtime.mixture import MixtureError
    if not pathlib.Path(args.data).exists():
        raise SystemExit(f"Error: --data {args.data}: no such folder or mixture file")
    try:
        train(args.data, args.out, cfg, minutes=args.minutes, log=lambda m: print(m, flush=True))
    except (MixtureError, ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"Error: {exc}") from None


if __name__ == "__main__":
    main()
