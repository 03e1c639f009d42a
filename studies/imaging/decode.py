"""Decode any supported medical image file to display-ready float pixels.

`load_image(path)` reads PNG, JPEG, TIFF (8/16-bit, float), DICOM (native and compressed
transfer syntaxes through pydicom 3 and the pylibjpeg decoders) and NIfTI (nibabel) and
returns a `DecodedImage`: float32 pixels in [0, 1] (HxW grey or HxWx3 RGB) as a viewer
would show them, plus facts about the original (format, size, mode, bit depth, bytes) for
the leak audit. Everything that can go wrong with the input becomes one `ImageError`
naming the file; decoder tracebacks never escape.

Intensity mapping, in order of preference (greyscale only; colour is scaled by bit depth):
1. an explicit `window` — a `(centre, width)` pair or a preset name (`WINDOW_PRESETS`,
   in Hounsfield units) — or `window="auto"` for robust percentile scaling;
2. DICOM: the file's own VOI LUT or window centre/width (first view), after the modality
   LUT / rescale slope and intercept;
3. a default preset for the modality (`DEFAULT_PRESET`: CT -> soft tissue);
4. robust percentile scaling (`PERCENTILES`, 0.5-99.5).
8-bit greyscale PNG/JPEG/TIFF are shown as stored (value / 255) unless a window is given.
MONOCHROME1 is inverted after windowing. Presentation LUT Shape is ignored on purpose:
for MONOCHROME1 it restates the same inversion, so applying both would undo it.

Large inputs: a pixel limit is checked from the headers before any pixel data is decoded
(PIL size, DICOM Rows x Columns, NIfTI in-plane shape; and for the whole file, all frames
or volumes, `TOTAL_PIXEL_FACTOR` times that). Only the requested DICOM frame and NIfTI
slice are decoded. `target_size` lets a caller that will shrink the image anyway box-reduce
it by an integer factor right after decoding; this is the same reduction
`studies.imaging.stimuli.normalise` applies (PIL's `reducing_gap`), so the stimulus is unchanged.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
import pathlib
import warnings

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "BURNED_IN_MODALITIES", "DEFAULT_PRESET", "DecodedImage", "ImageError", "MAX_PIXELS",
    "NEAR_GREY_LEVELS", "PERCENTILES", "REDUCING_GAP", "TINY_SIDE", "TOTAL_PIXEL_FACTOR",
    "WINDOW_PRESETS", "burned_in_reason", "degenerate_content", "grey_spread", "is_grey",
    "load_image", "reduce_factor", "to_luma",
]

# Every file suffix the project treats as an image (folders, uploads, fine-tuning data).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom",
                  ".nii", ".nii.gz")


def is_image_file(path) -> bool:
    """Whether `path`'s name ends in one of IMAGE_SUFFIXES (case-insensitive; `.nii.gz` whole)."""
    return pathlib.Path(path).name.lower().endswith(IMAGE_SUFFIXES)


MAX_PIXELS = 64_000_000
"""Default limit on the pixels of the decoded 2-D image (decompression-bomb guard)."""
TOTAL_PIXEL_FACTOR = 16
"""All frames / volumes of one file together may hold at most this many times MAX_PIXELS."""
PERCENTILES = (0.5, 99.5)
"""Robust scaling: these percentiles of the image map to 0 and 1."""
REDUCING_GAP = 3.0
"""Box-reduce by int(ratio / REDUCING_GAP) before Lanczos; 3.0 is visually exact (PIL docs)."""

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    # (centre, width) in Hounsfield units, the usual radiology defaults.
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
DEFAULT_PRESET: dict[str, str] = {"CT": "soft_tissue"}
"""Preset used for a modality when neither the caller nor the file gives a window. A
modality matches by DICOM code or as a word of a free-text description ("CT chest")."""
_MODALITY_ALIASES = {"COMPUTED TOMOGRAPHY": "CT"}

