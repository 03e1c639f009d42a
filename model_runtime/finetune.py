"""Fine-tune a pretrained text-to-image pipeline on your own captioned images. Read it top to bottom.

Over 600 lines on purpose: one recipe in the order it runs, meant to be read in one piece (its
data reading is ``model_runtime.training_data``).

    medisyn model finetune --base MODEL --data DIR|manifest.csv --out DIR [--method lora|full] ...
    accelerate launch -m model_runtime.finetune --base MODEL --data DIR --out DIR ...   (several GPUs)

Where ``model_runtime.train`` builds a compact model from nothing (the MSDM route of Prompt to
Polyp), this adapts a large pretrained one (their FLUX/Kandinsky route):

  1. data: ``DIR/captions.csv`` (``path,caption``, as ``train`` reads) or a manifest CSV with
     ``path`` and ``prompt`` (a study or ``generate`` manifest); paths relative to the CSV; or a
     mixture file (``model_runtime.mixture``: weighted sources, balanced by modality, streamed from
     tables, WebDataset shards or datasets folders and encoded per step). Images are
     centre-cropped and resized to ``resolution`` (``model_runtime.training_data``). Images decode
     through ``studies.imaging.decode_rgb``, so DICOM and NIfTI look as they do at ingest;
     ``decode=`` replaces it;
  2. base: anything ``load()`` opens (registry key, folder, cached Hub id). Families: SD 1.x/2.x and
     SDXL (a UNet), SD3 and Flux (a transformer), Kandinsky 2.2 (its decoder UNet, conditioned on the
     frozen prior's image embedding of each caption; saved as a whole pipeline with the LoRA fused);
  3. frozen parts run once: every image through the VAE (latent mean/std kept), every distinct
     caption through the text encoder(s);
  4. method ``lora`` (default): peft ``LoraConfig`` on the denoiser's attention projections
     (``to_q, to_k, to_v, to_out.0``), added with diffusers' ``add_adapter``; only those weights
     train. Method ``full`` (SD 1.x/2.x, SDXL): every UNet weight trains;
  5. loss: UNet families predict noise or velocity (the scheduler's ``prediction_type``) with
     optional min-SNR weighting (``compute_snr``); transformer families are rectified flows
     (target ``noise - latents``, uniform timesteps), as diffusers' own training scripts do;
  6. accelerate's ``Accelerator`` owns device placement, mixed precision and multi-process data
     parallelism (each process takes its share of every global batch);
  7. every ``checkpoint_every`` steps: trainable weights + optimizer + LR scheduler + loss log under
     ``checkpoints/step-NNNNNN`` and validation images under ``validation/step-NNNNNN``;
     ``resume=True`` restarts from the newest checkpoint and continues the step count;
  8. output: LoRA -> ``pytorch_lora_weights.safetensors`` written by the pipeline class's own
     ``save_lora_weights`` with the adapter's peft config as metadata (so ``lora_alpha`` survives:
     ``pipe.load_lora_weights(out)`` reloads at alpha / rank, as the validation images were made),
     and for the UNet families ``<out>_kohya.safetensors``, the same adapter in the kohya layout
     A1111/ComfyUI load, with each module's ``alpha`` tensor set to the trained alpha;
     full -> a complete diffusers pipeline in ``out/pipeline``. Always ``training.json`` (every
     parameter, the base model's weights hash) and ``loss.csv`` + ``loss.png``.

Reproducible: batch order and every noise draw come from generators seeded by (seed, step), so a
resumed run continues exactly where an uninterrupted one would be (same thread count, CPU).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model_runtime import loading, mixture, provenance
from model_runtime.training_data import FinetuneError, decode_all, read_examples, square

LORA_FILE = "pytorch_lora_weights.safetensors"   # diffusers' default name: load_lora_weights(folder) finds it
TRAINING_FILE = "training.json"
UNET_FAMILIES = ("sd", "sdxl")
TRANSFORMER_FAMILIES = ("sd3", "flux")
KANDINSKY = "kandinsky22"  # the decoder UNet, conditioned on the prior's image embedding
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class FinetuneConfig:
    method: str = "lora"                 # "lora" | "full" (full: UNet families only)
    rank: int = 16
    alpha: float | None = None           # LoRA scaling numerator; None: = rank (scale 1)
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    resolution: int | None = None        # None: the base model's native size
    steps: int = 500
    batch_size: int = 1                  # per process
    lr: float = 1e-4
    lr_scheduler: str = "constant"       # any name diffusers.optimization.get_scheduler knows
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    snr_gamma: float | None = None       # min-SNR weighting for UNet families (5.0 is the paper's value)
    caption_dropout: float = 0.0         # share of empty captions (keeps classifier-free guidance working)
    seed: int = 0
    checkpoint_every: int = 100
    validation_prompts: tuple[str, ...] = ()   # empty: up to two training captions
    validation_steps: int = 20           # denoising steps of the validation images
    validation_guidance: float | None = None   # None: the pipeline's default
    mixed_precision: str = "no"          # "no" | "fp16" | "bf16" (GPU)
    text_encoder: str | None = None      # a local HF text model folder replacing the base's (SD 1.x/2.x)

    def check(self) -> None:
        if self.method not in ("lora", "full"):
            raise FinetuneError(f"method must be 'lora' or 'full', got {self.method!r}")
        for name in ("rank", "steps", "batch_size", "checkpoint_every", "validation_steps"):
            if int(getattr(self, name)) < 1:
                raise FinetuneError(f"{name} must be >= 1")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise FinetuneError(f"resolution must be a multiple of 8, got {self.resolution}")
        if not self.lr > 0:
            raise FinetuneError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.caption_dropout < 1:
            raise FinetuneError("caption_dropout must be in [0, 1)")


@dataclass
class FinetuneResult:
    out_dir: pathlib.Path
    weights: pathlib.Path                # the LoRA file, or the full pipeline folder
    family: str
    steps: int                           # total step count reached
    resumed_from: int                    # 0 unless resumed
    seconds: float
    final_loss: float
    peak_memory_mb: float
    trainable_parameters: int
    losses: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# 1. base model
# ---------------------------------------------------------------------------------------------

def denoiser_of(pipe):
    return getattr(pipe, "unet", None) if getattr(pipe, "unet", None) is not None else getattr(pipe, "transformer")


def check_family(family: str, pipeline_class: str, method: str) -> None:
    if family not in UNET_FAMILIES + TRANSFORMER_FAMILIES + (KANDINSKY,):
        import inspect

        import diffusers
        cls = getattr(diffusers, pipeline_class, None)
        if cls is None or "prompt" not in inspect.signature(cls.__call__).parameters:
            raise FinetuneError(f"{pipeline_class or 'the base'} is not a text-to-image pipeline (its call takes no prompt)")
        raise FinetuneError(f"{pipeline_class} is not a pipeline this trainer fine-tunes "
                            "(supported: Stable Diffusion 1.x/2.x, SDXL, SD3, Flux, Kandinsky 2.2)")
    if method == "full" and family not in UNET_FAMILIES + (KANDINSKY,):
        raise FinetuneError(f"--method full covers the UNet families (SD 1.x/2.x, SDXL); use LoRA for {pipeline_class}")


def add_lora(denoiser, cfg: FinetuneConfig) -> None:
    """peft LoRA on the attention projections; the base weights stay frozen."""
    from peft import LoraConfig

    present = {name.rsplit(".", 1)[-1] for name, _ in denoiser.named_modules()} | \
              {".".join(name.rsplit(".", 2)[-2:]) for name, _ in denoiser.named_modules()}
    missing = [t for t in cfg.target_modules if t not in present]
    if missing:
        raise FinetuneError(f"{type(denoiser).__name__} has no module(s) {missing} to put LoRA on")
    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, init_lora_weights="gaussian",
                                    target_modules=list(cfg.target_modules)))


def swap_text_encoder(pipe, folder, seed: int, device, dtype, log) -> None:
    """Put a local Hugging Face text model (BERT-style or CLIP) and its tokenizer in place of the
    pipeline's, frozen. Where its width differs from the UNet's cross-attention, the UNet gets
    diffusers' own ``encoder_hid_proj`` (``encoder_hid_dim_type="text_proj"``: a Linear applied to
    the text states inside the UNet), so the saved pipeline loads in plain diffusers."""
    from model_runtime.train import load_text_encoder

    try:
        tokenizer, encoder = load_text_encoder(folder)
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"--text-encoder {folder}: cannot load it ({exc})") from None
    encoder.requires_grad_(False).eval().to(device, dtype)
    pipe.register_modules(text_encoder=encoder, tokenizer=tokenizer)
    unet, width = pipe.unet, int(encoder.config.hidden_size)
    if width != unet.config.cross_attention_dim:
        torch.manual_seed(seed)
        unet.encoder_hid_proj = torch.nn.Linear(width, unet.config.cross_attention_dim).to(unet.device)
        unet.register_to_config(encoder_hid_dim=width, encoder_hid_dim_type="text_proj")
        log(f"text encoder {type(encoder).__name__} ({width} wide) -> learnt projection to "
            f"{unet.config.cross_attention_dim}")


def trainable(denoiser) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in denoiser.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------
# 2. frozen encoders, once
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def encode_images(vae, pixels: np.ndarray, device, dtype, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE posterior mean and std of every image (CPU float32); a step samples mean + std * noise."""
    means, stds = [], []
    for i in range(0, len(pixels), chunk):
        x = torch.from_numpy(pixels[i:i + chunk]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        encoded = vae.encode(x.to(device, dtype))
        dist = getattr(encoded, "latent_dist", None)
        if dist is None:  # a VQ autoencoder (Kandinsky's MoVQ): deterministic latents
            means.append(encoded.latents.float().cpu())
            stds.append(torch.zeros_like(means[-1]))
            continue
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def encode_captions(pipe, family: str, captions: Sequence[str], device) -> dict[str, dict]:
    """Text conditioning per distinct caption, via each pipeline's own ``encode_prompt``."""
    out = {}
    if family == KANDINSKY:
        # The decoder sees the prior's image embedding of the caption, as at inference (25 prior
        # steps, a fixed seed per caption); the empty caption gets the prior pipeline's zero
        # embedding, what classifier-free guidance pairs with a prompt.
        for caption in sorted(set(captions) - {""}):
            prior = pipe.prior_pipe(prompt=caption, num_inference_steps=25, output_type="pt",
                                    generator=torch.Generator().manual_seed(0))
            out[caption] = {"image_embeds": prior.image_embeds[0]}
            out.setdefault("", {"image_embeds": prior.negative_image_embeds[0]})
        if "" in captions and "" not in out:
            prior = pipe.prior_pipe(prompt="x", num_inference_steps=1, output_type="pt")
            out[""] = {"image_embeds": prior.negative_image_embeds[0]}
        return out
    if family == "sd":  # one batched call per 64 captions: a stream meets new captions every step
        distinct = sorted(set(captions))
        for i in range(0, len(distinct), 64):
            embeds, _ = pipe.encode_prompt(distinct[i:i + 64], device, 1, False)
            out.update({c: {"encoder_hidden_states": e} for c, e in zip(distinct[i:i + 64], embeds)})
        return out
    for caption in sorted(set(captions)):
        if family == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=caption, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            out[caption] = {"encoder_hidden_states": embeds[0], "text_embeds": pooled[0]}
        elif family == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=caption, prompt_2=None, prompt_3=None, device=device,
                                                      num_images_per_prompt=1, do_classifier_free_guidance=False)
            out[caption] = {"encoder_hidden_states": embeds[0], "pooled_projections": pooled[0]}
        else:  # flux
            embeds, pooled, text_ids = pipe.encode_prompt(prompt=caption, prompt_2=None, device=device,
                                                          num_images_per_prompt=1)
            out[caption] = {"encoder_hidden_states": embeds[0], "pooled_projections": pooled[0], "txt_ids": text_ids}
    return out


