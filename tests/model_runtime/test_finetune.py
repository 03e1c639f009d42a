"""model_runtime.finetune and `medisyn model finetune` on tiny offline pipelines: a few LoRA steps
change what the trained caption gives, the LoRA reloads with plain diffusers in a fresh process,
--resume continues the step count exactly, and bad data is one `Error:` line."""
import csv
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from runtime_fixtures import single_torch_thread, tiny_flux_dir, tiny_sd1_dir, tiny_sd3_dir, tiny_sdxl_dir  # noqa: E402,F401

from model_runtime import finetune as ft  # noqa: E402
from model_runtime import loading, provenance  # noqa: E402
from model_runtime.generation import GenerationRequest, generate  # noqa: E402

CAPTION = "fundus image of the left retina"


def make_data(folder: pathlib.Path, n: int = 6) -> pathlib.Path:
    """Bright orange discs on black: far from what a random tiny pipeline draws."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:32, :32]
    rows = []
    for i in range(n):
        img = np.zeros((32, 32, 3), np.uint8)
        img[(yy - 16) ** 2 + (xx - 16) ** 2 < (8 + i) ** 2] = (230, 120, 40)
        Image.fromarray(img).save(folder / f"{i}.png")
        rows.append({"path": f"{i}.png", "caption": CAPTION})
    write_csv(folder / "captions.csv", rows)
    return folder


def write_csv(path, rows, fields=("path", "caption")):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)


def cfg(**kw):
    base = dict(steps=6, rank=4, resolution=32, lr=2e-2, checkpoint_every=3, validation_steps=2, batch_size=2)
    base.update(kw)
    return ft.FinetuneConfig(**base)


def run(base, data, out, **kw):
    resume = kw.pop("resume", False)
    return ft.finetune(base, data, out, cfg(**kw), resume=resume, device="cpu", progress=False, log=lambda m: None)


def images(loaded, prompt=CAPTION, seed=0):
    req = GenerationRequest(prompt=prompt, seed=seed, steps=3, guidance_scale=5.0, width=32, height=32, num_images=2)
    return np.stack([np.asarray(g.image, dtype=np.float32) / 255 for g in generate(loaded, req)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("ftdata") / "data")


@pytest.fixture(scope="module")
def lora_run(tiny_sd1_dir, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "lora"
    return run(tiny_sd1_dir, data, out)


def test_lora_steps_change_the_trained_caption(tiny_sd1_dir, lora_run):
    base = images(loading.load(tiny_sd1_dir, device="cpu"))
    tuned = images(loading.load(tiny_sd1_dir, device="cpu", options={"lora": str(lora_run.out_dir)}))
    assert lora_run.trainable_parameters > 0
    assert np.abs(base - tuned).mean() > 0.01
    # a LoRA at scale 0 is the base model again
    off = images(loading.load(tiny_sd1_dir, device="cpu", options={"lora": str(lora_run.out_dir), "lora_scale": 0.0}))
    assert np.abs(base - off).max() < 1e-5


def test_outputs_are_complete(tiny_sd1_dir, lora_run):
    out = lora_run.out_dir
    assert lora_run.weights == out / ft.LORA_FILE and lora_run.weights.is_file()
    record = json.loads((out / "training.json").read_text())
    assert record["base"]["weights_sha256"] == provenance.weights_hash(tiny_sd1_dir)
    assert record["config"]["rank"] == 4 and record["config"]["steps"] == 6 and record["config"]["lr"] == 2e-2
    assert record["result"]["weights_sha256"] == provenance.file_sha256(lora_run.weights)
    with open(out / "loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert Image.open(out / "loss.png").size == (640, 260)
    assert [p.name for p in ft.checkpoint_dirs(out)] == ["step-000003", "step-000006"]
    for step in ("step-000003", "step-000006"):
        assert Image.open(out / "validation" / step / "00.png").size == (32, 32)
    # the two checkpoints' validation images differ: training moved the weights in between
    a = np.asarray(Image.open(out / "validation" / "step-000003" / "00.png"), dtype=float)
    b = np.asarray(Image.open(out / "validation" / "step-000006" / "00.png"), dtype=float)
    assert np.abs(a - b).mean() > 0.1


def test_lora_reloads_in_a_fresh_process_with_plain_diffusers(tiny_sd1_dir, lora_run, tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline
        torch.set_num_threads(1)
        pipe = DiffusionPipeline.from_pretrained({str(tiny_sd1_dir)!r})
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights({str(lora_run.out_dir)!r})
        out = [pipe({CAPTION!r}, num_inference_steps=3, guidance_scale=5.0, height=32, width=32,
                    generator=torch.Generator("cpu").manual_seed(s)).images[0] for s in (0, 1)]
        np.save({str(tmp_path / "plain.npy")!r}, np.stack([np.asarray(i, dtype=np.float32) / 255 for i in out]))
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600, capture_output=True)
    plain = np.load(tmp_path / "plain.npy")
    ours = images(loading.load(tiny_sd1_dir, device="cpu", options={"lora": str(lora_run.out_dir)}))
    # the runtime fuses the LoRA into the weights; unfused diffusers differs by float rounding only
    assert np.abs(plain - ours).max() <= 2 / 255


def test_kohya_copy_for_a1111_is_the_same_adapter(tiny_sd1_dir, lora_run):
    """The kohya-named copy (lora_unet_*, what A1111/ComfyUI read) gives the same images as the
    diffusers file when diffusers converts it back."""
    from safetensors.torch import load_file

    kohya = lora_run.out_dir / f"{lora_run.out_dir.name}_kohya.safetensors"
    keys = list(load_file(str(kohya)))
    assert keys and all(k.startswith("lora_unet_") for k in keys) and any(k.endswith(".alpha") for k in keys)
    ours = images(loading.load(tiny_sd1_dir, device="cpu", options={"lora": str(lora_run.out_dir)}))
    theirs = images(loading.load(tiny_sd1_dir, device="cpu", options={"lora": str(kohya)}))
    assert np.abs(ours - theirs).max() <= 1 / 255


def test_resume_continues_the_step_count_exactly(tiny_sd1_dir, data, tmp_path):
    straight = run(tiny_sd1_dir, data, tmp_path / "straight", steps=4, checkpoint_every=2)
    first = run(tiny_sd1_dir, data, tmp_path / "split", steps=2, checkpoint_every=2)
    assert first.steps == 2
    with pytest.raises(ft.FinetuneError, match="--resume"):
        run(tiny_sd1_dir, data, tmp_path / "split", steps=4, checkpoint_every=2)
    second = run(tiny_sd1_dir, data, tmp_path / "split", steps=4, checkpoint_every=2, resume=True)
    assert second.resumed_from == 2 and second.steps == 4
    assert second.losses == straight.losses  # the whole log, steps 1-4, equals the uninterrupted run's
    from safetensors.torch import load_file
    a, b = load_file(straight.weights), load_file(second.weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "split" / "training.json").read_text())
    assert record["result"]["resumed_from"] == 2
    with pytest.raises(ft.FinetuneError, match="differs"):  # another recipe cannot resume this run
        run(tiny_sd1_dir, data, tmp_path / "split", steps=6, checkpoint_every=2, lr=1e-3, resume=True)


def test_full_finetune_writes_a_loadable_pipeline(tiny_sd1_dir, data, tmp_path):
    result = run(tiny_sd1_dir, data, tmp_path / "full", method="full", steps=2, checkpoint_every=2, lr=1e-2)
    assert result.weights == tmp_path / "full" / "pipeline"
    tuned = loading.load(result.weights, device="cpu")
    assert tuned.pipeline_class == "StableDiffusionPipeline"
    assert np.abs(images(tuned) - images(loading.load(tiny_sd1_dir, device="cpu"))).mean() > 0.01


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_other_families_train_a_lora_that_diffusers_loads(family, request, data, tmp_path):
    base = request.getfixturevalue(f"tiny_{family}_dir")
    result = run(base, data, tmp_path / family, steps=2, checkpoint_every=2)
    assert result.family == family and result.trainable_parameters > 0
    assert all(np.isfinite(result.losses))
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(str(base))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=CAPTION, num_inference_steps=2, height=32, width=32, output_type="np")
    before = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(str(result.out_dir))
    after = pipe(**kw, generator=torch.Generator().manual_seed(0)).images
    assert np.abs(before - after).max() > 1e-3


def test_full_method_is_refused_for_transformer_families(tiny_flux_dir, data, tmp_path):
    with pytest.raises(ft.FinetuneError, match="UNet families"):
        run(tiny_flux_dir, data, tmp_path / "x", method="full")


def test_alpha_other_than_rank_survives_the_save(tiny_sd1_dir, data, tmp_path):
    """rank 4, alpha 16: the validation images are made at alpha / rank = 4; plain diffusers, the
    kohya copy and the runtime (`medisyn generate --lora`) must reload the adapter at that scale."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    result = run(tiny_sd1_dir, data, tmp_path / "alpha", rank=4, alpha=16, steps=4, checkpoint_every=4)
    out = result.out_dir
    shown = np.asarray(Image.open(out / "validation" / "step-000004" / "00.png"), dtype=np.float32) / 255

    def validation_like(pipe):
        pipe.set_progress_bar_config(disable=True)
        image = pipe(CAPTION, num_inference_steps=2, height=32, width=32,
                     generator=torch.Generator("cpu").manual_seed(0)).images[0]
        return np.asarray(image, dtype=np.float32) / 255

    plain = DiffusionPipeline.from_pretrained(str(tiny_sd1_dir))
    base = validation_like(plain)
    plain.load_lora_weights(str(out))
    assert np.abs(validation_like(plain) - shown).max() <= 2 / 255
    assert np.abs(base - shown).max() > 10 / 255  # the adapter matters at this scale

    kohya = out / f"{out.name}_kohya.safetensors"
    alphas = {float(v) for k, v in load_file(str(kohya)).items() if k.endswith(".alpha")}
    assert alphas == {16.0}
    again = DiffusionPipeline.from_pretrained(str(tiny_sd1_dir))
    again.load_lora_weights(str(out), weight_name=kohya.name)
    assert np.abs(validation_like(again) - shown).max() <= 2 / 255

    runtime = loading.load(tiny_sd1_dir, device="cpu", options={"lora": str(out)})
    assert np.abs(validation_like(runtime.pipe) - shown).max() <= 2 / 255