_PIL_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "TIFF": "TIFF"}
_MODE_BITS = {"1": 1, "I": 32, "F": 32}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class ImageError(ValueError):
    """An image file is missing, corrupt, unsupported or too large. The message names it."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclasses.dataclass
class DecodedImage:
    """Display-ready pixels and what the original file looked like."""

    pixels: np.ndarray          # float32 in [0, 1]; HxW (grey) or HxWx3 (RGB)
    original_format: str        # 'PNG' | 'JPEG' | 'TIFF' | 'DICOM' | 'NIfTI'
    original_width: int         # of the decoded 2-D image (DICOM Columns, NIfTI slice)
    original_height: int
    original_mode: str          # PIL mode, DICOM Photometric Interpretation, NIfTI dtype
    original_bit_depth: int     # bits per sample (DICOM Bits Stored)
    original_bytes: int         # file size
    modality: str | None = None  # the DICOM Modality tag, else the caller's
    scaling: str = ""           # how intensities were mapped, for the record
    reduced_by: int = 1         # integer box-reduction applied (see target_size)
    degenerate: str = ""        # why the image shows (almost) nothing, e.g. "constant"; "" if fine
    burned_in: str = ""         # DICOM: why burned-in text is likely (see burned_in_reason); "" if not
    crop: tuple[int, int, int, int] | None = None  # (x, y, w, h) applied, in source pixels


def load_image(
    path: str | os.PathLike,
    *,
    frame: int | None = None,
    window: str | tuple[float, float] | None = None,
    modality: str | None = None,
    axis: int = 2,
    slice_index: int | None = None,
    max_pixels: int = MAX_PIXELS,
    target_size: int | None = None,
    crop: tuple[int, int, int, int] | None = None,
) -> DecodedImage:
    """Decode `path` (PNG, JPEG, TIFF, DICOM or NIfTI) to display-ready pixels.

    frame: DICOM frame (0-based; default the middle one), TIFF page (default 0) or
      4-D NIfTI volume (default 0, the first).
    window: `(centre, width)`, a `WINDOW_PRESETS` name, or "auto" (percentile scaling);
      default: the file's own window, else the modality preset, else percentiles.
    modality: the modality (DICOM code or free text such as "CT abdomen") used to choose
      a default preset; tried before the DICOM Modality tag.
    axis, slice_index: NIfTI slicing in RAS+ canonical axes (0 sagittal, 1 coronal,
      2 axial); default the middle slice. Slices are shown with superior/anterior up
      and the patient's right on the right.
    max_pixels: refuse a 2-D image larger than this (checked from the header).
    target_size: optional hint that the caller will resize to this size; large images are
      then box-reduced early to save memory (see module docstring).
    crop: `(x, y, w, h)` in the pixels of the decoded 2-D image (DICOM Columns x Rows, the
      file's own size for PNG/JPEG/TIFF, the displayed NIfTI slice), applied before any
      reduction or normalisation: e.g. to cut burned-in text off an ultrasound frame.
      `original_width`/`original_height` then give the crop's size (what is shown).
    Raises ImageError naming the file.
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise ImageError(path, "file not found")
    if not p.is_file():
        raise ImageError(path, "not a regular file")
    try:
        with open(p, "rb") as f:
            head = f.read(352)
        nbytes = p.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from None
    if not head:
        raise ImageError(path, "empty file")
    if window is not None:
        window = _check_window(path, window)
    if crop is not None:
        crop = _check_crop(path, crop)
        target_size_hint, target_size = target_size, None  # crop in source pixels first

    name = p.name.lower()
    kind = ("DICOM" if head[128:132] == b"DICM" or name.endswith((".dcm", ".dicom"))
            else "NIfTI" if (name.endswith((".nii", ".nii.gz"))
                             or head[344:348] in (b"n+1\x00", b"ni1\x00")
                             or head[4:8] == b"n+2\x00")
            else "PIL")
    try:
        if kind == "DICOM":
            img = _load_dicom(p, frame, window, modality, max_pixels)
        elif kind == "NIfTI":
            img = _load_nifti(p, frame, window, modality, axis, slice_index, max_pixels)
        else:
            img = _load_pil(p, frame, window, max_pixels, target_size)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(path, "image too large to decode in memory") from None
    except Exception as exc:  # any decoder failure is bad input: one line, no traceback
        what = {"DICOM": "DICOM pixel data", "NIfTI": "NIfTI data", "PIL": "image"}[kind]
        raise ImageError(path, f"cannot decode {what}: corrupt, truncated or unsupported "
                               f"({type(exc).__name__}: {_short(exc)})") from None
    img.original_bytes = nbytes
    if crop is not None:
        _apply_crop(p, img, crop)
        target_size = target_size_hint
    img.degenerate = degenerate_content(img)
    if target_size and img.reduced_by == 1:
        img.pixels, img.reduced_by = _reduce(img.pixels, target_size)
    img.pixels = np.ascontiguousarray(img.pixels, dtype=np.float32)
    return img


def _check_crop(path, crop) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in crop)
    except (TypeError, ValueError):
        raise ImageError(path, f"crop must be four whole numbers x,y,w,h, not {crop!r}") from None
    if len(box) != 4 or box[0] < 0 or box[1] < 0 or box[2] < 1 or box[3] < 1:
        raise ImageError(path, f"crop must be x,y,w,h with x, y >= 0 and w, h >= 1, not {crop!r}")
    return box  # type: ignore[return-value]


