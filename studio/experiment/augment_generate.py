"""Synthetic training images for the augmentation experiment, made through the runtime.

The glue between `model_runtime` (generation) and `evaluation.augment` (the experiment): it
lives in studio because only studio joins the lower packages.
"""
from __future__ import annotations

import pathlib
from collections.abc import Sequence

from evaluation.augment import LabelledImage, read_labelled
from studies.imaging.manifest import write_manifest


def generate_synthetic(model: str, label_prompts: dict[str, Sequence[str]], per_label: int, out_dir, *,
                       seed: int = 0, steps: int | None = None, guidance: float | None = None,
                       options: dict | None = None) -> list[LabelledImage]:
    """``per_label`` images per label from its prompts (round-robin), via the ``medisyn generate`` job:
    seeds and parameters are recorded in ``out_dir/generation.csv`` and in every PNG."""
    from model_runtime.batch_job import run_generate_job  # torch-heavy: import on use

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, prompts in label_prompts.items():
        prompts = list(prompts)
        counts = [per_label // len(prompts) + (1 if i < per_label % len(prompts) else 0) for i in range(len(prompts))]
        rows += [{"prompt": p, "modality": label, "n": n} for p, n in zip(prompts, counts) if n]
    table = out_dir / "prompts.csv"
    write_manifest(table, rows, columns=("prompt", "modality", "n"))
    kwargs = {k: v for k, v in (("steps", steps), ("guidance_scale", guidance)) if v is not None}
    result = run_generate_job(model, out_dir, prompts_csv=table, seed=seed, options=options, progress=False, **kwargs)
    return read_labelled(result.manifest, label_column="modality")
