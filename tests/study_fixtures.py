"""Small reader studies built from real images that installed packages ship.

"Real" images: pydicom's CT_small.dcm and MR_small.dcm, scikit-image's microaneurysms.png
(retinal fundus crop), ihc.png (immunohistochemistry) and cell.png, nibabel's
anatomical.nii. "Synthetic" images: transformed copies of them (flipped, smoothed, noise
added), written as PNG. Nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import csv
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image


def _skimage_file(name: str) -> pathlib.Path:
    import skimage

    return pathlib.Path(skimage.__file__).parent / "data" / name


def _pydicom_file(name: str) -> pathlib.Path:
    from pydicom.data import get_testdata_file

    return pathlib.Path(get_testdata_file(name))


def _nibabel_file(name: str) -> pathlib.Path:
    import nibabel

    return pathlib.Path(nibabel.__file__).parent / "tests" / "data" / name


# (file, modality, caption)
REAL_SOURCES = [
    (lambda: _pydicom_file("CT_small.dcm"), "CT", "axial CT slice of the abdomen"),
    (lambda: _pydicom_file("MR_small.dcm"), "MRI", "axial MR image of the head"),
    (lambda: _skimage_file("microaneurysms.png"), "fundoscopy", "fundoscopy crop with microaneurysms"),
    (lambda: _skimage_file("ihc.png"), "histology", "immunohistochemistry stained tissue"),
    (lambda: _skimage_file("cell.png"), "microscopy", "microscopy image of a cell"),
    (lambda: _nibabel_file("anatomical.nii"), "MRI", "anatomical MR volume, axial slice"),
]


def _grey_pixels(path: pathlib.Path) -> np.ndarray:
    """uint8 greyscale pixels of a shipped file (for making synthetic look-alikes)."""
    name = path.name.lower()
    if name.endswith(".dcm"):
        import pydicom

        a = pydicom.dcmread(path).pixel_array.astype(np.float64)
    elif name.endswith((".nii", ".nii.gz")):
        import nibabel

        v = np.asanyarray(nibabel.load(path).dataobj).astype(np.float64)
        while v.ndim > 3:
            v = v[..., 0]
        a = v[:, :, v.shape[2] // 2]
    else:
        with Image.open(path) as img:
            a = np.asarray(img.convert("L"), dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=-1)
    a = a - a.min()
    return (255 * a / (a.max() or 1)).astype(np.uint8)


def synthetic_variant(pixels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """A transformed copy standing in for a generated image."""
    from scipy import ndimage

    rng = np.random.default_rng(seed + k)
    a = pixels.astype(np.float64)
    a = np.fliplr(a) if k % 2 == 0 else np.flipud(a)
    a = ndimage.gaussian_filter(a, sigma=0.8 + 0.3 * k)
    a = a + rng.normal(0, 4, a.shape)
    return np.clip(a, 0, 255).astype(np.uint8)


def write_images(root: pathlib.Path, *, synthetic_per_real: int = 1,
                 generators: tuple[str, ...] = ("gen-a",), seed: int = 0) -> list[dict]:
    """Copy the real files under root/real/ and write synthetic PNGs under
    root/synthetic/<generator>/; returns manifest rows (paths relative to root)."""
    rows = []
    (root / "real").mkdir(parents=True, exist_ok=True)
    for i, (get, modality, caption) in enumerate(REAL_SOURCES):
        src = get()
        dst = root / "real" / f"r{i:02d}_{src.name}"
        shutil.copyfile(src, dst)
        rows.append({"path": dst.relative_to(root).as_posix(), "source": "real",
                     "modality": modality, "prompt": caption, "generator": "",
                     "group": f"site-{i % 2}"})
        grey = _grey_pixels(src)
        for k in range(synthetic_per_real):
            gen = generators[(i + k) % len(generators)]
            gdir = root / "synthetic" / gen
            gdir.mkdir(parents=True, exist_ok=True)
            out = gdir / f"s{i:02d}_{k}.png"
            Image.fromarray(synthetic_variant(grey, k, seed)).save(out)
            rows.append({"path": out.relative_to(root).as_posix(), "source": "synthetic",
                         "modality": modality, "prompt": caption, "generator": gen,
                         "group": f"site-{i % 2}"})
    return rows


def write_manifest(path: pathlib.Path, rows: list[dict], columns: list[str] | None = None) -> pathlib.Path:
    columns = columns or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def make_manifest(root: pathlib.Path, **kwargs) -> pathlib.Path:
    """root/cases.csv over freshly written images (6 real + 6 synthetic by default)."""
    rows = write_images(root, **kwargs)
    return write_manifest(root / "cases.csv", rows)


def make_study(tmp_path: pathlib.Path, name: str = "pilot", *, size: int = 64,
               tasks=("turing",), options=None, synthetic_per_real: int = 1,
               generators: tuple[str, ...] = ("gen-a",)):
    """Create a study in tmp_path/study.db from shipped images; returns (db_path, summary)."""
    from studies.ingest import create_study

    manifest = make_manifest(tmp_path / "data", synthetic_per_real=synthetic_per_real,
                             generators=generators)
    db_path = tmp_path / "study.db"
    summary = create_study(db_path, name, manifest=manifest, size=size, tasks=tasks,
                           options=options)
    # These look-alikes fail the leak audit (DICOM/NIfTI vs PNG originals): acknowledged, as
    # a researcher must before inviting readers (tests of the gate build their own studies).
    acknowledge_fixture_leak(db_path, name)
    return db_path, summary


def acknowledge_fixture_leak(db_path: pathlib.Path, name: str) -> None:
    """`readers.acknowledge_leak` on a connection of its own that is closed at once, so the
    database stays one file (`copy_study` copies only that file, not a WAL)."""
    from studies.storage.connections import open_db, transaction
    from studies.records import study_row
    from studies.readers import _leak_gate
    from studies.audit import is_flagged
    import json

    with contextlib.closing(open_db(db_path)) as db, transaction(db):
        srow = study_row(db, name)
        if is_flagged(json.loads(srow.get("audit_report") or "{}")):
            _leak_gate(db, srow, True, "test-fixture")


def copy_study(template: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    """A copy of a study database and its stimuli in `folder` (tests copy one ingested
    template per module instead of ingesting per test)."""
    import shutil

    from studies.storage.connections import stimuli_dir

    db_path = folder / "study.db"
    shutil.copyfile(template, db_path)
    shutil.copytree(stimuli_dir(template), stimuli_dir(db_path))
    return db_path


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The study "pilot" (`make_study`), ingested once per test module that imports this
    fixture (ingest is the slow part); tests take a copy of their own (`study`)."""
    db_path, _ = make_study(tmp_path_factory.mktemp("tpl"), "pilot")
    return db_path


@pytest.fixture()
def study(template, tmp_path):
    """A copy of `template` for one test."""
    return copy_study(template, tmp_path)


@contextlib.contextmanager
def database_at_version(path: pathlib.Path, version: int, monkeypatch):
    """A database created at `path` by the migrations up to `version` only, open for the
    test to fill (closed after), so that the next `open_db` upgrades it."""
    from studies.storage import connections, schema

    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", [x for x in schema.MIGRATIONS if x[0] <= version])
        m.setattr(schema, "SCHEMA_VERSION", version)
        db = connections.open_db(path)
        try:
            yield db
        finally:
            db.close()


def files_under(path: pathlib.Path) -> list[str]:
    """Every file below `path` (for 'nothing was left behind' assertions)."""
    if not path.exists():
        return []
    return sorted(str(p) for p in path.rglob("*") if p.is_file() or p.is_symlink())


def stimulus_files(db_path: pathlib.Path) -> list[str]:
    from studies.storage.connections import stimuli_dir

    return files_under(stimuli_dir(db_path))


__all__ = ["REAL_SOURCES", "copy_study", "files_under", "make_manifest", "make_study", "stimulus_files",
           "synthetic_variant", "write_images", "write_manifest"]