def test_resume_without_a_checkpoint_is_one_clear_error(tiny_sd1_dir, data, tmp_path):
    with pytest.raises(ft.FinetuneError, match="no checkpoint to resume from"):
        run(tiny_sd1_dir, data, tmp_path / "fresh", steps=1, resume=True)
    assert not (tmp_path / "fresh" / ft.LORA_FILE).exists()
    result = invoke(["--base", str(tiny_sd1_dir), "--data", str(data), "--out", str(tmp_path / "cli"), "--resume",
                     "--steps", "1", "--resolution", "32", "--device", "cpu", "--quiet"])
    one_error_line(result, "no checkpoint to resume from", "--resume")


# --- the CLI: DICOM through the ingest reader; bad data is one Error: line ---------------

def invoke(args):
    from click.testing import CliRunner

    from studio.cli import cli

    return CliRunner().invoke(cli, ["model", "finetune", *args])


def one_error_line(result, *needles):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_decodes_dicom_through_the_ingest_reader(tiny_sd1_dir, tmp_path):
    import shutil

    from pydicom.data import get_testdata_file

    folder = tmp_path / "dicom"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    write_csv(folder / "manifest.csv", [{"path": "ct.dcm", "prompt": "Axial CT image of the head"}], ("path", "prompt"))
    out = tmp_path / "out"
    result = invoke(["--base", str(tiny_sd1_dir), "--data", str(folder / "manifest.csv"), "--out", str(out),
                     "--steps", "2", "--rank", "2", "--resolution", "32", "--checkpoint-every", "2",
                     "--validation-steps", "1", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / ft.LORA_FILE).is_file()
    record = json.loads((out / "training.json").read_text())
    assert record["data"]["captions"] == ["Axial CT image of the head"]


def test_python_callers_decode_dicom_as_the_cli_does(tiny_sd1_dir, tmp_path):
    """finetune() without a decoder reads DICOM through studies.imaging, as the command does."""
    import shutil

    from pydicom.data import get_testdata_file

    folder = tmp_path / "dicom"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    write_csv(folder / "captions.csv", [{"path": "ct.dcm", "caption": "Axial CT image of the head"}], ("path", "caption"))
    cfg = ft.FinetuneConfig(steps=1, rank=2, resolution=32, checkpoint_every=1, validation_steps=1)
    result = ft.finetune(tiny_sd1_dir, folder, tmp_path / "out", cfg, device="cpu", progress=False, log=lambda m: None)
    assert result.steps == 1 and result.weights.is_file()


def test_cli_bad_data_is_one_error_line(tiny_sd1_dir, data, tmp_path):
    common = ["--steps", "1", "--resolution", "32", "--device", "cpu", "--quiet"]
    # no captions.csv
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error_line(invoke(["--base", str(tiny_sd1_dir), "--data", str(empty), "--out", str(tmp_path / "o1"), *common]),
                   "captions.csv")
    # captions.csv without a caption column
    nocap = tmp_path / "nocap"
    nocap.mkdir()
    write_csv(nocap / "captions.csv", [{"path": "a.png", "label": "x"}], ("path", "label"))
    one_error_line(invoke(["--base", str(tiny_sd1_dir), "--data", str(nocap), "--out", str(tmp_path / "o2"), *common]),
                   "caption")
    # an unreadable image
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    write_csv(bad / "captions.csv", [{"path": "broken.png", "caption": CAPTION}])
    one_error_line(invoke(["--base", str(tiny_sd1_dir), "--data", str(bad), "--out", str(tmp_path / "o3"), *common]),
                   "broken.png")
    # a base that is not a text-to-image pipeline (unconditional DDPM)
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4, 8), norm_num_groups=2,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(str(tmp_path / "ddpm"))
    one_error_line(invoke(["--base", str(tmp_path / "ddpm"), "--data", str(data), "--out", str(tmp_path / "o4"), *common]),
                   "not a text-to-image")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))  # nothing written for a refused run
