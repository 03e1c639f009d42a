"""The augmentation experiment on the shipped public images (``medisyn experiment augment-demo``).

Task: modality classification (CT, MRI, ultrasound, nuclear medicine, fundus, histology).
- real training pool: augmented crops of the *training* views (``demo_data.build_training_set``);
- real test set: the held-out demo views (slices, frames and regions never trained on —
  ``demo_data.build_demo_set``), each as several fixed crops. Few source images: crops of one
  held-out image are not independent — they share a ``group``, so the bootstrap resamples source
  images, not crops — and two demo views are copies of training sources (``independent=False``
  in demo_data), so the test set is small and optimistic;
- validation: real crops held out of the training pool, the same for every arm and repeat
  (``evaluation.augment``);
- synthetic images: the embedded model (or ``model``) prompted with each modality's canonical
  prompt, through the runtime's generate job (seeds recorded in ``synthetic/generation.csv``).
This shows the machinery end to end on a CPU; it is not evidence about real data (docs/evaluation.md).
"""
from __future__ import annotations

import math
import pathlib

import numpy as np
from PIL import Image

from studies.imaging.manifest import write_manifest
from studio.demo import data as demo_data


def build_test_set(out_dir, *, crops: int = 8, seed: int = 0, size: int = demo_data.NATIVE_SIZE) -> pathlib.Path:
    """Held-out demo images, ``crops`` fixed random crops (80-100 % of the side) of each; labels.csv
    (``group``: the source image a crop comes from)."""
    out = pathlib.Path(out_dir)
    images = demo_data.build_demo_set(out / "source", size=size)
    rng = np.random.default_rng(seed)
    rows = []
    for k, item in enumerate(images):
        with Image.open(item.path) as im:
            im = im.convert("RGB")
        for c in range(crops):
            side = int(round(size * rng.uniform(0.8, 1.0)))
            x, y = (int(rng.integers(0, size - side + 1)) for _ in range(2))
            name = f"{k:02d}_{c:02d}.png"
            im.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS).save(out / name)
            rows.append({"path": name, "label": item.modality, "view": item.view, "group": item.path.stem})
    return write_manifest(out / "labels.csv", rows, columns=("path", "label", "view", "group"))


def run_demo(out_dir, cfg, *, model: str = "embedded", pool: int = 240, test_crops: int = 8,
             steps: int | None = None, log=print, progress: bool = True):
    """Build the three sets under ``out_dir`` and run evaluation.augment on them (results in out_dir/results)."""
    from evaluation.augment import read_labelled, run_augment
    from studio.experiment.augment_generate import generate_synthetic
    from model_runtime.loading import resolve
    from studio.demo.embedded_model import DEFAULTS_FILE, read_defaults

    out = pathlib.Path(out_dir)
    log(f"building {pool} real training crops from the shipped training views")
    demo_data.build_training_set(out / "real", samples=pool, seed=cfg.seed)
    real = read_labelled(out / "real" / "captions.csv", label_column="modality")
    test = read_labelled(build_test_set(out / "test", crops=test_crops, seed=cfg.seed), group_column="group")
    path, _ = resolve(model)
    guidance = None
    if (pathlib.Path(path) / DEFAULTS_FILE).is_file():
        defaults = read_defaults(path)
        steps, guidance = steps or int(defaults.steps), float(defaults.guidance_scale)
    prompts = {m.key: [m.prompt] for m in demo_data.MODALITIES.values()}
    per_label = math.ceil(max(cfg.synthetic or (1,)) / len(prompts))
    log(f"generating {per_label} synthetic images per modality with {model}")
    synthetic = generate_synthetic(model, prompts, per_label, out / "synthetic", seed=cfg.seed + 1_000_000,
                                   steps=steps, guidance=guidance)
    return run_augment(real, test, synthetic, out / "results", cfg, log=log, progress=progress)
