"""How much does the embedded model copy? 200 samples against its training crops and held-out images.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/embedded_memorisation.py \
        --out /tmp/medisyn-memorisation [--samples 200] [--threads 1]

1. Generates `--samples` images with the embedded model (its default steps and guidance),
   spread evenly over the six modality prompts (seeds 90000 + ...), into OUT/samples.
2. (The 3,000 training crops are overlapping augmented crops of the 84 images below; the
   comparison uses the distinct images, grouped by source file.)
3. Writes the 84 distinct training images (each slice/frame/region once, centred square at 64 px)
   to OUT/train_sources with a manifest whose `group` is the source file (one volume, one cine,
   one scan = one patient), and the held-out demo images with the same grouping (the JPEG 2000
   bone scan is the same scan as the training one: one group).
4. Runs `evaluation.novelty.run_novelty` (the `medisyn eval novelty` defaults) of the samples
   against the distinct training images, calibrated on the held-out demo images (`--holdout`):
   each held-out image is compared only with training images of *other* source files.
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
    from studio.demo import data as demo_data
    from studio.demo.embedded_model import read_defaults

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
    sources = out / "train_sources"
    if not (sources / "manifest.csv").is_file():
        write_sources(sources)
    t1 = time.perf_counter()
    held = demo_data.build_demo_set(out / "held_out_grouped")
    _manifest(out / "held_out_grouped" / "manifest.csv",
              [(h.path.name, h.modality, _group_of(h.origin)) for h in held])
    res = run_novelty(samples, sources / "manifest.csv", out / "vs_train_sources_holdout", size=args.size,
                      holdout=out / "held_out_grouped" / "manifest.csv", progress=False)
    eval_s = time.perf_counter() - t1

    def med(values):
        return float(np.median(values))

    by_prompt = {}
    for r in res.rows:
        by_prompt.setdefault(r["synthetic"].split("_")[0], []).append(r)
    summary = {
        "samples": len(res.rows), "training_images": res.n_reference, "held_out": res.holdout["n"],
        "thresholds": res.thresholds, "threshold_rules": res.threshold_rules, "warnings": res.warnings,
        "synthetic_flag_rate": res.synthetic_rate, "holdout_flag_rate": res.holdout_rate,
        "memorisation": [m for m in res.memorisation if m["modality"] == "all"],
        "median_nn_samples": {m: med([r[m] for r in res.rows]) for m in res.measures},
        "median_nn_held_out": {m: med(res.calibration[m]) for m in res.measures},
        "flagged_by_prompt": {p: f"{sum(r['flagged'] for r in rows)}/{len(rows)}" for p, rows in by_prompt.items()},
        "duplicates": {k: len(v) for k, v in res.duplicates.items()},
        "generation_seconds": round(gen_s, 1), "evaluation_seconds": round(eval_s, 1),
        "size": args.size, "threads": args.threads,
    }
    (out / "memorisation.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))


# the demo's JPEG 2000 bone scan is another file of the training scan: the same patient
_SAME_PATIENT = {"data/test_files/JPEG2000.dcm": "data/test_files/JPGExtended.dcm"}


def _group_of(origin: str) -> str:
    path = origin.split(" (")[0].split("/", 1)[1]
    return _SAME_PATIENT.get(path, path)


def _manifest(path, rows) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "source", "modality", "prompt", "group"])
        for name, modality, group in rows:
            w.writerow([name, "real", modality, "", group])


def write_sources(folder) -> None:
    """Every distinct decoded training image (slice/frame/region) at the native size, centred square."""
    from PIL import Image

    from studio.demo import data as demo_data

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    rows = []
    for view in demo_data.train_views():
        for image in demo_data.decode_view(view):
            x0, y0, x1, y1 = demo_data._box_pixels(image, view.box)
            side = min(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            px = demo_data._square(image, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2),
                                   demo_data.NATIVE_SIZE)
            Image.fromarray(px).save(folder / f"{view.key}_{n:03d}.png")
            rows.append((f"{view.key}_{n:03d}.png", view.modality, _SAME_PATIENT.get(view.relpath, view.relpath)))
            n += 1
    _manifest(folder / "manifest.csv", rows)


if __name__ == "__main__":
    main()