def stack_conditions(conds: list[dict]) -> dict:
    batch = {k: torch.stack([c[k] for c in conds]) for k in conds[0] if k != "txt_ids"}
    if "txt_ids" in conds[0]:
        batch["txt_ids"] = conds[0]["txt_ids"]  # positions, the same for every caption
    return batch


# ---------------------------------------------------------------------------------------------
# 3. one training step's loss, per family
# ---------------------------------------------------------------------------------------------

def unet_loss(pipe, denoiser, noise_scheduler, latents, cond, generator, cfg: FinetuneConfig, family: str):
    """Noise (epsilon) or velocity prediction at a uniform timestep, optionally min-SNR weighted."""
    from diffusers.training_utils import compute_snr

    noise = torch.randn(latents.shape, generator=generator).to(latents)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    t = t.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    prediction_type = noise_scheduler.config.prediction_type
    target = noise_scheduler.get_velocity(latents, noise, t) if prediction_type == "v_prediction" else noise
    kwargs = {}
    if family == "sdxl":
        size = latents.shape[-1] * pipe.vae_scale_factor
        # (original size, crop top-left, target size): un-cropped images at the training size
        time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=latents.dtype, device=latents.device)
        kwargs["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"], "time_ids": time_ids.repeat(len(latents), 1)}
    if family == KANDINSKY:  # image-embedding conditioning; the output's second half is the learnt variance
        prediction = denoiser(noisy, t, encoder_hidden_states=None,
                              added_cond_kwargs={"image_embeds": cond["image_embeds"]}).sample[:, :latents.shape[1]]
    else:
        prediction = denoiser(noisy, t, encoder_hidden_states=cond["encoder_hidden_states"], **kwargs).sample
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if cfg.snr_gamma:
        # min-SNR-gamma (Hang et al. 2023), as in diffusers' train_text_to_image scripts
        snr = compute_snr(noise_scheduler, t)
        weight = torch.clamp(snr, max=cfg.snr_gamma)
        weight = weight / (snr + 1) if prediction_type == "v_prediction" else weight / snr
        loss = loss * weight
    return loss.mean()


