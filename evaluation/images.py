"""Inputs of an evaluation: a folder of images or a manifest CSV, decoded as a study ingests them.

`list_images(source)` takes a folder (every image file below it, recursively, hidden files
skipped; DICOM files without an extension are included) or a manifest CSV in the study format
(`studies.imaging.manifest.read_manifest`: path, source, modality, prompt, optional generator ...; the
same path checks). Each image becomes an `ImageRef` carrying the manifest's modality, prompt
and generator (used by `--by`).

A folder in the study layout (`real/<modality>/...`: the folder itself is `real/`, or, for the
reference set, holds one) gives each real image the modality of its first-level subfolder.

`iter_chunks(refs, size)` decodes with `studies.imaging.load_image` and normalises with
`studies.imaging.stimuli.normalise` — the very pixels a reader would see: letterboxed on a black
square, 8-bit RGB — in chunks, so memory holds one chunk, not the set. Decoding runs on a few
threads (PIL and the DICOM decoders release the GIL). An unreadable file stops the run with one
`EvaluationError` naming it: a silently skipped image would change every figure.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import threading
from collections.abc import Iterator, Sequence

import numpy as np

from evaluation.errors import EvaluationCancelled, EvaluationError
from studies.imaging import IMAGE_SUFFIXES, ImageError, is_image_file, load_image
from studies.imaging.stimuli import normalise

__all__ = ["ImageRef", "iter_chunks", "list_images", "load_normalised", "to_grey"]

_SKIP_SUFFIXES = (".csv", ".json", ".txt", ".html", ".md", ".log", ".py", ".db", ".sqlite")


@dataclasses.dataclass(frozen=True)
class ImageRef:
    path: pathlib.Path
    name: str               # shown in reports: path relative to the folder / manifest
    modality: str = ""
    prompt: str = ""
    generator: str = ""
    options: tuple = ()     # load_image keyword arguments (frame, window, slice ...) as items
    patient_group: str = ""  # the manifest's `group` (patient / volume), '' when not given

    def group(self, by: str | None) -> str:
        """This image's value of a `--by` key ('' when unknown)."""
        return {"modality": self.modality, "prompt": self.prompt, "generator": self.generator}.get(by or "", "")


def list_images(source: str | os.PathLike, *, what: str = "images") -> list[ImageRef]:
    """The images of a folder or manifest CSV; EvaluationError if there are none.

    `what` names the set in messages ("synthetic", "reference").
    """
    p = pathlib.Path(source)
    if p.is_file() and p.suffix.lower() == ".csv":
        from studies.errors import StudyError
        from studies.imaging.manifest import read_manifest

        try:
            rows = read_manifest(p)
        except StudyError as exc:
            raise EvaluationError(f"{what}: {exc}") from None
        # decode_options includes the modality: it picks the default window (CT), as at ingest
        return [ImageRef(r.path, r.rel_path, r.modality, r.prompt, r.generator,
                         tuple(sorted(r.decode_options().items())), r.group)
                for r in rows]
    if p.is_file():
        raise EvaluationError(f"{what}: {p} is a file; give a folder of images or a manifest .csv")
    if not p.is_dir():
        raise EvaluationError(f"{what}: no such folder or manifest: {p}")
    # The study folder layout (docs/studies.md): real/<modality>/... names each real image's
    # modality, so a reference folder in that layout can be compared per modality (--by).
    real = p if p.name == "real" else p / "real" if what == "reference" and (p / "real").is_dir() else None
    refs = []
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file():
            continue
        name = f.name.lower()
        if name.endswith(_SKIP_SUFFIXES):
            continue
        if not (is_image_file(f) or "." not in name):
            continue
        modality = ""
        if real is not None:
            if real != p and not f.is_relative_to(real):
                continue  # a study folder as reference: its real images only
            under = f.relative_to(real).parts
            modality = under[0] if len(under) > 1 else ""
        refs.append(ImageRef(f, rel.as_posix(), modality))
    if not refs:
        raise EvaluationError(f"{what}: no image files in {p} (looked for "
                              f"{', '.join(IMAGE_SUFFIXES)} and extension-less DICOM)")
    return refs


def load_normalised(ref: ImageRef, size: int) -> np.ndarray:
    """uint8 size x size x 3 pixels of one image, exactly as a study stimulus; EvaluationError if unreadable."""
    try:
        decoded = load_image(ref.path, target_size=size, **dict(ref.options))
    except ImageError as exc:
        raise EvaluationError(f"unreadable image {ref.name}: {exc.problem}") from None
    return normalise(decoded, size)


def to_grey(images: np.ndarray) -> np.ndarray:
    """float32 N x H x W luminance in [0, 1] of uint8 N x H x W x 3 images (ITU-R 601, as PIL's 'L')."""
    x = images.astype(np.float32) / 255.0
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


def iter_chunks(refs: Sequence[ImageRef], size: int, *, chunk: int = 256, workers: int | None = None,
                cancel: threading.Event | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start index, uint8 n x size x size x 3) chunks of decoded, normalised images, in order."""
    workers = workers or min(4, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(refs), chunk):
            if cancel is not None and cancel.is_set():
                raise EvaluationCancelled("evaluation cancelled")
            part = refs[start:start + chunk]
            yield start, np.stack(list(pool.map(lambda r: load_normalised(r, size), part)))