def _apply_crop(p, img: DecodedImage, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    rows, cols = img.pixels.shape[:2]
    if img.reduced_by != 1:  # a loader reduced anyway: map the box (not expected)
        f = img.reduced_by
        x, y, w, h = x // f, y // f, max(1, w // f), max(1, h // f)
    if x + w > cols or y + h > rows:
        raise ImageError(p, f"crop {box[0]},{box[1]},{box[2]},{box[3]} reaches outside the "
                            f"image ({cols}x{rows} pixels)")
    img.pixels = img.pixels[y:y + h, x:x + w]
    img.original_width, img.original_height = box[2], box[3]
    img.crop = box
    img.scaling += f", cropped to x={box[0]} y={box[1]} w={box[2]} h={box[3]}"


NEAR_GREY_LEVELS = 12
"""A colour image counts as near-grey when the 99th percentile of its per-pixel channel
spread (max - min of R, G, B) is at most this many levels of 255: the faint casts
(1-4 levels, JPEG chroma noise) that Stable Diffusion-class models put on greyscale scans."""


def is_grey(pixels: np.ndarray) -> bool:
    """Exactly grey: one channel, or three identical ones."""
    px = np.asarray(pixels)
    return px.ndim == 2 or bool(np.array_equal(px[..., 0], px[..., 1])
                                and np.array_equal(px[..., 1], px[..., 2]))


def grey_spread(pixels: np.ndarray) -> float:
    """99th percentile of the per-pixel channel spread, in levels of 255 (0 for grey)."""
    px = np.asarray(pixels, np.float32)
    if px.ndim == 2:
        return 0.0
    spread = px.max(axis=-1) - px.min(axis=-1)
    return float(np.percentile(spread, 99)) * 255.0


def to_luma(pixels: np.ndarray) -> np.ndarray:
    """Rec. 601 luma (PIL's "L" weights) of HxWx3 float pixels: HxW."""
    px = np.asarray(pixels, np.float32)
    if px.ndim == 2:
        return px
    return (0.299 * px[..., 0] + 0.587 * px[..., 1] + 0.114 * px[..., 2]).astype(np.float32)


BURNED_IN_MODALITIES = ("US", "SC", "OT")
"""DICOM modalities that commonly carry burned-in text (ultrasound, secondary capture, other)."""
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def burned_in_reason(ds) -> str:
    """Why a DICOM dataset's pixels may carry burned-in text (institution, dates, names —
    patient data, and an obvious "real" cue), or "": BurnedInAnnotation (0028,0301) YES, or
    an ultrasound / secondary-capture / other image that does not say NO."""
    value = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if value == "YES":
        return "BurnedInAnnotation (0028,0301) is YES"
    if value:
        return ""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = str(ds.get("SOPClassUID", "") or "")
    if modality in BURNED_IN_MODALITIES or sop.startswith(_SECONDARY_CAPTURE):
        what = modality or "secondary capture"
        return (f"a {what} image without BurnedInAnnotation (0028,0301): such images "
                "commonly carry burned-in text")
    return ""


TINY_SIDE = 16
"""An original whose shorter side is below this many pixels is flagged as tiny."""


def degenerate_content(img: DecodedImage) -> str:
    """Why a decoded image shows (almost) nothing to a reader — "1x1 pixel", "tiny (WxH
    pixels)", "constant (every pixel the same grey/colour)", "only two values (a mask?)" —
    or "" if it looks like an image. A warning, not an error: such a file may be meant."""
    w, h = img.original_width, img.original_height
    if w * h == 1:
        return "1x1 pixel"
    px = img.pixels
    lo, hi = float(px.min()), float(px.max())
    if hi - lo < 1 / 255:  # the same 8-bit value everywhere once it is a stimulus
        return "constant (every pixel shows the same value)"
    if min(w, h) < TINY_SIDE:
        return f"tiny ({w}x{h} pixels)"
    if px.ndim == 2 and img.reduced_by == 1 and not np.any((px != lo) & (px != hi)):
        return "only two values (a segmentation mask or a line drawing?)"
    return ""


def _require_values(p, values: np.ndarray) -> None:
    """An image none of whose pixels is a number (e.g. an all-NaN NIfTI slice) is empty."""
    if values.size == 0:
        raise ImageError(p, "image has no pixels")
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).any():
        raise ImageError(p, "image has no content: no pixel holds a finite value (all NaN "
                            "or infinite)")


