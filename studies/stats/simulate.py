"""Simulated reader studies in the `long` export layout (tests, benchmarks, demos).

Turing ratings follow a binormal model: a reader's latent evidence for "synthetic" is
N(0, 1) for a real image and N(d_r + c_k, 1) for a synthetic one, where d_r (reader
skill) ~ N(separation, reader_sd) and c_k is a per-case difficulty; the evidence is cut at
fixed thresholds into the 6-point scale. Likert ratings are a case quality (lower for
synthetic images by `likert_gap`) plus a reader bias plus noise, rounded into 1..5.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

TURING_CUTS = np.array([-1.0, -0.4, 0.0, 0.4, 1.0])  # 6 bins → ratings 1..6


def simulate_long(n_readers: int = 5, n_cases: int = 60, *, tasks=("turing",), generators=("gen-a",),
                  modalities=("CXR",), synthetic_fraction: float = 0.5, separation: float = 0.8,
                  reader_sd: float = 0.3, case_sd: float = 0.3, likert_gap: float = 0.5,
                  repeat_fraction: float = 0.0, training_cases: int = 0, missing_fraction: float = 0.0,
                  groups=None, seed: int = 0, study: str = "sim") -> pd.DataFrame:
    """A long table of n_readers × n_cases reads per task (plus training/repeat rows)."""
    rng = np.random.default_rng(seed)
    K = n_cases + training_cases
    is_syn = np.zeros(K, dtype=bool)
    is_syn[rng.permutation(K)[: int(round(synthetic_fraction * K))]] = True
    case_ids = np.array([f"c{k:05d}" for k in range(K)])
    gen = np.where(is_syn, np.asarray(generators, dtype=object)[rng.integers(len(generators), size=K)], None)
    modality = np.asarray(modalities, dtype=object)[rng.integers(len(modalities), size=K)]
    group = np.asarray(groups, dtype=object)[rng.integers(len(groups), size=K)] if groups else None
    training = np.zeros(K, dtype=bool)
    training[:training_cases] = True
    difficulty = rng.normal(0, case_sd, K)
    quality = rng.normal(3.6, 0.6, K) - likert_gap * is_syn
    skill = rng.normal(separation, reader_sd, n_readers)
    bias = rng.normal(0, 0.3, n_readers)
    readers = np.array([f"reader{r + 1:03d}" for r in range(n_readers)])
    start = pd.Timestamp("2025-01-01T09:00:00Z")
    frames = []
    rr, kk = np.meshgrid(np.arange(n_readers), np.arange(K), indexing="ij")
    rr, kk = rr.ravel(), kk.ravel()
    keep = rng.random(rr.size) >= missing_fraction
    keep |= training[kk]
    rr, kk = rr[keep], kk[keep]
    n_rep = int(round(repeat_fraction * n_cases))
    for ti, task in enumerate(tasks):
        for rep in (False, True):
            if rep:
                if n_rep == 0:
                    continue
                chosen = rng.permutation(np.arange(training_cases, K))[:n_rep]
                sel = np.isin(kk, chosen)
                r, k = rr[sel], kk[sel]
            else:
                r, k = rr, kk
            noise = rng.normal(0, 1, r.size)
            if task == "turing":
                latent = noise + is_syn[k] * (skill[r] + difficulty[k])
                rating = np.searchsorted(TURING_CUTS, latent) + 1
                response = np.where(rating >= 4, "synthetic", "real")
                truth = np.where(is_syn[k], "synthetic", "real")
            else:
                rating = np.clip(np.rint(quality[k] + bias[r] + 0.7 * noise), 1, 5).astype(int)
                response = rating.astype(str)
                truth = np.full(r.size, None, dtype=object)
            seconds = (ti * K + k + (K * len(tasks) if rep else 0)) * 7 + r
            frame = pd.DataFrame({
                "study": study, "reader": readers[r], "case": case_ids[k], "task": task,
                "source": np.where(is_syn[k], "synthetic", "real"), "generator": gen[k],
                "modality": modality[k], "prompt": "simulated prompt", "truth": truth,
                "response": response, "rating": rating,
                "duration_ms": rng.integers(800, 9000, r.size),
                "answered_at": (start + pd.to_timedelta(seconds, unit="s")).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "training": training[k], "repeat": rep,
            })
            if group is not None:
                frame["group"] = group[k]
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)
