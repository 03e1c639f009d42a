"""How much does the embedded model copy? 200 samples against its training crops and held-out images.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/embedded_memorisation.py \
        --out /tmp/medisyn-memorisation [--samples 200] [--threads 1]

1. Generates `--samples` images with the embedded model (its default steps and guidance),
   spread evenly over the six modality prompts (seeds 90000 + ...), into OUT/samples.
2. Rebuilds the exact training set (`studio.demo_data.build_training_set`, seed 0, 3,000 crops:
   deterministic, the crops the model was trained on) into OUT/train and the held-out demo
   images (`build_demo_set`) into OUT/held_out.
3. Runs `evaluation.novelty.run_novelty` (the `medisyn eval novelty` defaults) of the samples
   against the training crops — thresholds calibrated on the crops' own nearest neighbours —
   and then against the held-out images with those same thresholds (a handful of held-out
   images cannot calibrate a threshold of their own). Reports in OUT/vs_train and OUT/vs_held_out.
4. Against the 84 distinct training images (each slice/frame/region once, centred square at
   64 px, OUT/train_sources), calibrated on those distinct images (OUT/vs_train_sources); and, for
   context, the held-out real images against the training crops (OUT/held_out_vs_train).
Prints a JSON summary (also OUT/memorisation.json) for assets/MODEL_CARD.md.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=pathlib.Path)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--size", type=int, default=128, help="normalised size for the comparison (native is 64)")
    args = p.parse_args()

    import numpy as np
    import torch

    from evaluation.novelty import run_novelty
    from model_runtime.generation import GenerationRequest, generate
    from model_runtime.loading import load
    from studio import demo_data
    from studio.embedded_model import read_defaults

    torch.set_num_threads(args.threads)
    out = args.out
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prompts = [m.prompt for m in demo_data.MODALITIES.values()]
    counts = [args.samples // len(prompts) + (1 if i < args.samples % len(prompts) else 0) for i in range(len(prompts))]
    if len(list(samples.glob("*.png"))) < args.samples:
        loaded = load("embedded", options={"hash_weights": False})
        d = read_defaults(loaded.path)
        for i, (prompt, n) in enumerate(zip(prompts, counts)):
            if all((samples / f"p{i}_{j:03d}.png").exists() for j in range(n)):
                continue
            # one batched request per prompt: image j gets seed 90000 + 1000 i + j
            req = GenerationRequest(prompt=prompt, num_images=n, seed=90000 + 1000 * i, steps=d.steps,
                                    guidance_scale=d.guidance_scale)
            for j, g in enumerate(generate(loaded, req, batch_size=n)):
                g.image.save(samples / f"p{i}_{j:03d}.png")
    gen_s = time.perf_counter() - t0
    if not (out / "train" / "captions.csv").is_file():
        demo_data.build_training_set(out / "train", samples=3000, seed=0)
    if not any((out / "held_out").glob("*.png")):
        demo_data.build_demo_set(out / "held_out")
    sources = out / "train_sources"
    if not any(sources.glob("*.png")):
        write_sources(sources)
    t1 = time.perf_counter()
    vs_train = run_novelty(samples, out / "train" / "images", out / "vs_train", size=args.size, progress=False)
    vs_held = run_novelty(samples, out / "held_out", out / "vs_held_out", size=args.size, progress=False,
                          thresholds=vs_train.thresholds, calibration_sample=50)
    # the 84 distinct training images themselves, calibrated on each other (Dar et al.'s rule on
    # distinct images rather than on overlapping crops)
    vs_sources = run_novelty(samples, sources, out / "vs_train_sources", size=args.size, progress=False)
    # context: how close are real held-out images to the training crops?
    held_vs_train = run_novelty(out / "held_out", out / "train" / "images", out / "held_out_vs_train",
                                size=args.size, progress=False, thresholds=vs_train.thresholds)
    eval_s = time.perf_counter() - t1

    def med(res, m):
        return float(np.median([r[m] for r in res.rows]))

    summary = {
        "samples": len(vs_train.rows), "training_crops": vs_train.n_reference, "held_out": vs_held.n_reference,
        "thresholds": vs_train.thresholds, "threshold_rules": vs_train.threshold_rules,
        "flag_rule": f"at least {vs_train.min_votes} of {len(vs_train.measures)} measures",
        "flagged_vs_train": vs_train.n_flagged, "fraction_vs_train": vs_train.fraction_flagged,
        "flagged_vs_held_out": vs_held.n_flagged, "fraction_vs_held_out": vs_held.fraction_flagged,
        "median_nn_vs_train": {m: med(vs_train, m) for m in vs_train.measures},
        "median_nn_vs_held_out": {m: med(vs_held, m) for m in vs_held.measures},
        "median_nn_train_to_train": {m: float(np.median(vs_train.calibration[m])) for m in vs_train.measures},
        "train_sources": vs_sources.n_reference, "thresholds_sources": vs_sources.thresholds,
        "flagged_vs_train_sources": vs_sources.n_flagged, "fraction_vs_train_sources": vs_sources.fraction_flagged,
        "median_nn_vs_train_sources": {m: med(vs_sources, m) for m in vs_sources.measures},
        "median_nn_held_out_vs_train": {m: med(held_vs_train, m) for m in held_vs_train.measures},
        "generation_seconds": round(gen_s, 1), "evaluation_seconds": round(eval_s, 1),
        "size": args.size, "threads": args.threads,
    }
    (out / "memorisation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))


def write_sources(folder) -> None:
    """Every distinct decoded training image (slice/frame/region) at the native size, centred square."""
    from PIL import Image

    from studio import demo_data

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for view in demo_data.train_views():
        for image in demo_data.decode_view(view):
            x0, y0, x1, y1 = demo_data._box_pixels(image, view.box)
            side = min(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            px = demo_data._square(image, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2),
                                   demo_data.NATIVE_SIZE)
            Image.fromarray(px).save(folder / f"{view.key}_{n:03d}.png")
            n += 1


if __name__ == "__main__":
    main()
