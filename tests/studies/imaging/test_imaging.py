"""Decoding of real sample files (pydicom, nibabel, scikit-image) and of hostile input."""
from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import pixel_array

from imaging_fixtures import (
    dicom_with_lying_transfer_syntax,
    dicom_sample, monochrome1_ct, nifti_bomb, nifti_sample, png_bomb, rewrite_dicom,
    skimage_sample,
)
from studies.imaging import WINDOW_PRESETS, DecodedImage, ImageError, load_image


def _hu(path, index=None):
    ds = pydicom.dcmread(path)
    raw = pixel_array(path, index=index).astype(np.float64)
    return raw * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


@pytest.mark.parametrize("src, name, shape, fmt, mode, bits", [
    ("dicom", "CT_small.dcm", (128, 128), "DICOM", "MONOCHROME2", 16),
    ("dicom", "693_J2KI.dcm", (512, 512), "DICOM", "MONOCHROME2", 14),          # JPEG 2000
    ("dicom", "MR_small.dcm", (64, 64), "DICOM", "MONOCHROME2", 16),
    ("dicom", "examples_ybr_color.dcm", (240, 320, 3), "DICOM", "YBR_FULL_422", 8),  # JPEG
    ("dicom", "examples_palette.dcm", (350, 800, 3), "DICOM", "PALETTE COLOR", 8),
    ("dicom", "examples_rgb_color.dcm", (240, 320, 3), "DICOM", "RGB", 8),
    ("dicom", "JPEG2000.dcm", (1024, 256), "DICOM", "MONOCHROME2", 16),
    ("dicom", "JPGExtended.dcm", (1024, 256), "DICOM", "MONOCHROME2", 12),
    ("dicom", "MR_small_jpeg_ls_lossless.dcm", (64, 64), "DICOM", "MONOCHROME2", 16),
    ("dicom", "MR_small_RLE.dcm", (64, 64), "DICOM", "MONOCHROME2", 16),
    ("dicom", "SC_rgb_rle_16bit.dcm", (100, 100, 3), "DICOM", "RGB", 16),
    ("dicom", "image_dfl.dcm", (512, 512), "DICOM", "MONOCHROME2", 8),  # deflated
    ("dicom", "MR_small_bigendian.dcm", (64, 64), "DICOM", "MONOCHROME2", 16),
    ("nifti", "anatomical.nii", (41, 33), "NIfTI", "int16", 16),
    ("nifti", "example4d.nii.gz", (96, 128), "NIfTI", "int16", 16),
    ("skimage", "retina.jpg", (1411, 1411, 3), "JPEG", "RGB", 8),
    ("skimage", "ihc.png", (512, 512, 3), "PNG", "RGB", 8),
    ("skimage", "microaneurysms.png", (102, 102), "PNG", "L", 8),
    ("skimage", "multipage_rgb.tif", (10, 10, 3), "TIFF", "RGB float64", 64),  # via tifffile
])
def test_samples_decode_to_display_pixels(src, name, shape, fmt, mode, bits):
    path = {"dicom": dicom_sample, "nifti": nifti_sample, "skimage": skimage_sample}[src](name)
    img = load_image(path)
    assert isinstance(img, DecodedImage)
    assert img.pixels.shape == shape and img.pixels.dtype == np.float32
    assert img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0
    assert img.pixels.std() > 0.02  # an image, not a flat field
    assert (img.original_format, img.original_mode, img.original_bit_depth) == (fmt, mode, bits)
    assert (img.original_height, img.original_width) == shape[:2]
    assert img.original_bytes == os.path.getsize(path)


