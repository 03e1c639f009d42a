"""Leak-audit benchmark: false-flag rate on clean splits, detection rate of planted leaks.

A population of synthetic-looking greyscale "scans" in three modalities (textured bodies on a
dark background, each modality with its own brightness, contrast, noise and structure) goes
through the real stimulus pipeline (`studies.imaging.stimuli.render_stimulus`, 128 px). Each
replicate labels it at random: per modality 20 real and 2 x 20 synthetic (two generators), so
the audit tests 10 strata (pooled, 3 modalities, 6 modality x generator).

- clean: nothing planted; any flag is a false flag (target <= 5%).
- planted kinds, each applied to the synthetic images only:
  tint       SD-like colour cast: R +1..4 and B -1..3 levels (varying per image), all strata;
  range      intensities squeezed into [6, 249] of 255 (no true black or white), all strata;
  mark       a small bright hatched mark (10 x 4 % of the side) in the lower right corner;
  bytes      ONE modality's (CT) synthetic images with Gaussian noise of 3 grey levels:
             barely visible, but a PNG 5% larger (d = +1.0 in the byte count the browser
             sees), within one stratum;
  bright     +0.05 intensity for ONE generator in ONE modality (a stratum-only leak).
Features of the unplanted images are cached across replicates (the labels change, the pixels
do not); planted images are rendered per replicate.

Run: .venv/bin/python benchmarks/bench_audit.py [--quick] [--clean N] [--planted N]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np
from scipy import ndimage

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studies import audit  # noqa: E402
from studies.audit import AuditItem, audit_leaks  # noqa: E402
from studies.imaging.stimuli import render_stimulus  # noqa: E402

SIZE = 128
MODALITIES = {  # (background, body brightness, contrast, smoothing, noise)
    "CT": (0.02, 0.45, 0.12, 2.5, 0.015),
    "xray": (0.10, 0.55, 0.18, 4.0, 0.010),
    "MRI": (0.00, 0.35, 0.20, 1.5, 0.025),
}
PER_MODALITY = (20, 20, 20)  # real, generator a, generator b
KINDS = ("tint", "range", "mark", "bytes", "bright")
BYTES_NOISE = 3.0  # grey levels of the "bytes" plant (--bytes-noise)


def scan(rng, modality: str, n: int = 96) -> np.ndarray:
    """One grey image in [0, 1]: an elliptical textured body on a background."""
    bg, level, contrast, smooth, noise = MODALITIES[modality]
    yy, xx = np.mgrid[0:n, 0:n] / n - 0.5
    a, b = rng.uniform(0.3, 0.45), rng.uniform(0.3, 0.45)
    cx, cy = rng.normal(0, 0.03, 2)
    body = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 < 1
    field = ndimage.gaussian_filter(rng.normal(size=(n, n)), smooth * rng.uniform(0.7, 1.4))
    field = (field - field.mean()) / (field.std() + 1e-9)
    img = np.where(body, level * rng.uniform(0.8, 1.2) + contrast * rng.uniform(0.7, 1.3) * field,
                   bg + 0.01 * field)
    img = ndimage.gaussian_filter(img, 0.6) + rng.normal(0, noise * rng.uniform(0.5, 1.5), img.shape)
    return np.clip(img, 0.0, 1.0)


def population(seed: int):
    rng = np.random.default_rng(seed)
    pop = []
    for m in MODALITIES:
        for _ in range(sum(PER_MODALITY)):
            pop.append((m, scan(rng, m)))
    return pop


def plant(kind: str, img: np.ndarray, rng, modality: str, generator: str) -> np.ndarray | None:
    """The planted version of a synthetic image, or None when this kind leaves it alone."""
    if kind == "tint":
        r = np.clip(img + rng.integers(1, 5) / 255, 0, 1)
        b = np.clip(img - rng.integers(1, 4) / 255, 0, 1)
        return np.stack([r, img, b], axis=-1)
    if kind == "range":
        return 6 / 255 + img * (243 / 255)
    if kind == "mark":
        out = img.copy()
        n = img.shape[0]
        h, w = max(2, round(0.04 * n)), max(4, round(0.10 * n))
        y0, x0 = n - h - round(0.04 * n), n - w - round(0.04 * n)
        patch = np.zeros((h, w))
        patch[:, ::2] = 1.0  # hatched, like text strokes
        region = out[y0:y0 + h, x0:x0 + w]
        out[y0:y0 + h, x0:x0 + w] = np.where(patch > 0, 0.95, region)
        return out
    if kind == "bytes":
        if modality != "CT":
            return None
        return np.clip(img + rng.normal(0, BYTES_NOISE / 255, img.shape), 0, 1)
    if kind == "bright":
        if not (modality == "xray" and generator == "b"):
            return None
        return np.clip(img + 0.05, 0, 1)
    raise ValueError(kind)


class FeatureCache:
    """Memoise `stimulus_features` by PNG bytes (pixels repeat across replicates)."""

    def __init__(self):
        self.cache = {}
        self.inner = audit.stimulus_features

    def __call__(self, png, w=None, h=None):
        key = (png, w, h)
        if key not in self.cache:
            self.cache[key] = self.inner(png, w, h)
        return self.cache[key]


def items_for(pop, pngs, rng, kind: str | None):
    """One replicate: random labels within each modality, planted images for `kind`."""
    items = []
    for m in MODALITIES:
        idx = [i for i, (mm, _) in enumerate(pop) if mm == m]
        order = rng.permutation(idx)
        n_real, n_a, _ = PER_MODALITY
        for j, i in enumerate(order):
            source = "real" if j < n_real else "synthetic"
            gen = "" if source == "real" else ("a" if j < n_real + n_a else "b")
            png = pngs[i]
            if kind and source == "synthetic":
                planted = plant(kind, pop[i][1], rng, m, gen)
                if planted is not None:
                    png = render_stimulus(planted.astype(np.float32), SIZE)
            items.append(AuditItem(source, "PNG", 96, 96, "L", 8, png, modality=m, generator=gen))
    return items


def run(n_clean: int, n_planted: int, seed: int, kinds=KINDS) -> dict:
    pop = population(seed)
    pngs = [render_stimulus(img.astype(np.float32), SIZE) for _, img in pop]
    cache = FeatureCache()
    audit.stimulus_features = cache
    rng = np.random.default_rng(seed + 1)
    out = {"clean": {}, "planted": {}}
    t0 = time.perf_counter()
    flags, strata_flags, n_strata, which = 0, 0, 0, {}
    for _ in range(n_clean):
        rep = audit_leaks(items_for(pop, pngs, rng, None), seed=int(rng.integers(1 << 30)))
        tested = [s for s in rep.strata if s["tested"]]
        n_strata = len(tested)
        flags += rep.flagged
        strata_flags += sum(s["flagged"] for s in tested)
        for r in rep.reasons:
            key = r.split(" is ")[0] if " is " in r else r[:60]
            which[key] = which.get(key, 0) + 1
    out["clean"] = {"splits": n_clean, "flagged": flags, "rate": flags / max(n_clean, 1),
                    "strata_tested": n_strata, "stratum_flags": strata_flags,
                    "false_reasons": dict(sorted(which.items(), key=lambda kv: -kv[1])[:6]),
                    "seconds": round(time.perf_counter() - t0, 1)}
    for kind in kinds:
        t0 = time.perf_counter()
        hits, where, causes = 0, {}, {}
        for _ in range(n_planted):
            rep = audit_leaks(items_for(pop, pngs, rng, kind), seed=int(rng.integers(1 << 30)))
            hits += rep.flagged
            for s in rep.strata:
                if s.get("flagged"):
                    where[s["name"]] = where.get(s["name"], 0) + 1
            for r in rep.reasons:
                cue = r.split("] ")[-1].split(" is ")[0].split(":")[0][:50]
                causes[cue] = causes.get(cue, 0) + 1
        out["planted"][kind] = {"replicates": n_planted, "detected": hits,
                                "rate": hits / max(n_planted, 1),
                                "flagged_strata": dict(sorted(where.items(), key=lambda kv: -kv[1])[:4]),
                                "causes": dict(sorted(causes.items(), key=lambda kv: -kv[1])[:4]),
                                "seconds": round(time.perf_counter() - t0, 1)}
    audit.stimulus_features = cache.inner
    return out


def main(argv=None):
    global BYTES_NOISE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 clean splits, 10 per planted kind")
    ap.add_argument("--clean", type=int, default=400)
    ap.add_argument("--planted", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=pathlib.Path)
    ap.add_argument("--kinds", default=",".join(KINDS), help="planted kinds to run")
    ap.add_argument("--bytes-noise", type=float, default=BYTES_NOISE,
                    help="grey levels of noise for the 'bytes' plant")
    args = ap.parse_args(argv)
    BYTES_NOISE = args.bytes_noise
    if args.quick:
        args.clean, args.planted = 40, 10
    t0 = time.perf_counter()
    res = run(args.clean, args.planted, args.seed, tuple(args.kinds.split(",")))
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}"
    res["total_seconds"] = round(time.perf_counter() - t0, 1)
    c = res["clean"]
    if c["splits"]:
        print(f"clean random splits: {c['flagged']}/{c['splits']} flagged = {c['rate']:.1%} "
              f"(target <= 5%; {c['strata_tested']} strata tested per study; "
              f"{c['stratum_flags']} stratum flags in all)")
    if c["false_reasons"]:
        print("  false-flag causes:", c["false_reasons"])
    for kind, p in res["planted"].items():
        print(f"planted {kind:<7}: detected {p['detected']}/{p['replicates']} = {p['rate']:.0%}  "
              f"(causes: {p['causes']})")
    print(f"total {res['total_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
