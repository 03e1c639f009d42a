"""medisyn CLI commands: model (`medisyn model train`)."""
from __future__ import annotations

import click

from studio.cli import cli, study, model  # noqa: F401  (groups these commands attach to)


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

    Builds the training set (studio.demo_data) and trains a small Stable Diffusion pipeline
    (model_runtime.train) on the CPU; see assets/MODEL_CARD.md for the recipe.
    """
    from studio.embedded_model import train_embedded_model

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
    real images' range (see studio/model_quality.py)."""
    import json

    from studio.embedded_model import evaluate_model

    report = evaluate_model(model_name, per_modality=per_modality, figures_dir=figures,
                            log=lambda msg: click.echo(msg, err=True))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"recognised {report['mean_recognised']:.0%}, plausible intensities "
                   f"{report['mean_plausible']:.0%} (mean over modalities)")
