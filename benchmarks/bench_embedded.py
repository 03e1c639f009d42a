"""Speed of the embedded model: 4 images at native size with the default settings.

    .venv/bin/python benchmarks/bench_embedded.py [--repeats 5] [--threads 2]

Loads ``embedded`` through ``model_runtime.loading.load`` (the studio's path), warms up once, then
times ``model_runtime.generation.generate`` for one request of 4 images (one batch), ``--repeats``
times. Prints a markdown row for docs/benchmarks.md (## Embedded model). Target: <= 5 s on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=4)
    args = p.parse_args()

    import torch

    from model_runtime.generation import GenerationRequest, generate
    from model_runtime.loading import load
    from studio.demo.data import MODALITIES
    from studio.demo.embedded_model import read_defaults

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    loaded = load("embedded", options={"hash_weights": False})
    load_s = time.perf_counter() - t0
    defaults = read_defaults(loaded.path)
    prompts = [m.prompt for m in MODALITIES.values()]

    def run(i: int) -> float:
        request = GenerationRequest(prompt=prompts[i % len(prompts)], num_images=args.images, seed=i,
                                    steps=defaults.steps, guidance_scale=defaults.guidance_scale)
        t = time.perf_counter()
        images = generate(loaded, request)
        elapsed = time.perf_counter() - t
        assert len(images) == args.images and images[0].image.size == (defaults.size, defaults.size)
        return elapsed

    run(0)  # warm-up (first call allocates and picks kernels)
    times = [run(i + 1) for i in range(args.repeats)]
    load1 = os.getloadavg()[0]
    print(f"load {load_s:.2f} s; {args.images} images {defaults.size}x{defaults.size}, {defaults.steps} steps "
          f"{defaults.scheduler}, guidance {defaults.guidance_scale}, {args.threads} threads; "
          f"load average {load1:.1f}")
    print(f"| {args.images} images at {defaults.size}x{defaults.size}, {defaults.steps} steps, guidance "
          f"{defaults.guidance_scale} | {statistics.median(times):.2f} s | {min(times):.2f} s | "
          f"{max(times):.2f} s | {load_s:.1f} s |")


if __name__ == "__main__":
    main()
