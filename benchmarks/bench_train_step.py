"""Seconds per training step on the CPU: `medisyn model finetune` against plain diffusers' loop.

    .venv/bin/python benchmarks/bench_train_step.py [--steps 30] [--warmup 5] [--batch-size 4] [--repeats 3]

Model: the embedded pipeline (assets/medisyn-mini, 64x64, UNet 4.2 M parameters), LoRA rank 8
on to_q/to_k/to_v/to_out.0, AdamW lr 1e-4, batch 4, one torch thread, on crops of the shipped
training views. Three loops, interleaved `--repeats` times (the machine is shared; medians):

  plain     diffusers' examples/text_to_image/train_text_to_image_lora.py reduced to its step:
            decode + resize each image, VAE encode, text encode, noise, UNet, MSE, backward,
            clip, AdamW — every step (no accelerate, no EMA, no logging);
  folder    finetune() on DIR/captions.csv: VAE latents and caption embeddings computed once,
            a step samples a latent, runs the UNet and the optimizer;
  mixture   finetune() on a one-source mixture file: the streamed path, which decodes and
            VAE-encodes each drawn image per step (caption embeddings cached).

finetune()'s per-step time comes from its loss.csv (seconds since the loop started, per step),
between step `--warmup` and the last step, so the final checkpoint and validation images are
not counted; the plain loop is timed over the same steps.
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def plain_loop(model_dir: pathlib.Path, data: pathlib.Path, steps: int, warmup: int, batch: int, rank: int) -> float:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, DiffusionPipeline
    from peft import LoraConfig
    from PIL import Image

    torch.manual_seed(0)
    pipe = DiffusionPipeline.from_pretrained(str(model_dir))
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    size = unet.config.sample_size * pipe.vae_scale_factor
    with open(data / "captions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rng = np.random.default_rng(0)
    unet.train()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        picked = [rows[i] for i in rng.integers(0, len(rows), batch)]
        images = []
        for row in picked:  # the example's dataset transform: resize, centre crop, to [-1, 1]
            with Image.open(data / row["path"]) as im:
                images.append(np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)))
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        ids = tokenizer([r["caption"] for r in picked], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,))
        noisy = noise_scheduler.add_noise(latents, noise, t)
        hidden = text_encoder(ids, return_dict=False)[0]
        target = (noise_scheduler.get_velocity(latents, noise, t)
                  if noise_scheduler.config.prediction_type == "v_prediction" else noise)
        pred = unet(noisy, t, hidden, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return sum(times[warmup:]) / (steps - warmup)


def ours(model_dir, data, out, steps: int, warmup: int, batch: int, rank: int) -> float:
    from model_runtime.finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(steps=steps, rank=rank, batch_size=batch, lr=1e-4, checkpoint_every=steps, validation_steps=1)
    finetune(model_dir, data, out, cfg, device="cpu", progress=False, log=lambda m: None)
    with open(out / "loss.csv", newline="") as fh:
        seconds = [float(r["seconds"]) for r in csv.DictReader(fh)]
    return (seconds[steps - 1] - seconds[warmup - 1]) / (steps - warmup)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    from model_runtime import loading
    from studio.demo import data as demo_data

    torch.set_num_threads(1)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-train-step-"))
    data = work / "data"
    demo_data.build_training_set(data, samples=args.images, seed=0)
    mix = work / "mixture.toml"
    mix.write_text(f'[[source]]\npath = "{data.name}"\n', encoding="utf-8")
    model_dir = loading.resolve("embedded")[0]
    results = {"plain": [], "folder": [], "mixture": []}
    runs = {
        "plain": lambda r: plain_loop(model_dir, data, args.steps, args.warmup, args.batch_size, args.rank),
        "folder": lambda r: ours(model_dir, data, work / f"folder{r}", args.steps, args.warmup, args.batch_size, args.rank),
        "mixture": lambda r: ours(model_dir, mix, work / f"mixture{r}", args.steps, args.warmup, args.batch_size, args.rank),
    }
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % 3:] + names[:r % 3]:  # rotate the order: load on a shared machine drifts
            results[name].append(runs[name](r))
        print(json.dumps({k: [round(v, 4) for v in vs] for k, vs in results.items()}), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(json.dumps({"seconds_per_step_median": {k: round(v, 4) for k, v in med.items()},
                      "folder_over_plain": round(med["folder"] / med["plain"], 3),
                      "mixture_over_plain": round(med["mixture"] / med["plain"], 3),
                      "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "rank": args.rank,
                      "repeats": args.repeats, "threads": 1}, indent=1))


if __name__ == "__main__":
    main()