def reduce_factor(width: int, height: int, size: int) -> int:
    """Integer box-reduction PIL applies before resampling (width, height) to fit `size`."""
    return max(1, int(max(width, height) / size / REDUCING_GAP))


# ---------------------------------------------------------------------------------------
# intensity mapping

def _check_window(path, window):
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key == "auto" or key in WINDOW_PRESETS:
            return key
        raise ImageError(path, f"unknown window preset {window!r}; choose one of "
                               f"{', '.join(sorted(WINDOW_PRESETS))}, auto or centre/width")
    try:
        centre, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ImageError(path, f"window must be (centre, width) or a preset name, "
                               f"not {window!r}") from None
    if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
        raise ImageError(path, f"window width must be > 0 (got {window!r})")
    return (centre, width)


def _linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Map [centre - width/2, centre + width/2] linearly to [0, 1], clipping outside."""
    out = (values.astype(np.float32) - np.float32(centre - width / 2)) / np.float32(width)
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def _robust_scale(values: np.ndarray) -> np.ndarray:
    """Map the PERCENTILES of the finite values to [0, 1]."""
    values = values.astype(np.float32, copy=False)
    flat = values.reshape(-1)
    if flat.size > 1 << 22:  # percentiles of a regular subsample are plenty and much faster
        flat = flat[:: flat.size >> 22]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return np.zeros(values.shape, np.float32)
    lo, hi = np.percentile(flat, PERCENTILES)
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return _linear_window(values, (lo + hi) / 2, hi - lo)


def _default_preset(*modalities: str | None) -> str | None:
    """The DEFAULT_PRESET of the first modality that has one."""
    for modality in modalities:
        text = " ".join((modality or "").upper().replace("-", " ").split())
        for alias, code in _MODALITY_ALIASES.items():
            text = text.replace(alias, code)
        for word in [text] + text.split():
            if word in DEFAULT_PRESET:
                return DEFAULT_PRESET[word]
    return None


def _explicit_or_preset(values, window, modality):
    """Apply a caller window or the modality's default preset; None if neither applies."""
    if window == "auto":
        return _robust_scale(values), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}"
    if isinstance(window, tuple):
        return _linear_window(values, *window), f"window {window[0]:g}/{window[1]:g}"
    name = window or _default_preset(modality)
    if name:
        c, w = WINDOW_PRESETS[name]
        return _linear_window(values, c, w), f"preset {name} {c:g}/{w:g}"
    return None


# ---------------------------------------------------------------------------------------
# PNG / JPEG / TIFF through Pillow

