"""model_runtime.provenance: A1111 parameters + JSON in PNG, DICOM Secondary Capture export."""
import json
import pathlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from model_runtime import provenance
from model_runtime.generation import GeneratedImage, GenerationRequest, generate
from model_runtime.loading import load
from runtime_fixtures import single_torch_thread, tiny_sd1_dir  # noqa: F401


def fake(prompt="AP Frontal Chest X-ray (CXR) of a male patient", negative="", gray=False, **kw) -> GeneratedImage:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(24, 20, 1 if gray else 3), dtype=np.uint8)
    if gray:
        pixels = np.repeat(pixels, 3, axis=2)
    fields = dict(image=Image.fromarray(pixels), prompt=prompt, negative_prompt=negative, seed=1234, index=0,
                  steps=30, guidance_scale=7.0, scheduler="DPM++ 2M Karras", width=20, height=24, extra={},
                  model_id="hiesingerlab/MediSyn", model_name="MediSyn", pipeline_class="StableDiffusionPipeline",
                  weights_sha256="ab" * 32, device="cpu", dtype="fp32")
    fields.update(kw)
    return GeneratedImage(**fields)


def test_a1111_parameters_format():
    rec = provenance.record(fake(negative="blurry, text"))
    assert provenance.a1111_parameters(rec) == (
        "AP Frontal Chest X-ray (CXR) of a male patient\n"
        "Negative prompt: blurry, text\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 20x24, Model: hiesingerlab/MediSyn")
    # A1111 leaves the negative line out when there is none; fractional CFG keeps its digits
    rec = provenance.record(fake(guidance_scale=7.5, model_id="/models/medisyn-mini"))
    assert provenance.a1111_parameters(rec) == (
        "AP Frontal Chest X-ray (CXR) of a male patient\n"
        "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234, Size: 20x24, Model: medisyn-mini")


def test_a1111_round_trip_with_awkward_values():
    rec = provenance.record(fake(prompt="line one\nline two: with colon", negative="a\nb",
                                 model_id="owner/model", scheduler="Euler a"))
    rec["model"]["id"] = "weird, name: x"
    parsed = provenance.parse_a1111_parameters(provenance.a1111_parameters(rec))
    assert parsed["prompt"] == "line one\nline two: with colon" and parsed["negative_prompt"] == "a\nb"
    assert parsed["Model"] == "weird, name: x" and parsed["Sampler"] == "Euler a"
    assert (parsed["Steps"], parsed["CFG scale"], parsed["Seed"], parsed["Size"]) == ("30", "7", "1234", "20x24")


def test_png_carries_both_chunks_and_the_pixels(tmp_path):
    img = fake(negative="noise")
    path = img.save_png(tmp_path / "sub" / "a.png")
    text, rec = provenance.read_png(path)
    assert text == provenance.a1111_parameters(provenance.record(img))
    assert rec["synthetic"] is True
    assert rec["model"] == {"id": "hiesingerlab/MediSyn", "name": "MediSyn", "pipeline": "StableDiffusionPipeline",
                            "weights_sha256": "ab" * 32}
    assert rec["parameters"] == img.parameters() | {"index": 0}
    assert rec["software"].startswith("medisyn-studio ")
    assert set(rec["runtime"]) >= {"device", "dtype", "torch", "diffusers"}
    raw = path.read_bytes()
    assert b"tEXtparameters\x00" in raw and b"tEXtmedisyn\x00" in raw
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im), np.asarray(img.image))
    # deterministic bytes, atomic write (no temporary files left behind)
    assert img.save_png(tmp_path / "b.png").read_bytes() == raw
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png", "b.png"]


def test_non_latin1_prompt_survives(tmp_path):
    img = fake(prompt="Lésion ≥ 5 mm — 肺結節")
    text, rec = provenance.read_png(img.save_png(tmp_path / "u.png"))
    assert text.startswith("Lésion ≥ 5 mm — 肺結節\n") and rec["parameters"]["prompt"] == "Lésion ≥ 5 mm — 肺結節"


def test_dicom_secondary_capture_marked_synthetic(tmp_path):
    img = fake(negative="blurry")
    path = provenance.save_dicom(img, tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
    assert ds.ConversionType == "SYN" and ds.BurnedInAnnotation == "NO"
    assert "SYNTHETIC" in ds.ImageComments and "Negative prompt: blurry" in ds.ImageComments
    assert "SYNTHETIC" in ds.DerivationDescription and "ab" * 32 in ds.DerivationDescription
    assert ds.PhotometricInterpretation == "RGB"
    assert np.array_equal(ds.pixel_array, np.asarray(img.image))
    assert provenance.read_dicom_provenance(path) == provenance.record(img)
    # UIDs come from the content: the same image exports identically, another one does not
    again = pydicom.dcmread(provenance.save_dicom(img, tmp_path / "b.dcm"))
    assert again.SOPInstanceUID == ds.SOPInstanceUID and again.StudyInstanceUID == ds.StudyInstanceUID
    other = pydicom.dcmread(provenance.save_dicom(fake(seed=1), tmp_path / "c.dcm"))
    assert other.SOPInstanceUID != ds.SOPInstanceUID


def test_dicom_gray_images_are_monochrome(tmp_path):
    img = fake(gray=True)
    ds = pydicom.dcmread(provenance.save_dicom(img, tmp_path / "g.dcm", modality="DX"))
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1 and ds.Modality == "DX"
    assert np.array_equal(ds.pixel_array, np.asarray(img.image)[..., 0])
    assert provenance.read_dicom_provenance(tmp_path / "g.dcm")["synthetic"] is True


def test_generated_image_round_trip(tmp_path, tiny_sd1_dir):
    loaded = load(tiny_sd1_dir)
    result = generate(loaded, GenerationRequest("fundoscopy image of the left retina", seed=3, steps=2,
                                                width=32, height=32))[0]
    text, rec = provenance.read_png(result.save_png(tmp_path / "x.png"))
    assert rec["model"]["weights_sha256"] == loaded.weights_hash
    # the checkpoint's own scheduler is recorded by class name...
    assert rec["parameters"]["seed"] == 3 and rec["parameters"]["scheduler"] == "DDIMScheduler"
    assert "Sampler: DDIMScheduler," in text
    # ...and the recorded parameters regenerate the image exactly
    params = {k: v for k, v in rec["parameters"].items() if k != "index"}
    again = generate(loaded, GenerationRequest(**params))[0]
    assert again.image.tobytes() == result.image.tobytes()
    # a local checkpoint is named by its folder (".../tiny-sd1N/pipeline" -> "tiny-sd1N")
    assert text.endswith(f"Seed: 3, Size: 32x32, Model: {pathlib.Path(tiny_sd1_dir).parent.name}")
    assert json.loads(json.dumps(rec)) == rec


def test_reading_a_plain_png_gives_none(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert provenance.read_png(tmp_path / "plain.png") == (None, None)
    with pytest.raises(FileNotFoundError):
        provenance.read_png(tmp_path / "missing.png")


def test_generator_label_is_the_registry_key_for_the_embedded_model_however_named(tmp_path):
    from model_runtime import provenance, registry

    entry = registry.get(registry.EMBEDDED)
    assert provenance.generator_label("embedded", entry) == "embedded"
    assert provenance.generator_label(str(registry.embedded_model_path())) == "embedded"
    assert provenance.generator_label(str(tmp_path / "models" / "my-finetune")) == "my-finetune"
