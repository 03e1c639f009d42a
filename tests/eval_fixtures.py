"""Image sets for the evaluation tests: shipped public images, planted copies, tiny local models.

Real images come from pydicom, nibabel and scikit-image (nothing is downloaded). A reference
set mixes medical images, natural photographs and smooth random textures; planted copies are
reference images flipped, cropped to 90 %, re-encoded as JPEG quality 70, noised or brightened.
"""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from imaging_fixtures import dicom_sample, nifti_sample, skimage_sample, texture
from studies.imaging import load_image
from studies.imaging.stimuli import normalise

SIZE = 256

# (label, path function, load_image options)
MEDICAL_REFERENCE = [
    ("ct_small", lambda: dicom_sample("CT_small.dcm"), {}),
    ("ct_head", lambda: dicom_sample("693_J2KI.dcm"), {}),
    ("mr_small", lambda: dicom_sample("MR_small.dcm"), {}),
    ("mr_liver", lambda: dicom_sample("examples_overlay.dcm"), {}),
    ("us_echo", lambda: dicom_sample("examples_ybr_color.dcm"), {"frame": 0}),
    ("us_doppler", lambda: dicom_sample("examples_rgb_color.dcm"), {}),
    ("bone_scan", lambda: dicom_sample("JPGExtended.dcm"), {}),
    ("retina", lambda: skimage_sample("retina.jpg"), {}),
    ("microaneurysms", lambda: skimage_sample("microaneurysms.png"), {}),
    ("ihc", lambda: skimage_sample("ihc.png"), {}),
    ("t1_brain", lambda: nifti_sample("anatomical.nii"), {"slice_index": 10}),
    ("epi_brain", lambda: nifti_sample("example4d.nii.gz"), {"slice_index": 12}),
]
NATURAL_REFERENCE = ["camera.png", "coins.png", "moon.png", "astronaut.png", "coffee.png", "chelsea.png",
                     "brick.png", "page.png"]
NATURAL_UNRELATED = ["horse.png", "rocket.jpg", "hubble_deep_field.jpg", "grass.png", "gravel.png", "text.png",
                     "cell.png", "phantom.png", "clock_motion.png", "motorcycle_left.png", "logo.png"]
MEDICAL_UNRELATED = [
    ("ct_head_other", lambda: dicom_sample("J2K_pixelrep_mismatch.dcm"), {}),
    ("us_palette", lambda: dicom_sample("examples_palette.dcm"), {}),
    ("t1_brain_far", lambda: nifti_sample("anatomical.nii"), {"axis": 0}),
]
PLANTS = ("flip", "crop90", "jpeg70", "noise", "brightness")


def normalised(path, **options) -> np.ndarray:
    return normalise(load_image(path, target_size=SIZE, **options), SIZE)


def save(pixels: np.ndarray, path: pathlib.Path, **kw) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, **kw)
    return path