def _load_pil(p, frame, window, max_pixels, target_size) -> DecodedImage:
    with warnings.catch_warnings():
        # Our own limit (below PIL's) decides; PIL's DecompressionBombError still maps to ours.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(p)
        except Image.DecompressionBombError as exc:
            raise ImageError(p, f"image too large: {_short(exc)} (decompression bomb "
                                "guard)") from None
        except Image.UnidentifiedImageError:
            with open(p, "rb") as f:
                if f.read(4) in _TIFF_MAGIC:  # float, planar, 16-bit colour ... TIFFs
                    return _load_tifffile(p, frame, window, max_pixels, target_size)
            raise ImageError(p, "unsupported or corrupt image file (expected PNG, JPEG, "
                                "TIFF, DICOM or NIfTI)") from None
        with im:
            fmt = _PIL_FORMATS.get(im.format or "")
            if fmt is None:
                raise ImageError(p, f"unsupported image format {im.format} (expected PNG, "
                                    "JPEG, TIFF, DICOM or NIfTI)")
            n_frames = getattr(im, "n_frames", 1)
            if frame is not None:
                if not 0 <= frame < n_frames:
                    raise ImageError(p, f"frame {frame} out of range (file has {n_frames})")
                im.seek(frame)
            w, h = im.size
            _check_pixels(p, w * h, max_pixels, f"{w}x{h}")
            mode, bits = im.mode, _pil_bit_depth(p, im)
            im.load()
            im = ImageOps.exif_transpose(im)  # show camera photos upright, as viewers do
            px, scaling, reduced = _pil_to_float(im, window, target_size, p)
    return DecodedImage(px, fmt, w, h, mode, bits, 0, None, scaling, reduced)


def _pil_bit_depth(p, im) -> int:
    if im.format == "PNG":
        with open(p, "rb") as f:
            ihdr = f.read(25)
        return int(ihdr[24])  # IHDR bit depth, e.g. 16 for a 48-bit RGB PNG PIL shows as RGB
    if im.format == "TIFF":
        bps = im.tag_v2.get(258)
        if bps:
            return int(bps[0] if isinstance(bps, tuple) else bps)
    if im.format in ("JPEG", "MPO"):
        return int(getattr(im, "bits", 8))
    return _MODE_BITS.get(im.mode, 16 if im.mode.startswith("I;16") else 8)


def _pil_to_float(im: Image.Image, window, target_size, p="image"):
    mode = im.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        values = np.asarray(im)
        _require_values(p, values)
        values, reduced = _reduce(values.astype(np.float32), target_size)
        mapped = _explicit_or_preset(values, window, None)
        if mapped is None:
            mapped = _robust_scale(values), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}"
        return mapped[0], mapped[1], reduced
    if im.info.get("icc_profile") and mode in ("RGB", "RGBA", "CMYK"):
        im = _to_srgb(im)  # the profile is dropped on re-encoding, so apply it now
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("La", "PA", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("LA" if im.mode == "La" else "RGBA")
    elif im.mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV
    if im.mode in ("LA", "RGBA"):
        # Transparent pixels are composited over black, the letterbox colour.
        grey = im.mode == "LA"
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
        im = im.convert("L" if grey else "RGB")
    reduced = 1
    if target_size:
        f = reduce_factor(im.width, im.height, target_size)
        if f > 1:
            im, reduced = im.reduce(f), f  # in uint8, before the float copy
    px = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    if window is not None and px.ndim == 2:
        # An explicit window on 8-bit grey acts on the stored 0-255 values.
        mapped = _explicit_or_preset(px * 255.0, window, None)
        return mapped[0], mapped[1], reduced
    return px, "value / 255", reduced


def _load_tifffile(p, frame, window, max_pixels, target_size) -> DecodedImage:
    """TIFFs Pillow cannot open (float, planar, many samples), through tifffile."""
    import tifffile

    try:
        tif = tifffile.TiffFile(p)
    except Exception as exc:
        raise ImageError(p, f"corrupt TIFF file ({_short(exc)})") from None
    with tif:
        pages = tif.pages
        index = 0 if frame is None else frame
        if not 0 <= index < len(pages):
            raise ImageError(p, f"frame {index} out of range (file has {len(pages)} pages)")
        page = pages[index]
        w, h = int(page.imagewidth), int(page.imagelength)
        _check_pixels(p, w * h, max_pixels, f"{w}x{h}")
        samples = int(page.samplesperpixel)
        bits = int(page.bitspersample)
        mode = f"{page.photometric.name} {np.dtype(page.dtype).name}"
        arr = page.asarray()
        axes = page.axes
    # Bring to rows x columns (x samples); drop any other axis of size 1.
    keep = [a for a in axes if a in "YXS"]
    arr = arr.reshape([n for a, n in zip(axes, arr.shape) if a in "YXS" or n > 1])
    if arr.ndim != len(keep) or "Y" not in keep or "X" not in keep:
        raise ImageError(p, f"unsupported TIFF layout {axes} {arr.shape}")
    arr = np.transpose(arr, [keep.index(a) for a in "YXS" if a in keep])
    if arr.ndim == 3 and samples >= 3:
        arr = arr[..., :3]  # RGB; extra samples (alpha) dropped
        if np.issubdtype(arr.dtype, np.integer):
            px = arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
            scaling = f"value / {np.iinfo(arr.dtype).max}"
        elif arr.min() >= 0 and arr.max() <= 1:
            px, scaling = arr.astype(np.float32), "float as stored"
        else:
            px = _robust_scale(arr)
            scaling = f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}"
    else:
        values = (arr if arr.ndim == 2 else arr[..., 0]).astype(np.float32)
        _require_values(p, values)
        mapped = _explicit_or_preset(values, window, None)
        px, scaling = mapped if mapped is not None else (
            _robust_scale(values), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}")
    px, reduced = _reduce(px, target_size)
    return DecodedImage(px, "TIFF", w, h, mode, bits, 0, None, scaling, reduced)


