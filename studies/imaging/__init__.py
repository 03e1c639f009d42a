"""Any image file to pixels: the seam through which the other packages read images.

    decode     any file (PNG/JPEG/TIFF, DICOM incl. compressed and multi-frame, NIfTI) →
               `DecodedImage`: windowing, percentiles, size limits, burned-in-text checks
    stimuli    the stimulus form a reader sees (size, grey/RGB, PNG bytes)
    manifest   CSV manifests and `--images` folders → case rows
    sizing     the stimulus size rule (`auto` or pixels)

Imports nothing else of the project except `studies.errors` (the one error base). The
names below are the public interface; `evaluation`, `model_runtime` and `studio` import
them from here.
"""
from studies.imaging.decode import (
    BURNED_IN_MODALITIES,
    DEFAULT_PRESET,
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    NEAR_GREY_LEVELS,
    PERCENTILES,
    REDUCING_GAP,
    TINY_SIDE,
    TOTAL_PIXEL_FACTOR,
    WINDOW_PRESETS,
    DecodedImage,
    ImageError,
    burned_in_reason,
    degenerate_content,
    grey_spread,
    is_image_file,
    is_grey,
    load_image,
    reduce_factor,
    to_luma,
)

__all__ = [
    "BURNED_IN_MODALITIES", "DEFAULT_PRESET", "IMAGE_SUFFIXES", "MAX_PIXELS", "NEAR_GREY_LEVELS", "PERCENTILES",
    "REDUCING_GAP", "TINY_SIDE", "TOTAL_PIXEL_FACTOR", "WINDOW_PRESETS", "DecodedImage",
    "ImageError", "burned_in_reason", "degenerate_content", "grey_spread", "is_image_file", "is_grey",
    "load_image", "reduce_factor", "to_luma",
]
