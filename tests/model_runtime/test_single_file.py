"""Single-file checkpoints (.safetensors/.ckpt as A1111/ComfyUI keep them) through diffusers'
``from_single_file``: made here from the tiny SD pipeline's weights in the original (LDM) key
layout, loaded with the configs given (``config=`` / ``--config``), and refused with one clear line
when no config can be found offline."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runtime_fixtures import single_torch_thread, tiny_sd1_dir  # noqa: E402,F401

from model_runtime.generation import GenerationRequest, generate  # noqa: E402
from model_runtime.loading import ModelNotFoundError, load  # noqa: E402
from model_runtime.provenance import weights_hash  # noqa: E402

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_to_ldm(state: dict, config: dict) -> dict:
    """diffusers UNet2DConditionModel keys -> LDM ``model.diffusion_model.*`` (the inverse of
    diffusers' convert_ldm_unet_checkpoint for the SD 1.x layout)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    per = config["layers_per_block"] + 1
    has_attn = {i: "CrossAttn" in t for i, t in enumerate(config["up_block_types"])}
    out = {}
    for key, value in state.items():
        m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key)
        mid = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
        if key in top:
            new = top[key]
        elif m:
            side, b, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if kind == "resnets":
                name, _, tail = rest.partition(".")
                rest = f"{_RESNET[name]}.{tail}"
            if side == "down":
                new = {"resnets": f"input_blocks.{1 + b * per + j}.0.{rest}",
                       "attentions": f"input_blocks.{1 + b * per + j}.1.{rest}",
                       "downsamplers": f"input_blocks.{(b + 1) * per}.0.op.{rest.removeprefix('conv.')}"}[kind]
            else:
                new = {"resnets": f"output_blocks.{b * per + j}.0.{rest}",
                       "attentions": f"output_blocks.{b * per + j}.1.{rest}",
                       "upsamplers": f"output_blocks.{b * per + per - 1}.{2 if has_attn[b] else 1}.{rest}"}[kind]
        elif mid:
            kind, j, rest = mid.groups()
            if kind == "resnets":
                name, _, tail = rest.partition(".")
                new = f"middle_block.{0 if j == '0' else 2}.{_RESNET[name]}.{tail}"
            else:
                new = f"middle_block.1.{rest}"
        else:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


def _vae_to_ldm(state: dict, config: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n = len(config["up_block_types"])
    out = {}
    for key, value in state.items():
        new = top.get(key)
        if new is None:
            new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", key)
            new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", new)
            new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
                         lambda m: f"decoder.up.{n - 1 - int(m.group(1))}.block.{m.group(2)}", new)
            new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0",
                         lambda m: f"decoder.up.{n - 1 - int(m.group(1))}.upsample", new)
            new = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m.group(1)) + 1}", new)
            if "mid_block.attentions.0." in new:
                head, rest = new.split("mid_block.attentions.0.")
                for a, b in _VAE_ATTN.items():
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                new = head + "mid.attn_1." + rest
            new = new.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + new] = value
    return out


def make_single_file(pipeline_dir, target):
    """The tiny SD pipeline as one LDM-layout .safetensors, the way A1111 keeps checkpoints."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(str(pipeline_dir))
    ckpt = _unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    ckpt |= _vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    # real checkpoints say cond_stage_model.transformer.text_model.*; transformers >= 5.6 dropped the wrapper
    ckpt |= {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
             for k, v in pipe.text_encoder.state_dict().items()}
    save_file({k: v.contiguous() for k, v in ckpt.items()}, str(target))
    return target


@pytest.fixture(scope="module")
def single_file(tiny_sd1_dir, tmp_path_factory):
    return make_single_file(tiny_sd1_dir, tmp_path_factory.mktemp("single") / "tiny-sd.safetensors")


def _image(loaded):
    request = GenerationRequest(prompt="chest x-ray of a patient", seed=3, steps=2, width=32, height=32)
    return np.asarray(generate(loaded, request)[0].image, dtype=np.float32) / 255


def test_single_file_with_given_config_matches_the_folder(tiny_sd1_dir, single_file):
    loaded = load(single_file, options={"config": str(tiny_sd1_dir)})
    assert loaded.pipeline_class == "StableDiffusionPipeline"
    assert loaded.default_size() == load(tiny_sd1_dir).default_size()
    assert np.abs(_image(loaded) - _image(load(tiny_sd1_dir))).max() <= 1 / 255
    assert loaded.weights_hash == weights_hash(single_file) != weights_hash(tiny_sd1_dir)


def test_a_single_files_weights_hash_is_its_own_sha256(single_file, tmp_path):
    """As documented (docs/runtime.md): sha256sum of the file; renaming it changes nothing."""
    import hashlib
    import shutil

    own = hashlib.sha256(single_file.read_bytes()).hexdigest()
    assert weights_hash(single_file) == own
    renamed = shutil.copy(single_file, tmp_path / "renamed-model.safetensors")
    assert weights_hash(renamed) == own


def test_generate_cli_takes_a_single_file_with_config(tiny_sd1_dir, single_file, tmp_path):
    from click.testing import CliRunner

    from studio.cli import cli

    out = tmp_path / "gen"
    result = CliRunner().invoke(cli, ["generate", "--model", str(single_file), "--config", str(tiny_sd1_dir),
                                      "--prompt", "chest x-ray", "--out", str(out), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert (out / "images" / "r00000_000.png").is_file()


def test_single_file_without_a_config_is_one_clear_error(single_file, tmp_path):
    """The tiny checkpoint matches no architecture diffusers knows (or its reference repo is not
    cached): nothing is downloaded, the message says to pass --config."""
    with pytest.raises(ModelNotFoundError, match="--config"):
        load(single_file)
    from click.testing import CliRunner

    from studio.cli import cli

    result = CliRunner().invoke(cli, ["generate", "--model", str(single_file), "--prompt", "x",
                                      "--out", str(tmp_path / "o"), "--steps", "1"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "--config" in lines[0]
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(ModelNotFoundError, match="not a checkpoint"):
        load(text)