def texture_rgb(rng, size=SIZE) -> np.ndarray:
    g = texture(rng, 64)
    im = Image.fromarray(np.rint(g * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.repeat(np.asarray(im)[..., None], 3, axis=2)


def plant(pixels: np.ndarray, kind: str, rng: np.random.Generator, path: pathlib.Path) -> pathlib.Path:
    """Write a planted copy of `pixels` (uint8 HxWx3) made by `kind` to path (suffix adjusted)."""
    if kind == "flip":
        return save(pixels[:, ::-1], path.with_suffix(".png"))
    if kind == "crop90":
        h, w = pixels.shape[:2]
        ch, cw = int(round(h * 0.9)), int(round(w * 0.9))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = Image.fromarray(pixels[top:top + ch, left:left + cw]).resize((w, h), Image.Resampling.LANCZOS)
        return save(np.asarray(crop), path.with_suffix(".png"))
    if kind == "jpeg70":
        return save(pixels, path.with_suffix(".jpg"), quality=70)
    if kind == "noise":
        noisy = pixels.astype(np.float32) + rng.normal(0, 8.0, pixels.shape)
        return save(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), path.with_suffix(".png"))
    if kind == "brightness":
        bright = pixels.astype(np.float32) * 1.15 + 20
        return save(np.clip(np.rint(bright), 0, 255).astype(np.uint8), path.with_suffix(".png"))
    raise ValueError(kind)


def planted_sets(tmp: pathlib.Path, *, textures: int = 20, unrelated_textures: int = 80, seed: int = 0):
    """Write reference/ and synthetic/ under tmp; return (ref_dir, syn_dir, planted_names, unrelated_names).

    The reference holds 12 medical images, 8 photographs and `textures` random textures; the
    synthetic folder holds the five planted copies of each medical and photographic reference
    (100 plants) and unrelated images: other shipped images and new random textures.
    """
    rng = np.random.default_rng(seed)
    ref_dir, syn_dir = tmp / "reference", tmp / "synthetic"
    originals = {}
    for label, fn, opts in MEDICAL_REFERENCE:
        originals[label] = normalised(fn(), **opts)
    for name in NATURAL_REFERENCE:
        originals[name.split(".")[0]] = normalised(skimage_sample(name))
    for label, px in originals.items():
        save(px, ref_dir / f"{label}.png")
    for i in range(textures):
        save(texture_rgb(rng), ref_dir / f"texture_{i:03d}.png")
    planted = []
    for label, px in originals.items():
        for kind in PLANTS:
            planted.append(plant(px, kind, rng, syn_dir / f"plant_{label}_{kind}").name)
    unrelated = []
    for name in NATURAL_UNRELATED:
        unrelated.append(save(normalised(skimage_sample(name)), syn_dir / f"other_{name.split('.')[0]}.png").name)
    for label, fn, opts in MEDICAL_UNRELATED:
        unrelated.append(save(normalised(fn(), **opts), syn_dir / f"other_{label}.png").name)
    for i in range(unrelated_textures):
        unrelated.append(save(texture_rgb(rng), syn_dir / f"other_texture_{i:03d}.png").name)
    return ref_dir, syn_dir, planted, unrelated


# ---------------------------------------------------------------------------------------
# tiny local models (random weights, built here; nothing downloaded)

def tiny_torchscript(path: pathlib.Path, in_channels: int = 3, dim: int = 16, seed: int = 0) -> pathlib.Path:
    """A TorchScript network with the FID Inception file's calling convention:
    uint8 N x C x H x W in, `return_features=True` -> N x dim features."""
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, 8, 5, stride=4)
            self.fc = torch.nn.Linear(8, dim)

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            x = x.float() / 255.0
            x = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1)
            return self.fc(x)

    torch.manual_seed(seed)
    torch.jit.script(Tiny()).save(str(path))
    return path


def tiny_vit(folder: pathlib.Path, num_channels: int = 3) -> pathlib.Path:
    from transformers import ViTConfig, ViTModel

    import torch

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_channels=num_channels)
    ViTModel(cfg).save_pretrained(folder)
    return folder


def tiny_bert(folder: pathlib.Path) -> pathlib.Path:
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    return folder


def tiny_clip(folder: pathlib.Path, *, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), processor: bool = True) -> pathlib.Path:
    """A random CLIPModel with the embedded model's own (offline) CLIP tokenizer, saved with a
    CLIPProcessor (``mean``/``std``) by transformers' own save_pretrained; ``processor=False``: the
    tokenizer alone (no image normalisation saved)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = pathlib.Path(__file__).resolve().parents[1]
    tok = CLIPTokenizer.from_pretrained(root / "assets" / "medisyn-mini" / "tokenizer")
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=8)
    CLIPModel(cfg).save_pretrained(folder)
    if processor:
        images = CLIPImageProcessor(image_mean=list(mean), image_std=list(std), size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32})
        CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    else:
        tok.save_pretrained(folder)
    return folder


def small_set(folder: pathlib.Path, n: int, seed: int, *, brightness: float = 0.0, size: int = 64) -> pathlib.Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        px = texture_rgb(rng, size).astype(np.float32) + 255 * brightness
        save(np.clip(px, 0, 255).astype(np.uint8), folder / f"img_{i:03d}.png")
    return folder
