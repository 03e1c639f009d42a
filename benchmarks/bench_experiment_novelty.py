"""Error rates of the experiment's novelty gate (`studio.experiment.screen.calibrated_novelty`) on planted cases.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_experiment_novelty.py \
        [--samples 180] [--repeats 3] [--size 128]

Real images: `studio.demo.data`'s training crops (all six modalities) and its held-out demo images,
one group per source file (slices, frames and regions of one file stay together). Each repeat splits them by group (`split_groups`, 30 % of each
modality's groups held out, a new seed per repeat) and runs the pipeline's rule: one call of
`evaluation.novelty.run_novelty` with the held-out part as `holdout` (split-conformal thresholds at
alpha 0.05, the pipeline's default measures; the held-out flag rate leaves each held-out group out of
its own calibration).
"Synthetic" images are planted near-copies of reference images, several of each kind:

  mirror+noise   mirrored, +6 grey levels, Gaussian noise sigma 2
  shift 2px      rolled 2 pixels sideways (of 64)
  crop 90%       the central 90 % scaled back up
  rotate 3deg    rotated 3 degrees (edges filled by the nearest pixel)
  blend 70/30    70 % this image, 30 % another reference image

Prints per kind the miss rate (planted copies not flagged) and the held-out false-flag rate, with
the counts; JSON with --json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import numpy as np
from PIL import Image

KINDS = ("mirror+noise", "shift 2px", "crop 90%", "rotate 3deg", "blend 70/30")


def plant(kind: str, a: np.ndarray, b: np.ndarray, rng) -> np.ndarray:
    x = a.astype(np.float32)
    if kind == "mirror+noise":
        x = x[:, ::-1] + 6 + rng.normal(0, 2, x.shape)
    elif kind == "shift 2px":
        x = np.roll(x, 2, axis=1)
    elif kind == "crop 90%":
        h, w = x.shape[:2]
        dy, dx = int(h * 0.05), int(w * 0.05)
        img = Image.fromarray(a[dy:h - dy, dx:w - dx]).resize((w, h), Image.Resampling.BICUBIC)
        x = np.asarray(img).astype(np.float32)
    elif kind == "rotate 3deg":
        from scipy import ndimage

        x = ndimage.rotate(x, 3, axes=(0, 1), reshape=False, mode="nearest")
    elif kind == "blend 70/30":
        x = 0.7 * x + 0.3 * b.astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=180, help="training crops (spread over six modalities)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-kind", type=int, default=8)
    ap.add_argument("--size", type=int, default=128, help="novelty size (the pipeline's default)")
    ap.add_argument("--alpha", type=float, default=0.05, help="target held-out flag rate (the pipeline's default)")
    ap.add_argument("--json", type=pathlib.Path, default=None)
    args = ap.parse_args()

    from studio.demo import data as demo_data
    from evaluation.novelty import DEFAULT_MEASURES, wilson
    from studio.experiment.example import demo_group
    from studio.experiment.screen import calibrated_novelty
    from studio.experiment.split import split_groups

    results = []
    with tempfile.TemporaryDirectory(prefix="medisyn-bench-expnov-") as tmp:
        tmp = pathlib.Path(tmp)
        info = demo_data.build_training_set(tmp / "train", samples=args.samples, seed=0)
        rows = []
        import csv

        views = {v.key: v for v in demo_data.train_views() + demo_data.demo_views()}

        def source(view):  # one group per acquisition: its slices, frames and regions stay together
            return demo_group(views[view])

        for r in csv.DictReader(open(info.out_dir / "captions.csv", encoding="utf-8")):
            rows.append({"path": str(info.out_dir / r["path"]), "name": r["path"], "modality": r["modality"],
                         "group": source(r["view"]), "prompt": r["caption"]})
        for im in demo_data.build_demo_set(tmp / "demo"):
            rows.append({"path": str(im.path), "name": f"demo/{im.path.name}", "modality": im.modality,
                         "group": source(im.view), "prompt": im.prompt})
        for rep in range(args.repeats):
            rng = np.random.default_rng(100 + rep)
            held = split_groups(rows, 0.3, seed=rep)
            reference = [r for r in rows if r["group"] not in held]
            holdout = [r for r in rows if r["group"] in held]
            synthetic, truth = [], {}
            pdir = tmp / f"planted{rep}"
            pdir.mkdir()
            for kind in KINDS:
                for j in rng.choice(len(reference), size=args.per_kind, replace=False):
                    a = np.asarray(Image.open(reference[j]["path"]).convert("RGB"))
                    b = np.asarray(Image.open(reference[int(rng.integers(len(reference)))]["path"]).convert("RGB"))
                    name = f"{kind.replace(' ', '_').replace('/', '-')}_{len(synthetic):04d}.png"
                    Image.fromarray(plant(kind, a, b, rng)).save(pdir / name)
                    synthetic.append({"path": str(pdir / name), "name": name, "modality": reference[j]["modality"],
                                      "group": reference[j]["group"], "prompt": ""})
                    truth[name] = kind
            t0 = time.perf_counter()
            res = calibrated_novelty(synthetic, reference, holdout, tmp / f"out{rep}",
                                     measures=DEFAULT_MEASURES, alpha=args.alpha,
                                     size=args.size, seed=rep)
            seconds = time.perf_counter() - t0
            flagged = {r["synthetic"] for r in res["rows"] if r["flagged"]}
            per_kind = {k: {"planted": sum(v == k for v in truth.values()),
                            "missed": sum(v == k and n not in flagged for n, v in truth.items())} for k in KINDS}
            results.append({"repeat": rep, "reference": len(reference), "holdout_groups": res["holdout_groups"],
                            "holdout_test": res["holdout_n"], "holdout_flagged": len(res["holdout_flagged"]),
                            "per_kind": per_kind, "thresholds": res["thresholds"], "seconds": seconds})
            print(f"repeat {rep}: {len(reference)} reference, {res['holdout_n']} held out in {res['holdout_groups']} "
                  f"groups; false flags {len(res['holdout_flagged'])}/{res['holdout_n']}; "
                  + "; ".join(f"{k} missed {v['missed']}/{v['planted']}" for k, v in per_kind.items())
                  + f"  ({seconds:.1f} s)")
    tot_test = sum(r["holdout_test"] for r in results)
    tot_ff = sum(r["holdout_flagged"] for r in results)
    def ci(x, n):
        lo, hi = wilson(x, n)["ci_wilson"]
        return f"{x}/{n} = {x / n:.1%} (95% CI {lo:.1%}-{hi:.1%})"

    print(f"held-out false-flag rate: {ci(tot_ff, tot_test)}")
    for k in KINDS:
        planted = sum(r["per_kind"][k]["planted"] for r in results)
        missed = sum(r["per_kind"][k]["missed"] for r in results)
        print(f"miss rate {k:<13} {ci(missed, planted)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
