"""A small runnable experiment from the images installed packages ship (`write_demo_inputs`), and
the grouping of those images by acquisition (`demo_group`)."""
from __future__ import annotations

import pathlib

from studies.imaging.manifest import write_manifest
from studio.experiment.records import read_rows


# Files that are one acquisition under two encodings (assets/DATA_CARD.md): one group.
SAME_ACQUISITION = {"pydicom/data/test_files/JPEG2000.dcm": "pydicom/data/test_files/JPGExtended.dcm"}


def demo_group(view) -> str:
    """The group of a ``studio.demo.data`` view: its source file (one acquisition)."""
    source = f"{view.package}/{view.relpath}"
    return SAME_ACQUISITION.get(source, source)


_PACKAGE_LICENCES = {"pydicom": "MIT (pydicom test data; per-file terms in assets/DATA_CARD.md)",
                     "nibabel": "MIT (nibabel test data; see assets/DATA_CARD.md)",
                     "skimage": "BSD-3-Clause (scikit-image data; see assets/DATA_CARD.md)"}

EXAMPLE_CONFIG = """\
name = "{name}"
out = "runs/{name}"

[real]
manifest = "real/manifest.csv"
holdout = 0.3
source = "public test images shipped with pydicom, nibabel and scikit-image (studio.demo.data)"

[[generator]]
name = "mini"
model = "embedded"
prompts = "real"
images_per_prompt = 1
steps = {steps}
seed = 1

[novelty]
gate = true

[fidelity]
features = "pixels"

[study]
db = "study.db"
tasks = ["turing", "alignment"]
readers = ["dr-a", "dr-b"]
size = 64
acknowledge_leak = true   # the tiny embedded model fails the leak audit (see docs/experiments.md)
"""


def write_demo_inputs(folder, *, name: str = "demo-experiment", modalities=("ct", "mri", "histology"),
                      per_modality: int = 3, steps: int = 4) -> pathlib.Path:
    """A small runnable experiment from the images installed packages ship: ``real/`` (training
    crops and held-out demo images of ``modalities``; one group per source file, so slices, frames
    and regions of one file stay together), and
    ``experiment.toml`` for the embedded model. Returns the config path."""
    from studio.demo import data as demo_data

    folder = pathlib.Path(folder)
    real = folder / "real"
    real.mkdir(parents=True, exist_ok=True)
    views = {v.key: v for v in demo_data.train_views() + demo_data.demo_views()}
    info = demo_data.build_training_set(real / "train", samples=per_modality * len(modalities), seed=0,
                                        modalities=list(modalities))
    rows = []
    for r in read_rows(info.out_dir / "captions.csv"):
        v = views[r["view"]]
        rows.append({"path": f"train/{r['path']}", "modality": demo_data.MODALITIES[r["modality"]].label,
                     "prompt": r["caption"], "group": demo_group(v), "licence": _PACKAGE_LICENCES[v.package],
                     "origin": f"{v.package}/{v.relpath}"})
    for im in demo_data.build_demo_set(real / "demo"):
        if im.modality not in modalities:
            im.path.unlink()
            continue
        rows.append({"path": f"demo/{im.path.name}", "modality": demo_data.MODALITIES[im.modality].label,
                     "prompt": im.prompt, "group": demo_group(views[im.view]),
                     "licence": _PACKAGE_LICENCES[views[im.view].package],
                     "origin": im.origin})
    write_manifest(real / "manifest.csv", rows, columns=("path", "modality", "prompt", "group", "licence", "origin"))
    config = folder / "experiment.toml"
    config.write_text(EXAMPLE_CONFIG.format(name=name, steps=steps), encoding="utf-8")
    return config
