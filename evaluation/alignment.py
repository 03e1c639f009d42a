"""Automatic prompt alignment: CLIP score, prompt retrieval, and agreement with readers.

`run_alignment(images, clip)`: `images` is a manifest CSV (each image's prompt is its `prompt`
column) or a folder whose images have `<name>.txt` prompt sidecars; `clip` is a local CLIP-like
model folder (transformers `CLIPModel`, `SiglipModel`, BiomedCLIP converted to transformers, ...
anything with `get_image_features` and `get_text_features` plus its tokenizer). Images are
normalised with the mean/std the folder's processor was saved with (`preprocessor_config.json`,
or `processor_config.json` as transformers 5 writes it); a folder with neither is an error.

- CLIP score per image: 100 x max(cos(image embedding, prompt embedding), 0), the definition of
  torchmetrics' `CLIPScore` (Hessel et al. 2021 without the 2.5 rescaling).
- Retrieval accuracy: the share of images whose embedding is closest to their own prompt among
  all distinct prompts of the set (top-1; chance = 1 / number of prompts).
- With reader ratings (a DataFrame or a CSV in the `long` export format: columns `case`, `task`,
  `rating`; alignment rows only, training rows excluded), Spearman's rho between each image's
  CLIP score and the readers' mean alignment rating, with a 95 % bootstrap CI (scipy.stats.bootstrap,
  BCa, pairs resampled). Images are matched to cases by their manifest path (a study's default
  case id) — `medisyn eval alignment --db DB --study NAME` reads the ratings from the study.
"""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.errors import EvaluationError
from evaluation.images import ImageRef, iter_chunks, list_images

__all__ = ["load_clip", "run_alignment", "spearman_ci"]


def load_clip(folder, device: str = "cpu"):
    """(model, tokenizer, image_size, mean, std) of a local CLIP-like folder; EvaluationError otherwise."""
    import transformers

    from evaluation.features import image_size, mean_std, quiet_transformers, vision_config

    folder = pathlib.Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise EvaluationError(f"--clip: {folder} is not a model folder (no config.json)")
    def fail(exc, what):
        return EvaluationError(f"--clip: cannot load the {what} of {folder} ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:160] if str(exc) else ''})")

    try:
        with quiet_transformers():
            model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
    except Exception as exc:
        raise fail(exc, "model") from None
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise EvaluationError(f"--clip: {type(model).__name__} is not a CLIP-like model (it has no image and "
                              "text embeddings)")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise fail(exc, "tokenizer") from None
    vcfg = vision_config(model.config)
    if getattr(vcfg, "num_channels", 3) != 3:
        raise EvaluationError(f"--clip: the model takes {vcfg.num_channels}-channel images but evaluation "
                              "images are 3-channel RGB (mismatched channel counts)")
    mean, std = mean_std(folder, required=True)
    return model, tokenizer, image_size(vcfg), mean, std


def _as_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        t = getattr(out, name, None)
        if t is not None:
            return t
    raise EvaluationError("the CLIP model returned no embedding")


def embed_texts(model, tokenizer, texts: list[str], device="cpu") -> torch.Tensor:
    max_len = getattr(tokenizer, "model_max_length", 77)
    max_len = 77 if not max_len or max_len > 10_000 else max_len
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
    with torch.no_grad():
        t = _as_tensor(model.get_text_features(input_ids=batch["input_ids"],
                                               attention_mask=batch.get("attention_mask")))
    return F.normalize(t.float(), dim=-1)


