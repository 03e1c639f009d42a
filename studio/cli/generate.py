"""medisyn CLI commands: generate (a thin wrapper over model_runtime.batch_job.run_generate_job)."""
from __future__ import annotations

import click

from studio.cli.groups import cli, model, one_line_errors, study  # noqa: F401  (groups these commands attach to)


def _multiple_of_8(ctx, param, value):
    # latent diffusion VAEs downsample by 8: other sizes fail inside every worker
    if value is not None and value % 8:
        raise click.BadParameter(f"{value} is not a multiple of 8")
    return value


def _lora_specs(ctx, param, values):
    from model_runtime.errors import ModelRuntimeError
    from model_runtime.lora import parse_spec

    try:
        return tuple(parse_spec(v) for v in values)
    except ModelRuntimeError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("generate")
@click.option("--model", "model_name", required=True,
              help="Registry key (e.g. embedded, medisyn), local diffusers folder, or Hub id in the local cache.")
@click.option("--prompt", default=None, help="One prompt (use --n for several images).")
@click.option("--prompts", "prompts_csv", type=click.Path(dir_okay=False), default=None,
              help="CSV with a prompt column; optional modality, negative_prompt, n, seed, case_id, group.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumed if it exists).")
@click.option("--n", default=1, show_default=True, type=click.IntRange(1, 10_000), help="Images per prompt.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**62),
              help="Base seed; image k of row r gets seed + 10000*r + k (unless the CSV row sets seed).")
@click.option("--steps", default=None, type=click.IntRange(1, 1000),
              help="Denoising steps (default: the model folder's medisyn.json, else 25).")
@click.option("--guidance", default=None, type=float,
              help="Classifier-free guidance scale (default: the model folder's medisyn.json, else 7).")
@click.option("--scheduler", default=None, help="Sampler name, e.g. 'DPM++ 2M Karras' (default: the model's own).")
@click.option("--width", default=None, type=click.IntRange(8, 8192), callback=_multiple_of_8,
              help="A multiple of 8 (default: the model's native size).")
@click.option("--height", default=None, type=click.IntRange(8, 8192), callback=_multiple_of_8)
@click.option("--negative-prompt", default="", help="Negative prompt for rows that do not set one.")
@click.option("--modality", default="", help="Modality for the manifest, for rows that do not set one.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Images per forward pass; 1 makes every image reproducible on its own from its seed.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", default=None, help="Ray cluster address to join (default: start a local Ray).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available).")
@click.option("--dtype", default=None, help="fp32, fp16 or bf16 (default: fp32 on CPU, fp16/bf16 on GPU).")
@click.option("--threads", default=None, type=click.IntRange(1, 512),
              help="torch threads per worker (default: physical cores, at most 8, fewer on a busy machine).")
@click.option("--lora", "loras", multiple=True, callback=_lora_specs, metavar="PATH[:SCALE]",
              help="LoRA adapter: a .safetensors file or the folder `medisyn model finetune` wrote; "
                   "scale default 1. Repeatable; all are fused. Recorded as <lora:name:scale> in provenance.")
@click.option("--config", "config", default=None,
              help="For a single-file checkpoint (.safetensors/.ckpt): a local diffusers folder (or cached Hub id) "
                   "of the same architecture whose configs build it [default: inferred, from the local cache].")
@click.option("--dicom", is_flag=True, default=False,
              help="Also write a DICOM Secondary Capture (.dcm) beside each PNG.")
@one_line_errors
def generate(model_name, prompt, prompts_csv, out, n, seed, steps, guidance, scheduler, width, height,
             negative_prompt, modality, batch_size, engine, address, device, dtype, threads, loras, config, dicom):
    """Generate synthetic images and a manifest.csv that `medisyn study create` accepts as is."""
    from model_runtime.batch_job import resolve_device, run_generate_job
    from model_runtime.defaults import recommended_settings

    if (prompt is None) == (prompts_csv is None):
        raise click.UsageError("give exactly one of --prompt or --prompts")
    try:
        # cheap checks first: a missing GPU must not surface after the model was read
        resolve_device(device, dtype, address=address if engine == "ray" else None)
        if steps is None or guidance is None:
            recommended_steps, recommended_guidance = recommended_settings(model_name, config)
            steps = recommended_steps if steps is None else steps
            guidance = recommended_guidance if guidance is None else guidance
        result = run_generate_job(
            model_name, out, prompt=prompt, prompts_csv=prompts_csv, n=n, seed=seed,
            negative_prompt=negative_prompt, modality=modality, steps=steps, guidance_scale=guidance,
            scheduler=scheduler, width=width, height=height, batch_size=batch_size, engine=engine,
            address=address, device=device, dtype=dtype, threads=threads, dicom=dicom,
            warn=lambda message: click.echo(f"Warning: {message}", err=True),
            options={k: v for k, v in (("loras", loras), ("config", config)) if v} or None)
    except ValueError as exc:  # request checks outside the runtime's own errors (e.g. a guidance below 0)
        raise click.ClickException(str(exc)) from None
    click.echo(f"{result.generated} generated, {result.skipped} already done, {result.total} images "
               f"in {result.seconds:.1f} s -> {result.manifest}")

