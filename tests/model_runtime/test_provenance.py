"""model_runtime.provenance: A1111 parameters + JSON in PNG, DICOM Secondary Capture export."""
import json
import pathlib

import numpy as np
import pydicom
import pytest
from PIL import Image

from infotext_readers import a1111_parse, comfyui_import
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
    # the negative line is written even when empty (ComfyUI's importer needs it); fractional
    # CFG keeps its digits; Model hash is the first 10 hex digits of the denoiser file's sha256
    rec = provenance.record(fake(guidance_scale=7.5, model_id="/models/medisyn-mini", denoiser_sha256="0123456789" * 6 + "abcd",
                                 scheduler="DDIMScheduler", sampler_a1111="DDIM"))
    assert provenance.a1111_parameters(rec) == (
        "AP Frontal Chest X-ray (CXR) of a male patient\n"
        "Negative prompt:\n"
        "Steps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 1234, Size: 20x24, Model hash: 0123456789, "
        "Model: medisyn-mini")
    # the JSON keeps the class name (it regenerates the image) and the full denoiser hash
    assert rec["parameters"]["scheduler"] == "DDIMScheduler" and rec["parameters_a1111"] == {"sampler": "DDIM"}
    assert rec["model"]["denoiser_sha256"] == "0123456789" * 6 + "abcd"


@pytest.mark.parametrize("negative", ["", "blurry, text: none", "two\nlines"])
@pytest.mark.parametrize("sampler, comfy", [("DPM++ 2M Karras", ("dpmpp_2m", "karras")),
                                            ("DPM++ 2M", ("dpmpp_2m", "normal")),
                                            ("Euler", ("euler", "normal")), ("DDIM", ("ddim", "normal")),
                                            ("LMS Karras", ("lms", "karras"))])
def test_a1111_and_comfyui_read_the_parameters_chunk(negative, sampler, comfy):
    img = fake(prompt="AP Frontal Chest X-ray (CXR), 65 year old: female", negative=negative,
               scheduler=sampler, guidance_scale=3.5, denoiser_sha256="fedcba9876" + "0" * 54)
    text = provenance.a1111_parameters(provenance.record(img))
    a = a1111_parse(text)
    assert "_errors" not in a
    assert (a["Prompt"], a["Negative prompt"]) == ("AP Frontal Chest X-ray (CXR), 65 year old: female", negative)
    assert (a["Steps"], a["Sampler"], a["CFG scale"], a["Seed"]) == ("30", sampler, "3.5", "1234")
    assert (a["Size-1"], a["Size-2"], a["Model hash"], a["Model"]) == ("20", "24", "fedcba9876", "hiesingerlab/MediSyn")
    c = comfyui_import(text)
    assert c is not None, "ComfyUI imports nothing from this text"
    assert (c["positive"], c["negative"]) == ("AP Frontal Chest X-ray (CXR), 65 year old: female", negative.strip())
    assert (c["sampler_name"], c["scheduler"]) == comfy
    assert (c["steps"], c["seed"], c["cfg scale"]) == (30, 1234, 3.5)


def test_comfyui_ignores_text_without_a_negative_line():
    # what this module wrote before (A1111's own habit): ComfyUI then imports nothing
    old = "a prompt\nSteps: 30, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Model: m"
    assert comfyui_import(old) is None
    assert comfyui_import(provenance.a1111_parameters(provenance.record(fake(prompt="a prompt")))) is not None


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


def test_dicom_has_an_empty_patient_orientation_and_greyscale_modalities_become_monochrome(tmp_path):
    img = fake()  # colour noise
    ds = pydicom.dcmread(provenance.save_dicom(img, tmp_path / "c.dcm"))
    assert "PatientOrientation" in ds and ds.PatientOrientation in ("", None)  # Type 2: present, empty
    assert ds.PhotometricInterpretation == "RGB"
    # a CT whose generated RGB channels differ slightly is written from its luminance
    ds = pydicom.dcmread(provenance.save_dicom(img, tmp_path / "ct.dcm", modality="CT", grayscale=True))
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.SamplesPerPixel == 1
    assert np.array_equal(ds.pixel_array, np.asarray(img.image.convert("L")))
    assert [provenance.dicom_modality(m) for m in ("CT", "chest X-ray", "MRI", "OCT", "fundus photograph", "x")] == [
        "CT", "DX", "MR", "OPT", "OP", "OT"]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    import os
    import stat

    old = os.umask(mask)
    try:
        assert provenance.current_umask() == mask
        png = fake().save_png(tmp_path / "a.png")
        dcm = provenance.save_dicom(fake(), tmp_path / "a.dcm")
    finally:
        os.umask(old)
    assert stat.S_IMODE(png.stat().st_mode) == mode and stat.S_IMODE(dcm.stat().st_mode) == mode


def test_model_hash_file_of_a_diffusers_folder(tmp_path, tiny_sd1_dir):
    import hashlib

    files = provenance.denoiser_weights_files(tiny_sd1_dir)
    assert [f.relative_to(tiny_sd1_dir).as_posix() for f in files] == ["unet/diffusion_pytorch_model.safetensors"]
    assert provenance.denoiser_sha256(tiny_sd1_dir) == hashlib.sha256(files[0].read_bytes()).hexdigest()
    # a sharded transformer: a hash over its shards, in order
    shards = tmp_path / "transformer"
    shards.mkdir()
    for i in (1, 2):
        (shards / f"diffusion_pytorch_model-0000{i}-of-00002.safetensors").write_bytes(bytes([i]) * 10)
    lines = "\n".join(f"diffusion_pytorch_model-0000{i}-of-00002.safetensors:{hashlib.sha256(bytes([i]) * 10).hexdigest()}"
                      for i in (1, 2))
    assert provenance.denoiser_sha256(tmp_path) == hashlib.sha256(lines.encode()).hexdigest()
    assert provenance.denoiser_sha256(tmp_path / "nothing") == ""


def test_generated_image_round_trip(tmp_path, tiny_sd1_dir):
    loaded = load(tiny_sd1_dir)
    result = generate(loaded, GenerationRequest("fundoscopy image of the left retina", seed=3, steps=2,
                                                width=32, height=32))[0]
    text, rec = provenance.read_png(result.save_png(tmp_path / "x.png"))
    assert rec["model"]["weights_sha256"] == loaded.weights_hash
    # the checkpoint's own scheduler is recorded by class name in the JSON, by A1111's name in the text...
    assert rec["parameters"]["seed"] == 3 and rec["parameters"]["scheduler"] == "DDIMScheduler"
    assert "Sampler: DDIM," in text
    unet_file = pathlib.Path(tiny_sd1_dir) / "unet" / "diffusion_pytorch_model.safetensors"
    import hashlib
    assert f"Model hash: {hashlib.sha256(unet_file.read_bytes()).hexdigest()[:10]}," in text
    # ...and the recorded parameters regenerate the image exactly
    params = {k: v for k, v in rec["parameters"].items() if k != "index"}
    again = generate(loaded, GenerationRequest(**params))[0]
    assert again.image.tobytes() == result.image.tobytes()
    # a local checkpoint is named by its folder (".../tiny-sd1N/pipeline" -> "tiny-sd1N")
    assert text.endswith(f", Model: {pathlib.Path(tiny_sd1_dir).parent.name}") and "Seed: 3, Size: 32x32, " in text
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