def _to_srgb(im: Image.Image) -> Image.Image:
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        dst = ImageCms.createProfile("sRGB")
        out_mode = "RGBA" if im.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(im, src, dst, outputMode=out_mode)
    except Exception:  # a broken profile: show the stored values, as most viewers do
        return im.convert("RGB") if im.mode == "CMYK" else im


# ---------------------------------------------------------------------------------------
# DICOM through pydicom 3

def _load_dicom(p, frame, window, modality, max_pixels) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # pydicom warns about benign deviations: kept quiet
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            force = False
        except InvalidDicomError:
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            except Exception as exc:
                raise ImageError(p, f"not a readable DICOM file ({_short(exc)})") from None
            force = True
    # A transfer syntax that lies about the VR encoding (explicit VR labelled implicit, or
    # the reverse): pydicom notices while parsing and reads the dataset the way it really
    # is, but decoding from the path trusts the label and mis-parses the Pixel Data
    # element. Such files take the whole-dataset route, which honours what was parsed.
    lying_syntax = any("but found" in str(w.message) and " VR" in str(w.message)
                       for w in caught)
    if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds:
        raise ImageError(p, "DICOM file has no image (no Rows/Columns/Bits Allocated; "
                            f"SOP class {ds.get('SOPClassUID', 'unknown')})")
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    if rows <= 0 or cols <= 0 or n_frames <= 0:
        raise ImageError(p, f"DICOM header gives an empty image ({rows}x{cols}x{n_frames})")
    _check_pixels(p, rows * cols, max_pixels, f"{cols}x{rows}")
    _check_pixels(p, rows * cols * n_frames, max_pixels * TOTAL_PIXEL_FACTOR,
                  f"{cols}x{rows} x {n_frames} frames", total=True)
    if frame is None:
        frame = n_frames // 2
    elif not 0 <= frame < n_frames:
        raise ImageError(p, f"frame {frame} out of range (file has {n_frames} frames)")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    file_modality = str(ds.get("Modality") or "").strip() or None
    # The caller's modality (often free text from a manifest) first, then the file's tag.
    preset_modality = next((m for m in (modality, file_modality) if _default_preset(m)), None)
    arr = _dicom_frame(p, ds, frame if n_frames > 1 else None, force, whole=lying_syntax)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    _require_values(p, arr)

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        px = rgb.astype(np.float32) / np.float32(np.iinfo(rgb.dtype).max)
        scaling = "palette colour LUT"
    elif samples == 3 or arr.ndim == 3:
        # pydicom converts YBR_FULL(_422) to RGB; the JPEG 2000 decoder undoes YBR_ICT/RCT.
        top = float(2 ** bits - 1) if np.issubdtype(arr.dtype, np.integer) else 1.0
        px = np.clip(arr.astype(np.float32) / np.float32(top), 0.0, 1.0)
        scaling = f"value / {top:g}"
    else:
        px, scaling = _dicom_grey(arr, ds, window, preset_modality)
        if photometric == "MONOCHROME1":
            px = 1.0 - px  # MONOCHROME1: minimum value is white
            scaling += ", inverted (MONOCHROME1)"
    return DecodedImage(px, "DICOM", cols, rows, photometric, bits, 0,
                        file_modality or modality, scaling, burned_in=burned_in_reason(ds))