def flow_loss(pipe, denoiser, noise_scheduler, latents, cond, generator, cfg: FinetuneConfig, family: str):
    """Rectified flow: x_t = (1 - s) x + s noise, the model predicts noise - x (SD3 and Flux)."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    u = compute_density_for_timestep_sampling("none", b, generator=generator)
    index = (u * noise_scheduler.config.num_train_timesteps).long()
    timesteps = noise_scheduler.timesteps[index].to(latents.device)
    sigmas = noise_scheduler.sigmas[index].to(latents).view(b, 1, 1, 1)
    noisy = (1.0 - sigmas) * latents + sigmas * noise
    target = noise - latents
    if family == "sd3":
        prediction = denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=cond["encoder_hidden_states"],
                              pooled_projections=cond["pooled_projections"], return_dict=False)[0]
    else:  # flux works on 2x2 packed latent patches
        c, h, w = latents.shape[1:]
        packed = pipe._pack_latents(noisy, b, c, h, w)
        image_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
        guidance = None
        if denoiser.config.guidance_embeds:
            guidance = torch.full((b,), 1.0, device=latents.device)
        out = denoiser(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                       pooled_projections=cond["pooled_projections"], encoder_hidden_states=cond["encoder_hidden_states"],
                       txt_ids=cond["txt_ids"], img_ids=image_ids, return_dict=False)[0]
        prediction = pipe._unpack_latents(out, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                          pipe.vae_scale_factor)
    return F.mse_loss(prediction.float(), target.float())


def noise_scheduler_for(pipe, family: str):
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if family in TRANSFORMER_FAMILIES:
        return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return DDPMScheduler.from_config(pipe.scheduler.config)


# ---------------------------------------------------------------------------------------------
# 4. checkpoints, validation images, outputs
# ---------------------------------------------------------------------------------------------

def checkpoint_dirs(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Finished checkpoints (state.json written last), oldest first."""
    root = out_dir / "checkpoints"
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file()) if root.is_dir() else []


