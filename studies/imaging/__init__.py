"""Any image file to pixels: the seam through which the other packages read images.

    decode     any file (PNG/JPEG/TIFF, NIfTI; DICOM through `dicom`) → `DecodedImage`;
               `decode_rgb`, the same as an 8-bit RGB image (training, evaluation)
    dicom      DICOM incl. compressed and multi-frame: frames, VOI/windows, burned-in-text checks
    scaling    `DecodedImage`, `ImageError`, windows, presets, percentiles, size limits
    stimuli    the stimulus form a reader sees (size, grey/RGB, PNG bytes)
    manifest   CSV manifests and `--images` folders → case rows
    sizing     the stimulus size rule (`auto` or pixels)

Imports nothing else of the project except `studies.errors` (the one error base). The
names below are the public interface; `evaluation`, `model_runtime` and `studio` import
them from here.
"""
from studies.imaging.decode import (
    IMAGE_SUFFIXES,
    NEAR_GREY_LEVELS,
    TINY_SIDE,
    decode_rgb,
    degenerate_content,
    grey_spread,
    is_grey,
    is_image_file,
    load_image,
    to_luma,
)
from studies.imaging.dicom import BURNED_IN_MODALITIES, burned_in_reason
from studies.imaging.scaling import (
    DEFAULT_PRESET,
    MAX_PIXELS,
    PERCENTILES,
    REDUCING_GAP,
    TOTAL_PIXEL_FACTOR,
    WINDOW_PRESETS,
    DecodedImage,
    ImageError,
    reduce_factor,
)

__all__ = [
    "BURNED_IN_MODALITIES", "DEFAULT_PRESET", "IMAGE_SUFFIXES", "MAX_PIXELS", "NEAR_GREY_LEVELS", "PERCENTILES",
    "REDUCING_GAP", "TINY_SIDE", "TOTAL_PIXEL_FACTOR", "WINDOW_PRESETS", "DecodedImage",
    "ImageError", "burned_in_reason", "decode_rgb", "degenerate_content", "grey_spread", "is_image_file", "is_grey",
    "load_image", "reduce_factor", "to_luma",
]
