"""Build the embedded demo model ``assets/medisyn-mini``: data set, training, defaults, figures.

``train_embedded_model(out_dir)`` is what ``medisyn model train`` runs: it writes the training set
from the public images of installed packages (``studio.demo.data``), trains the pipeline from
scratch (``model_runtime.train``) and records the default generation settings next to the weights
(``medisyn.json``), which the demo study, the quality test and the benchmark read.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import tempfile

from studio.demo import data as demo_data

DEFAULTS_FILE = "medisyn.json"
# Default sampling: DPM-Solver++ (the pipeline's own scheduler), few steps, moderate guidance.
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 3.0


# demo_data's modality keys -> the modality names of the presets / registry
MODALITY_NAMES = {"ct": "CT", "mri": "MRI", "ultrasound": "ultrasound", "nuclear": "nuclear medicine",
                  "fundus": "fundus photograph", "histology": "histology"}


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    size: int = demo_data.NATIVE_SIZE
    scheduler: str = "DPMSolverMultistepScheduler"
    prompts: dict = dataclasses.field(default_factory=lambda: {k: m.prompt for k, m in demo_data.MODALITIES.items()})
    # what the model declares it knows (model_runtime.modalities reads this for models outside
    # the registry); names as in assets/prompt_presets.json
    modalities: list = dataclasses.field(default_factory=lambda: [MODALITY_NAMES[k] for k in demo_data.MODALITIES])


def read_defaults(model_dir) -> GenerationDefaults:
    """The model folder's ``medisyn.json`` (the built-in defaults when it has none)."""
    path = pathlib.Path(model_dir) / DEFAULTS_FILE
    if not path.is_file():
        return GenerationDefaults()
    data = json.loads(path.read_text(encoding="utf-8"))
    fields = {f.name for f in dataclasses.fields(GenerationDefaults)}
    return GenerationDefaults(**{k: v for k, v in data.items() if k in fields})


def write_defaults(model_dir, defaults: GenerationDefaults | None = None) -> pathlib.Path:
    path = pathlib.Path(model_dir) / DEFAULTS_FILE
    data = dataclasses.asdict(defaults or GenerationDefaults())
    data["note"] = ("Default generation settings of this model (read by studio.demo.study, the quality test "
                    "and benchmarks/bench_embedded.py) and the modalities it declares "
                    "(model_runtime.modalities); diffusers ignores this file.")
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def train_embedded_model(out_dir, *, minutes: float | None = None, seed: int = 0, samples: int = 3000,
                         data_dir=None, vae_steps: int | None = None, unet_steps: int | None = None,
                         threads: int = 1, log=print):
    """Build the training set and train the embedded model into ``out_dir`` (replaced if present).

    ``data_dir`` keeps the training images (default: a temporary folder, removed afterwards).
    Returns ``model_runtime.train.TrainResult``.
    """
    from model_runtime import train as train_mod

    out_dir = pathlib.Path(out_dir)
    tmp = None
    if data_dir is None:
        tmp = tempfile.mkdtemp(prefix="medisyn-data-")
        data_dir = tmp
    try:
        info = demo_data.build_training_set(data_dir, samples=samples, seed=seed)
        log(f"training set: {info.samples} images at {info.size}px from "
            f"{sum(info.source_images.values())} decoded source images, {len(info.captions)} captions")
        cfg = train_mod.TrainConfig(seed=seed, threads=threads, size=info.size)
        if vae_steps:
            cfg.vae_steps = vae_steps
        if unet_steps:
            cfg.unet_steps = unet_steps
        staging = out_dir.with_name(out_dir.name + ".training")
        shutil.rmtree(staging, ignore_errors=True)
        result = train_mod.train(data_dir, staging, cfg, minutes=minutes, log=log)
        (staging / "dataset.json").write_text(json.dumps(demo_data.info_dict(info), indent=2) + "\n",
                                              encoding="utf-8")
        write_defaults(staging)
        # Swap in the finished model only now: an interrupted run leaves the old one in place.
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
        result.out_dir = out_dir
        return result
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def evaluate_model(model=None, *, per_modality: int = 8, seed: int = 5000, reference_samples: int = 600,
                   figures_dir=None, log=print) -> dict:
    """Quality of a model on the embedded model's prompts (see ``studio.demo.model_quality``).

    Generates ``per_modality`` images per modality prompt with the model's defaults, scores them
    against real training images, and optionally writes the figures of the model card to
    ``figures_dir``: ``medisyn-mini-samples.png`` (per modality: 2 real, then 8 generated images)
    and ``medisyn-mini-loss.png`` (the training curves). Returns a JSON-ready dict.
    """
    import time

    import numpy as np

    from model_runtime import registry
    from model_runtime.generation import GenerationRequest, generate
    from model_runtime.loading import load
    from studio.demo import model_quality

    model = model or str(registry.embedded_model_path())
    loaded = load(model, options={"hash_weights": False})
    defaults = read_defaults(loaded.path)
    with tempfile.TemporaryDirectory(prefix="medisyn-ref-") as tmp:
        demo_data.build_training_set(tmp, samples=reference_samples, seed=seed)
        real, rows = model_quality.read_images(tmp)
    modalities = [r["modality"] for r in rows]
    reference = model_quality.fit_reference(real, modalities)
    log(f"reference classifier: 5-fold accuracy {reference.cv_accuracy:.3f} on {len(real)} real images")
    scores, grid_rows, seconds = [], [], []
    for i, (key, modality) in enumerate(demo_data.MODALITIES.items()):
        request = GenerationRequest(prompt=modality.prompt, num_images=per_modality, seed=seed + 100 * i,
                                    steps=defaults.steps, guidance_scale=defaults.guidance_scale)
        t0 = time.perf_counter()
        images = model_quality.to_uint8([g.image for g in generate(loaded, request)])
        seconds.append(time.perf_counter() - t0)
        s = model_quality.score(reference, key, modality.prompt, images)
        scores.append(dataclasses.asdict(s))
        log(f"{key:11s} recognised {s.recognised:.0%}  plausible {s.plausible:.0%}  predicted {s.predicted}")
        own = [j for j, r in enumerate(rows) if r["view"] in {v.key for v in demo_data.train_views()
                                                               if v.caption == modality.prompt}]
        grid_rows.append(np.concatenate([real[own[:2]], images[:8]]))
    report = {
        "model": str(loaded.path), "defaults": dataclasses.asdict(defaults), "per_modality": per_modality,
        "reference_cv_accuracy": reference.cv_accuracy, "scores": scores,
        "mean_recognised": float(np.mean([s["recognised"] for s in scores])),
        "mean_plausible": float(np.mean([s["plausible"] for s in scores])),
        "seconds_per_request": float(np.median(seconds)),
    }
    if figures_dir is not None:
        figures_dir = pathlib.Path(figures_dir)
        figures_dir.mkdir(parents=True, exist_ok=True)
        model_quality.grid(grid_rows).save(figures_dir / "medisyn-mini-samples.png", optimize=True)
        log_csv = pathlib.Path(loaded.path) / "training_log.csv"
        if log_csv.is_file():
            model_quality.loss_plot(log_csv, figures_dir / "medisyn-mini-loss.png")
    return report
