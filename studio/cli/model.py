"""medisyn CLI commands: model (`medisyn model train | evaluate | finetune`)."""
from __future__ import annotations

import click

from studio.cli.groups import cli, model, one_line_errors, study  # noqa: F401  (groups these commands attach to)


@model.command("train")
@click.option("--out", default="assets/medisyn-mini", show_default=True, type=click.Path(file_okay=False),
              help="Output pipeline folder (replaced only when training finishes).")
@click.option("--minutes", type=float, default=None,
              help="Fill about this much wall time: step counts are chosen by timing a few steps "
                   "(recorded in training.json) [default: the recipe's fixed step counts].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--samples", type=int, default=3000, show_default=True,
              help="Augmented training images to build from the public source files.")
@click.option("--vae-steps", type=int, default=None, help="Override the VAE step count.")
@click.option("--unet-steps", type=int, default=None, help="Override the UNet step count.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="torch threads (results are bit-identical only for the same count).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default=None,
              help="Keep the training images in this folder [default: a temporary folder].")
def train_command(out, minutes, seed, samples, vae_steps, unet_steps, threads, data_dir):
    """Train the embedded demo model from scratch on public images shipped by installed packages.

    Builds the training set (studio.demo.data) and trains a small Stable Diffusion pipeline
    (model_runtime.train) on the CPU; see assets/MODEL_CARD.md for the recipe.
    """
    from studio.demo.embedded_model import train_embedded_model

    result = train_embedded_model(out, minutes=minutes, seed=seed, samples=samples, data_dir=data_dir,
                                  vae_steps=vae_steps, unet_steps=unet_steps, threads=threads,
                                  log=lambda msg: click.echo(msg, err=True))
    click.echo(f"{result.out_dir}: {result.vae_steps} VAE + {result.unet_steps} UNet steps in "
               f"{result.seconds / 60:.1f} min (final losses {result.final_vae_loss:.4f} / "
               f"{result.final_unet_loss:.4f})")


@model.command("evaluate")
@click.option("--model", "model_name", default=None,
              help="Registry key, diffusers folder or cached Hub id [default: the embedded model].")
@click.option("--per-modality", type=int, default=8, show_default=True, help="Images generated per modality prompt.")
@click.option("--figures", type=click.Path(file_okay=False), default=None,
              help="Write the model card's sample grid and loss plot into this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def evaluate_command(model_name, per_modality, figures, as_json):
    """Score a model on the embedded model's modality prompts: a modality classifier fitted on the
    real training images must recognise the requested modality, and intensities must lie in the
    real images' range (see studio/demo/model_quality.py)."""
    import json

    from studio.demo.embedded_model import evaluate_model

    report = evaluate_model(model_name, per_modality=per_modality, figures_dir=figures,
                            log=lambda msg: click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"recognised {report['mean_recognised']:.0%}, plausible intensities "
                   f"{report['mean_plausible']:.0%} (mean over modalities)")


@model.command("finetune")
@click.option("--base", required=True, help="Model to start from: anything `medisyn generate --model` accepts.")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Folder with captions.csv (path,caption), a manifest CSV with path and prompt columns, "
                   "or a mixture file (.toml, or CSV source,weight[,caption,modality]) of weighted sources.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--method", type=click.Choice(["lora", "full"]), default="lora", show_default=True,
              help="LoRA on the attention projections, or every UNet weight (SD 1.x/2.x, SDXL).")
@click.option("--rank", type=click.IntRange(1, 1024), default=16, show_default=True, help="LoRA rank.")
@click.option("--alpha", type=float, default=None, help="LoRA alpha [default: the rank].")
@click.option("--resolution", type=click.IntRange(8, 4096), default=None,
              help="Training size (square, a multiple of 8) [default: the base model's native size].")
@click.option("--steps", type=click.IntRange(1, 10_000_000), default=500, show_default=True,
              help="Total optimizer steps (with --resume: the new total).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=1, show_default=True, help="Images per step and process.")
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate.")
@click.option("--lr-scheduler", default="constant", show_default=True,
              help="constant, constant_with_warmup, cosine, linear, ... (diffusers.optimization).")
@click.option("--lr-warmup-steps", type=click.IntRange(0, None), default=0, show_default=True)
@click.option("--snr-gamma", type=float, default=None, help="min-SNR loss weighting for UNet families (e.g. 5).")
@click.option("--caption-dropout", type=float, default=0.0, show_default=True, help="Share of empty captions.")
@click.option("--checkpoint-every", type=click.IntRange(1, None), default=100, show_default=True,
              help="Save a checkpoint and validation images every N steps.")
@click.option("--validation-prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Text file, one prompt per line [default: up to two training captions].")
@click.option("--validation-steps", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="Denoising steps of each validation image.")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
@click.option("--device", default=None, help="cpu to force the CPU [default: what accelerate picks].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--text-encoder", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local Hugging Face text model folder (BERT-style clinical encoder or CLIP text) replacing "
                   "the base's (SD 1.x/2.x; frozen; a learnt projection where widths differ). Writes OUT/pipeline.")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@one_line_errors
def finetune_command(base, data, out, method, rank, alpha, resolution, steps, batch_size, lr, lr_scheduler,
                     lr_warmup_steps, snr_gamma, caption_dropout, checkpoint_every, validation_prompts,
                     validation_steps, mixed_precision, device, seed, text_encoder, resume, quiet):
    """Fine-tune a pretrained pipeline on your captioned images (LoRA or full), see model_runtime/finetune.py.

    Writes pytorch_lora_weights.safetensors (use it with `medisyn generate --lora OUT`) or, with
    --method full, a pipeline in OUT/pipeline; plus training.json, loss.csv/png, validation
    images and checkpoints. Several GPUs: `accelerate launch -m model_runtime.finetune ...`.
    """
    import pathlib

    from model_runtime.finetune import FinetuneConfig, finetune

    prompts = ()
    if validation_prompts:
        prompts = tuple(line.strip() for line in pathlib.Path(validation_prompts).read_text(encoding="utf-8").splitlines()
                        if line.strip())
    cfg = FinetuneConfig(method=method, rank=rank, alpha=alpha, resolution=resolution, steps=steps,
                         batch_size=batch_size, lr=lr, lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps,
                         snr_gamma=snr_gamma, caption_dropout=caption_dropout, seed=seed,
                         checkpoint_every=checkpoint_every, validation_prompts=prompts,
                         validation_steps=validation_steps, mixed_precision=mixed_precision,
                         text_encoder=text_encoder)
    try:
        result = finetune(base, data, out, cfg, resume=resume, device=device,
                          progress=not quiet, log=lambda msg: click.echo(msg, err=True))
    except ValueError as exc:  # e.g. an unknown --lr-scheduler, which diffusers reports
        raise click.ClickException(str(exc)) from None
    click.echo(f"{result.weights}: {result.steps} steps (from {result.resumed_from}) in {result.seconds:.1f} s, "
               f"final loss {result.final_loss:.4f}")