def _dicom_frame(p, ds, index, force, whole=False) -> np.ndarray:
    """The frame's stored values. `whole` (and `force`, a file without a valid preamble):
    read the whole dataset first instead of decoding from the path (see `lying_syntax`)."""
    from pydicom.pixels import pixel_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (force or whole):
            try:
                # From the path pydicom reads only the requested frame.
                return pixel_array(str(p), index=index)
            except AttributeError:
                pass  # e.g. deflated or no transfer syntax: the dataset route below copes
        # Read everything; name the transfer syntax ourselves if the file meta lacks it.
        import pydicom
        from pydicom import uid

        full = pydicom.dcmread(p, force=force)
        if "PixelData" not in full and "FloatPixelData" not in full \
                and "DoubleFloatPixelData" not in full:
            raise ImageError(p, "DICOM file has no pixel data")
        meta = full.file_meta
        if "TransferSyntaxUID" not in meta:
            implicit, little = full.original_encoding
            meta.TransferSyntaxUID = (
                uid.ImplicitVRLittleEndian if implicit
                else uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)
        return pixel_array(full, index=index)


def _dicom_grey(arr, ds, window, modality):
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(arr, ds)  # rescale slope/intercept or modality LUT
    if values.dtype == np.float64:
        values = values.astype(np.float32)  # half the memory; ample precision for display
    if window is not None:
        return _explicit_or_preset(values, window, modality)
    from_file = _dicom_voi(values, ds)
    if from_file is not None:
        return from_file
    mapped = _explicit_or_preset(values, None, modality)
    if mapped is not None:
        return mapped
    return _robust_scale(values), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}"