def save_checkpoint(out_dir, step, denoiser, optimizer, lr_scheduler, log_rows, signature) -> pathlib.Path:
    from safetensors.torch import save_file

    target = out_dir / "checkpoints" / f"step-{step:06d}"
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().float().cpu().contiguous() for n, p in trainable(denoiser).items()},
              str(tmp / "trainable.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "log": log_rows, "signature": signature}, indent=1),
                                    encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # a crash mid-save leaves the previous checkpoint intact
    return target


def load_checkpoint(path: pathlib.Path, denoiser, optimizer, lr_scheduler, signature) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    differs = {k: (state["signature"].get(k), v) for k, v in signature.items() if state["signature"].get(k) != v}
    if differs:
        raise FinetuneError(f"cannot resume from {path}: the run differs in {differs} (checkpoint vs now); "
                            "use a new --out folder")
    weights = load_file(str(path / "trainable.safetensors"))
    params = trainable(denoiser)
    if set(weights) != set(params):
        raise FinetuneError(f"cannot resume from {path}: its trainable weights do not match this model")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    states = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(states["optimizer"])
    lr_scheduler.load_state_dict(states["lr_scheduler"])
    return int(state["step"]), list(state["log"])


@torch.no_grad()
def validation_images(pipe, denoiser, prompts, size, cfg: FinetuneConfig, folder: pathlib.Path) -> list[pathlib.Path]:
    """One image per prompt (seed cfg.seed + i) with the weights as they are now."""
    was_training = denoiser.training
    denoiser.eval()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    try:
        for i, prompt in enumerate(prompts):
            kwargs = dict(prompt=prompt, num_inference_steps=cfg.validation_steps, height=size, width=size,
                          generator=torch.Generator("cpu").manual_seed(cfg.seed + i))
            if cfg.validation_guidance is not None:
                kwargs["guidance_scale"] = cfg.validation_guidance
            image = pipe(**kwargs).images[0]
            path = folder / f"{i:02d}.png"
            image.save(path)
            paths.append(path)
        (folder / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    finally:
        denoiser.train(was_training)
    return paths


def save_lora(pipe, family: str, denoiser, out_dir: pathlib.Path) -> pathlib.Path:
    """The diffusers LoRA layout, written by the pipeline class itself, with the adapter metadata.

    Without the metadata diffusers reloads every adapter at lora_alpha = rank (scale 1), which is
    not what was trained (or validated) when alpha differs from the rank."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
    key = "unet" if family in UNET_FAMILIES else "transformer"
    config = denoiser.peft_config["default"]
    type(pipe).save_lora_weights(str(out_dir), **{f"{key}_lora_layers": layers,
                                                  f"{key}_lora_adapter_metadata": config.to_dict()},
                                 weight_name=LORA_FILE, safe_serialization=True)
    if family in UNET_FAMILIES:
        save_kohya_copy(out_dir / LORA_FILE, out_dir / f"{out_dir.resolve().name}_kohya.safetensors",
                        alpha=float(config.lora_alpha))
    return out_dir / LORA_FILE


def save_kohya_copy(lora_file: pathlib.Path, target: pathlib.Path, *, alpha: float | None = None) -> pathlib.Path:
    """The same adapter with kohya key names (lora_unet_..., lora_down/lora_up, alpha), the layout
    AUTOMATIC1111 and ComfyUI load for SD 1.x/2.x/SDXL; converted by diffusers' own utilities
    (as diffusers' advanced SDXL LoRA script does). The converter writes alpha = rank; kohya
    loaders scale by alpha / rank, so each module's ``alpha`` is set to the trained one."""
    from diffusers.utils.state_dict_utils import convert_all_state_dict_to_peft, convert_state_dict_to_kohya
    from safetensors.torch import load_file, save_file

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(str(lora_file))))
    if alpha is not None:
        kohya = {k: (torch.tensor(alpha, dtype=torch.float32) if k.endswith(".alpha") else v) for k, v in kohya.items()}
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(target))
    return target