@pytest.mark.parametrize("twin", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm"])
def test_lossless_compressed_twins_decode_to_the_same_pixels(twin):
    plain = load_image(dicom_sample("MR_small.dcm"))
    packed = load_image(dicom_sample(twin))
    assert pydicom.dcmread(dicom_sample(twin)).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(packed.pixels, plain.pixels)


def test_file_window_maps_the_window_range_to_unit_interval():
    path = dicom_sample("693_J2KI.dcm")  # JPEG 2000 CT, window 40/100 in the file
    img = load_image(path)
    assert img.scaling == "file window 40/100"
    hu = _hu(path)
    px = img.pixels
    # DICOM LINEAR windowing: <= c - 0.5 - (w-1)/2 is black, > c - 0.5 + (w-1)/2 is white.
    assert np.all(px[hu <= -10] == 0.0) and np.all(px[hu > 89] == 1.0)
    inside = (hu > -10) & (hu <= 89)
    assert inside.sum() > 1000
    expected = ((hu[inside] - 39.5) / 99 + 0.5)
    np.testing.assert_allclose(px[inside], expected, atol=1e-5)


def test_explicit_window_and_presets():
    path = dicom_sample("CT_small.dcm")
    hu = _hu(path)
    img = load_image(path, window=(40, 400))
    lo, hi = 40 - 200, 40 + 200
    assert np.all(img.pixels[hu <= lo] == 0) and np.all(img.pixels[hu >= hi] == 1)
    mid = (hu > lo) & (hu < hi)
    np.testing.assert_allclose(img.pixels[mid], (hu[mid] - lo) / 400, atol=1e-5)
    # CT without a window in the file gets the soft-tissue preset; presets are (c, w) in HU.
    default = load_image(path)
    assert default.scaling.startswith("preset soft_tissue")
    np.testing.assert_array_equal(default.pixels, img.pixels)
    lung = load_image(path, window="lung")
    np.testing.assert_array_equal(lung.pixels,
                                  load_image(path, window=WINDOW_PRESETS["lung"]).pixels)
    assert not np.array_equal(lung.pixels, img.pixels)
    # "auto": robust percentiles, about 0.5 % of pixels clipped at each end.
    auto = load_image(path, window="auto")
    assert 0 < (auto.pixels == 0).mean() < 0.05 and 0 < (auto.pixels == 1).mean() < 0.05
    with pytest.raises(ImageError, match="CT_small.dcm.*unknown window preset"):
        load_image(path, window="liver-ish")


def test_modality_lut_rescale_is_applied(tmp_path):
    src = dicom_sample("CT_small.dcm")
    shifted = rewrite_dicom(src, tmp_path / "shifted.dcm", RescaleIntercept=-924)  # +100 HU
    a = load_image(src, window=(40, 400)).pixels
    b = load_image(shifted, window=(140, 400)).pixels
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(load_image(shifted, window=(40, 400)).pixels, a)


def test_voi_lut_sequence_is_used_even_when_it_inverts(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(dicom_sample("MR_small.dcm"))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "US", list(range(65535, 0, -16)))  # 4096 entries, brightest first
    ds.VOILUTSequence = Sequence([item])
    del ds.WindowCenter, ds.WindowWidth
    path = tmp_path / "voi.dcm"
    ds.save_as(path)
    img = load_image(path)
    assert img.scaling == "file VOI LUT"
    raw = ds.pixel_array.astype(np.float64)
    lut = np.array(item.LUTData, float)
    expected = (lut[np.clip(raw, 0, 4095).astype(int)] - lut.min()) / (lut.max() - lut.min())
    np.testing.assert_allclose(img.pixels, expected, atol=1e-5)


def test_monochrome1_is_inverted(tmp_path):
    normal = load_image(dicom_sample("CT_small.dcm"))
    inverted = load_image(monochrome1_ct(tmp_path))
    assert inverted.original_mode == "MONOCHROME1"
    np.testing.assert_allclose(inverted.pixels, 1.0 - normal.pixels, atol=1e-6)


def test_multiframe_middle_frame_by_default_or_chosen():
    path = dicom_sample("examples_ybr_color.dcm")  # 30 frames, JPEG baseline, YBR_FULL_422
    middle = load_image(path)
    np.testing.assert_allclose(middle.pixels, pixel_array(path, index=15) / 255.0, atol=1e-6)
    first = load_image(path, frame=0)
    np.testing.assert_allclose(first.pixels, pixel_array(path, index=0) / 255.0, atol=1e-6)
    assert not np.array_equal(first.pixels, middle.pixels)
    with pytest.raises(ImageError, match="examples_ybr_color.dcm.*frame 30 out of range"):
        load_image(path, frame=30)


def test_colour_dicom_ybr_converted_and_palette_applied():
    ybr = load_image(dicom_sample("SC_ybr_full_422_uncompressed.dcm"))
    ds = pydicom.dcmread(dicom_sample("SC_ybr_full_422_uncompressed.dcm"))
    from pydicom.pixels import convert_color_space

    raw = pixel_array(ds, raw=True)
    np.testing.assert_allclose(ybr.pixels, convert_color_space(raw, "YBR_FULL", "RGB") / 255.0,
                               atol=1e-6)
    pal = load_image(dicom_sample("examples_palette.dcm"))
    ds = pydicom.dcmread(dicom_sample("examples_palette.dcm"))
    # Palette indices have become colour: channels differ somewhere (Doppler flow).
    assert np.abs(pal.pixels[..., 0] - pal.pixels[..., 2]).max() > 0.5
    assert ds.pixel_array.ndim == 2 and pal.pixels.ndim == 3


def test_nifti_slices_follow_canonical_orientation():
    import nibabel as nib

    path = nifti_sample("anatomical.nii")  # x axis stored right-to-left (flipped)
    canon = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, np.float32)
    for axis, k, plane in [(2, 12, canon[:, :, 12]), (0, 10, canon[10]), (1, 20, canon[:, 20])]:
        img = load_image(path, axis=axis, slice_index=k)
        expected = plane.T[::-1]  # rows: superior/anterior at the top; columns: +x right
        lo, hi = np.percentile(expected, [0.5, 99.5])
        np.testing.assert_allclose(img.pixels, np.clip((expected - lo) / (hi - lo), 0, 1),
                                   atol=1e-5)
    assert load_image(path).pixels.shape == (41, 33)  # middle axial slice by default
    np.testing.assert_array_equal(load_image(path).pixels,
                                  load_image(path, axis=2, slice_index=12).pixels)
    with pytest.raises(ImageError, match="anatomical.nii.*slice 25 out of range"):
        load_image(path, slice_index=25)


