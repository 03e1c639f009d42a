"""Blinded stimulus form: letterboxed square 8-bit RGB PNG, no metadata, deterministic bytes."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from imaging_fixtures import dicom_sample, nifti_sample, skimage_sample
from studies.imaging import load_image
from studies.imaging.stimuli import (
    decode_png, encode_png, letterbox_geometry, new_stimulus_id, normalise, png_chunk_types,
    render_stimulus,
)


def _ihdr(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR."""
    return (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"),
            data[24], data[25])


@pytest.fixture(scope="module")
def mixed_sources(tmp_path_factory):
    """One image of every supported format, with all the metadata their originals carry."""
    tmp = tmp_path_factory.mktemp("mixed")
    tagged = tmp / "tagged.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a chest x-ray, Steps: 30, Seed: 1234, Model: secret")
    info.add_itxt("Comment", "synthetic_007")
    from PIL import ImageCms

    exif = Image.Exif()
    exif[0x010E] = "synthetic_007 from model X"  # ImageDescription
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.open(skimage_sample("ihc.png")).save(
        tagged, pnginfo=info, dpi=(300, 300), icc_profile=icc, exif=exif)
    assert {"tEXt", "iTXt", "pHYs", "iCCP", "eXIf"} <= set(png_chunk_types(tagged.read_bytes()))
    tiff16 = tmp / "ramp16.tif"
    Image.fromarray(np.tile(np.arange(0, 65535, 257, dtype=np.uint16), (60, 1))).save(tiff16)
    return [
        dicom_sample("CT_small.dcm"), dicom_sample("693_J2KI.dcm"),
        dicom_sample("examples_ybr_color.dcm"), dicom_sample("examples_palette.dcm"),
        nifti_sample("anatomical.nii"), nifti_sample("example4d.nii.gz"),
        skimage_sample("retina.jpg"), skimage_sample("microaneurysms.png"), str(tagged),
        str(tiff16),
    ]


def test_every_format_gives_the_identical_stimulus_form(mixed_sources):
    forms = set()
    for path in mixed_sources:
        png = render_stimulus(load_image(path), 96)
        chunks = png_chunk_types(png)
        assert chunks[0] == "IHDR" and chunks[-1] == "IEND", path
        assert set(chunks) == {"IHDR", "IDAT", "IEND"}, (path, chunks)
        forms.add(_ihdr(png))
        with Image.open(io.BytesIO(png)) as im:
            assert im.mode == "RGB" and im.size == (96, 96) and not im.info, (path, im.info)
    assert forms == {(96, 96, 8, 2)}  # 96 x 96, 8 bits, truecolour, for every format


def test_metadata_of_the_source_never_reaches_the_stimulus(mixed_sources):
    tagged = [p for p in mixed_sources if p.endswith("tagged.png")][0]
    with Image.open(tagged) as im:
        assert "parameters" in im.info  # the source does carry it
    png = render_stimulus(load_image(tagged), 64)
    assert b"Seed" not in png and b"synthetic_007" not in png and b"parameters" not in png
    assert png_chunk_types(png) == ["IHDR", "IDAT", "IEND"]


def test_letterbox_preserves_aspect_and_centres_on_black():
    wide = np.ones((50, 100), np.float32)  # 2:1 white
    out = normalise(wide, 100)
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8
    assert np.all(out[25:75] == 255) and np.all(out[:25] == 0) and np.all(out[75:] == 0)
    tall = np.ones((90, 30, 3), np.float32)
    out = normalise(tall, 60)  # 20 x 60 content, columns 20..39
    assert np.all(out[:, 20:40] == 255) and np.all(out[:, :20] == 0) and np.all(out[:, 40:] == 0)
    assert letterbox_geometry(256, 1024, 128) == (32, 128, 48, 0)
    assert letterbox_geometry(33, 41, 64) == (52, 64, 6, 0)


def test_grey_and_colour_go_through_the_same_resampling():
    rng = np.random.default_rng(3)
    grey = rng.random((70, 50)).astype(np.float32)
    as_grey = normalise(grey, 64)
    as_colour = normalise(np.repeat(grey[..., None], 3, axis=2), 64)
    np.testing.assert_array_equal(as_grey, as_colour)
    assert np.array_equal(as_grey[..., 0], as_grey[..., 2])
    # Lanczos, not nearest-neighbour: a smooth ramp stays smooth when shrunk 3x.
    ramp = np.tile(np.linspace(0, 1, 192, dtype=np.float32), (192, 1))
    row = normalise(ramp, 64)[32, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0) and np.abs(np.diff(row)).max() <= 5


def test_png_encoding_is_lossless_and_deterministic():
    rng = np.random.default_rng(5)
    arr = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    a, b = encode_png(arr), encode_png(arr.copy())
    assert a == b
    np.testing.assert_array_equal(decode_png(a), arr)
    other = arr.copy()
    other[0, 0, 0] ^= 1
    assert encode_png(other) != a
    with pytest.raises(ValueError):
        encode_png(arr.astype(np.float32))
    with pytest.raises(ValueError):
        encode_png(arr[..., 0])


def test_render_is_reproducible_from_the_file():
    path = dicom_sample("693_J2KI.dcm")
    assert render_stimulus(load_image(path), 128) == render_stimulus(load_image(path), 128)


def test_png_chunk_types_lists_and_checks_chunks():
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "x")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    assert png_chunk_types(data) == ["IHDR", "tEXt", "IDAT", "IEND"]
    broken = bytearray(data)
    broken[20] ^= 0xFF  # inside IHDR: CRC no longer matches
    with pytest.raises(ValueError, match="CRC"):
        png_chunk_types(bytes(broken))
    with pytest.raises(ValueError, match="signature"):
        png_chunk_types(b"GIF89a....")


def test_stimulus_ids_are_random_opaque_and_url_safe():
    ids = {new_stimulus_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) >= 22 and re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)


def test_normalise_rejects_bad_arguments():
    with pytest.raises(ValueError):
        normalise(np.zeros((10, 10, 4), np.float32), 64)
    with pytest.raises(ValueError):
        normalise(np.zeros((10, 10), np.float32), 4)
