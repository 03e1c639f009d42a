"""evaluation.alignment: CLIP score and retrieval with a tiny local CLIP; Spearman vs readers."""
from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from eval_fixtures import small_set, tiny_clip, tiny_vit
from evaluation import alignment
from evaluation.errors import EvaluationError
from evaluation.images import iter_chunks, list_images

PROMPTS = ["Axial CT image of the head", "fundoscopy image of the left retina", "Brain MRI, axial T1-weighted slice"]


@pytest.fixture(scope="module")
def prompted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("align")
    small_set(tmp / "imgs", 9, 5)
    with open(tmp / "imgs" / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "source", "modality", "prompt"])
        for i in range(9):
            w.writerow([f"img_{i:03d}.png", "synthetic", "", PROMPTS[i % 3]])
    return tmp, tiny_clip(tmp / "clip")


def test_clip_score_and_retrieval_match_a_direct_computation(prompted):
    from transformers import CLIPModel, CLIPTokenizer

    tmp, clip = prompted
    res = alignment.run_alignment(tmp / "imgs" / "manifest.csv", clip, progress=False)
    assert res["n_images"] == 9 and res["n_prompts"] == 3
    model = CLIPModel.from_pretrained(clip).eval()
    tok = CLIPTokenizer.from_pretrained(clip)
    refs = list_images(tmp / "imgs" / "manifest.csv")
    images = np.concatenate([c for _, c in iter_chunks(refs, 32)])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        img = model.get_image_features(pixel_values=x)
        img = img if isinstance(img, torch.Tensor) else img.pooler_output
        batch = tok(sorted(PROMPTS), padding=True, return_tensors="pt")
        txt = model.get_text_features(**batch)
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    cos = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    own = torch.tensor([sorted(PROMPTS).index(r.prompt) for r in refs])
    expected = (100 * cos[torch.arange(9), own].clamp(min=0)).numpy()
    got = np.array([r["clip_score"] for r in res["images"]])
    assert np.allclose(got, expected, atol=1e-3)
    assert res["clip_score_mean"] == pytest.approx(expected.mean(), abs=1e-3)
    assert res["retrieval_accuracy"] == pytest.approx(float((cos.argmax(1) == own).float().mean()))
    assert res["retrieval_chance"] == pytest.approx(1 / 3)


def test_spearman_against_reader_ratings_from_a_long_export(prompted, tmp_path):
    tmp, clip = prompted
    base = alignment.run_alignment(tmp / "imgs" / "manifest.csv", clip, progress=False)
    scores = {r["image"]: r["clip_score"] for r in base["images"]}
    rows = []
    for k, (name, s) in enumerate(sorted(scores.items())):
        for reader in ("r1", "r2"):  # two readers, ratings rising with the score except one swap
            rows.append({"case": name, "task": "alignment", "rating": k + (1 if reader == "r2" else 0), "training": 0})
        rows.append({"case": name, "task": "turing", "rating": 99, "training": 0})  # ignored: other task
    rows.append({"case": sorted(scores)[0], "task": "alignment", "rating": 500, "training": 1})  # training: ignored
    pd.DataFrame(rows).to_csv(tmp_path / "long.csv", index=False)
    res = alignment.run_alignment(tmp / "imgs" / "manifest.csv", clip, ratings=tmp_path / "long.csv", progress=False)
    names = sorted(scores)
    mean = [k + 0.5 for k in range(len(names))]
    expected = stats.spearmanr([scores[n] for n in names], mean).statistic
    r = res["readers"]
    assert r["rho"] == pytest.approx(expected) and r["n"] == 9
    if r["ci_low"] is not None:
        assert r["ci_low"] <= r["rho"] <= r["ci_high"]
    perfect = alignment.spearman_ci([1, 2, 3, 4, 5, 6], [2, 4, 6, 8, 10, 13])
    assert perfect["rho"] == pytest.approx(1.0) and perfect["p"] < 0.01


def test_alignment_errors(prompted, tmp_path):
    tmp, clip = prompted
    with pytest.raises(EvaluationError, match="not a CLIP-like model"):
        alignment.run_alignment(tmp / "imgs" / "manifest.csv", tiny_vit(tmp_path / "vit"), progress=False)
    with pytest.raises(EvaluationError, match="has no prompt"):
        alignment.run_alignment(small_set(tmp_path / "np", 2, 0), clip, progress=False)
    pd.DataFrame({"who": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(EvaluationError, match="missing column"):
        alignment.run_alignment(tmp / "imgs" / "manifest.csv", clip, ratings=tmp_path / "bad.csv", progress=False)


OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def test_a_clip_folder_saved_by_transformers_5_is_normalised_with_its_own_processor(prompted, tmp_path):
    """CLIPProcessor.save_pretrained writes processor_config.json (no preprocessor_config.json);
    its mean/std must be used, not a 0.5 default."""
    from transformers import CLIPModel, CLIPTokenizer

    tmp, _ = prompted
    clip = tiny_clip(tmp_path / "clip5", mean=OPENAI_MEAN, std=OPENAI_STD)
    assert (clip / "processor_config.json").is_file() and not (clip / "preprocessor_config.json").exists()
    _, _, _, mean, std = alignment.load_clip(clip)
    assert mean.tolist() == pytest.approx(OPENAI_MEAN) and std.tolist() == pytest.approx(OPENAI_STD)
    res = alignment.run_alignment(tmp / "imgs" / "manifest.csv", clip, progress=False)
    model, tok = CLIPModel.from_pretrained(clip).eval(), CLIPTokenizer.from_pretrained(clip)
    refs = list_images(tmp / "imgs" / "manifest.csv")
    x = torch.from_numpy(np.concatenate([c for _, c in iter_chunks(refs, 32)])).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=x)
        img = img if isinstance(img, torch.Tensor) else img.pooler_output
        txt = model.get_text_features(**tok([r.prompt for r in refs], padding=True, return_tensors="pt"))
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    expected = (100 * (F.normalize(img, dim=-1) * F.normalize(txt, dim=-1)).sum(-1).clamp(min=0)).numpy()
    assert np.allclose([r["clip_score"] for r in res["images"]], expected, atol=1e-3)


def test_a_clip_folder_without_a_processor_is_an_error_not_a_default(tmp_path):
    clip = tiny_clip(tmp_path / "bare", processor=False)
    with pytest.raises(EvaluationError, match="processor_config.json"):
        alignment.load_clip(clip)
    from evaluation.features import load_extractor

    with pytest.raises(EvaluationError, match="processor_config.json"):
        load_extractor(str(clip))
