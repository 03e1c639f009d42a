"""evaluation.novelty: planted copies are found, unrelated images are not; measures match their libraries."""
from __future__ import annotations

import csv
import json

import imagehash
import numpy as np
import pytest
import torch
from PIL import Image

from eval_fixtures import PLANTS, planted_sets, save, texture_rgb
from evaluation import descriptors as D
from evaluation import novelty
from evaluation.errors import EvaluationError


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("planted")
    ref_dir, syn_dir, plants, unrelated = planted_sets(tmp)
    result = novelty.run_novelty(syn_dir, ref_dir, tmp / "out", progress=False)
    return tmp, result, plants, unrelated


def test_planted_copies_are_flagged_and_unrelated_images_are_not(planted):
    _, result, plants, unrelated = planted
    by_name = {r["synthetic"]: r for r in result.rows}
    assert len(plants) == 100 and len(unrelated) >= 90
    flagged_plants = [p for p in plants if by_name[p]["flagged"]]
    false_flags = [u for u in unrelated if by_name[u]["flagged"]]
    assert len(flagged_plants) >= 0.95 * len(plants), sorted(set(plants) - set(flagged_plants))
    assert len(false_flags) <= 0.05 * len(unrelated), false_flags
    for kind in PLANTS:  # every kind of copy artefact is caught, not just the easy ones
        of_kind = [p for p in plants if p.rsplit("_", 1)[1].startswith(kind)]
        assert sum(by_name[p]["flagged"] for p in of_kind) >= 0.85 * len(of_kind), kind
    # the copy is matched to its own source
    for p in flagged_plants:
        source = p[len("plant_"):].rsplit("_", 1)[0]
        assert by_name[p]["nearest_reference"] == f"{source}.png", p


def test_thresholds_are_split_conformal_quantiles_of_held_out_values(planted):
    _, result, _, _ = planted
    level = result.alpha * result.min_votes / len(result.measures)
    for m in result.measures:
        higher = D.MEASURES[m].higher_is_closer
        cal = np.sort(result.calibration[m])[::-1] if higher else np.sort(result.calibration[m])
        r = int(np.floor(level * (len(cal) + 1)))
        # strictly closer than the r-th closest held-out value: at most r of n held-out pass
        assert result.thresholds[m] == pytest.approx(cal[r - 1], abs=1e-6)
        passing = np.sum([novelty._passes(v, result.thresholds[m], higher) for v in result.calibration[m]])
        assert passing <= r - 1
        assert "split-conformal" in result.threshold_rules[m]
    # no --holdout: every reference image is calibrated against the other groups' images
    assert len(result.calibration["pixel"]) == result.n_reference
    assert result.holdout["source"] == "reference (leave-one-group-out)"


