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
from evaluation import novelty, novelty_search
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
        passing = np.sum([novelty.passes(v, result.thresholds[m], higher) for v in result.calibration[m]])
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
    assert {"pixel", "patch", "votes", "flagged"} <= set(rows[0])
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
                              measures=list(strict), progress=False, write=False)
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
    monkeypatch.setattr(novelty_search, "_BLOCK", 7)  # many blocks: the running top-k merge is exercised
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
    from studies.imaging.stimuli import normalise

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


# ---------------------------------------------------------------------------------------
# held-out calibration, groups, robust matching

def _rotate(px, angle):
    return np.asarray(Image.fromarray(px).rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)))


def _shift(px, dx, dy):
    out = np.zeros_like(px)
    h, w = px.shape[:2]
    out[dy:, dx:] = px[:h - dy, :w - dx]
    return out


def _crop(px, frac, top, left):
    h, w = px.shape[:2]
    c = int(h * frac)
    return np.asarray(Image.fromarray(px[top:top + c, left:left + c]).resize((w, h), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """Reference manifest: every other axial slice of a T1 volume (one group) and single images;
    held-out manifest: coronal slices, other files, and one T1 slice of the reference's own group;
    synthetic: near-copies (adjacent slice, 7° rotation, 10 % shift with padding, 82 % crop) and
    novel images."""
    from eval_fixtures import normalised
    from imaging_fixtures import dicom_sample, nifti_sample, skimage_sample

    tmp = tmp_path_factory.mktemp("grouped")
    t1 = nifti_sample("anatomical.nii")
    rows = {"reference": [], "holdout": [], "synthetic": []}

    def add(kind, name, px, group="", modality="mri"):
        save(px, tmp / kind / f"{name}.png")
        rows[kind].append(f"{kind}/{name}.png,{'synthetic' if kind == 'synthetic' else 'real'},{modality},,{group}")
        return px

    ref_px = {}
    for s in range(6, 19, 2):
        ref_px[f"t1_{s}"] = add("reference", f"t1_{s}", normalised(t1, slice_index=s, axis=2), "t1")
    for name, path in [("ct", dicom_sample("CT_small.dcm")), ("mr", dicom_sample("MR_small.dcm")),
                       ("liver", dicom_sample("examples_overlay.dcm")), ("retina", skimage_sample("retina.jpg")),
                       ("ihc", skimage_sample("ihc.png")), ("bone", dicom_sample("JPGExtended.dcm"))]:
        ref_px[name] = add("reference", name, normalised(path), name)
    add("holdout", "t1_own_group", normalised(t1, slice_index=13, axis=2), "t1")  # same patient as the reference
    for s in range(8, 36, 3):
        add("holdout", f"t1_cor_{s}", normalised(t1, slice_index=s, axis=1), "t1_cor")
    for name in ("camera.png", "coins.png", "moon.png", "astronaut.png", "coffee.png", "brick.png", "page.png",
                 "grass.png", "gravel.png", "chelsea.png"):
        add("holdout", name.split(".")[0], normalised(skimage_sample(name)), name, "photo")
    add("holdout", "ct_other", normalised(dicom_sample("J2K_pixelrep_mismatch.dcm")), "ct_other", "ct")
    copies = {"adjacent": normalised(t1, slice_index=11, axis=2), "rotate": _rotate(ref_px["liver"], 7),
              "shift": _shift(ref_px["ct"], 24, 20), "crop": _crop(ref_px["retina"], 0.82, 20, 30),
              "rotate_t1": _rotate(ref_px["t1_14"], -5), "shift_bone": _shift(ref_px["bone"], 20, 0)}
    for name, px in copies.items():
        add("synthetic", f"copy_{name}", px)
    novel = [("sagittal", normalised(t1, slice_index=16, axis=0)), ("horse", normalised(skimage_sample("horse.png"))),
             ("rocket", normalised(skimage_sample("rocket.jpg"))), ("us", normalised(dicom_sample("examples_palette.dcm")))]
    for name, px in novel:
        add("synthetic", f"novel_{name}", px)
    for kind, lines in rows.items():
        (tmp / f"{kind}.csv").write_text("path,source,modality,prompt,group\n" + "\n".join(lines) + "\n")
    res = novelty.run_novelty(tmp / "synthetic.csv", tmp / "reference.csv", tmp / "out", holdout=tmp / "holdout.csv",
                              size=128, progress=False)
    return tmp, res


def test_holdout_calibrates_and_near_copies_are_flagged(grouped):
    _, res = grouped
    assert res.holdout["source"] == "holdout" and res.holdout["n"] == 22
    by_name = {r["synthetic"]: r for r in res.rows}
    copies = [n for n in by_name if "copy_" in n]
    novel = [n for n in by_name if "novel_" in n]
    missed = [n for n in copies if not by_name[n]["flagged"]]
    assert not missed, [(n, by_name[n]["pixel"], by_name[n]["patch"], res.thresholds) for n in missed]
    # the rule targets 5 % of novel real images: at most one false flag among these four
    false_flags = [n for n in novel if by_name[n]["flagged"]]
    assert len(false_flags) <= 1, false_flags
    assert sorted(res.flagged) == sorted(copies + false_flags)
    assert by_name["synthetic/copy_rotate.png"]["nearest_reference"] == "reference/liver.png"
    assert by_name["synthetic/copy_shift.png"]["nearest_reference"] == "reference/ct.png"
    assert by_name["synthetic/copy_crop.png"]["nearest_reference"] == "reference/retina.png"
    # both rates are reported with Wilson intervals
    assert res.synthetic_rate["x"] == len(res.flagged) and res.synthetic_rate["n"] == len(copies) + len(novel)
    lo, hi = res.synthetic_rate["ci_wilson"]
    assert lo < res.synthetic_rate["value"] < hi
    assert res.holdout_rate["n"] == 22 and res.holdout_rate["ci_wilson"][0] <= res.holdout_rate["value"]


def test_calibration_never_compares_an_image_with_its_own_group(grouped):
    tmp, res = grouped
    own = next(r for r in res.holdout["rows"] if r["holdout"] == "holdout/t1_own_group.png")
    # slice 13 lies between training slices 12 and 14 of the same volume: excluded, so its
    # nearest reference is another group's image, not a near-identical neighbour slice
    assert not own["nearest_reference"].startswith("reference/t1_")
    assert own["pixel"] < 0.95
    # ... and the run says that a held-out image of a training patient is not an independent one
    assert any("1 held-out images share a group" in w for w in res.warnings), res.warnings
    with open(tmp / "out" / "holdout.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 22 and {"holdout", "group", "nearest_reference", "pixel", "patch", "flagged"} <= set(rows[0])


def test_memorisation_question_is_answered_per_modality(grouped):
    tmp, res = grouped
    strata = {(r["modality"], r["measure"]): r for r in res.memorisation}
    assert ("all", "pixel") in strata and ("mri", "pixel") in strata
    mri = strata[("mri", "pixel")]
    # the MRI "synthetic" images are mostly copies: much closer than held-out MRI, one-sided p small
    assert mri["median_synthetic"] > mri["median_holdout"] and mri["p_one_sided"] < 0.05
    from scipy.stats import mannwhitneyu

    syn = [r["pixel"] for r in res.rows]
    expected = mannwhitneyu(syn, res.calibration["pixel"], alternative="greater").pvalue
    assert strata[("all", "pixel")]["p_one_sided"] == pytest.approx(expected)
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert summary["holdout_flag_rate"]["n"] == 22 and "ci_wilson" in summary["synthetic_flag_rate"]
    assert "mri: yes" in summary["memorisation_answer"]


def test_conformal_threshold_and_wilson_interval():
    values = np.arange(1, 40, dtype=float) / 40  # 39 values, higher = closer
    t, ok = novelty.conformal_threshold(values, 0.05, higher=True)
    # r = floor(0.05 * 40) = 2: strictly above the 2nd closest value, so 1 of 39 passes
    assert ok and values[-2] < t < values[-1]
    t, ok = novelty.conformal_threshold(values[:10], 0.05, higher=True)
    assert not ok and t > values[9]  # too few: only "closer than every held-out image"
    t, ok = novelty.conformal_threshold(np.array([3.0, 5, 7, 9] * 10), 0.05, higher=False)
    assert t == 2.0  # integer pHash distances: one bit closer than the 2nd closest (3)
    # Newcombe (1998) Stat Med 17:857, Table I, method 3 (Wilson): 81/263 -> 0.2553 to 0.3662
    w = novelty.wilson(81, 263)
    assert w["ci_wilson"] == pytest.approx([0.2553, 0.3662], abs=1e-4)


def test_exact_and_near_duplicate_reference_files_are_reported(tmp_path):
    rng = np.random.default_rng(5)
    ref = tmp_path / "ref"
    base = texture_rgb(rng, 128)
    save(base, ref / "a.png")
    save(base, ref / "a_copy.png")                    # exact duplicate file
    noisy = np.clip(base.astype(int) + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
    save(noisy, ref / "b.png")                        # near-duplicate
    for n in range(6):
        save(texture_rgb(rng, 128), ref / f"other_{n}.png")
    res = novelty.run_novelty(ref, ref, tmp_path / "o", size=128, progress=False, measures=["pixel"])
    assert sorted(res.duplicates["exact"][0]) == ["a.png", "a_copy.png"]
    pairs = {tuple(p[:2]) for p in res.duplicates["near"]}
    assert ("a.png", "b.png") in pairs or ("a_copy.png", "b.png") in pairs, pairs
    assert any("near-duplicate" in w for w in res.warnings)


def _patch_reference(images):
    ref = dict(D.describe(np.stack(images)))
    novelty_search._prepare_reference(ref, ["patch"])
    return ref


def test_patch_search_finds_a_region_pasted_into_another_image(tmp_path):
    from eval_fixtures import normalised
    from imaging_fixtures import skimage_sample

    ref_px = [normalised(skimage_sample(n), ) for n in ("retina.jpg", "ihc.png", "camera.png", "coins.png")]
    rng = np.random.default_rng(6)
    base = texture_rgb(rng)
    pasted = base.copy()
    pasted[120:240, 20:140] = ref_px[1][40:160, 100:220]   # a 47 % region of the histology image
    d_q = D.describe(np.stack([pasted, base]))
    best, owner = novelty.patch_search(d_q["grey"], _patch_reference(ref_px))
    assert owner[0] == 1 and best[0] > 0.97, best
    assert best[1] < best[0] - 0.1


def _paste(base, source, top, left, side, at_top, at_left):
    out = base.copy()
    out[at_top:at_top + side, at_left:at_left + side] = source[top:top + side, left:left + side]
    return out


def test_a_speckled_ultrasound_region_pasted_at_an_odd_offset_is_found():
    """Echocardiography frames (speckle on a dark background) pasted into bright photographs at
    odd pixel offsets: the region's own grey values are compared (not values standardised over
    the photograph, which clip its speckle), and the window pair is found among ten frames of
    the same cine that all look alike."""
    from eval_fixtures import normalised
    from imaging_fixtures import dicom_sample, skimage_sample

    echo = dicom_sample("examples_ybr_color.dcm")
    frames = [normalised(echo, frame=f) for f in range(0, 30, 3)]
    others = [normalised(skimage_sample(n)) for n in ("retina.jpg", "ihc.png")]
    ref = _patch_reference(frames + others)
    bases = [normalised(skimage_sample(n)) for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    # frame index in `frames`, source corner, side, target corner (odd offsets)
    cases = [(5, 97, 102, 127, 47, 84), (8, 113, 104, 115, 24, 27), (6, 112, 55, 117, 83, 78)]
    queries = [_paste(bases[j % 3], frames[f], t, l, side, T, L) for j, (f, t, l, side, T, L) in enumerate(cases)]
    best, owner = novelty.patch_search(D.describe(np.stack(queries + bases))["grey"], ref)
    assert list(owner[:3]) == [f for f, *_ in cases], (owner, best)
    assert (best[:3] > 0.85).all(), best
    assert best[3:].max() < best[:3].min() - 0.3, best  # the photographs alone match nothing that well


def test_a_region_of_a_smooth_upscaled_image_is_found_among_similar_references():
    """A 64-px MR upscaled (smooth everywhere) pasted into a photograph, with brain slices of
    another volume in the reference: many windows of smooth images look alike, and the true
    source must still be among the pairs refined at full resolution."""
    from eval_fixtures import normalised
    from imaging_fixtures import dicom_sample, nifti_sample, skimage_sample

    t1, epi = nifti_sample("anatomical.nii"), nifti_sample("example4d.nii.gz")
    slices = [normalised(t1, slice_index=s, axis=2) for s in range(6, 19, 2)]
    slices += [normalised(epi, slice_index=s, axis=2) for s in range(4, 21, 2)]
    mr = normalised(dicom_sample("MR_small.dcm"))
    ref = _patch_reference(slices + [mr])
    query = _paste(normalised(skimage_sample("rocket.jpg")), mr, 142, 120, 113, 90, 20)
    best, owner = novelty.patch_search(D.describe(query[None])["grey"], ref)
    assert owner[0] == len(slices) and best[0] > 0.95, (owner, best)


def test_an_unrelated_smooth_scan_is_far_from_a_pasted_region():
    """Windows of unrelated smooth images (a CT head against brain MR slices) correlate almost
    as well as a copy on plain grey values; on band-passed values only the copy stays high."""
    from eval_fixtures import normalised
    from imaging_fixtures import dicom_sample, nifti_sample, skimage_sample

    epi = nifti_sample("example4d.nii.gz")
    slices = [normalised(epi, slice_index=s, axis=2) for s in range(4, 21, 2)]
    ref = _patch_reference(slices)
    ct_head = normalised(dicom_sample("J2K_pixelrep_mismatch.dcm"))
    pasted = _paste(normalised(skimage_sample("rocket.jpg")), slices[5], 132, 40, 107, 13, 78)
    best, owner = novelty.patch_search(D.describe(np.stack([pasted, ct_head]))["grey"], ref)
    assert owner[0] == 5
    assert best[0] - best[1] > 0.2, best


def test_plain_torchscript_exports_and_copy_descriptors_are_accepted(tmp_path):
    """A torch.jit.trace / script export that takes only the image (no return_features) works,
    gets ImageNet-normalised float input, and serves as the novelty 'features' measure."""
    from evaluation.features import load_extractor

    class MeanPerChannel(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    traced = tmp_path / "plain.pt"
    torch.jit.trace(MeanPerChannel(), torch.rand(1, 3, 32, 32)).save(str(traced))
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(MeanPerChannel()).save(str(scripted))
    grey = np.full((1, 224, 224, 3), 128, np.uint8)
    for path in (traced, scripted):
        ex = load_extractor(str(path))
        assert ex.input_size == 224 and ex.dim == 3
        expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
        assert np.allclose(ex.from_normalised(grey)[0], expected, atol=1e-5)
    (tmp_path / "plain.pt.json").write_text('{"input_size": 288}')
    assert load_extractor(str(traced)).input_size == 288

    class Descriptor(torch.nn.Module):  # SSCD-style: conv trunk, pooled, L2-normalised 32-d descriptor
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 32, 7, stride=4)

        def forward(self, x):
            return torch.nn.functional.normalize(self.conv(x).relu().mean(dim=(2, 3)), dim=1)

    torch.manual_seed(0)
    sscd = tmp_path / "sscd_tiny.torchscript.pt"
    torch.jit.script(Descriptor()).save(str(sscd))
    rng = np.random.default_rng(7)
    ref = tmp_path / "ref"
    for n in range(8):
        save(texture_rgb(rng, 96), ref / f"r{n}.png")
    res = novelty.run_novelty(ref, ref, tmp_path / "o", size=96, progress=False, measures=["pixel"],
                              features=load_extractor(str(sscd)))
    assert res.measures == ["pixel", "features"]
    assert all(r["features"] == pytest.approx(1.0, abs=1e-5) for r in res.rows)
