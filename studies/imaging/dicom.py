"""DICOM through pydicom 3: the requested frame only, the modality LUT then the file's own
window or VOI LUT (else the modality preset, else percentiles), MONOCHROME1 inverted; and
whether the pixels likely carry burned-in text."""
from __future__ import annotations

import math
import warnings

import numpy as np

from studies.imaging.scaling import (
    PERCENTILES,
    TOTAL_PIXEL_FACTOR,
    DecodedImage,
    ImageError,
    check_pixels,
    default_preset,
    explicit_or_preset,
    require_values,
    robust_scale,
    short_message,
)

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



def load_dicom(p, frame, window, modality, max_pixels) -> DecodedImage:
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
                raise ImageError(p, f"not a readable DICOM file ({short_message(exc)})") from None
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
    check_pixels(p, rows * cols, max_pixels, f"{cols}x{rows}")
    check_pixels(p, rows * cols * n_frames, max_pixels * TOTAL_PIXEL_FACTOR,
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
    preset_modality = next((m for m in (modality, file_modality) if default_preset(m)), None)
    arr = _dicom_frame(p, ds, frame if n_frames > 1 else None, force, whole=lying_syntax)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    require_values(p, arr)

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
        return explicit_or_preset(values, window, modality)
    from_file = _dicom_voi(values, ds)
    if from_file is not None:
        return from_file
    mapped = explicit_or_preset(values, None, modality)
    if mapped is not None:
        return mapped
    return robust_scale(values), f"percentiles {PERCENTILES[0]}-{PERCENTILES[1]}"


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
