"""model_runtime.loading / devices / registry: every family loads offline through load()."""
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import torch

from model_runtime import devices, loading, provenance, registry
from model_runtime.generation import GenerationRequest, generate
from model_runtime.loading import LoadOptions, ModelNotFoundError, load
from runtime_fixtures import (FAMILY_EXTRA, single_torch_thread, tiny_flux_dir,  # noqa: F401
                              tiny_kandinsky22_dir, tiny_pixart_dir, tiny_sd1_dir, tiny_sd2_dir,
                              tiny_sd3_dir, tiny_sdxl_dir)

FAMILIES = {
    "sd1": ("StableDiffusionPipeline", "sd"),
    "sd2": ("StableDiffusionPipeline", "sd"),
    "sdxl": ("StableDiffusionXLPipeline", "sdxl"),
    "pixart": ("PixArtAlphaPipeline", "pixart"),
    "sd3": ("StableDiffusion3Pipeline", "sd3"),
    "flux": ("FluxPipeline", "flux"),
    "kandinsky22": ("KandinskyV22CombinedPipeline", "kandinsky22"),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_loads_and_generates_offline(family, request):
    path = request.getfixturevalue(f"tiny_{family}_dir")
    loaded = load(path)
    pipeline_class, family_name = FAMILIES[family]
    assert loaded.pipeline_class == pipeline_class
    assert loaded.family == family_name
    assert (loaded.device, loaded.dtype) == ("cpu", torch.float32)
    # SDPA everywhere: no classic (non-"2_0") attention processor is left
    processors = loading.attention_processors(loaded.pipe)
    assert processors and "AttnProcessor" not in processors
    extra = FAMILY_EXTRA.get(family, {})
    steps = []
    images = generate(loaded, GenerationRequest("chest x-ray of a patient", num_images=2, seed=3, steps=2,
                                                width=32, height=32, extra=extra),
                      on_step=lambda done, total: steps.append((done, total)))
    assert [im.seed for im in images] == [3, 4]
    assert all(im.image.size == (32, 32) and im.image.mode == "RGB" for im in images)
    a, b = (np.asarray(im.image, dtype=np.int16) for im in images)
    assert np.abs(a - b).max() > 0, "two seeds gave the same image"
    assert steps and steps[-1][0] == steps[-1][1]
    assert images[0].weights_sha256 == loaded.weights_hash


def test_loaded_model_describes_itself(tiny_sd1_dir):
    loaded = load(tiny_sd1_dir)
    info = loaded.describe()
    assert info["pipeline"] == "StableDiffusionPipeline"
    assert info["default_size"] == [32, 32]  # sample_size 16 x VAE factor 2
    assert "DPM++ 2M Karras" in info["schedulers"] and "Euler a" in info["schedulers"]
    # the native size is used when the request leaves it open
    image = generate(loaded, GenerationRequest("ct", seed=0, steps=1))[0]
    assert image.image.size == (32, 32)


def test_dtype_and_device_overrides(tiny_sd1_dir):
    loaded = load(tiny_sd1_dir, device="cpu", dtype="bf16", options={"hash_weights": False})
    assert loaded.dtype == torch.bfloat16
    assert next(loaded.pipe.unet.parameters()).dtype == torch.bfloat16


def test_device_and_dtype_defaults(monkeypatch):
    monkeypatch.delenv("MEDISYN_DEVICE", raising=False)
    monkeypatch.delenv("MEDISYN_DTYPE", raising=False)
    assert devices.pick_dtype("cpu") == torch.float32
    assert devices.pick_dtype("cuda") in (torch.float16, torch.bfloat16)
    assert devices.pick_dtype("mps") == torch.float16
    assert devices.parse_dtype("half") == torch.float16 and devices.parse_dtype("BF16") == torch.bfloat16
    with pytest.raises(ValueError):
        devices.parse_dtype("int8")
    monkeypatch.setenv("MEDISYN_DTYPE", "fp16")
    assert devices.pick_dtype("cpu") == torch.float16
    assert devices.pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        for name in ("cuda", "CUDA:0"):
            with pytest.raises(devices.DeviceUnavailableError, match="CUDA"):
                devices.pick_device(name)
        monkeypatch.setenv("MEDISYN_DEVICE", "cpu")
        assert devices.pick_device() == "cpu"
    for bad in ("gpu", "cuda:x", "cuda0"):
        with pytest.raises(ValueError, match="unknown device"):
            devices.pick_device(bad)
    assert devices.check_device_name(" Cuda:1 ") == "cuda:1"  # a name check only, no GPU needed


def test_cuda_only_options_stay_off_on_cpu(tiny_sd1_dir):
    opts = loading._resolve_defaults(LoadOptions(compile=True, channels_last=None, cpu_offload=None),
                                     "cpu", pathlib.Path(tiny_sd1_dir))
    assert (opts.compile, opts.channels_last, opts.vae_slicing, opts.cpu_offload) == (False, False, False, False)
    with pytest.raises(TypeError, match="unknown load option"):
        LoadOptions.coerce({"compiel": True})


def test_cuda_defaults_are_chosen_for_a_cuda_device(tiny_sd1_dir, monkeypatch):
    """Resolved without a GPU: only the offload decision asks the device, for its memory."""
    path = pathlib.Path(tiny_sd1_dir)
    weights = loading._weights_bytes(path)
    monkeypatch.setattr(loading, "_cuda_total_memory", lambda device: 100 * weights)
    opts = loading._resolve_defaults(LoadOptions(), "cuda", path)
    assert (opts.channels_last, opts.vae_slicing) == (True, True)
    assert (opts.compile, opts.vae_tiling, opts.cpu_offload) == (False, False, False)  # off unless asked / needed
    # weights above 60 % of VRAM: model CPU offload
    monkeypatch.setattr(loading, "_cuda_total_memory", lambda device: weights)
    assert loading._resolve_defaults(LoadOptions(), "cuda:1", path).cpu_offload is True
    # explicit choices win over the defaults
    opts = loading._resolve_defaults(LoadOptions(channels_last=False, vae_slicing=False, compile=True,
                                                 cpu_offload=False), "cuda", path)
    assert (opts.channels_last, opts.vae_slicing, opts.compile, opts.cpu_offload) == (False, False, True, False)


def test_missing_models_fail_with_a_clear_error(tmp_path, tiny_sd1_dir):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load(tmp_path / "does-not-exist")
    no_index = tmp_path / "empty"
    no_index.mkdir()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        load(no_index)
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"0")  # single files load through from_single_file (tests/model_runtime/test_single_file.py): not this one
    with pytest.raises(ModelNotFoundError, match="single-file checkpoint.*--config"):
        load(single)
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        load("someone/not-downloaded", options={"cache_dir": str(tmp_path / "hf")})
    with pytest.raises(ModelNotFoundError, match="cannot be loaded by name"):
        load("minim")


