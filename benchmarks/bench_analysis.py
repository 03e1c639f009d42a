"""Study statistics speed: full analysis of a large simulated study, and MRMC alone.

Run: .venv/bin/python benchmarks/bench_analysis.py [--repeat 5]
Figures go in docs/benchmarks.md (## Study statistics). Targets: full analysis of
100 readers × 2,000 cases × two tasks (≈ 400k responses) < 2 s; MRMC of 20 readers ×
1,000 cases × 2 generators < 1 s, on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def _timed(fn, repeat):
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return out, walls, cpus


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from studies.stats import mrmc
    from studies.stats.analysis import analyze
    from studies.stats.simulate import simulate_long

    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, numpy {np.__version__}")

    df = simulate_long(100, 2000, tasks=("turing", "alignment"), generators=("gen-a", "gen-b"),
                       modalities=("CXR", "CT", "MRI"), seed=0)
    print(f"simulated long table: {len(df):,} responses")
    w = time.perf_counter()
    result = analyze(df)  # first call: includes lazy imports inside scipy/statsmodels/krippendorff
    cold = time.perf_counter() - w
    result, walls, cpus = _timed(lambda: analyze(df), args.repeat)
    size = len(json.dumps(result, allow_nan=False))
    print(f"full analysis (100 readers x 2,000 cases x 2 tasks): first call {cold:.2f} s; "
          f"then best {min(walls):.2f} s / median {np.median(walls):.2f} s wall, "
          f"best {min(cpus):.2f} s CPU; JSON {size / 1e6:.1f} MB")

    # MRMC: 20 readers x 1,000 cases (500 real shared, 250 per generator) x 2 generators
    rng = np.random.default_rng(1)
    R, K = 20, 1000
    truth = np.r_[np.zeros(500, bool), np.ones(500, bool)]
    gen = np.r_[np.full(500, -1), np.repeat([0, 1], 250)]
    latent = rng.normal(0, 1, (R, K)) + truth * (0.8 + 0.2 * (gen == 1))
    ratings = np.digitize(latent, [-1, -0.4, 0, 0.4, 1]).astype(float) + 1
    member = np.stack([~truth | (gen == g) for g in (0, 1)])
    scores = np.broadcast_to(ratings, (2, R, K))
    res, walls, cpus = _timed(lambda: mrmc.mrmc_auc(scores, truth, member, treatments=["a", "b"]), args.repeat)
    d = res["comparison"]["random_readers"]["differences"]["a - b"]
    print(f"MRMC (20 readers x 1,000 cases x 2 generators): best {min(walls) * 1000:.0f} ms / median "
          f"{np.median(walls) * 1000:.0f} ms wall, best {min(cpus) * 1000:.0f} ms CPU "
          f"(AUC difference {d['difference']:.4f}, p = {d['p']:.3g})")

    # placement-value jackknife vs naive recomputation on a small study
    small_member = member[:, ::10]
    small = (scores[:, :5, ::10], truth[::10], small_member)
    (fast, fjk), wf, _ = _timed(lambda: mrmc.jackknife_auc(*small), 3)
    (slow, sjk), ws, _ = _timed(lambda: mrmc.jackknife_auc_naive(*small), 1)
    print(f"jackknife, 5 readers x 100 cases x 2 generators: placement values {min(wf) * 1000:.1f} ms, "
          f"naive {min(ws) * 1000:.0f} ms, max |difference| {np.abs(fjk - sjk).max():.1e}")


if __name__ == "__main__":
    main()
