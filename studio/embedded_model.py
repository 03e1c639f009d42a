"""Build the embedded demo model ``assets/medisyn-mini``: data set, training, defaults, figures.

``train_embedded_model(out_dir)`` is what ``medisyn model train`` runs: it writes the training set
from the public images of installed packages (``studio.demo_data``), trains the pipeline from
scratch (``model_runtime.train``) and records the default generation settings next to the weights
(``medisyn.json``), which the demo study, the quality test and the benchmark read.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import tempfile

from studio import demo_data

DEFAULTS_FILE = "medisyn.json"
# Default sampling: DPM-Solver++ (the pipeline's own scheduler), few steps, moderate guidance.
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 3.0


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    size: int = demo_data.NATIVE_SIZE
    scheduler: str = "DPMSolverMultistepScheduler"
    prompts: dict = dataclasses.field(default_factory=lambda: {k: m.prompt for k, m in demo_data.MODALITIES.items()})


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
    data["note"] = ("Default generation settings of this model (read by studio.demo, the quality test "
                    "and benchmarks/bench_embedded.py); diffusers ignores this file.")
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