def write_loss_curve(out_dir: pathlib.Path, rows: list[dict]) -> None:
    """loss.csv (every step) and loss.png (a small line plot drawn with PIL: no plotting stack needed)."""
    from PIL import ImageDraw

    with open(out_dir / "loss.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "seconds"])
        w.writeheader()
        w.writerows(rows)
    if not rows:
        return
    width, height, left, bottom = 640, 260, 60, 30
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = left, 20, width - 15, height - bottom
    draw.rectangle((x0, y0, x1, y1), outline="black")
    steps = [r["step"] for r in rows]
    losses = np.array([r["loss"] for r in rows], dtype=float)
    smooth = np.convolve(losses, np.ones(min(25, len(losses))) / min(25, len(losses)), mode="valid")
    lo, hi = float(losses.min()), float(losses.max())
    hi = hi if hi > lo else lo + 1e-6

    def xy(i, v, offset=0):
        s = steps[i + offset]
        return (x0 + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0))

    draw.line([xy(i, v) for i, v in enumerate(losses)], fill=(180, 200, 230), width=1)
    offset = len(losses) - len(smooth)
    draw.line([xy(i, v, offset) for i, v in enumerate(smooth)], fill=(31, 119, 180), width=2)
    draw.text((x0, 4), "fine-tuning loss per step (light) and running mean (dark)", fill="black")
    draw.text((4, y0), f"{hi:.3g}", fill="black")
    draw.text((4, y1 - 10), f"{lo:.3g}", fill="black")
    draw.text((x0, y1 + 8), f"step {steps[0]}", fill="black")
    draw.text((x1 - 70, y1 + 8), f"step {steps[-1]}", fill="black")
    img.save(out_dir / "loss.png", optimize=True)


