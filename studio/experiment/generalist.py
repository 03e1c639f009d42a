"""One generalist against one specialist per modality at equal total compute (MediSyn's claims 1-2).

    medisyn experiment generalist --data MIXTURE --budget STEPS --out DIR

The generalist trains (``model_runtime.train``) on the whole mixture for ``budget`` UNet steps
(and ``budget`` VAE steps); each of the M specialists trains on its modality's sources alone for
``budget // M`` steps of each, so the total compute (steps x batch) is the same. Every model then
generates ``per_modality`` images per modality from that modality's real captions (one seed per
image), compared with the same number of real images of the modality on:

  - FID and KID on the studio's image descriptors (``model_quality.features``: thumbnail,
    intensity and gradient histograms — not Inception features, so the values are comparable
    between arms here, not with published FIDs);
  - precision and recall (k-NN balls, Kynkäänniemi et al.) on the same descriptors;
  - the modality classifier's accuracy: a classifier fitted on real images of all modalities
    (``model_quality.fit_reference``, its 5-fold accuracy on real images reported beside it)
    says which modality each generated image looks like;
  - cost: UNet steps x batch, wall time, parameters.

The reference images are drawn from the mixture itself (the training distribution): with a
mixture of a few hundred images this measures fit, not generalisation. ``winner`` per metric is
descriptive only (no test: one training run per arm).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time

import numpy as np


@dataclasses.dataclass
class GeneralistResult:
    out_dir: pathlib.Path
    modalities: list[str]
    rows: list[dict]        # one per (arm, modality)
    cost: dict              # per arm
    classifier_cv_accuracy: float


def _sub_mixture(mixture, names: list[str], modality: str, path: pathlib.Path) -> pathlib.Path:
    lines = [f'balance = "{mixture.balance}"']
    for source, name in zip(mixture.sources, names):
        if name == modality:
            lines += ["[[source]]", f"path = {json.dumps(str(source.path.resolve()))}",
                      f"weight = {source.weight}", f"caption = {json.dumps(source.caption)}",
                      f"modality = {json.dumps(name)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _real_by_modality(sampler, size: int, per_modality: int, seed: int) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``per_modality`` real images and captions of every modality, drawn from its sources."""
    from model_runtime import mixture as mx

    out = {}
    for modality in sorted(set(sampler.modality_names)):
        keep = [i for i, n in enumerate(sampler.modality_names) if n == modality]
        sub = mx.Mixture([dataclasses.replace(sampler.mixture.sources[i], modality=modality) for i in keep], "weight")
        sub_sampler = mx.MixtureSampler(sub, seed=seed + 7919)
        records = sub_sampler.batch(1, per_modality)
        images = np.stack([np.asarray(r.image.resize((size, size))) for r in records])
        out[modality] = (images, [r.caption for r in records])
    return out


