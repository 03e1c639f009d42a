"""Compute cost of one LoRA fine-tuning run (`medisyn model finetune`) and of the augmentation demo.

    .venv/bin/python benchmarks/bench_finetune.py lora [--steps 200] [--images 64] [--rank 8]
    .venv/bin/python benchmarks/bench_finetune.py augment [--repeats 3] [--n-real 30] [--amounts 30,60]

`lora` fine-tunes the embedded model (assets/medisyn-mini, the only real text-to-image pipeline
available offline) on crops of the shipped training views, one torch thread, and prints wall
time, seconds per step, peak resident memory and the trainable parameter count (also in the
run's training.json). `augment` runs `medisyn experiment augment-demo` and prints the summary.
Peak memory is the process's ru_maxrss (Linux): it includes Python, torch and the pipeline.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def lora(args) -> None:
    import torch

    from model_runtime.finetune import FinetuneConfig, finetune
    from studio.demo import data as demo_data

    torch.set_num_threads(1)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="bench-finetune-"))
    demo_data.build_training_set(work / "data", samples=args.images, seed=0)
    cfg = FinetuneConfig(steps=args.steps, rank=args.rank, batch_size=args.batch_size, lr=1e-4,
                         checkpoint_every=args.steps, validation_steps=20)
    t0 = time.perf_counter()
    result = finetune("embedded", work / "data", work / "out", cfg, device="cpu", progress=False, log=print)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"steps": result.steps, "images": args.images, "rank": args.rank, "batch_size": args.batch_size,
                      "trainable_parameters": result.trainable_parameters,
                      "training_loop_seconds": result.seconds, "seconds_per_step": round(result.seconds / result.steps, 3),
                      "wall_seconds_with_loading_and_encoding": round(wall, 1), "peak_rss_mb": round(peak),
                      "first_loss": result.losses[0], "final_loss": result.final_loss,
                      "lora_file_kb": round(result.weights.stat().st_size / 1024, 1), "out": str(work / "out")}, indent=1))


def augment(args) -> None:
    from evaluation.augment import AugmentConfig
    from studio.experiment.augment_demo import run_demo

    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="bench-augment-"))
    cfg = AugmentConfig(n_real=args.n_real, synthetic=tuple(int(v) for v in args.amounts.split(",")),
                        repeats=args.repeats, seed=0, synthetic_only=True)
    t0 = time.perf_counter()
    result = run_demo(work, cfg, pool=args.pool, log=print, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"summary": result.summary, "comparisons": result.comparisons,
                      "wall_seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(peak),
                      "out": str(work)}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("lora")
    a.add_argument("--steps", type=int, default=200)
    a.add_argument("--images", type=int, default=64)
    a.add_argument("--rank", type=int, default=8)
    a.add_argument("--batch-size", type=int, default=4)
    a.add_argument("--work")
    b = sub.add_parser("augment")
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--n-real", type=int, default=30)
    b.add_argument("--amounts", default="30,60")
    b.add_argument("--pool", type=int, default=240)
    b.add_argument("--work")
    args = p.parse_args()
    {"lora": lora, "augment": augment}[args.what](args)


if __name__ == "__main__":
    main()
