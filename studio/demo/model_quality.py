"""Quality checks and figures for the embedded demo model (``assets/medisyn-mini``).

Two proxies, both measured against the real training images (``studio.demo.data``):

- *text alignment*: a simple modality classifier (scikit-learn logistic regression on an 8x8
  thumbnail, colour histograms and a histogram of local gradients) trained on the real images; for
  each modality's prompt, the share of generated images it assigns to the requested modality;
- *neither blank nor noise*: each generated image's intensity mean and standard deviation lie
  within the range spanned by the real images of that modality (with a small margin).

Used by ``tests/studio/test_embedded_model.py`` and for the figures in ``assets/MODEL_CARD.md``.
"""
from __future__ import annotations

import csv
import dataclasses
import pathlib

import numpy as np
from PIL import Image, ImageDraw

THUMB = 8  # coarse layout only: the crops move anatomy around
BINS = 16
GRAD_BINS = 8  # texture: histogram of absolute neighbour differences (0-63 grey levels)
MARGIN = 0.05  # tolerance around the real images' range of per-image mean/std (intensity in [0, 1])


def features(images: np.ndarray) -> np.ndarray:
    """N x H x W x 3 uint8 -> N x F: a THUMB x THUMB RGB thumbnail, per-channel intensity
    histograms and a histogram of local gradient magnitudes."""
    images = np.asarray(images)
    out = []
    for im in images:
        thumb = np.asarray(Image.fromarray(im).resize((THUMB, THUMB), Image.Resampling.BOX), np.float32) / 255
        hist = [np.histogram(im[..., c], bins=BINS, range=(0, 256))[0] / im[..., c].size for c in range(3)]
        grey = im.astype(np.float32).mean(axis=2)
        steps = np.concatenate([np.abs(np.diff(grey, axis=0)).ravel(), np.abs(np.diff(grey, axis=1)).ravel()])
        grad = np.histogram(steps, bins=GRAD_BINS, range=(0, 64))[0] / steps.size
        out.append(np.concatenate([thumb.ravel(), np.concatenate(hist), grad]))
    return np.stack(out).astype(np.float32)


def read_images(data_dir, rows: list[dict] | None = None) -> tuple[np.ndarray, list[dict]]:
    """Images and rows of a training set written by ``studio.demo.data.build_training_set``."""
    data_dir = pathlib.Path(data_dir)
    if rows is None:
        with open(data_dir / "captions.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    images = np.stack([np.asarray(Image.open(data_dir / r["path"]).convert("RGB")) for r in rows])
    return images, rows


@dataclasses.dataclass
class Reference:
    """What the real images of each modality look like: classifier and intensity ranges."""
    classifier: object  # sklearn Pipeline
    modalities: list[str]
    mean_range: dict[str, tuple[float, float]]
    std_range: dict[str, tuple[float, float]]
    cv_accuracy: float  # held-out accuracy of the classifier on real images

    def predict(self, images: np.ndarray) -> list[str]:
        return list(self.classifier.predict(features(images)))


def intensity_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(images, np.float32) / 255.0
    return f.mean(axis=(1, 2, 3)), f.std(axis=(1, 2, 3))


def fit_reference(images: np.ndarray, modalities: list[str], seed: int = 0) -> Reference:
    """Fit the modality classifier on real images (with a 5-fold accuracy) and their intensity ranges."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = features(images)
    y = np.asarray(modalities)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    cv = float(cross_val_score(model, x, y, cv=folds).mean())
    model.fit(x, y)
    means, stds = intensity_stats(images)
    keys = sorted(set(modalities))
    return Reference(
        classifier=model, modalities=keys, cv_accuracy=cv,
        mean_range={k: (float(means[y == k].min()), float(means[y == k].max())) for k in keys},
        std_range={k: (float(stds[y == k].min()), float(stds[y == k].max())) for k in keys},
    )


@dataclasses.dataclass
class ModalityScore:
    modality: str
    prompt: str
    n: int
    recognised: float  # share classified as the requested modality
    plausible: float  # share with mean and std inside the real range (+/- MARGIN)
    predicted: dict[str, int]
    mean: float
    std: float


def score(reference: Reference, modality: str, prompt: str, images: np.ndarray) -> ModalityScore:
    """How well generated ``images`` for ``prompt`` match the real images of ``modality``."""
    predicted = [str(p) for p in reference.predict(images)]
    means, stds = intensity_stats(images)
    lo_m, hi_m = reference.mean_range[modality]
    lo_s, hi_s = reference.std_range[modality]
    ok = ((means >= lo_m - MARGIN) & (means <= hi_m + MARGIN) & (stds >= lo_s - MARGIN) & (stds <= hi_s + MARGIN))
    return ModalityScore(
        modality=modality, prompt=prompt, n=len(images),
        recognised=float(np.mean([p == modality for p in predicted])), plausible=float(ok.mean()),
        predicted={k: predicted.count(k) for k in sorted(set(predicted))},
        mean=float(means.mean()), std=float(stds.mean()),
    )


def to_uint8(images) -> np.ndarray:
    """PIL images or float arrays in [0, 1] -> N x H x W x 3 uint8."""
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else np.asarray(im)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        out.append(a)
    return np.stack(out)


# --- figures ------------------------------------------------------------------------------------

def grid(rows: list[np.ndarray], labels: list[str] | None = None, scale: int = 1, label_width: int = 0) -> Image.Image:
    """Rows of N x H x W x 3 uint8 images as one picture (optionally with a text label per row)."""
    h, w = rows[0].shape[1:3]
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (label_width + cols * w * scale, len(rows) * h * scale), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            tile = Image.fromarray(im).resize((w * scale, h * scale), Image.Resampling.NEAREST)
            sheet.paste(tile, (label_width + j * w * scale, i * h * scale))
        if labels:
            draw.text((4, i * h * scale + 4), labels[i], fill="black")
    return sheet


def loss_plot(log_csv, out_png, size=(640, 260)) -> None:
    """A small two-panel plot (VAE, UNet) of a training_log.csv written by model_runtime.train."""
    with open(log_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    panels = [p for p in ("vae", "unet") if any(r["phase"] == p for r in rows)]
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    pw = width // len(panels)
    for k, phase in enumerate(panels):
        pts = [(int(r["step"]), float(r["loss"])) for r in rows if r["phase"] == phase]
        x0, y0, x1, y1 = k * pw + 50, 25, (k + 1) * pw - 15, height - 30
        draw.rectangle((x0, y0, x1, y1), outline="black")
        steps = [p[0] for p in pts]
        losses = [p[1] for p in pts]
        lo, hi = min(losses), max(losses)
        hi = hi if hi > lo else lo + 1e-6
        xy = [(x0 + (s - steps[0]) / max(1, steps[-1] - steps[0]) * (x1 - x0),
               y1 - (v - lo) / (hi - lo) * (y1 - y0)) for s, v in pts]
        draw.line(xy, fill=(31, 119, 180), width=2)
        title = {"vae": "VAE: L1 + gradient L1 + KL", "unet": "UNet + text encoder: min-SNR v-loss"}[phase]
        draw.text((x0, 6), title, fill="black")
        draw.text((x0 - 45, y0), f"{hi:.3f}", fill="black")
        draw.text((x0 - 45, y1 - 10), f"{lo:.3f}", fill="black")
        draw.text((x0, y1 + 6), f"step {steps[0]}", fill="black")
        draw.text((x1 - 60, y1 + 6), f"step {steps[-1]}", fill="black")
    img.save(out_png, optimize=True)