def test_outputs_csv_summary_and_self_contained_report(planted):
    tmp, result, _, _ = planted
    out = tmp / "out"
    with open(out / "novelty.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.rows)
    assert list(rows[0])[:2] == ["synthetic", "nearest_reference"]
    assert {"pixel", "tiled_l2", "ssim", "phash", "flagged"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_synthetic"] == len(rows) and summary["n_reference"] == 40
    assert summary["n_flagged"] == sum(r["flagged"] == "1" for r in rows)
    assert summary["fraction_flagged"] == pytest.approx(summary["n_flagged"] / len(rows))
    for m, t in summary["threshold"].items():
        assert t["value"] == pytest.approx(result.thresholds[m]) and "split-conformal" in t["rule"]
        h = summary["histogram"][m]
        assert sum(h["synthetic_to_reference"]) == len(rows)
        assert sum(h["reference_to_reference"]) == 40
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    assert " src='http" not in html and ' src="http' not in html
    # the gallery is most-similar first: the first pair shown is flagged
    first = html.index("class='pair'")
    assert "flagged" in html[first:].split("</div>")[0]


def test_threshold_override_and_vote_rule(planted):
    tmp, _, plants, _ = planted
    strict = {"pixel": 1.01, "tiled_l2": -1.0, "ssim": 1.01, "phash": -1.0}  # nothing can pass
    res = novelty.run_novelty(tmp / "synthetic", tmp / "reference", tmp / "out_strict", thresholds=strict,
                              progress=False, write=False)
    assert res.n_flagged == 0 and all(v == "given (--threshold)" for v in res.threshold_rules.values())
    assert novelty.parse_thresholds("pixel=0.9, phash=6", ["pixel", "phash"]) == {"pixel": 0.9, "phash": 6.0}
    assert novelty.parse_thresholds("auto", ["pixel"]) == {}
    assert novelty.parse_thresholds("0.8", ["ssim"]) == {"ssim": 0.8}
    with pytest.raises(EvaluationError, match="MEASURE=VALUE"):
        novelty.parse_thresholds("0.8", ["ssim", "pixel"])
    with pytest.raises(EvaluationError, match="not one of the measures"):
        novelty.parse_thresholds("lpips=0.1", ["ssim"])


def test_ssim_and_ms_ssim_equal_pytorch_msssim_per_pair():
    from pytorch_msssim import ms_ssim, ssim

    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 1, 128, 128, generator=g)
    b = (a + 0.2 * torch.rand(5, 1, 128, 128, generator=g)).clamp(0, 1)
    ours = D._ssim_pairs(a, b, multiscale=False)
    ref = ssim(a, b, data_range=1.0, size_average=False, win_size=D.SSIM_WIN)
    assert torch.allclose(ours, ref, atol=1e-5)
    ours = D._ssim_pairs(a, b, multiscale=True)
    ref = ms_ssim(a, b, data_range=1.0, size_average=False, win_size=D.SSIM_WIN)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_tiled_l2_is_the_worst_tile_and_phash_matches_imagehash():
    a = torch.full((1, 1, 128, 128), 0.5)
    b = a.clone()
    assert float(D.tiled_l2(a, b)) == 0.0
    b[..., :32, :32] += 0.2  # one tile (top-left 32 x 32 of 128 = one 16 x 16 tile at 64) differs by 1 SD
    assert float(D.tiled_l2(a, b)) == pytest.approx(0.2 / 0.2, rel=1e-4)
    rng = np.random.default_rng(1)
    x, y = texture_rgb(rng)[..., 0], texture_rgb(rng)[..., 0]
    bits = D.phash_bits(np.stack([x, y]))
    expected = imagehash.phash(Image.fromarray(x)) - imagehash.phash(Image.fromarray(y))
    assert int(D.hamming(bits[:1], bits[1:])[0]) == expected


def test_streamed_knn_equals_brute_force(monkeypatch):
    monkeypatch.setattr(novelty, "_BLOCK", 7)  # many blocks: the running top-k merge is exercised
    rng = np.random.default_rng(2)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    q = base[:10] + 0.01
    d, i = novelty.knn_inner_product(q, base, 3)
    brute = np.argsort(-(q @ base.T), axis=1)[:, :3]
    assert (i == brute).all()
    d, i = novelty.knn_inner_product(base[:10], base, 3, exclude=np.arange(10))
    assert not (i == np.arange(10)[:, None]).any()
    codes = rng.integers(0, 256, size=(40, 8), dtype=np.uint8)
    d, i = novelty.knn_hamming(codes[:5], codes, 2, exclude=np.arange(5))
    ham = np.unpackbits(codes[:5, None] ^ codes[None], axis=2).sum(2)
    ham[np.arange(5), np.arange(5)] = 999
    assert (d[:, 0] == ham.min(1)).all()


def test_bad_inputs_give_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    ref = tmp_path / "ref"
    rng = np.random.default_rng(3)
    for n in range(3):
        save(texture_rgb(rng, 64), ref / f"r{n}.png")
    with pytest.raises(EvaluationError, match="synthetic: no image files"):
        novelty.run_novelty(tmp_path / "empty", ref, tmp_path / "o", progress=False)
    bad = tmp_path / "syn"
    save(texture_rgb(rng, 64), bad / "ok.png")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(EvaluationError, match="unreadable image broken.png"):
        novelty.run_novelty(bad, ref, tmp_path / "o", progress=False)
    one = tmp_path / "one"
    save(texture_rgb(rng, 64), one / "x.png")
    with pytest.raises(EvaluationError, match="at least 2"):
        novelty.run_novelty(ref, one, tmp_path / "o", progress=False)
    with pytest.raises(EvaluationError, match="unknown measure"):
        novelty.run_novelty(ref, ref, tmp_path / "o", measures=["lpips"], progress=False)
    with pytest.raises(EvaluationError, match="needs a features model"):
        novelty.run_novelty(ref, ref, tmp_path / "o", measures=["features"], progress=False)


def test_a_set_compared_with_itself_is_all_copies_and_the_cache_is_reused(tmp_path):
    rng = np.random.default_rng(4)
    ref = tmp_path / "ref"
    for n in range(12):
        save(texture_rgb(rng, 96), ref / f"r{n:02d}.png")
    res = novelty.run_novelty(ref, ref, tmp_path / "o", measures=["pixel", "ssim", "ms_ssim"], progress=False)
    assert res.n_flagged == 12
    assert all(r["nearest_reference"] == r["synthetic"] for r in res.rows)
    assert all(r["pixel"] > 0.999 and r["ms_ssim"] > 0.999 for r in res.rows)
    caches = sorted((tmp_path / "o" / ".cache").iterdir())
    again = novelty.run_novelty(ref, ref, tmp_path / "o", measures=["pixel", "ssim", "ms_ssim"], progress=False)
    assert sorted((tmp_path / "o" / ".cache").iterdir()) == caches
    assert [r["ssim"] for r in again.rows] == [r["ssim"] for r in res.rows]


def test_manifest_inputs_decode_like_ingest(tmp_path):
    """A manifest's modality and window reach the decoder, exactly as `studies.ingest` decodes."""
    import shutil

    from imaging_fixtures import dicom_sample
    from evaluation.images import list_images, load_normalised
    from studies.imaging import load_image
    from studies.stimuli import normalise

    from imaging_fixtures import rewrite_dicom

    # no window in the file and no CT tag: only the manifest's modality can choose the CT preset
    rewrite_dicom(dicom_sample("MR_small.dcm"), tmp_path / "mr.dcm", WindowCenter=None, WindowWidth=None)
    shutil.copy(dicom_sample("CT_small.dcm"), tmp_path / "ct.dcm")
    (tmp_path / "m.csv").write_text("path,source,modality,prompt,window\nmr.dcm,real,CT,,\nct.dcm,real,CT,,lung\n")
    refs = list_images(tmp_path / "m.csv")
    assert [r.name for r in refs] == ["mr.dcm", "ct.dcm"] and refs[0].modality == "CT"
    expected = normalise(load_image(tmp_path / "mr.dcm", modality="CT", target_size=64), 64)
    assert (load_normalised(refs[0], 64) == expected).all()
    assert not (normalise(load_image(tmp_path / "mr.dcm", target_size=64), 64) == expected).all()
    expected = normalise(load_image(tmp_path / "ct.dcm", window="lung", modality="CT", target_size=64), 64)
    assert (load_normalised(refs[1], 64) == expected).all()
    plain = normalise(load_image(tmp_path / "ct.dcm", target_size=64), 64)
    assert not (plain == expected).all()  # the manifest's window made a difference
