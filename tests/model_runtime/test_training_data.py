"""One decoder for training and evaluation images: `studies.imaging.decode_rgb`, the ingest
reader as RGB. Fine-tuning data, mixture tables and the augmentation experiment read DICOM
without the caller passing a decoder, and the one suffix list matches what it decodes."""
import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from imaging_fixtures import dicom_sample


def _dicom_folder(tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    shutil.copy(dicom_sample("CT_small.dcm"), folder / "ct.dcm")
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerows([("path", "caption", "label"), ("ct.dcm", "Axial CT image of the head", "ct")])
    return folder


def test_decode_rgb_is_the_ingest_reader_as_8_bit_rgb(tmp_path):
    from studies.imaging import decode_rgb, load_image

    path = dicom_sample("CT_small.dcm")
    image = decode_rgb(path)
    assert image.mode == "RGB"
    grey = load_image(path).pixels
    assert image.size == (grey.shape[1], grey.shape[0])
    np.testing.assert_array_equal(np.asarray(image)[..., 0], (np.clip(grey, 0, 1) * 255 + 0.5).astype(np.uint8))
    png = tmp_path / "rgb.png"
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(png)
    np.testing.assert_array_equal(np.asarray(decode_rgb(png)), pixels)  # 8-bit files pass through unchanged


def test_finetune_data_decodes_dicom_by_default(tmp_path):
    from model_runtime.training_data import decode_all, read_examples, square
    from studies.imaging import decode_rgb

    folder = _dicom_folder(tmp_path)
    pixels = decode_all(read_examples(folder), 16)
    assert pixels.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(pixels[0], square(decode_rgb(folder / "ct.dcm"), 16))


def test_a_mixture_table_decodes_dicom_by_default(tmp_path):
    from model_runtime.mixture import MixtureSampler, TableReader, read_mixture

    folder = _dicom_folder(tmp_path)
    (tmp_path / "mix.csv").write_text(f"source,weight\n{folder},1\n", encoding="utf-8")
    reader = MixtureSampler(read_mixture(tmp_path / "mix.csv"), seed=0).readers[0]
    assert isinstance(reader, TableReader)  # a captions.csv source
    image, caption = reader.read(0)
    assert caption == "Axial CT image of the head" and image.mode == "RGB"


def test_the_augmentation_experiment_decodes_dicom_by_default(tmp_path):
    from evaluation.augment import decode, read_labelled

    folder = _dicom_folder(tmp_path)
    items = read_labelled(folder / "captions.csv", label_column="label")
    assert decode(items, 8).shape == (1, 8, 8, 3)


@pytest.mark.parametrize("name, listed", [("a.PNG", True), ("b.nii.gz", True), ("c.dcm", True),
                                          ("d.bmp", False), ("e.webp", False), ("f.gif", False)])
def test_the_suffix_list_is_what_the_decoder_reads(tmp_path, name, listed):
    from studies.imaging import ImageError, is_image_file, load_image

    assert is_image_file(tmp_path / name) is listed
    if name.endswith((".bmp", ".webp", ".gif")):
        path = tmp_path / name
        Image.new("RGB", (4, 4)).save(path)
        with pytest.raises(ImageError, match="unsupported"):
            load_image(path)
