"""medisyn CLI command: `medisyn experiment generalist` (one generalist vs one specialist per modality)."""
from __future__ import annotations

import click

from studio.cli.experiment import experiment
from studio.cli.groups import one_line_errors


@experiment.command("generalist")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Mixture file (.toml or CSV source,weight[,caption,modality]) covering two or more modalities.")
@click.option("--demo", is_flag=True, help="Use a mixture of the shipped public images instead of --data (CPU scale).")
@click.option("--budget", type=click.IntRange(2, None), required=True,
              help="Generalist's UNet (and VAE) steps; each of M specialists gets budget // M.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--size", type=click.IntRange(16, 1024), default=32, show_default=True, help="Image size trained.")
@click.option("--per-modality", type=click.IntRange(6, None), default=24, show_default=True,
              help="Generated (and real reference) images per modality.")
@click.option("--seed", type=int, default=0, show_default=True)
@one_line_errors
def generalist_command(data, demo, budget, out, size, per_modality, seed):
    """Train one generalist and one specialist per modality at equal total compute, then compare
    them per modality (FID/KID, precision/recall, modality classifier, cost); see studio/experiment/generalist.py."""
    import pathlib

    from model_runtime.train import TrainConfig
    from studio.experiment.generalist import build_demo_mixture, format_result, run_generalist

    if bool(data) == bool(demo):
        raise click.ClickException("give either --data MIXTURE or --demo")
    try:
        if demo:
            data = build_demo_mixture(pathlib.Path(out) / "demo", size=size, seed=seed)
        cfg = TrainConfig(size=size, vae_channels=(16, 32), text_width=64, unet_channels=(32, 64), unet_heads=8,
                          vae_batch=8, unet_batch=16, warmup_steps=min(100, budget // 10 + 1), log_every=50)
        result = run_generalist(data, out, budget, config=cfg, per_modality=per_modality, seed=seed,
                                log=lambda m: click.echo(m, err=True))
    except ValueError as exc:  # checks that raise plain ValueError; the library's errors: one_line_errors
        raise click.ClickException(str(exc)) from None
    click.echo(format_result(result))
    click.echo(f"\n{result.out_dir / 'generalist.json'}")