def run_generalist(data, out_dir, budget: int, *, config=None, per_modality: int = 24, seed: int = 0,
                   sample_steps: int = 20, log=print) -> GeneralistResult:
    """Train the arms, generate, compare per modality; writes ``generalist.json`` and ``generalist.md``."""
    from evaluation.fidelity import fid_kid, prdc
    from model_runtime import loading
    from model_runtime import mixture as mx
    from model_runtime import train as train_mod
    from model_runtime.generation import GenerationRequest, generate
    from studio.demo import model_quality

    if budget < 2:
        raise ValueError("--budget must be at least 2 steps")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mixture = mx.read_mixture(data)
    sampler = mx.MixtureSampler(mixture, seed=seed)
    modalities = sorted(set(sampler.modality_names))
    if len(modalities) < 2:
        raise ValueError(f"{data}: the mixture covers one modality ({modalities}); a generalist needs two or more")
    base = config or train_mod.TrainConfig()
    arms = {"generalist": (pathlib.Path(data), budget)}
    share = max(1, budget // len(modalities))
    for m in modalities:
        arms[f"specialist:{m}"] = (_sub_mixture(mixture, sampler.modality_names, m,
                                                out_dir / f"mixture-{m.replace(' ', '_')}.toml"), share)

    real = _real_by_modality(sampler, base.size, per_modality, seed)
    all_real = np.concatenate([real[m][0] for m in modalities])
    labels = [m for m in modalities for _ in range(len(real[m][0]))]
    reference = model_quality.fit_reference(all_real, labels, seed=seed)
    log(f"modality classifier on real images: 5-fold accuracy {reference.cv_accuracy:.2f}")

    cost, models = {}, {}
    for arm, (arm_data, steps) in arms.items():
        cfg = dataclasses.replace(base, vae_steps=steps, unet_steps=steps, seed=seed)
        t0 = time.perf_counter()
        result = train_mod.train(arm_data, out_dir / arm.replace(":", "-").replace(" ", "_"), cfg, log=lambda m: None)
        models[arm] = result.out_dir
        loaded = loading.load(result.out_dir, device="cpu")
        params = sum(p.numel() for name in ("unet", "vae", "text_encoder")
                     for p in getattr(loaded.pipe, name).parameters())
        cost[arm] = {"unet_steps": steps, "vae_steps": steps, "unet_samples": steps * cfg.unet_batch,
                     "wall_seconds": round(time.perf_counter() - t0, 1), "parameters": int(params)}
        log(f"{arm}: {steps} steps in {cost[arm]['wall_seconds']} s")
        del loaded

    rows = []
    for arm, folder in models.items():
        loaded = loading.load(folder, device="cpu")
        for m in modalities:
            if arm.startswith("specialist:") and arm != f"specialist:{m}":
                continue
            images, captions = real[m]
            fake = []
            for i, caption in enumerate(captions):
                req = GenerationRequest(prompt=caption, seed=seed + i, steps=sample_steps, guidance_scale=3.0,
                                        width=base.size, height=base.size, num_images=1)
                fake.append(np.asarray(generate(loaded, req)[0].image.convert("RGB")))
            fake = np.stack(fake)
            fr, ff = model_quality.features(images), model_quality.features(fake)
            quality = fid_kid(fr, ff, kid_subsets=20, seed=seed)
            pr = prdc(fr, ff, k=3)
            score = model_quality.score(reference, m, captions[0], fake)
            rows.append({"arm": "generalist" if arm == "generalist" else "specialist", "modality": m, "n": len(fake),
                         "fid": quality["fid"], "kid": quality["kid_mean"], "precision": pr["precision"],
                         "recall": pr["recall"], "classifier_accuracy": score.recognised})
        del loaded
    result = GeneralistResult(out_dir, modalities, rows, cost, reference.cv_accuracy)
    (out_dir / "generalist.json").write_text(json.dumps({
        "data": str(data), "budget": budget, "per_modality": per_modality, "seed": seed,
        "config": dataclasses.asdict(base), "modalities": modalities, "rows": rows, "cost": cost,
        "classifier_cv_accuracy": reference.cv_accuracy}, indent=1) + "\n", encoding="utf-8")
    (out_dir / "generalist.md").write_text(format_result(result) + "\n", encoding="utf-8")
    return result


def format_result(result: GeneralistResult) -> str:
    lines = ["| modality | arm | FID ↓ | KID ↓ | precision ↑ | recall ↑ | modality classifier ↑ |",
             "|---|---|---|---|---|---|---|"]
    for m in result.modalities:
        for row in (r for r in result.rows if r["modality"] == m):
            lines.append(f"| {m} | {row['arm']} | {row['fid']:.3g} | {row['kid']:.3g} | {row['precision']:.2f} | "
                         f"{row['recall']:.2f} | {row['classifier_accuracy']:.2f} |")
    lines += ["", "| arm | UNet steps | samples (steps × batch) | wall s | parameters |", "|---|---|---|---|---|"]
    for arm, c in result.cost.items():
        lines.append(f"| {arm} | {c['unet_steps']} | {c['unet_samples']} | {c['wall_seconds']} | {c['parameters']:,} |")
    total = sum(c["wall_seconds"] for a, c in result.cost.items() if a != "generalist")
    lines.append(f"\nSpecialists together: {total:.0f} s wall; real-image modality classifier "
                 f"5-fold accuracy {result.classifier_cv_accuracy:.2f}.")
    return "\n".join(lines)


def build_demo_mixture(folder, *, samples: int = 240, size: int = 32, seed: int = 0) -> pathlib.Path:
    """A mixture of the shipped public images (``demo_data``): one manifest per modality."""
    import csv

    from studies.imaging.manifest import write_manifest
    from studio.demo import data as demo_data

    folder = pathlib.Path(folder)
    demo_data.build_training_set(folder / "data", size=size, samples=samples, seed=seed)
    with open(folder / "data" / "captions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    lines = []
    for modality in sorted({r["modality"] for r in rows}):
        name = f"{modality.replace(' ', '_')}.csv"
        write_manifest(folder / "data" / name, [r for r in rows if r["modality"] == modality],
                       columns=("path", "caption"))
        lines += ["[[source]]", f'path = "data/{name}"', f"modality = {json.dumps(modality)}"]
    (folder / "mixture.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "mixture.toml"