def _fake_hub_cache(src: pathlib.Path, cache: pathlib.Path, repo_id: str) -> None:
    """The huggingface_hub cache layout: blobs named by sha256, snapshot symlinks, refs/main."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    for f in src.rglob("*"):
        if not f.is_file():
            continue
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, blob)
        link = repo / "snapshots" / commit / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_resolves_offline_from_the_local_cache(tmp_path, tiny_sd1_dir):
    cache = tmp_path / "hub"
    _fake_hub_cache(pathlib.Path(tiny_sd1_dir), cache, "medisyn-test/tiny-sd")
    loaded = load("medisyn-test/tiny-sd", options={"cache_dir": str(cache)})
    assert loaded.model_id == "medisyn-test/tiny-sd"
    assert "snapshots" in str(loaded.path)
    # same weights, same hash, whether read from blob names or by hashing the files
    assert loaded.weights_hash == provenance.weights_hash(tiny_sd1_dir)
    image = generate(loaded, GenerationRequest("chest", seed=1, steps=1, width=32, height=32))[0]
    local = generate(load(tiny_sd1_dir), GenerationRequest("chest", seed=1, steps=1, width=32, height=32))[0]
    assert image.image.tobytes() == local.image.tobytes()


def test_non_text_to_image_checkpoints_load_as_their_text_to_image_twin(tmp_path, tiny_sd1_dir):
    """An img2img checkpoint (same weights) goes through AutoPipelineForText2Image."""
    root = tmp_path / "img2img"
    shutil.copytree(tiny_sd1_dir, root)
    index = json.loads((root / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionImg2ImgPipeline"
    (root / "model_index.json").write_text(json.dumps(index))
    loaded = load(root, options={"hash_weights": False})
    assert loaded.pipeline_class == "StableDiffusionPipeline"
    assert generate(loaded, GenerationRequest("ct", seed=0, steps=1, width=32, height=32))[0].image.size == (32, 32)


def test_weights_hash_changes_with_the_weights(tmp_path, tiny_sd1_dir):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_sd1_dir, copy)
    assert provenance.weights_hash(copy) == provenance.weights_hash(tiny_sd1_dir)
    weights = next((copy / "unet").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert provenance.weights_hash(copy) != provenance.weights_hash(tiny_sd1_dir)


def test_unet_subfolder_swaps_the_denoiser(tmp_path, tiny_sd1_dir):
    """MINIM-style checkpoints keep one UNet per modality under unets/<id>/unet."""
    root = tmp_path / "minim-like"
    shutil.copytree(tiny_sd1_dir, root)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(root / "unet"))
    with torch.no_grad():
        for p in unet.parameters():
            p.mul_(0.5)
    unet.save_pretrained(str(root / "unets" / "2" / "unet"))
    base = load(root, options={"hash_weights": False})
    swapped = load(root, options={"unet_subfolder": "unets/2/unet", "hash_weights": False})
    request = GenerationRequest("chest", seed=0, steps=2, width=32, height=32)
    assert generate(base, request)[0].image.tobytes() != generate(swapped, request)[0].image.tobytes()
    with pytest.raises(ModelNotFoundError, match="unet_subfolder"):
        load(root, options={"unet_subfolder": "unets/9/unet"})


def test_registry_lists_the_known_medical_checkpoints():
    keys = [e.key for e in registry.list_models()]
    assert keys[0] == "embedded"
    for key in ("medisyn", "roentgen-v2", "minim", "prompt-to-polyp-flux", "prompt-to-polyp-kandinsky"):
        assert key in keys
    medisyn = registry.get("medisyn")
    assert medisyn.hub_id == "hiesingerlab/MediSyn"
    assert "CC-BY-NC-ND-4.0" in medisyn.licence and "verify" in medisyn.licence
    assert registry.find("HIESINGERLAB/medisyn") == medisyn
    assert registry.get("roentgen-v2").hub_id == "stanfordmimi/RoentGen-v2"
    assert registry.get("embedded").local_path == registry.assets_dir() / "medisyn-mini"
    for entry in registry.list_models():
        assert entry.licence and entry.source_url and entry.modalities and entry.prompt_style
        json.dumps(entry.as_dict())
    with pytest.raises(registry.UnknownModelError, match="registry keys"):
        registry.get("nope")


def test_embedded_model_loads_by_name(tmp_path, monkeypatch, tiny_sd1_dir):
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(registry.assets_dir() / "models.json", assets / "models.json")
    monkeypatch.setenv("MEDISYN_ASSETS", str(assets))
    with pytest.raises(ModelNotFoundError, match="medisyn model train"):
        load("embedded")
    assert not registry.get("embedded").available()
    shutil.copytree(tiny_sd1_dir, assets / "medisyn-mini")
    assert registry.get("embedded").available()
    loaded = load("embedded")
    assert loaded.model_id == "embedded" and loaded.name.startswith("MediSyn-mini")


def _image_conditioned_folder(tmp_path, tiny_sd1_dir, kind: str) -> pathlib.Path:
    """A tiny inpainting (UNet with 9 input channels) or ControlNet pipeline, saved like a real one."""
    from diffusers import (ControlNetModel, DiffusionPipeline, StableDiffusionControlNetPipeline,
                           StableDiffusionInpaintPipeline, UNet2DConditionModel)

    base = DiffusionPipeline.from_pretrained(str(tiny_sd1_dir))
    parts = {k: v for k, v in base.components.items()}
    if kind == "inpaint":
        config = dict(base.unet.config) | {"in_channels": 9}
        parts["unet"] = UNet2DConditionModel.from_config(config)
        pipe = StableDiffusionInpaintPipeline(**parts)
    else:
        pipe = StableDiffusionControlNetPipeline(**parts, controlnet=ControlNetModel.from_unet(base.unet))
    out = tmp_path / kind
    pipe.save_pretrained(str(out))
    return out


@pytest.mark.parametrize("kind, class_name, what", [
    ("inpaint", "StableDiffusionInpaintPipeline", "inpainting"),
    ("controlnet", "StableDiffusionControlNetPipeline", "ControlNet"),
])
def test_image_conditioned_checkpoints_are_refused_at_load(tmp_path, tiny_sd1_dir, kind, class_name, what):
    from click.testing import CliRunner

    from studio.cli import cli

    folder = _image_conditioned_folder(tmp_path, tiny_sd1_dir, kind)
    assert loading.pipeline_class_name(folder) == class_name
    with pytest.raises(loading.UnsupportedPipelineError, match=f"is a {class_name}: .*{what}") as info:
        load(folder, options={"hash_weights": False})
    assert "text-to-image" in str(info.value) and "img2img" in str(info.value)
    # the CLI: one Error line naming the class, before any output is written
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["generate", "--model", str(folder), "--prompt", "Axial CT image", "--out",
                                      str(out), "--steps", "1", "--width", "32", "--height", "32", "--threads", "1"],
                                catch_exceptions=False)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1 and class_name in errors[0], result.output
    assert "Traceback" not in result.output and not out.exists()


def test_an_inpainting_unet_under_a_text_to_image_class_is_refused(tmp_path, tiny_sd1_dir):
    folder = _image_conditioned_folder(tmp_path, tiny_sd1_dir, "inpaint")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(loading.UnsupportedPipelineError, match="UNet takes 9 input channels"):
        load(folder, options={"hash_weights": False})


def test_loading_shows_no_library_progress_bars(tiny_sd1_dir):
    """`load` anywhere (the studio's Generate tab, the demo seed on first start) prints no
    "Loading pipeline components" / "Loading weights" bars; a fresh process, as those bars
    and notices come once per process."""
    import subprocess
    import sys

    code = ("import sys; from model_runtime.loading import load; "
            "load(sys.argv[1], options={'hash_weights': False}); "
            "from diffusers.utils import logging as dl; print(dl.is_progress_bar_enabled())")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_sd1_dir)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Loading" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "True"  # the setting is restored after loading



def test_background_hashing_is_stopped_and_joined_before_exit(tmp_path, monkeypatch):
    """`load` hashes the weights in a daemon thread; at exit (atexit) it is stopped and
    joined: a daemon thread still running when the interpreter finalised made one in four
    scripts that loaded a model abort at exit (status 134, "terminate called without an
    active exception"). The unfinished hash is not cached."""
    import time

    big = tmp_path / "weights.safetensors"
    with open(big, "wb") as f:
        f.truncate(8 << 30)  # sparse: no disk used, seconds to hash

    class Model:  # what hash_in_background asks of a LoadedModel
        @property
        def weights_hash(self):
            return provenance.file_sha256(big)

    monkeypatch.setattr(provenance, "_hashers", [])
    provenance.hash_in_background(Model())
    time.sleep(0.3)
    (thread,) = provenance._hashers
    assert thread.is_alive()  # still hashing
    t0 = time.monotonic()
    try:
        provenance._stop_background_hashing()
        assert not thread.is_alive() and time.monotonic() - t0 < 5
    finally:
        provenance._stop_hashing.clear()
    assert not any(key[0] == str(big.resolve()) for key in provenance._file_hash_cache)
