"""Speed of `medisyn eval novelty`: N synthetic vs N reference images at 256 px, pixel+tiled_l2+ssim+phash.

    PYTHONPATH=$PWD OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_novelty.py \
        --n 10000 --data /tmp/medisyn-bench-novelty [--threads 2]

Writes `--n` reference and `--n` synthetic 256 x 256 PNGs (smooth random grey textures with a
random bright blob, 1 in 50 synthetic images a flipped copy of a reference) to `--data` once (reused
afterwards), then times `evaluation.novelty.run_novelty` with the measures pixel, tiled_l2, ssim, phash (not
the default pixel,patch: the exact patch search is meant for smaller reference sets; `--measures
pixel,patch` times it), stage by stage.

Scaling to more references: describing the reference set is linear in its size; the exact k-NN
search is linear in (synthetic x reference); the calibration matches min(reference, 1,000)
references against all of them (linear in reference); SSIM runs only on the 2 best candidates per
synthetic image (independent of the reference size). The script prints the measured stages and
an extrapolation to 100,000 references from them.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time


def write_images(folder: pathlib.Path, n: int, seed: int, copies_from: pathlib.Path | None = None) -> None:
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    have = len(list(folder.glob("*.png")))
    for i in range(have, n):
        if copies_from is not None and i % 50 == 0:
            src = np.asarray(Image.open(copies_from / f"{i:06d}.png"))
            Image.fromarray(np.ascontiguousarray(src[:, ::-1])).save(folder / f"{i:06d}.png")
            continue
        f = ndimage.gaussian_filter(rng.normal(size=(64, 64)), rng.uniform(1.5, 4.0))
        f = (f - f.mean()) / (f.std() + 1e-9) * 0.12 + 0.45
        y, x = np.mgrid[:64, :64]
        cy, cx, r = rng.uniform(10, 54, 2).tolist() + [rng.uniform(4, 14)]
        f += 0.3 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
        im = Image.fromarray(np.uint8(np.clip(f, 0, 1) * 255)).resize((256, 256), Image.Resampling.BICUBIC)
        im.save(folder / f"{i:06d}.png", compress_level=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10000, help="images per set")
    p.add_argument("--data", type=pathlib.Path, default=pathlib.Path("/tmp/medisyn-bench-novelty"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measures", default="pixel,tiled_l2,ssim,phash")
    args = p.parse_args()
    measures = tuple(m.strip() for m in args.measures.split(",") if m.strip())

    import shutil

    import torch

    from evaluation.novelty import run_novelty

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    ref, syn = args.data / f"ref{args.n}", args.data / f"syn{args.n}"
    t = time.perf_counter()
    write_images(ref, args.n, 1)
    write_images(syn, args.n, 2, copies_from=ref)
    prep = time.perf_counter() - t
    out = args.data / f"out{args.n}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    res = run_novelty(syn, ref, out, progress=False, measures=measures)
    total = time.perf_counter() - t
    st = res.timings
    describe_ref = st.get("describing reference images", 0.0)
    describe_syn = st.get("describing synthetic images", 0.0)
    calib = st.get("calibrating on held-out real images", 0.0)
    match = st.get("matching synthetic images", 0.0)
    # 100,000 references, same synthetic set: describe linear; calibration linear (1,000 queries x refs);
    # matching = search (linear in refs) + pair measures (constant): bound it by scaling all of it.
    scale = 100_000 / args.n
    extrap = describe_ref * scale + describe_syn + calib * scale + match * scale
    report = {
        "n_synthetic": args.n, "n_reference": args.n, "measures": measures, "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0], "prepare_seconds": round(prep, 1), "total_seconds": round(total, 1),
        "stages": {k: round(v, 1) for k, v in st.items()}, "flagged": res.n_flagged,
        "planted_copies": len(range(0, args.n, 50)),
        "extrapolated_seconds_100k_reference": round(extrap, 0),
    }
    print(json.dumps(report, indent=2))
    print(f"| {args.n:,} vs {args.n:,} at 256 px, {'+'.join(measures)}, {args.threads} threads | "
          f"{total:.0f} s | describe ref {describe_ref:.0f} s, syn {describe_syn:.0f} s, calibrate {calib:.0f} s, "
          f"match {match:.0f} s | ~{extrap / 60:.0f} min at 100,000 references (upper bound) |")


if __name__ == "__main__":
    main()