def _dicom_voi(values, ds):
    """The file's VOI LUT or window (first view) mapped to [0, 1]; None if absent/invalid."""
    from pydicom.pixels import apply_voi_lut

    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = all(str(ds.get(k, "")).strip() not in ("", "[]", "None")
                     for k in ("WindowCenter", "WindowWidth"))
    if not (has_lut or has_window):
        return None
    try:
        if has_lut:
            arr = np.rint(values).astype(np.int64)
            nr, first = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
            probe = np.arange(first, first + (nr or 65536), dtype=np.int64)  # every entry
        else:
            arr = values.astype(np.float64)
            probe = np.array([-1e300, 1e300])  # the output range's ends, whatever function
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = apply_voi_lut(arr, ds, prefer_lut=True)
            # The output range depends on bits stored, rescale and LUT descriptor; take it
            # from pydicom rather than re-deriving it. Brighter is always the larger value.
            span = apply_voi_lut(probe, ds, prefer_lut=True)
            lo, hi = float(np.min(span)), float(np.max(span))
    except (ValueError, NotImplementedError, TypeError, AttributeError, IndexError, KeyError):
        return None  # e.g. a zero window width: fall back like a viewer would
    if out is arr:  # pydicom found nothing it could apply
        return None
    if hi == lo or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    px = np.clip((out.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    if has_lut:
        return px, "file VOI LUT"
    c = ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter
    w = ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
    return px, f"file window {float(c):g}/{float(w):g}"


# ---------------------------------------------------------------------------------------
# NIfTI through nibabel

def _load_nifti(p, frame, window, modality, axis, slice_index, max_pixels) -> DecodedImage:
    import nibabel as nib

    try:
        img = nib.load(p)
    except Exception as exc:
        raise ImageError(p, f"not a readable NIfTI file ({_short(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(p, f"unsupported volume format {type(img).__name__}")
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4 or len(shape) < 2 or min(shape) <= 0:
        raise ImageError(p, f"unsupported NIfTI shape {img.shape} (need 2-D, 3-D or 4-D)")
    _check_pixels(p, math.prod(shape), max_pixels * TOTAL_PIXEL_FACTOR,
                  "x".join(map(str, shape)), total=True)
    if axis not in (0, 1, 2):
        raise ImageError(p, f"axis must be 0, 1 or 2 (got {axis})")
    ornt = nib.io_orientation(img.affine)
    if np.isnan(ornt).any():  # degenerate affine: take the voxel axes as they are
        ornt = np.array([[0, 1], [1, 1], [2, 1]], float)
    if len(shape) == 2:  # a single slice: `axis` has nothing to choose from
        shape = shape + (1,)
        vox_axis = 2
    else:
        vox_axis = int(np.flatnonzero(ornt[:, 0] == axis)[0])
    n = shape[vox_axis]
    if slice_index is None:
        slice_index = n // 2
    elif not 0 <= slice_index < n:
        raise ImageError(p, f"slice {slice_index} out of range (axis {axis} has {n} slices)")
    in_plane = [a for a in range(3) if a != vox_axis]
    _check_pixels(p, shape[in_plane[0]] * shape[in_plane[1]], max_pixels,
                  f"{shape[in_plane[0]]}x{shape[in_plane[1]]}")
    volumes = shape[3] if len(shape) == 4 else 1
    volume = 0 if frame is None else frame
    if not 0 <= volume < volumes:
        raise ImageError(p, f"volume {volume} out of range (file has {volumes})")

    slicer: list = [slice(None)] * len(img.shape)
    if len(img.shape) > vox_axis:
        slicer[vox_axis] = (n - 1 - slice_index) if ornt[vox_axis, 1] < 0 else slice_index
    if len(img.shape) >= 4:
        slicer[3] = volume
    for extra in range(4, len(img.shape)):
        slicer[extra] = 0
    data = np.asarray(img.dataobj[tuple(slicer)], dtype=np.float32)  # only this slice
    data = data.reshape(shape[in_plane[0]], shape[in_plane[1]])
    # Put the two in-plane axes in RAS+ order, then rows = second axis pointing up.
    for k, a in enumerate(in_plane):
        if ornt[a, 1] < 0:
            data = np.flip(data, axis=k)
    if ornt[in_plane[0], 0] > ornt[in_plane[1], 0]:
        data = data.T
        in_plane = in_plane[::-1]
    display = data.T[::-1, :]
    height, width = display.shape
    _require_values(p, display)

    mapped = _explicit_or_preset(display, window, modality)
    px, scaling = mapped if mapped is not None else (
        _robust_scale(display), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}")
    px = _square_pixels(px, [float(z) for z in img.header.get_zooms()[:3]], in_plane)
    dtype = np.dtype(img.get_data_dtype())
    return DecodedImage(px, "NIfTI", width, height, dtype.name, dtype.itemsize * 8, 0,
                        modality, scaling + (f", volume {volume}" if volumes > 1 else ""))


def _square_pixels(px, zooms, in_plane):
    """Resample so a displayed pixel is square when the in-plane voxel sizes differ."""
    zx, zy = zooms[in_plane[0]], zooms[in_plane[1]]  # columns, rows
    if not (zx > 0 and zy > 0) or abs(zx / zy - 1) < 0.01:
        return px
    h, w = px.shape
    # Stretch the coarser axis; never shrink, so no detail is lost.
    if zx > zy:
        size = (max(1, round(w * zx / zy)), h)
    else:
        size = (w, max(1, round(h * zy / zx)))
    out = Image.fromarray(np.ascontiguousarray(px), "F").resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(out), 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# helpers

def _check_pixels(p, n, limit, what, total=False):
    if n > limit:
        scope = "in total" if total else "per image"
        raise ImageError(p, f"image too large: {what} = {n:,} pixels; the limit is "
                            f"{limit:,} {scope} (decompression bomb guard)")


def _reduce(px: np.ndarray, target_size: int | None):
    """Box-reduce float pixels by the same integer factor PIL's reducing_gap would use."""
    if not target_size:
        return px, 1
    h, w = px.shape[:2]
    f = reduce_factor(w, h, target_size)
    if f == 1:
        return px, 1
    chans = [px] if px.ndim == 2 else [px[..., c] for c in range(px.shape[2])]
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), "F").reduce(f))
           for c in chans]
    return (out[0] if px.ndim == 2 else np.stack(out, axis=-1)), f


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
