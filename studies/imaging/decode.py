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

import io
import math
import os
import pathlib
import warnings

import numpy as np
from PIL import Image, ImageOps

from studies.imaging.dicom import load_dicom
from studies.imaging.scaling import (
    MAX_PIXELS,
    PERCENTILES,
    TOTAL_PIXEL_FACTOR,
    DecodedImage,
    ImageError,
    check_pixels,
    check_window,
    explicit_or_preset,
    reduce_factor,
    reduce_pixels,
    require_values,
    robust_scale,
    short_message,
)

__all__ = [
    "IMAGE_SUFFIXES", "NEAR_GREY_LEVELS", "TINY_SIDE", "decode_rgb", "degenerate_content", "grey_spread",
    "is_grey", "is_image_file", "load_image", "to_luma",
]

# Every file suffix the project treats as an image (folders, uploads, fine-tuning data): exactly
# what load_image decodes, so a listed file never fails for its format alone.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz")


def is_image_file(path) -> bool:
    """Whether `path`'s name ends in one of IMAGE_SUFFIXES (case-insensitive; `.nii.gz` whole)."""
    return pathlib.Path(path).name.lower().endswith(IMAGE_SUFFIXES)


_PIL_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "TIFF": "TIFF"}
_MODE_BITS = {"1": 1, "I": 32, "F": 32}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


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
        window = check_window(path, window)
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
            img = load_dicom(p, frame, window, modality, max_pixels)
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
                               f"({type(exc).__name__}: {short_message(exc)})") from None
    img.original_bytes = nbytes
    if crop is not None:
        _apply_crop(p, img, crop)
        target_size = target_size_hint
    img.degenerate = degenerate_content(img)
    if target_size and img.reduced_by == 1:
        img.pixels, img.reduced_by = reduce_pixels(img.pixels, target_size)
    img.pixels = np.ascontiguousarray(img.pixels, dtype=np.float32)
    return img



def decode_rgb(path: str | os.PathLike) -> Image.Image:
    """8-bit RGB Pillow image of any file `load_image` reads, windowed as at study ingest: how
    training and evaluation images are decoded, so DICOM and NIfTI look as readers see them."""
    pixels = load_image(path).pixels
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return Image.fromarray((np.clip(pixels[..., :3], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))

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


# ---------------------------------------------------------------------------------------
# PNG / JPEG / TIFF through Pillow

def _load_pil(p, frame, window, max_pixels, target_size) -> DecodedImage:
    with warnings.catch_warnings():
        # Our own limit (below PIL's) decides; PIL's DecompressionBombError still maps to ours.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(p)
        except Image.DecompressionBombError as exc:
            raise ImageError(p, f"image too large: {short_message(exc)} (decompression bomb "
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
            check_pixels(p, w * h, max_pixels, f"{w}x{h}")
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
        require_values(p, values)
        values, reduced = reduce_pixels(values.astype(np.float32), target_size)
        mapped = explicit_or_preset(values, window, None)
        if mapped is None:
            mapped = robust_scale(values), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}"
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
        mapped = explicit_or_preset(px * 255.0, window, None)
        return mapped[0], mapped[1], reduced
    return px, "value / 255", reduced


def _load_tifffile(p, frame, window, max_pixels, target_size) -> DecodedImage:
    """TIFFs Pillow cannot open (float, planar, many samples), through tifffile."""
    import tifffile

    try:
        tif = tifffile.TiffFile(p)
    except Exception as exc:
        raise ImageError(p, f"corrupt TIFF file ({short_message(exc)})") from None
    with tif:
        pages = tif.pages
        index = 0 if frame is None else frame
        if not 0 <= index < len(pages):
            raise ImageError(p, f"frame {index} out of range (file has {len(pages)} pages)")
        page = pages[index]
        w, h = int(page.imagewidth), int(page.imagelength)
        check_pixels(p, w * h, max_pixels, f"{w}x{h}")
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
            px = robust_scale(arr)
            scaling = f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}"
    else:
        values = (arr if arr.ndim == 2 else arr[..., 0]).astype(np.float32)
        require_values(p, values)
        mapped = explicit_or_preset(values, window, None)
        px, scaling = mapped if mapped is not None else (
            robust_scale(values), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}")
    px, reduced = reduce_pixels(px, target_size)
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
# NIfTI through nibabel

def _load_nifti(p, frame, window, modality, axis, slice_index, max_pixels) -> DecodedImage:
    import nibabel as nib

    try:
        img = nib.load(p)
    except Exception as exc:
        raise ImageError(p, f"not a readable NIfTI file ({short_message(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(p, f"unsupported volume format {type(img).__name__}")
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4 or len(shape) < 2 or min(shape) <= 0:
        raise ImageError(p, f"unsupported NIfTI shape {img.shape} (need 2-D, 3-D or 4-D)")
    check_pixels(p, math.prod(shape), max_pixels * TOTAL_PIXEL_FACTOR,
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
    check_pixels(p, shape[in_plane[0]] * shape[in_plane[1]], max_pixels,
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
    require_values(p, display)

    mapped = explicit_or_preset(display, window, modality)
    px, scaling = mapped if mapped is not None else (
        robust_scale(display), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}")
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