def test_nifti_4d_first_volume_by_default_and_square_pixels():
    path = nifti_sample("example4d.nii.gz")  # 128 x 96 x 24 x 2, voxels 2 x 2 x 2.2 mm
    v0, v1 = load_image(path), load_image(path, frame=1)
    np.testing.assert_array_equal(v0.pixels, load_image(path, frame=0).pixels)
    assert not np.array_equal(v0.pixels, v1.pixels)
    with pytest.raises(ImageError, match="example4d.nii.gz.*volume 2 out of range"):
        load_image(path, frame=2)
    sagittal = load_image(path, axis=0)
    # 96 (y, 2 mm) x 24 (z, 2.2 mm) voxels: rows stretched by 1.1 so pixels are square.
    assert (sagittal.original_width, sagittal.original_height) == (96, 24)
    assert sagittal.pixels.shape == (26, 96)


def test_nifti_ct_gets_window_from_modality(tmp_path):
    import nibabel as nib

    hu = np.linspace(-1000, 1000, 40 * 30 * 3, dtype=np.float32).reshape(40, 30, 3)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
    img = load_image(path, modality="CT")
    assert img.scaling.startswith("preset soft_tissue")
    plane = hu[:, :, 1].T[::-1]
    np.testing.assert_allclose(img.pixels, np.clip((plane + 160) / 400, 0, 1), atol=1e-5)


def test_16bit_tiff_and_png(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (40, 1))  # 12-bit data in 16 bits
    for ext in ("tif", "png"):
        path = tmp_path / f"ramp.{ext}"
        Image.fromarray(ramp).save(path)
        img = load_image(path)
        assert (img.original_format, img.original_mode, img.original_bit_depth) == (
            "TIFF" if ext == "tif" else "PNG", "I;16", 16)
        # Robust scaling: the stored range fills [0, 1], not 4095 / 65535 of it.
        assert img.pixels.min() == 0 and img.pixels.max() == 1
        windowed = load_image(path, window=(2048, 4096))
        np.testing.assert_allclose(windowed.pixels, ramp / 4096.0, atol=1e-5)


