"""The embedded demo model's data: public medical images that installed packages ship.

Nothing is downloaded. Every image comes from a test/sample file inside pydicom, nibabel or
scikit-image (see ``VIEWS``; provenance and licences in ``assets/DATA_CARD.md``), decoded with
``studies.imaging.load_image`` exactly as a study would decode it.

- ``build_training_set(out_dir)`` writes augmented square crops (random crops, flips where the
  anatomy allows, small intensity jitter, neighbouring slices/frames) at the model's native size,
  plus ``captions.csv`` (path, caption, modality, view) for ``model_runtime.train``.
- ``build_demo_set(out_dir)`` writes the held-out real images of the demo study: different source
  files, slices, frames or image regions than those trained on, where the sources allow.

A *view* is one source file (or a region of it) with one caption; ``split`` says whether it feeds
training or the demo. Train and demo views never share a slice, frame or region of the same file.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from studies.imaging import load_image
from studies.imaging.manifest import write_manifest

NATIVE_SIZE = 64


@dataclass(frozen=True)
class Modality:
    key: str
    label: str
    prompt: str  # the canonical prompt: demo study, quality test, sample grid


MODALITIES: dict[str, Modality] = {
    m.key: m
    for m in (
        Modality("ct", "CT", "Axial CT image of the head"),
        Modality("mri", "MRI", "Brain MRI, axial T2*-weighted echo-planar slice"),
        Modality("ultrasound", "Ultrasound", "Echocardiography ultrasound image of the heart, apical view"),
        Modality("nuclear", "Nuclear medicine", "Whole-body bone scintigraphy, head and chest"),
        Modality("fundus", "Fundus photography", "fundoscopy image of the left retina"),
        Modality("histology", "Histopathology", "Histopathology image of colonic glands, immunohistochemistry stain"),
    )
}


@dataclass(frozen=True)
class View:
    key: str
    split: str  # 'train' | 'demo'
    modality: str
    caption: str
    package: str  # 'pydicom' | 'nibabel' | 'skimage'
    relpath: str  # file inside the installed package
    variants: tuple[dict, ...] = ({},)  # load_image keyword sets: the slices/frames this view uses
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # region used: x0, y0, x1, y1 (fractions)
    crop: tuple[float, float] = (0.85, 1.0)  # random square crop side, fraction of the box's short side
    flips: str = "none"  # 'none' | 'h' | 'dihedral' (all 8 rotations/mirrors: histology has no up)
    mirror_caption: str | None = None  # caption of the mirrored image when laterality changes (fundus)
    weight: float = 1.0  # share of its modality's training samples
    independent: bool = True  # demo views: False when the source allows no truly unseen image
    note: str = ""


def _slices(volume: int, zs) -> tuple[dict, ...]:
    return tuple({"frame": volume, "axis": 2, "slice_index": z} for z in zs)


# Brain EPI (nibabel example4d.nii.gz, 128x96x24 voxels, 2 volumes): two slices held out in both volumes.
_EPI_HELD_OUT = (9, 15)
_EPI_TRAIN = [z for z in range(3, 22) if z not in _EPI_HELD_OUT]
# Echocardiography cine (pydicom examples_ybr_color.dcm, 30 frames): the last frames are held out,
# with a two-frame gap so no training frame is a direct neighbour of a demo frame.
_ECHO_TRAIN = tuple(range(0, 23))
_ECHO_HELD_OUT = (26, 29)
_ECHO_BOX = (67 / 320, 15 / 240, 257 / 320, 205 / 240)  # the sector, without burned-in text
_BONE_SCAN_BOXES = {  # 256 x 1024 whole-body scan, split in regions with their own captions
    "head and chest": (0.0, 60 / 1024, 1.0, 330 / 1024),
    "abdomen and pelvis": (0.0, 300 / 1024, 1.0, 570 / 1024),
    "knees and lower legs": (0.0, 560 / 1024, 1.0, 880 / 1024),
}
_CT_BRAIN_WINDOW = (40.0, 100.0)  # centre, width (HU): the window stored in 693_J2KI.dcm
_CT_SOFT_TISSUE = (40.0, 400.0)

VIEWS: tuple[View, ...] = (
    # --- CT ---
    View("ct_head", "train", "ct", "Axial CT image of the head", "pydicom", "data/test_files/693_J2KI.dcm",
         variants=({"window": _CT_BRAIN_WINDOW},), crop=(0.8, 1.0), flips="h"),
    View("ct_chest", "train", "ct", "Axial CT image of the chest", "pydicom", "data/test_files/CT_small.dcm",
         variants=({"window": _CT_SOFT_TISSUE},), crop=(0.8, 1.0), flips="h"),
    View("ct_head_demo", "demo", "ct", "Axial CT image of the head", "pydicom",
         "data/test_files/J2K_pixelrep_mismatch.dcm", variants=({"window": _CT_BRAIN_WINDOW},),
         note="a different head CT slice; never trained on"),
    # --- MRI ---
    View("mri_epi", "train", "mri", "Brain MRI, axial T2*-weighted echo-planar slice", "nibabel",
         "tests/data/example4d.nii.gz", variants=_slices(0, _EPI_TRAIN) + _slices(1, _EPI_TRAIN),
         crop=(0.85, 1.0), flips="h", weight=2.0),
    View("mri_t1", "train", "mri", "Brain MRI, axial T1-weighted slice", "nibabel", "tests/data/anatomical.nii",
         variants=tuple({"axis": 2, "slice_index": z} for z in range(5, 21)), crop=(0.85, 1.0), flips="h"),
    View("mri_liver", "train", "mri", "Abdominal MRI, axial slice of the liver", "pydicom",
         "data/test_files/examples_overlay.dcm", crop=(0.6, 1.0), flips="h"),
    View("mri_epi_demo", "demo", "mri", "Brain MRI, axial T2*-weighted echo-planar slice", "nibabel",
         "tests/data/example4d.nii.gz", variants=_slices(0, _EPI_HELD_OUT),
         note=f"slices z={_EPI_HELD_OUT} (held out of both volumes)"),
    # --- ultrasound ---
    View("us_echo", "train", "ultrasound", "Echocardiography ultrasound image of the heart, apical view", "pydicom",
         "data/test_files/examples_ybr_color.dcm", variants=tuple({"frame": f} for f in _ECHO_TRAIN),
         box=_ECHO_BOX, crop=(0.85, 1.0), weight=2.0),
    View("us_doppler", "train", "ultrasound", "Ultrasound image of a lymph node with colour Doppler", "pydicom",
         "data/test_files/examples_rgb_color.dcm", box=(8 / 320, 52 / 240, 312 / 320, 168 / 240), crop=(0.9, 1.0)),
    View("us_echo_demo", "demo", "ultrasound", "Echocardiography ultrasound image of the heart, apical view",
         "pydicom", "data/test_files/examples_ybr_color.dcm", variants=tuple({"frame": f} for f in _ECHO_HELD_OUT),
         box=_ECHO_BOX, note=f"frames {_ECHO_HELD_OUT}; frames 23-29 never trained on"),
    # --- nuclear medicine: one whole-body bone scan, in regions ---
    *(
        View(f"nm_{i}", "train", "nuclear", f"Whole-body bone scintigraphy, {region}", "pydicom",
             "data/test_files/JPGExtended.dcm", box=box, crop=(0.85, 1.0), flips="h")
        for i, (region, box) in enumerate(_BONE_SCAN_BOXES.items())
    ),
    View("nm_demo", "demo", "nuclear", "Whole-body bone scintigraphy, head and chest", "pydicom",
         "data/test_files/JPEG2000.dcm", box=_BONE_SCAN_BOXES["head and chest"], independent=False,
         note="JPEG 2000 copy of the same scan as JPGExtended.dcm: a different file, not an independent patient"),
    # --- fundus photography ---
    View("fundus", "train", "fundus", "fundoscopy image of the left retina", "skimage", "data/retina.jpg",
         crop=(0.85, 1.0), flips="h", mirror_caption="fundoscopy image of the right retina", weight=3.0),
    View("fundus_detail", "train", "fundus",
         "fundoscopy image, green channel detail of the retina with microaneurysms", "skimage",
         "data/microaneurysms.png", crop=(0.7, 1.0), flips="dihedral"),
    View("fundus_demo", "demo", "fundus", "fundoscopy image of the left retina", "skimage", "data/retina.jpg",
         independent=False, note="the only fundus photograph: the whole image, which training saw as crops (not independent)"),
    # --- histopathology: one IHC image; its bottom-right quadrant is held out ---
    View("ihc_top", "train", "histology", "Histopathology image of colonic glands, immunohistochemistry stain",
         "skimage", "data/ihc.png", box=(0.0, 0.0, 1.0, 0.5), crop=(0.5, 1.0), flips="dihedral", weight=2.0),
    View("ihc_bottom_left", "train", "histology",
         "Histopathology image of colonic glands, immunohistochemistry stain", "skimage", "data/ihc.png",
         box=(0.0, 0.5, 0.5, 1.0), crop=(0.5, 1.0), flips="dihedral"),
    *(
        View(f"ihc_demo_{i}", "demo", "histology", "Histopathology image of colonic glands, immunohistochemistry stain",
             "skimage", "data/ihc.png", box=box, note="inside the bottom-right quadrant, never trained on")
        for i, box in enumerate([(0.5, 0.5, 0.75, 0.75), (0.75, 0.75, 1.0, 1.0)])
    ),
)


def source_path(view: View) -> pathlib.Path:
    """The file of a view inside its installed package."""
    spec = importlib.util.find_spec(view.package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {view.package!r} is not installed")
    return pathlib.Path(spec.origin).parent / view.relpath


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """float [0,1] HxW or HxWx3 -> uint8 HxWx3 (the model is RGB for every modality)."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return (np.clip(pixels[..., :3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def decode_view(view: View) -> list[np.ndarray]:
    """Every variant (slice/frame) of a view as uint8 RGB arrays, in variant order."""
    path = source_path(view)
    return [_rgb(load_image(path, **variant).pixels) for variant in view.variants]


