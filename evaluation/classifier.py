"""The image classifier of the augmentation experiment: one fixed recipe for every arm.

Backbone: ``transformers``' ResNet (``ResNetForImageClassification``), a small config trained from
scratch, or any local image-classification checkpoint via ``AutoModelForImageClassification``
(``pretrained=`` a folder; the head is re-sized to the task). torchvision/timm would be the usual
choice, but PyPI's torchvision does not load beside the CPU torch build this project uses, and
transformers is already a dependency.

Recipe: inputs scaled to [-1, 1], random horizontal flips, AdamW, cross-entropy; the epoch with the
lowest loss on a validation set (early stopping with ``patience``) is kept. The augmentation
experiment passes one fixed set of real images outside every arm's training images
(``validation=``), so every arm stops by the same rule on the same images; without it a
stratified split of the training images (by label and real/synthetic source) is used.
Deterministic for a seed on CPU (one seeded generator; deterministic algorithms).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Recipe:
    size: int = 64
    val_fraction: float = 0.2
    max_epochs: int = 40
    patience: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (16, 32, 64)
    pretrained: str | None = None


@dataclass
class Fit:
    model: torch.nn.Module
    epochs: int
    best_epoch: int
    best_val_loss: float
    n_val: int


def build_model(n_classes: int, recipe: Recipe) -> torch.nn.Module:
    if recipe.pretrained:
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(
            recipe.pretrained, num_labels=n_classes, ignore_mismatched_sizes=True, local_files_only=True)
    from transformers import ResNetConfig, ResNetForImageClassification

    widths = list(recipe.widths)
    return ResNetForImageClassification(ResNetConfig(
        num_channels=3, embedding_size=widths[0], hidden_sizes=widths, depths=[1] * len(widths),
        layer_type="basic", hidden_act="relu", downsample_in_first_stage=False, num_labels=n_classes))


def validation_split(y: np.ndarray, strata: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of validation images: ``fraction`` of every (label, source) stratum, at least one
    image of a stratum that has two or more."""
    mask = np.zeros(len(y), dtype=bool)
    for key in sorted(set(zip(y.tolist(), strata.tolist()))):
        members = np.flatnonzero((y == key[0]) & (strata == key[1]))
        if len(members) < 2:
            continue
        k = max(1, int(round(fraction * len(members))))
        mask[rng.choice(members, size=min(k, len(members) - 1), replace=False)] = True
    return mask


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).logits


def train(x: np.ndarray, y: np.ndarray, n_classes: int, recipe: Recipe, *, seed: int,
          strata: np.ndarray | None = None, validation: tuple[np.ndarray, np.ndarray] | None = None) -> Fit:
    """Train on uint8 images ``x`` (N x H x W x 3) with labels ``y``; early stopping on
    ``validation`` (images, labels), else on a split of the training images."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        rng = np.random.default_rng(seed)
        if validation is not None:
            xt, yt = _tensor(x), torch.from_numpy(y).long()
            xv, yv = _tensor(validation[0]), torch.from_numpy(np.asarray(validation[1])).long()
            n_val = len(yv)
        else:
            strata = np.zeros(len(y), int) if strata is None else strata
            val = validation_split(y, strata, recipe.val_fraction, rng)
            xt, yt = _tensor(x[~val]), torch.from_numpy(y[~val]).long()
            xv, yv = _tensor(x[val]), torch.from_numpy(y[val]).long()
            n_val = int(val.sum())
        torch.manual_seed(seed)
        model = build_model(n_classes, recipe)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        g = torch.Generator().manual_seed(seed)
        best = (float("inf"), 0, copy.deepcopy(model.state_dict()))
        epoch = 0
        for epoch in range(1, recipe.max_epochs + 1):
            model.train()
            order = torch.randperm(len(yt), generator=g)
            for i in range(0, len(order), recipe.batch_size):
                idx = order[i:i + recipe.batch_size]
                batch = xt[idx]
                flip = torch.rand(len(idx), generator=g) < 0.5
                batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
                loss = F.cross_entropy(_logits(model, batch), yt[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if len(yv):
                model.eval()
                with torch.no_grad():
                    val_loss = float(F.cross_entropy(_logits(model, xv), yv))
            else:  # no validation images (tiny arms): keep the last epoch
                val_loss = -float(epoch)
            if val_loss < best[0]:
                best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
            elif epoch - best[1] >= recipe.patience:
                break
        model.load_state_dict(best[2])
        model.eval()
        return Fit(model=model, epochs=epoch, best_epoch=best[1], best_val_loss=best[0] if len(yv) else float("nan"),
                   n_val=n_val)
    finally:
        torch.use_deterministic_algorithms(deterministic)


@torch.no_grad()
def predict_proba(model, x: np.ndarray, recipe: Recipe, batch: int = 256) -> np.ndarray:
    model.eval()
    out = [torch.softmax(_logits(model, _tensor(x[i:i + batch])), dim=1) for i in range(0, len(x), batch)]
    return torch.cat(out).numpy().astype(np.float64)