def embed_images(model, images: np.ndarray, size: int, mean, std, device="cpu") -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = ((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).to(device)
    with torch.no_grad():
        t = _as_tensor(model.get_image_features(pixel_values=x))
    return F.normalize(t.float(), dim=-1)


def spearman_ci(x, y, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Spearman's rho (scipy) with a BCa bootstrap CI over pairs (scipy.stats.bootstrap)."""
    from scipy import stats

    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = len(x)
    if n < 3:
        return {"rho": None, "p": None, "ci_low": None, "ci_high": None, "n": n,
                "note": "fewer than 3 rated images"}
    res = stats.spearmanr(x, y)
    out = {"rho": float(res.statistic), "p": float(res.pvalue), "n": n, "ci_low": None, "ci_high": None}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        out["note"] = "constant scores or ratings: rho undefined"
        out["rho"] = out["p"] = None
        return out
    try:
        boot = stats.bootstrap((x, y), lambda a, b: stats.spearmanr(a, b).statistic, paired=True,
                               vectorized=False, confidence_level=confidence, n_resamples=n_resamples,
                               method="BCa", random_state=np.random.default_rng(seed))
        lo, hi = boot.confidence_interval
        if np.isfinite(lo) and np.isfinite(hi):
            out["ci_low"], out["ci_high"] = float(lo), float(hi)
    except Exception as exc:  # degenerate resamples (ties everywhere): report rho without a CI
        out["note"] = f"no bootstrap CI ({type(exc).__name__})"
    return out


def mean_ratings(ratings) -> dict[str, float]:
    """case -> mean alignment rating, from a long-format table (DataFrame or CSV path)."""
    import pandas as pd

    df = ratings if isinstance(ratings, pd.DataFrame) else _read_csv(ratings)
    missing = {"case", "rating"} - set(df.columns)
    if missing:
        raise EvaluationError(f"ratings: missing column(s) {', '.join(sorted(missing))} (expected the long "
                              "export: case, task, rating)")
    if "task" in df.columns:
        df = df[df["task"] == "alignment"]
    if "training" in df.columns:
        df = df[pd.to_numeric(df["training"], errors="coerce").fillna(0) == 0]
    df = df.assign(rating=pd.to_numeric(df["rating"], errors="coerce")).dropna(subset=["rating"])
    return df.groupby(df["case"].astype(str))["rating"].mean().to_dict()


def _read_csv(path):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"ratings: cannot read {path} ({type(exc).__name__})") from None


def run_alignment(images, clip, *, ratings=None, device: str = "cpu", chunk: int = 64,
                  progress: bool = True) -> dict:
    """CLIP score and retrieval accuracy of prompted images; Spearman vs reader ratings if given."""
    from tqdm import tqdm

    refs: list[ImageRef] = images if isinstance(images, list) else list_images(images, what="images")
    refs = [_with_sidecar_prompt(r) for r in refs]
    unprompted = [r.name for r in refs if not r.prompt]
    if unprompted:
        raise EvaluationError(f"images: {unprompted[0]} has no prompt (give a manifest with a prompt column or "
                              f"<name>.txt sidecars); {len(unprompted)} image(s) without one")
    model, tokenizer, size, mean, std = load_clip(clip, device)
    prompts = sorted({r.prompt for r in refs})
    text = embed_texts(model, tokenizer, prompts, device)
    own = torch.tensor([prompts.index(r.prompt) for r in refs])
    sims = []
    bar = tqdm(total=len(refs), disable=not progress, file=sys.stderr, unit="img", leave=False)
    try:
        for _, batch in iter_chunks(refs, size, chunk=chunk):
            sims.append(embed_images(model, batch, size, mean, std, device) @ text.T)
            bar.update(len(batch))
    finally:
        bar.close()
    sims = torch.cat(sims)
    own_sim = sims[torch.arange(len(refs)), own]
    scores = (100.0 * own_sim.clamp(min=0)).numpy()
    correct = (sims.argmax(dim=1) == own).numpy()
    rows = [{"image": r.name, "prompt": r.prompt, "clip_score": float(s), "retrieved": prompts[int(i)],
             "retrieval_correct": bool(c)} for r, s, i, c in zip(refs, scores, sims.argmax(dim=1), correct)]
    result = {
        "n_images": len(refs), "n_prompts": len(prompts), "model": str(clip),
        "clip_score_mean": float(scores.mean()), "clip_score_sd": float(scores.std(ddof=1)) if len(refs) > 1 else None,
        "retrieval_accuracy": float(correct.mean()), "retrieval_chance": 1.0 / len(prompts),
        "images": rows,
    }
    if ratings is not None:
        means = mean_ratings(ratings)
        pairs = [(row["clip_score"], means[row["image"]]) for row in rows if row["image"] in means]
        for row in rows:
            row["mean_rating"] = means.get(row["image"])
        if not pairs:
            raise EvaluationError("ratings: no rated case matches an image path (cases are matched by the "
                                  "manifest path, the study's default case id)")
        x, y = zip(*pairs)
        result["readers"] = spearman_ci(x, y)
    return result


def _with_sidecar_prompt(ref: ImageRef) -> ImageRef:
    if ref.prompt:
        return ref
    name = ref.path.name
    stem = name[:-7] if name.lower().endswith(".nii.gz") else ref.path.stem
    side = ref.path.with_name(stem + ".txt")
    if side.is_file():
        import dataclasses

        return dataclasses.replace(ref, prompt=side.read_text(encoding="utf-8", errors="replace").strip())
    return ref


def format_alignment(result: dict) -> str:
    lines = [f"{result['n_images']} images, {result['n_prompts']} prompts: CLIP score "
             f"{result['clip_score_mean']:.2f} (SD {result['clip_score_sd'] or 0:.2f}); retrieval accuracy "
             f"{result['retrieval_accuracy']:.1%} (chance {result['retrieval_chance']:.1%})"]
    r = result.get("readers")
    if r:
        if r.get("rho") is None:
            lines.append(f"readers: {r.get('note')}")
        else:
            ci = (f"95% CI {r['ci_low']:.2f} to {r['ci_high']:.2f}" if r.get("ci_low") is not None
                  else r.get("note", "no CI"))
            lines.append(f"vs readers' mean alignment rating: Spearman rho {r['rho']:.2f} ({ci}), n = {r['n']}, "
                         f"p = {r['p']:.3g}")
    return "\n".join(lines)