def _box_pixels(image: np.ndarray, box) -> tuple[float, float, float, float]:
    h, w = image.shape[:2]
    return box[0] * w, box[1] * h, box[2] * w, box[3] * h


def _square(image: np.ndarray, region, size: int) -> np.ndarray:
    # PIL's resize(box=...) crops and resamples in one step, with antialiasing when shrinking.
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.LANCZOS, box=region))


def _augment(image: np.ndarray, view: View, rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    x0, y0, x1, y1 = _box_pixels(image, view.box)
    side = min(x1 - x0, y1 - y0) * rng.uniform(*view.crop)
    left = rng.uniform(x0, x1 - side)
    top = rng.uniform(y0, y1 - side)
    out = _square(image, (left, top, left + side, top + side), size)
    caption = view.caption
    if view.flips == "h" and rng.random() < 0.5:
        out = out[:, ::-1]
        caption = view.mirror_caption or caption
    elif view.flips == "dihedral":
        out = np.rot90(out, int(rng.integers(4)))
        if rng.random() < 0.5:
            out = out[:, ::-1]
    # Small intensity jitter: gamma, contrast and brightness within a few percent.
    f = out.astype(np.float32) / 255.0
    f = f ** rng.uniform(0.9, 1.1)
    f = (f - 0.5) * rng.uniform(0.95, 1.05) + 0.5 + rng.uniform(-0.03, 0.03)
    return (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8), caption


@dataclass
class DatasetInfo:
    out_dir: pathlib.Path
    size: int
    samples: int
    per_modality: dict[str, int]
    per_view: dict[str, int]
    source_images: dict[str, int]  # view key -> number of distinct decoded 2D images (slices/frames)
    captions: list[str] = field(default_factory=list)


def train_views() -> list[View]:
    return [v for v in VIEWS if v.split == "train"]


def demo_views() -> list[View]:
    return [v for v in VIEWS if v.split == "demo"]


def build_training_set(out_dir, *, size: int = NATIVE_SIZE, samples: int = 3000, seed: int = 0,
                       modalities=None) -> DatasetInfo:
    """Write ``samples`` augmented ``size`` x ``size`` PNG crops and ``captions.csv`` to ``out_dir``.

    Samples are split equally between modalities and, within one, by view weight; each sample picks a
    random slice/frame of its view (neighbouring slices/frames are the main source of variety).
    Deterministic for a given seed.
    """
    out = pathlib.Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    keys = list(modalities or MODALITIES)
    views = [v for v in train_views() if v.modality in keys]
    decoded = {v.key: decode_view(v) for v in views}
    per_modality = {m: samples // len(keys) + (1 if i < samples % len(keys) else 0) for i, m in enumerate(keys)}
    per_view: dict[str, int] = {}
    for m in keys:
        group = [v for v in views if v.modality == m]
        weights = np.array([v.weight for v in group])
        counts = np.floor(per_modality[m] * weights / weights.sum()).astype(int)
        counts[: per_modality[m] - counts.sum()] += 1
        per_view.update({v.key: int(c) for v, c in zip(group, counts)})
    rows = []
    for view in views:
        for _ in range(per_view[view.key]):
            image = decoded[view.key][int(rng.integers(len(decoded[view.key])))]
            pixels, caption = _augment(image, view, rng, size)
            name = f"images/{len(rows):05d}.png"
            Image.fromarray(np.ascontiguousarray(pixels)).save(out / name)
            rows.append({"path": name, "caption": caption, "modality": view.modality, "view": view.key})
    write_manifest(out / "captions.csv", rows, columns=("path", "caption", "modality", "view"))
    return DatasetInfo(
        out_dir=out, size=size, samples=len(rows), per_modality=per_modality, per_view=per_view,
        source_images={k: len(v) for k, v in decoded.items()},
        captions=sorted({r["caption"] for r in rows}),
    )


@dataclass(frozen=True)
class DemoImage:
    path: pathlib.Path
    modality: str
    prompt: str
    view: str
    origin: str  # human-readable: file, slice/frame, region


def build_demo_set(out_dir, *, size: int = NATIVE_SIZE) -> list[DemoImage]:
    """Write the held-out real images of the demo study at the model's native size.

    Real and synthetic stimuli then share resolution, so the study's normalisation treats both alike.
    Each demo view's box is used whole (centred square of its short side), no augmentation.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for view in demo_views():
        for variant, image in zip(view.variants, decode_view(view)):
            x0, y0, x1, y1 = _box_pixels(image, view.box)
            side = min(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            pixels = _square(image, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), size)
            path = out / f"{view.key}_{len(images):02d}.png"
            Image.fromarray(pixels).save(path)
            where = ", ".join(f"{k}={v}" for k, v in variant.items() if k != "window")
            origin = f"{view.package}/{view.relpath}" + (f" ({where})" if where else "")
            images.append(DemoImage(path, view.modality, view.caption, view.key, origin))
    return images


def info_dict(info: DatasetInfo) -> dict:
    d = dataclasses.asdict(info)
    d["out_dir"] = str(info.out_dir)
    return d
