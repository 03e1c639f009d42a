"""evaluation.fidelity / features: FID and KID equal torchmetrics' own on the same network; PRDC by hand."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from eval_fixtures import small_set, tiny_bert, tiny_torchscript, tiny_vit
from evaluation import features as feat
from evaluation import fidelity
from evaluation.errors import EvaluationError
from evaluation.images import iter_chunks, list_images


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fid")
    return tmp, small_set(tmp / "ref", 12, 0), small_set(tmp / "syn", 10, 1, brightness=0.15)


def _normalised(folder, size):
    refs = list_images(folder)
    return np.concatenate([c for _, c in iter_chunks(refs, size)])


def test_fid_and_kid_equal_torchmetrics_on_the_same_torchscript_network(sets, tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    tmp, ref, syn = sets
    net_path = tiny_torchscript(tmp_path / "tiny.pt")
    # --features inception --weights FILE goes through the same loader as a TorchScript path
    ext = feat.load_extractor("inception", weights=net_path)
    assert ext.dim == 16 and ext.input_size == feat.INCEPTION_SIZE
    ours = fidelity.run_fidelity(syn, ref, features=ext, kid_subsets=20, kid_subset_size=6, progress=False)
    net = torch.jit.load(str(net_path))

    class Wrapped(torch.nn.Module):
        def forward(self, x):
            return net(x, return_features=True)

    real = torch.from_numpy(_normalised(ref, 299)).permute(0, 3, 1, 2)
    fake = torch.from_numpy(_normalised(syn, 299)).permute(0, 3, 1, 2)
    fid = FrechetInceptionDistance(feature=Wrapped())
    fid.update(real, real=True)
    fid.update(fake, real=False)
    kid = KernelInceptionDistance(feature=Wrapped(), subsets=20, subset_size=6)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    torch.manual_seed(0)
    kid_mean, kid_std = kid.compute()
    g = ours["groups"][0]
    assert g["group"] == "all" and g["n_synthetic"] == 10 and g["n_reference"] == 12
    assert g["fid"] == pytest.approx(float(fid.compute()), rel=1e-4)
    assert g["kid_mean"] == pytest.approx(float(kid_mean), rel=1e-4, abs=1e-7)
    assert g["kid_std"] == pytest.approx(float(kid_std), rel=1e-4, abs=1e-7)
    assert g["fid"] > 0
    assert any("2,000" in c for c in ours["caveats"])  # the small-sample bias is said, not hidden


def test_fid_of_a_set_with_itself_is_zero_and_shifted_sets_are_worse(sets):
    tmp, ref, syn = sets
    same = fidelity.run_fidelity(ref, ref, features="pixels", kid_subset_size=6, progress=False)["groups"][0]
    other = fidelity.run_fidelity(syn, ref, features="pixels", kid_subset_size=6, progress=False)["groups"][0]
    assert same["fid"] == pytest.approx(0.0, abs=1e-3)  # singular 1024-d covariance: rounding only
    assert other["fid"] > 1.0
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    assert other["precision"] < same["precision"]


def test_prdc_hand_computed_case():
    # k = 1; reals on a line at 0..6 (every radius 1); fakes at 0.5, 10, 2.2 (radii 1.7, 7.8, 1.7)
    real = np.arange(7, dtype=float)[:, None]
    fake = np.array([[0.5], [10.0], [2.2]])
    r = fidelity.prdc(real, fake, k=1)
    assert r["precision"] == pytest.approx(2 / 3)   # 0.5 and 2.2 lie in a real ball, 10 does not
    assert r["recall"] == pytest.approx(1.0)        # the outlier's large ball covers 4, 5, 6
    assert r["density"] == pytest.approx(4 / 3)     # 0.5 in balls of 0 and 1; 2.2 in balls of 2 and 3
    assert r["coverage"] == pytest.approx(4 / 7)    # reals 0-3 have a fake within their radius
    streamed = fidelity.prdc(np.random.default_rng(0).normal(size=(30, 4)),
                             np.random.default_rng(1).normal(size=(25, 4)), k=3, block=7)
    whole = fidelity.prdc(np.random.default_rng(0).normal(size=(30, 4)),
                          np.random.default_rng(1).normal(size=(25, 4)), k=3)
    assert streamed == whole


def test_diversity_and_by_modality(tmp_path):
    ref = small_set(tmp_path / "ref", 8, 2)
    syn = tmp_path / "syn"
    small_set(syn, 8, 3)
    with open(syn / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "source", "modality", "prompt"])
        for i in range(8):
            w.writerow([f"img_{i:03d}.png", "synthetic", "CT" if i < 4 else "MRI", "p"])
    res = fidelity.run_fidelity(syn / "manifest.csv", ref, features="pixels", by="modality", kid_subset_size=3,
                                nearest_k=2, progress=False)
    names = [g["group"] for g in res["groups"]]
    assert names == ["all", "CT", "MRI"]
    assert [g["n_synthetic"] for g in res["groups"]] == [8, 4, 4]
    assert res["groups"][1]["n_reference"] == 8  # the reference folder has no modality: all of it
    for g in res["groups"]:
        assert 0 < g["diversity_ms_ssim_synthetic"] < 1 and 0 < g["diversity_ms_ssim_reference"] < 1
    grey = np.stack([np.full((256, 256), 0.3, np.float32)] * 3)
    grey[:, 100:150, 100:150] = 0.8
    assert fidelity.diversity_ms_ssim(grey, np.array([[0, 1], [1, 2]])) == pytest.approx(1.0, abs=1e-5)


def test_feature_models_and_their_errors(tmp_path, monkeypatch):
    vit = feat.load_extractor(str(tiny_vit(tmp_path / "vit")))
    out = vit.from_normalised(np.zeros((3, 64, 64, 3), np.uint8))
    assert out.shape == (3, 16) and np.isfinite(out).all()
    with pytest.raises(EvaluationError, match="not a vision model"):
        feat.load_extractor(str(tiny_bert(tmp_path / "bert")))
    with pytest.raises(EvaluationError, match="mismatched channel counts"):
        feat.load_extractor(str(tiny_vit(tmp_path / "vit1", num_channels=1)))
    with pytest.raises(EvaluationError, match="mismatched channel counts"):
        feat.load_extractor(str(tiny_torchscript(tmp_path / "grey.pt", in_channels=1)))
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    with pytest.raises(EvaluationError, match="not a TorchScript model"):
        feat.load_extractor(str(tmp_path / "state.pt"))
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(EvaluationError, match="no config.json"):
        feat.load_extractor(str(tmp_path / "nocfg"))
    monkeypatch.delenv("MEDISYN_INCEPTION", raising=False)
    monkeypatch.setattr(feat, "INCEPTION_CACHE", (tmp_path / "cache",))
    with pytest.raises(EvaluationError, match="nothing is downloaded"):
        feat.load_extractor("inception")
    (tmp_path / "cache").mkdir()
    tiny_torchscript(tmp_path / "cache" / feat.INCEPTION_FILES[0])
    assert feat.find_inception() == tmp_path / "cache" / feat.INCEPTION_FILES[0]
