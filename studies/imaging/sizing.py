"""Stimulus size from the data (`--size auto`, the default of `medisyn study create`).

Every stimulus is one square PNG of side S (letterboxed), so each image is scaled by
S / max(width, height). `auto_size` picks the largest S that does not upscale most of
the study's images: the lower median of the images' longest sides, rounded down to a
multiple of 64 and kept within [256, 1024]. So at least half the images are shown at
their native resolution or reduced; tiny sources (64 px) are still shown at 256 (the
audit lists how much they are blown up) and very large ones (a 3000 px fundus) at 1024.

Sizes come from the file headers (`probe_size`: PIL, pydicom without pixel data, nibabel
header of the canonical volume), so choosing S decodes nothing.
"""
from __future__ import annotations

import pathlib
from collections.abc import Sequence

AUTO = "auto"
AUTO_MIN, AUTO_MAX, AUTO_STEP = 256, 1024, 64
FALLBACK = 512  # when no header could be read


def parse_size(value) -> int | str:
    """A stimulus size as typed (CLI --size, the admin's form): "auto" or a whole number of
    pixels; the range is checked by ingest."""
    from studies.errors import StudyError

    text = str(value if value is not None else "").strip().lower()
    if text in ("", AUTO):
        return AUTO
    if text.isdigit():
        return int(text)
    raise StudyError(f"size must be auto or a whole number of pixels, not {value!r}")


def auto_size(sides: Sequence[int | None], *, lo: int = AUTO_MIN, hi: int = AUTO_MAX,
              step: int = AUTO_STEP) -> int:
    """The stimulus side for images whose longest sides are `sides` (None: unknown)."""
    known = sorted(int(s) for s in sides if s)
    if not known:
        return FALLBACK
    median = known[(len(known) - 1) // 2]  # lower median: at least half are >= it
    return max(lo, min(hi, (median // step) * step))


def probe_size(path: str | pathlib.Path, *, axis: int | None = None) -> tuple[int, int] | None:
    """(width, height) of the 2-D image a file will give, from its header; None if the
    header cannot tell (the file is then checked when it is decoded)."""
    p = pathlib.Path(path)
    name = p.name.lower()
    try:
        with open(p, "rb") as f:
            head = f.read(352)
        if head[128:132] == b"DICM" or name.endswith((".dcm", ".dicom")):
            import pydicom

            ds = pydicom.dcmread(str(p), stop_before_pixels=True, force=True)
            return int(ds.Columns), int(ds.Rows)
        if (name.endswith((".nii", ".nii.gz")) or head[344:348] in (b"n+1\x00", b"ni1\x00")
                or head[4:8] == b"n+2\x00"):
            import nibabel

            shape = nibabel.as_closest_canonical(nibabel.load(str(p))).shape[:3]
            a = 2 if axis is None else int(axis)
            dims = [d for i, d in enumerate(shape) if i != a]
            return (int(dims[0]), int(dims[1])) if len(dims) >= 2 else None
        from PIL import Image

        with Image.open(p) as im:
            return int(im.width), int(im.height)
    except Exception:  # unreadable header: decoding will report the file properly
        return None