def test_alpha_is_composited_on_black_and_exif_rotation_applied(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :15, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert np.allclose(img.pixels[:, :15], 200 / 255) and np.all(img.pixels[:, 15:] == 0)

    photo = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    photo.save(tmp_path / "r.jpg", exif=exif)
    img = load_image(tmp_path / "r.jpg")
    assert img.pixels.shape == (40, 20, 3)


def test_target_size_hint_reduces_early_without_changing_the_stimulus(tmp_path):
    from studies.imaging.stimuli import normalise

    rng = np.random.default_rng(1)
    big = (rng.random((1500, 1200, 3)) * 255).astype(np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    full = load_image(tmp_path / "big.png")
    hinted = load_image(tmp_path / "big.png", target_size=128)
    assert hinted.reduced_by == 3 and hinted.pixels.shape == (500, 400, 3)
    assert (hinted.original_width, hinted.original_height) == (1200, 1500)
    diff = np.abs(normalise(full, 128).astype(int) - normalise(hinted, 128).astype(int))
    assert diff.max() <= 1


# ---------------------------------------------------------------------------------------
# bad input: always one ImageError naming the file

def _corrupt_cases(tmp_path):
    cases = {}
    cases["missing.png"] = tmp_path / "missing.png"
    (tmp_path / "empty.png").write_bytes(b"")
    cases["empty.png"] = tmp_path / "empty.png"
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(5000))
    cases["noise.png"] = tmp_path / "noise.png"
    ihc = open(skimage_sample("ihc.png"), "rb").read()
    (tmp_path / "half.png").write_bytes(ihc[: len(ihc) // 2])
    cases["half.png"] = tmp_path / "half.png"
    retina = open(skimage_sample("retina.jpg"), "rb").read()
    (tmp_path / "cut.jpg").write_bytes(retina[: len(retina) // 3])
    cases["cut.jpg"] = tmp_path / "cut.jpg"
    ct = open(dicom_sample("CT_small.dcm"), "rb").read()
    (tmp_path / "cut.dcm").write_bytes(ct[: len(ct) - 5000])
    cases["cut.dcm"] = tmp_path / "cut.dcm"
    cases["MR_truncated.dcm"] = dicom_sample("MR_truncated.dcm")
    cases["rtplan.dcm"] = dicom_sample("rtplan.dcm")  # DICOM without an image
    (tmp_path / "garbage.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 300)
    cases["garbage.dcm"] = tmp_path / "garbage.dcm"
    (tmp_path / "bad.nii").write_bytes(b"not a nifti header" * 30)
    cases["bad.nii"] = tmp_path / "bad.nii"
    cases["no_time_for_that_tiny.gif"] = skimage_sample("no_time_for_that_tiny.gif")
    (tmp_path / "notes.txt").write_text("just text\n" * 50)
    cases["notes.txt"] = tmp_path / "notes.txt"
    cases["folder"] = tmp_path
    return cases


def test_bad_files_raise_one_image_error_naming_the_file(tmp_path):
    sub = tmp_path / "in"
    sub.mkdir()
    for label, path in _corrupt_cases(sub).items():
        with pytest.raises(ImageError) as info:
            load_image(path)
        message = str(info.value)
        assert str(path) in message, (label, message)
        assert "\n" not in message and "Traceback" not in message
        assert info.value.path == str(path)


def test_decompression_bombs_refused_from_the_header(tmp_path):
    ct = dicom_sample("CT_small.dcm")
    bombs = [
        png_bomb(tmp_path / "bomb.png", 10_000, 10_000),        # our limit (100 Mpx)
        png_bomb(tmp_path / "huge.png", 40_000, 40_000),        # also PIL's own guard
        rewrite_dicom(ct, tmp_path / "rows.dcm", Rows=30_000, Columns=30_000),
        rewrite_dicom(ct, tmp_path / "frames.dcm", NumberOfFrames=100_000),
        nifti_bomb(tmp_path / "vol.nii"),
        nifti_bomb(tmp_path / "plane.nii", (20_000, 20_000, 1)),
    ]
    for path in bombs:
        # Each file holds only a few bytes of pixel data: the refusal must come from
        # the header, before any decoding is attempted.
        with pytest.raises(ImageError, match="too large") as info:
            load_image(path)
        assert str(path) in str(info.value)
    with pytest.raises(ImageError, match="ihc.png.*too large"):
        load_image(skimage_sample("ihc.png"), max_pixels=512 * 511)
    assert load_image(skimage_sample("ihc.png"), max_pixels=512 * 512).pixels.shape[0] == 512


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_modality_text_picks_the_preset(tmp_path):
    path = dicom_sample("CT_small.dcm")
    soft = load_image(path, window="soft_tissue").pixels
    # Free-text modality from a manifest does not hide the file's own CT tag ...
    img = load_image(path, modality="chest radiograph")
    assert img.modality == "CT" and img.scaling.startswith("preset soft_tissue")
    np.testing.assert_array_equal(img.pixels, soft)
    # ... and a description naming CT gives the preset where the file has no tag.
    untagged = rewrite_dicom(path, tmp_path / "untagged.dcm", Modality=None)
    assert load_image(untagged).scaling.startswith("percentiles")
    for text in ("CT abdomen", "computed tomography", "ct"):
        np.testing.assert_array_equal(load_image(untagged, modality=text).pixels, soft)
    assert load_image(untagged, modality="MR").scaling.startswith("percentiles")


@pytest.mark.parametrize("body_implicit", [False, True], ids=["explicit-labelled-implicit",
                                                              "implicit-labelled-explicit"])
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_dicom_whose_transfer_syntax_lies_decodes_like_the_original(tmp_path, name, body_implicit):
    """The file meta names the wrong VR encoding; decoding from the path trusted the label
    and shifted the pixels. The pixels must equal the original's (and pydicom's own
    dataset decode of the lying file)."""
    src = dicom_sample(name)
    liar = dicom_with_lying_transfer_syntax(src, tmp_path / "liar.dcm", body_implicit=body_implicit)
    with pytest.warns(UserWarning, match="but found"):  # the lie is real: pydicom notices
        assert np.array_equal(pydicom.dcmread(liar).pixel_array, pydicom.dcmread(src).pixel_array)
    for window in (None, "auto"):
        got, want = load_image(liar, window=window), load_image(src, window=window)
        assert np.array_equal(got.pixels, want.pixels)
        assert got.scaling == want.scaling


def test_all_nan_nifti_is_an_error_naming_the_file(tmp_path):
    import nibabel as nib

    data = np.full((8, 9, 5), np.nan, np.float32)
    path = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(ImageError, match=r"empty\.nii\.gz: image has no content.*NaN"):
        load_image(path)
    data[:, :, 0] = np.arange(72, dtype=np.float32).reshape(8, 9)  # another slice has content
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(ImageError, match="no content"):
        load_image(path)  # the middle slice (2) is still all NaN
    assert load_image(path, slice_index=0).degenerate == "tiny (8x9 pixels)"  # but decodes


def _png(path, array, mode=None):
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_images_that_show_nothing_are_flagged_not_refused(tmp_path):
    """1x1, tiny, constant (also a constant DICOM frame) and two-valued (mask-like) images
    decode, with `degenerate` saying what is wrong; an ordinary image has it empty."""
    rng = np.random.default_rng(0)
    one = load_image(_png(tmp_path / "one.png", np.array([[200]], np.uint8)))
    assert one.degenerate == "1x1 pixel"
    tiny = load_image(_png(tmp_path / "tiny.png", rng.integers(0, 255, (8, 40), np.uint8)))
    assert tiny.degenerate == "tiny (40x8 pixels)"
    flat = load_image(_png(tmp_path / "flat.png", np.full((64, 64, 3), 90, np.uint8)))
    assert flat.degenerate.startswith("constant")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 255
    assert load_image(_png(tmp_path / "mask.png", mask)).degenerate.startswith("only two values")
    ct = pydicom.dcmread(dicom_sample("CT_small.dcm"))
    ct.PixelData = np.full((ct.Rows, ct.Columns), 7, np.int16).tobytes()
    ct.save_as(tmp_path / "flat.dcm")
    assert load_image(tmp_path / "flat.dcm").degenerate.startswith("constant")
    assert load_image(dicom_sample("CT_small.dcm")).degenerate == ""
    noisy = rng.integers(0, 255, (64, 64), np.uint8)
    assert load_image(_png(tmp_path / "ok.png", noisy)).degenerate == ""
