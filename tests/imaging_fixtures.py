"""Test inputs for the imaging, stimuli and audit tests.

Real sample files come from the installed packages (pydicom, nibabel, scikit-image);
nothing is downloaded. Broken and hostile files (truncated, corrupt, decompression bombs)
are built here from those samples.
"""
from __future__ import annotations

import pathlib
import struct
import zlib

import numpy as np
from PIL import Image
from scipy import ndimage

from studies.audit import AuditItem
from studies.imaging import load_image
from studies.imaging.stimuli import render_stimulus


def dicom_sample(name: str) -> str:
    """Path of a DICOM file shipped with pydicom (never downloaded)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom does not ship {name}"
    return str(path)


def nifti_sample(name: str) -> str:
    from nibabel.testing import data_path

    path = pathlib.Path(data_path) / name
    assert path.exists(), f"nibabel does not ship {name}"
    return str(path)


def skimage_sample(name: str) -> str:
    import skimage

    path = pathlib.Path(skimage.__file__).parent / "data" / name
    assert path.exists(), f"scikit-image does not ship {name}"
    return str(path)


def rewrite_dicom(src: str, dst: pathlib.Path, **tags) -> pathlib.Path:
    """Copy a DICOM file with some data elements replaced (None deletes one)."""
    import pydicom

    ds = pydicom.dcmread(src)
    for key, value in tags.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(dst)
    return dst


def monochrome1_ct(tmp_path: pathlib.Path) -> pathlib.Path:
    """CT_small with Photometric Interpretation rewritten to MONOCHROME1 (pydicom ships none)."""
    return rewrite_dicom(dicom_sample("CT_small.dcm"), tmp_path / "ct_mono1.dcm",
                         PhotometricInterpretation="MONOCHROME1")


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + ctype + payload
            + struct.pack(">I", zlib.crc32(ctype + payload)))


def png_bomb(path: pathlib.Path, width: int = 30_000, height: int = 30_000) -> pathlib.Path:
    """A valid-looking tiny PNG whose header claims width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)  # a few zero bytes: it would inflate only on decode
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b""))
    return path


def nifti_bomb(path: pathlib.Path, shape=(4000, 4000, 4000)) -> pathlib.Path:
    """A NIfTI-1 header claiming a huge volume, followed by a few bytes of data."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    header["magic"] = b"n+1"
    path.write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 16)
    return path


def texture(rng: np.random.Generator, n: int = 64) -> np.ndarray:
    """A smooth random grey texture in [0, 1]: one homogeneous 'population' of images."""
    field = ndimage.gaussian_filter(rng.normal(size=(n, n)), rng.uniform(1.0, 3.0))
    field = (field - field.mean()) / (field.std() + 1e-9)
    return np.clip(rng.uniform(0.35, 0.55) + rng.uniform(0.08, 0.15) * field, 0.0, 1.0)


def audit_items(tmp_path: pathlib.Path, kind: str, *, n: int = 30, seed: int = 0,
                size: int = 64) -> list[AuditItem]:
    """Items for the leak audit, each written to disk and put through the real pipeline.

    kind: 'clean' (one population, random labels), 'bright' (synthetic 0.15 brighter) or
    'jpeg' (synthetic saved as JPEG quality 30 before ingest, real as PNG).
    """
    rng = np.random.default_rng(seed)
    items = []
    for i in range(2 * n):
        source = "real" if i < n else "synthetic"
        img = texture(rng)
        if kind == "bright" and source == "synthetic":
            img = np.clip(img + 0.15, 0.0, 1.0)
        as_jpeg = kind == "jpeg" and source == "synthetic"
        path = tmp_path / f"{kind}_{i}.{'jpg' if as_jpeg else 'png'}"
        pil = Image.fromarray(np.rint(img * 255).astype(np.uint8))
        pil.save(path, quality=30) if as_jpeg else pil.save(path)
        decoded = load_image(path)
        items.append(AuditItem.from_decoded(source, decoded, render_stimulus(decoded, size)))
    if kind == "clean":
        labels = rng.permutation(["real"] * n + ["synthetic"] * n)
        for item, label in zip(items, labels):
            item.source = str(label)
    return items


# A planted size leak: real = shipped sample images at their native sizes (64 to
# 1411 px, sharp); synthetic = 64 px blurry images, like the embedded model's output.
NATIVE_REAL = [
    ("pydicom", "CT_small.dcm"), ("pydicom", "MR_small.dcm"), ("pydicom", "JPEG2000.dcm"),
    ("pydicom", "liver_1frame.dcm"), ("skimage", "retina.jpg"), ("skimage", "microaneurysms.png"),
    ("skimage", "ihc.png"), ("skimage", "cell.png"), ("nibabel", "anatomical.nii"),
    ("nibabel", "example4d.nii.gz"),
]


def write_native_vs_tiny(root: pathlib.Path, n_synthetic: int = 7) -> list[dict]:
    """Copy the native real samples to root/real/ and write `n_synthetic` blurry 64 px PNGs
    (downscaled, blurred grey versions of them) to root/synthetic/; returns manifest rows
    (path relative to root, source, modality, prompt)."""
    import shutil

    getters = {"pydicom": dicom_sample, "skimage": skimage_sample, "nibabel": nifti_sample}
    (root / "real").mkdir(parents=True, exist_ok=True)
    (root / "synthetic").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (package, name) in enumerate(NATIVE_REAL):
        src = pathlib.Path(getters[package](name))
        dst = root / "real" / f"{i:02d}_{src.name}"
        shutil.copyfile(src, dst)
        rows.append({"path": f"real/{dst.name}", "source": "real", "modality": "",
                     "prompt": f"sample {i}"})
    for k in range(n_synthetic):
        src = root / rows[k % len(rows)]["path"]
        grey = load_image(src).pixels
        grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
        small = Image.fromarray(np.rint(grey * 255).astype(np.uint8)).resize((64, 64), Image.BILINEAR)
        blurred = ndimage.gaussian_filter(np.asarray(small, np.float64), 1.5)
        out = root / "synthetic" / f"s{k:02d}.png"
        Image.fromarray(np.clip(np.rint(blurred), 0, 255).astype(np.uint8)).save(out)
        rows.append({"path": f"synthetic/{out.name}", "source": "synthetic", "modality": "",
                     "prompt": f"sample {k % len(NATIVE_REAL)}"})
    return rows


def native_vs_tiny_items(root: pathlib.Path, size: int = 256) -> list[AuditItem]:
    """Audit items of `write_native_vs_tiny`, through the real decode/render pipeline."""
    items = []
    for row in write_native_vs_tiny(root):
        decoded = load_image(root / row["path"])
        items.append(AuditItem.from_decoded(row["source"], decoded, render_stimulus(decoded, size)))
    return items


def dicom_with_lying_transfer_syntax(src: str, dst: pathlib.Path, *, body_implicit: bool) -> pathlib.Path:
    """Copy a DICOM file with its dataset encoded one way (implicit or explicit VR, little
    endian) while the file meta's Transfer Syntax UID claims the other: a real-world fault
    (pydicom's writer refuses to make it, so the parts are written separately)."""
    import pydicom
    from pydicom import uid
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = pydicom.dcmread(src)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, body_implicit
    write_dataset(body, ds)
    meta = pydicom.dataset.FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian if body_implicit else uid.ImplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, meta, enforce_standard=True)
    dst.write_bytes(b"\0" * 128 + b"DICM" + head.getvalue() + body.getvalue())
    return dst