# ---------------------------------------------------------------------------------------------
# 5. the run
# ---------------------------------------------------------------------------------------------

def finetune(base, data, out_dir, cfg: FinetuneConfig | None = None, *, resume: bool = False,
             decode: Callable[[pathlib.Path], Image.Image] | None = None, device: str | None = None,
             progress: bool = True, log=print) -> FinetuneResult:
    """Fine-tune ``base`` on ``data`` into ``out_dir`` (see the module docstring)."""
    import diffusers
    import peft
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from tqdm.auto import tqdm

    cfg = dataclasses.replace(cfg or FinetuneConfig())
    cfg.check()
    out_dir = pathlib.Path(out_dir)
    if not resume and checkpoint_dirs(out_dir):
        raise FinetuneError(f"{out_dir} already holds checkpoints: pass --resume to continue, or a new --out")
    if resume and not checkpoint_dirs(out_dir):
        raise FinetuneError(f"--resume: {out_dir} holds no checkpoint to resume from (checkpoints/step-*); "
                            "leave out --resume to start a new run")

    # cheap checks before the model is read: the data and the base's pipeline class.
    # A mixture file streams (images decoded and encoded per step); a folder or CSV is encoded once.
    sampler = None
    if mixture.is_mixture_file(data):
        try:
            sampler = mixture.MixtureSampler(mixture.read_mixture(data), seed=cfg.seed, decode=decode)
        except mixture.MixtureError as exc:
            raise FinetuneError(str(exc)) from None
        examples, captions = [], sampler.captions(64)
    else:
        examples = read_examples(data)
        captions = [ex.caption for ex in examples]
    path, entry = loading.resolve(base)
    pipeline_class = loading.pipeline_class_name(path)
    family = loading.family_of(pipeline_class)
    check_family(family, pipeline_class, cfg.method)
    if cfg.text_encoder and family != "sd":
        raise FinetuneError(f"--text-encoder replaces the single text encoder of SD 1.x/2.x; {pipeline_class} "
                            "has pooled or several text encoders")
    size = int(cfg.resolution or loading.default_size(path)[0])
    if sampler is None:
        pixels = decode_all(examples, size, decode)
        log(f"{len(examples)} images ({len(set(captions))} distinct captions) at {size}x{size}; "
            f"base {pipeline_class} ({family}), method {cfg.method}")
    else:
        log(f"mixture of {len(sampler.readers)} sources ({len(set(sampler.modality_names))} "
            f"modalities, balance {sampler.mixture.balance}) at {size}x{size}; base {pipeline_class} ({family})")

    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=(device == "cpu"))
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    # frozen weights in the mixed-precision dtype; trained weights stay float32 (full: all of the UNet)
    loaded = loading.load(base, device=str(accelerator.device), dtype=weight_dtype, options={"hash_weights": False})
    pipe = loaded.pipe
    base_hash = provenance.weights_hash(path)
    denoiser = denoiser_of(pipe)
    if cfg.text_encoder:
        swap_text_encoder(pipe, cfg.text_encoder, cfg.seed, accelerator.device, weight_dtype, log)
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3", "movq", "prior_prior", "prior_text_encoder", "prior_image_encoder"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False).eval()

    # frozen encoders once ---------------------------------------------------------------------
    vae = pipe.movq if family == KANDINSKY else pipe.vae
    # Kandinsky's decoder pipeline feeds MoVQ latents unscaled, whatever its config says
    scaling = 1.0 if family == KANDINSKY else float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    if sampler is None:
        latent_mean, latent_std = encode_images(vae, pixels, accelerator.device, vae.dtype)
        conditions = encode_captions(pipe, family, captions + [""], accelerator.device)
        del pixels
    else:
        conditions = encode_captions(pipe, family, [""], accelerator.device)

    # trainable weights -------------------------------------------------------------------------
    if cfg.method == "lora":
        torch.manual_seed(cfg.seed)  # LoRA's A matrices start from the global RNG
        add_lora(denoiser, cfg)
    else:
        denoiser.requires_grad_(True)
    if getattr(denoiser, "encoder_hid_proj", None) is not None and cfg.text_encoder:
        denoiser.encoder_hid_proj.requires_grad_(True)  # the learnt projection trains with either method
    if weight_dtype != torch.float32:
        if cfg.method == "full":
            denoiser.to(torch.float32)
        cast_training_params(denoiser, dtype=torch.float32)
    denoiser.train()
    params = list(trainable(denoiser).values())
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.steps)
    denoiser, optimizer = accelerator.prepare(denoiser, optimizer)
    model = accelerator.unwrap_model(denoiser)
    noise_scheduler = noise_scheduler_for(pipe, family)
    step_loss = unet_loss if family in UNET_FAMILIES + (KANDINSKY,) else flow_loss

    signature = {"base_weights_sha256": base_hash, "method": cfg.method, "rank": cfg.rank, "alpha": cfg.alpha,
                 "target_modules": list(cfg.target_modules), "resolution": size, "batch_size": cfg.batch_size,
                 "lr": cfg.lr, "lr_scheduler": cfg.lr_scheduler, "seed": cfg.seed, "text_encoder": cfg.text_encoder,
                 "data": sampler.signature() if sampler else
                 hashlib.sha256(json.dumps([[str(ex.path), ex.caption] for ex in examples]).encode()).hexdigest(),
                 "processes": accelerator.num_processes}
    start, log_rows = 0, []
    if resume:
        last = checkpoint_dirs(out_dir)[-1]
        start, log_rows = load_checkpoint(last, model, optimizer, lr_scheduler, signature)
        log(f"resumed from {last} at step {start}")
    if start >= cfg.steps:
        raise FinetuneError(f"{out_dir}: already trained {start} steps; ask for more with --steps (> {start})")

    prompts = list(cfg.validation_prompts) or sorted(set(captions))[:2]
    n, world, rank = len(examples), accelerator.num_processes, accelerator.process_index
    global_batch = cfg.batch_size * world
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc="finetune",
               disable=not progress or not accelerator.is_main_process)
    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    for step in range(start + 1, cfg.steps + 1):
        # batch order and noise depend only on (seed, step): a resumed run repeats them exactly
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        if sampler is None:
            batch = torch.randint(0, n, (global_batch,), generator=g)[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
            mean, std, texts = latent_mean[batch], latent_std[batch], [captions[i] for i in batch.tolist()]
        else:  # this process's share of the step's draws, decoded and encoded now
            records = sampler.batch(step, global_batch)[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
            mean, std = encode_images(vae, np.stack([square(r.image, size) for r in records]),
                                      accelerator.device, vae.dtype)
            texts = [r.caption for r in records]
            if len(conditions) > 4096:  # bounded: a stream can hold any number of distinct captions
                conditions = {"": conditions[""]}
            conditions.update(encode_captions(pipe, family, [t for t in texts if t not in conditions],
                                              accelerator.device))
        latents = (mean + std * torch.randn(mean.shape, generator=g))
        latents = ((latents - shift) * scaling).to(accelerator.device, weight_dtype)
        drop = torch.rand(len(texts), generator=g) < cfg.caption_dropout
        cond = stack_conditions([conditions["" if d else t] for t, d in zip(texts, drop.tolist())])
        with accelerator.autocast():
            loss = step_loss(pipe, denoiser, noise_scheduler, latents, cond, g, cfg, family)
        accelerator.backward(loss)
        if accelerator.sync_gradients and cfg.max_grad_norm:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(accelerator.gather(loss.detach()[None]).mean())
        log_rows.append({"step": step, "loss": round(value, 6), "lr": lr_scheduler.get_last_lr()[0],
                         "seconds": round(time.perf_counter() - started, 2)})
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}")
        if accelerator.is_main_process and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
            save_checkpoint(out_dir, step, model, optimizer, lr_scheduler, log_rows, signature)
            validation_images(pipe, model, prompts, size, cfg, out_dir / "validation" / f"step-{step:06d}")
            write_loss_curve(out_dir, log_rows)
    bar.close()
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - started

    # outputs ------------------------------------------------------------------------------------
    if accelerator.is_main_process:
        model.eval()
        if cfg.text_encoder or family == KANDINSKY:
            # a new text encoder and its projection are part of the model, and Kandinsky's
            # pipelines load no LoRA files: save a whole pipeline
            if cfg.method == "lora":
                model.fuse_lora()
                model.unload_lora()
            weights = out_dir / "pipeline"
            pipe.save_pretrained(str(weights), safe_serialization=True)
        elif cfg.method == "lora":
            weights = save_lora(pipe, family, model, out_dir)
        else:
            weights = out_dir / "pipeline"
            pipe.save_pretrained(str(weights), safe_serialization=True)
        peak = (torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else _rss_peak_mb()
        record = {
            "kind": "medisyn-finetune", "config": dataclasses.asdict(cfg),
            "base": {"model": os.fspath(base), "path": str(path), "registry_key": entry.key if entry else None,
                     "pipeline": pipeline_class, "family": family, "weights_sha256": base_hash},
            "data": {"source": os.fspath(data), "images": len(examples), "captions": sorted(set(captions)),
                     "sha256": signature["data"]} if sampler is None else
                    {"source": os.fspath(data), "mixture": sampler.mixture.describe(), "sampled": sampler.counts(),
                     "sha256": signature["data"]},
            "result": {"steps": cfg.steps, "resumed_from": start, "seconds_this_run": round(seconds, 1),
                       "final_loss": log_rows[-1]["loss"], "trainable_parameters": n_trainable,
                       "peak_memory_mb": round(peak, 1), "processes": world, "device": str(accelerator.device),
                       "weights": weights.name, "weights_sha256": provenance.file_sha256(weights) if weights.is_file() else None},
            "validation_prompts": prompts,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__},
        }
        (out_dir / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        write_loss_curve(out_dir, log_rows)
        log(f"saved {weights} after {cfg.steps} steps ({seconds:.1f} s this run)")
    else:  # pragma: no cover - multi-process only
        weights, peak = out_dir, 0.0
    return FinetuneResult(out_dir=out_dir, weights=weights, family=family, steps=cfg.steps, resumed_from=start,
                          seconds=round(seconds, 1), final_loss=log_rows[-1]["loss"], peak_memory_mb=round(peak, 1),
                          trainable_parameters=n_trainable, losses=[r["loss"] for r in log_rows])


def _rss_peak_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def main(argv=None) -> None:
    """Entry point for ``accelerate launch -m model_runtime.finetune``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default=None, help="cpu to force the CPU [default: what accelerate picks]")
    defaults = FinetuneConfig()
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in ("target_modules", "validation_prompts"):
            continue
        kind = type(getattr(defaults, f.name)) if getattr(defaults, f.name) is not None else float
        kind = str if f.name == "text_encoder" else int if f.name == "resolution" else kind
        p.add_argument("--" + f.name.replace("_", "-"), type=kind,
                       default=getattr(defaults, f.name))
    args = vars(p.parse_args(argv))
    base, data, out, resume, device = (args.pop(k) for k in ("base", "data", "out", "resume", "device"))
    try:
        finetune(base, data, out, FinetuneConfig(**args), resume=resume, device=device,
                 log=lambda m: print(m, flush=True))
    except (FinetuneError, loading.ModelNotFoundError) as exc:
        raise SystemExit(f"Error: {exc}") from None


if __name__ == "__main__":
    main()
