"""Leak audit: planted leaks are flagged, a clean split is not."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from imaging_fixtures import audit_items, native_vs_tiny_items, texture
from studies.audit import (
    AUC_THRESHOLD, EFFECT_THRESHOLD, FEATURE_NAMES, GRID_FEATURE_NAMES, MIN_TO_CERTIFY,
    AuditItem, AuditReport,
    audit_leaks, blockiness, is_flagged, stimulus_features,
)
from studies.imaging.stimuli import encode_png, normalise, render_stimulus


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    return {kind: audit_items(tmp, kind) for kind in ("clean", "bright", "jpeg")}


def test_brighter_synthetic_images_are_flagged(planted):
    report = audit_leaks(planted["bright"])
    assert report.leak and report.auc >= AUC_THRESHOLD
    top = max(report.feature_effects, key=lambda k: abs(report.feature_effects[k]))
    assert top in {"mean", "p01", "p05", "p25", "p50", "p75", "p95", "p99"}
    assert report.feature_effects["mean"] > 1.0  # synthetic brighter
    assert "separate real from synthetic" in report.warnings[0]


def test_jpeg_compressed_synthetic_images_are_flagged(planted):
    report = audit_leaks(planted["jpeg"])
    assert report.leak and report.auc >= AUC_THRESHOLD
    assert report.feature_effects["blockiness"] > 0.5
    # The originals' formats differ completely: said so, even though normalised away.
    assert any("formats differ completely" in w for w in report.warnings)
    assert report.distributions["format"] == {"real": {"PNG": 30}, "synthetic": {"JPEG": 30}}


def test_a_clean_random_split_is_not_flagged(planted):
    report = audit_leaks(planted["clean"])
    assert report.auc is not None and report.auc < 0.7
    assert not report.leak and not report.flagged and report.reasons == []
    assert report.verdict == "ok" and "verdict: ok" in report.format_text()
    assert not any("separate real from synthetic" in w for w in report.warnings)
    assert not any("differ completely" in w for w in report.warnings)


def test_too_few_images_gives_null_auc_with_reason(planted):
    real = [it for it in planted["clean"] if it.source == "real"]
    synth = [it for it in planted["clean"] if it.source == "synthetic"]
    report = audit_leaks(real[:5] + synth[:1])
    assert report.auc is None and report.auc_std is None and not report.leak
    assert "at least 2 images per source" in report.auc_reason
    assert any("not run" in w for w in report.warnings)
    assert audit_leaks(real[:5]).auc is None  # one source only
    small = audit_leaks(real[:2] + synth[:3])  # 2-fold fallback still runs
    assert small.auc is not None and "2-fold" in small.cv
    assert any("rough estimate" in w for w in small.warnings)


def test_report_round_trips_and_reads_well(planted):
    report = audit_leaks(planted["jpeg"])
    data = json.loads(json.dumps(report.to_dict()))
    assert AuditReport.from_dict(data) == report
    assert data["threshold"] == AUC_THRESHOLD and data["leak"] is True
    text = report.format_text()
    assert f"{report.auc:.3f}" in text and "LEAK" in text and "JPEG x30" in text
    assert "JPEG 8x8 blockiness" in text


def test_aspect_ratio_difference_is_warned(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(6):
        square = texture(rng)
        wide = texture(rng)[:32]
        items.append(AuditItem("real", "PNG", 64, 64, "L", 8, render_stimulus(square, 64)))
        items.append(AuditItem("synthetic", "PNG", 64, 32, "L", 8, render_stimulus(wide, 64)))
    report = audit_leaks(items)
    assert any("Aspect ratios differ completely" in w for w in report.warnings)
    assert any("sizes differ completely" in w for w in report.warnings)
    assert report.feature_effects["padding_fraction"] == 99.0  # constant in each class


def test_unknown_source_is_rejected():
    png = render_stimulus(np.zeros((8, 8), np.float32), 8)
    with pytest.raises(ValueError, match="source"):
        audit_leaks([AuditItem("fake", "PNG", 8, 8, "L", 8, png)])


def test_stimulus_features_measure_what_they_claim():
    rng = np.random.default_rng(2)
    img = texture(rng)
    flat = stimulus_features(render_stimulus(img, 64), 64, 64)
    assert set(flat) == set(FEATURE_NAMES) | set(GRID_FEATURE_NAMES)
    assert flat["padding_fraction"] == 0 and flat["colourfulness"] == 0
    assert abs(flat["mean"] - img.mean()) < 0.01
    half = stimulus_features(render_stimulus(img[:32], 64), 64, 32)
    assert half["padding_fraction"] == pytest.approx(0.5)
    noisy = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
    assert stimulus_features(render_stimulus(noisy, 64))["log_noise_sigma"] > \
        flat["log_noise_sigma"] + 0.3
    colour = np.stack([img, img * 0.5, img * 0.2], axis=-1)
    assert stimulus_features(render_stimulus(colour, 64))["colourfulness"] > 0.1


def test_blockiness_sees_the_jpeg_grid_also_after_resizing():
    rng = np.random.default_rng(4)
    img = np.rint(texture(rng, 128) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=15)
    jpeg = np.asarray(Image.open(buf), np.float32) / 255
    assert blockiness(jpeg) > 1.3 > blockiness(img / 255.0)
    # Upscaled 2x into a stimulus: the grid is found from the original's size.
    up = stimulus_features(encode_png(normalise(jpeg, 256)), 128, 128)["blockiness"]
    plain = stimulus_features(encode_png(normalise(img / 255.0, 256)), 128, 128)["blockiness"]
    assert up > plain + 0.15


@pytest.fixture(scope="module")
def native_vs_tiny(tmp_path_factory):
    return native_vs_tiny_items(tmp_path_factory.mktemp("native"))


def test_native_real_samples_vs_tiny_blurry_synthetic_is_flagged(native_vs_tiny):
    """A planted size leak: real = shipped pydicom/skimage/nibabel samples at native sizes (up
    to 1411 px, sharp), synthetic = 7 blurry 64 px images. The old audit listed the size
    difference and a -1.59 SD sharpness effect but said AUC 0.588 "ok"."""
    report = audit_leaks(native_vs_tiny)
    assert report.counts == {"real": 10, "synthetic": 7}
    assert report.flagged and report.leak and report.verdict == "leak"
    assert any("sizes are distributed differently" in r and "64x64 x7" in r
               for r in report.reasons)
    assert any(r.startswith("sharpness") and "lower in synthetic" in r for r in report.reasons)
    text = report.format_text()
    assert "verdict: LEAK" in text and ": ok" not in text


def test_single_feature_and_original_sizes_flag_even_when_the_classifier_does_not(native_vs_tiny):
    """The classifier's AUC is noisy on few images (the issue saw 0.588): the single-feature
    and original-property checks must flag on their own."""
    report = audit_leaks(native_vs_tiny, threshold=1.01)  # the AUC can never flag
    assert report.flagged and not any("classifier" in r for r in report.reasons)
    assert report.feature_effects["log_laplacian_var"] <= -EFFECT_THRESHOLD
    assert report.property_distances["size"] >= 0.5


def test_one_strong_feature_is_flagged(tmp_path):
    """Brighter synthetic images on a handful of cases: the AUC gate is off, the mean-
    intensity effect alone flags the study."""
    rng = np.random.default_rng(4)
    items = []
    for i in range(24):
        img = texture(rng)
        source = "real" if i % 2 else "synthetic"
        if source == "synthetic":
            img = np.clip(img + 0.12, 0, 1)
        items.append(AuditItem(source, "PNG", 64, 64, "L", 8, render_stimulus(img, 64)))
    report = audit_leaks(items, threshold=1.01)
    assert report.flagged
    assert any(r.startswith("mean intensity is higher in synthetic") for r in report.reasons)


def test_partly_overlapping_sizes_are_flagged():
    """Every synthetic image one size while the real ones vary (one of them that size)."""
    rng = np.random.default_rng(5)
    items = []
    for i in range(30):
        img = render_stimulus(texture(rng), 64)
        side = 64 if i % 10 == 0 else 64 + 8 * (i % 10)
        items.append(AuditItem("real", "PNG", side, side, "L", 8, img))
        items.append(AuditItem("synthetic", "PNG", 64, 64, "L", 8, img))
    report = audit_leaks(items, threshold=1.01)
    assert report.property_distances["size"] == pytest.approx(0.9)
    assert report.flagged and [r for r in report.reasons if "sizes" in r]
    assert report.property_distances["format"] == 0.0


def test_too_few_images_to_certify_instead_of_ok(planted):
    real = [it for it in planted["clean"] if it.source == "real"]
    synth = [it for it in planted["clean"] if it.source == "synthetic"]
    n = MIN_TO_CERTIFY - 1
    report = audit_leaks(real[:n] + synth[:n])
    if not report.flagged:
        assert report.verdict == "too few images to certify"
        assert "too few images to certify" in report.format_text()
        assert "verdict: ok" not in report.format_text()
    full = audit_leaks(real[:MIN_TO_CERTIFY] + synth[:MIN_TO_CERTIFY])
    assert full.verdict in ("ok", "leak")
    # a verdict of "ok" is never given below the documented count
    for k in (2, 5, 10, n):
        assert audit_leaks(real[:k] + synth[:k]).verdict != "ok"


def test_stored_reports_from_before_flagged_existed_still_read():
    assert is_flagged({"leak": True}) is True and is_flagged({"leak": False}) is False
    assert is_flagged({"leak": False, "flagged": True}) is True
    assert is_flagged(None) is None
    old = {"counts": {}, "distributions": {}, "auc": None, "auc_std": None, "auc_reason": "x",
           "cv": "", "threshold": 0.75, "feature_effects": {}, "warnings": [], "leak": False}
    assert AuditReport.from_dict(old).verdict == "ok"


# --------------------------------------------------------------------------------------
# what a reader can see: tint, intensity range, a fixed mark, byte size within a stratum

def _pop(rng, n, modality="", generator="", source="real", edit=None):
    items = []
    for _ in range(n):
        img = texture(rng)
        img = edit(img, rng) if edit and source == "synthetic" else img
        items.append(AuditItem(source, "PNG", 64, 64, "L", 8, render_stimulus(img, 64),
                               modality=modality, generator=generator))
    return items


def _sd_tint(img, rng):
    """Stable Diffusion-like output for a greyscale prompt: R and B off by 1-4 levels."""
    return np.stack([np.clip(img + rng.integers(1, 5) / 255, 0, 1), img,
                     np.clip(img - rng.integers(1, 4) / 255, 0, 1)], axis=-1)


def test_a_faint_sd_like_tint_is_flagged_and_named():
    rng = np.random.default_rng(11)
    items = _pop(rng, 25) + _pop(rng, 25, source="synthetic", edit=_sd_tint)
    report = audit_leaks(items)
    assert report.flagged
    assert any(r.startswith("red-green tint (mean R-G) is higher in synthetic") for r in report.reasons)
    assert report.feature_effects["tint_bg"] < -EFFECT_THRESHOLD


def test_a_squeezed_intensity_range_is_flagged():
    rng = np.random.default_rng(12)

    def full_range(img, rng):
        return (img - img.min()) / (img.max() - img.min())

    def squeezed(img, rng):
        return 6 / 255 + full_range(img, rng) * 243 / 255

    real = [AuditItem("real", "PNG", 64, 64, "L", 8, render_stimulus(full_range(texture(rng), rng), 64))
            for _ in range(25)]
    synth = [AuditItem("synthetic", "PNG", 64, 64, "L", 8, render_stimulus(squeezed(texture(rng), rng), 64))
             for _ in range(25)]
    report = audit_leaks(real + synth)
    assert any(r.startswith("minimum intensity is higher in synthetic") for r in report.reasons)
    assert any(r.startswith("maximum intensity is lower in synthetic") for r in report.reasons)


def test_a_mark_in_a_fixed_place_is_flagged_by_its_grid_cell():
    rng = np.random.default_rng(13)

    def mark(img, rng):
        out = img.copy()
        out[56:60, 50:60:2] = 0.95  # a small hatched stamp, lower right
        return out

    items = _pop(rng, 25) + _pop(rng, 25, source="synthetic", edit=mark)
    report = audit_leaks(items, threshold=1.01)
    cell = [r for r in report.reasons if "bottom right cell of a 4x4 grid" in r]
    assert cell and report.flagged
    assert not any("upper" in r or "top" in r for r in report.reasons)


def test_a_leak_inside_one_modality_is_flagged_even_when_pooling_hides_it():
    """Synthetic CT brighter, synthetic MRI darker: pooled, the two cancel."""
    rng = np.random.default_rng(14)

    def up(img, rng):
        return np.clip(img + 0.12, 0, 1)

    def down(img, rng):
        return np.clip(img - 0.12, 0, 1)

    items = (_pop(rng, 20, "CT") + _pop(rng, 20, "CT", "g", "synthetic", up)
             + _pop(rng, 20, "MRI") + _pop(rng, 20, "MRI", "g", "synthetic", down))
    report = audit_leaks(items)
    pooled = report.strata[0]
    assert pooled["name"] == "all images" and not pooled["flagged"]
    assert report.flagged
    assert any(r.startswith("[modality ct] ") for r in report.reasons)
    assert any(r.startswith("[modality mri] ") for r in report.reasons)
    assert "strata (each tested alone" in report.format_text()


def test_png_byte_size_within_a_stratum_is_a_feature():
    rng = np.random.default_rng(15)
    smooth = render_stimulus(np.full((64, 64), 0.4, np.float32), 64)
    noisy = render_stimulus(np.clip(0.4 + rng.normal(0, 0.05, (64, 64)), 0, 1).astype(np.float32), 64)
    f_s, f_n = stimulus_features(smooth), stimulus_features(noisy)
    assert f_n["png_bytes_per_pixel"] * 64 * 64 == len(noisy) > len(smooth)


def test_clean_random_split_with_many_strata_is_not_flagged():
    rng = np.random.default_rng(16)
    items = []
    for m in ("CT", "MRI"):
        pool = _pop(rng, 45, m)
        labels = ["real"] * 15 + ["synthetic"] * 30
        for k, (it, lab) in enumerate(zip(pool, rng.permutation(labels))):
            it.source = str(lab)
            it.generator = "" if lab == "real" else ("a" if k % 2 else "b")
        items += pool
    report = audit_leaks(items)
    assert sum(s["tested"] for s in report.strata) == 7  # pooled, 2 modalities, 4 generators
    assert not report.flagged, report.reasons
    assert report.verdict == "too few images to certify" or report.verdict == "ok"


def test_strata_too_small_to_test_alone_are_listed():
    rng = np.random.default_rng(17)
    items = _pop(rng, 25, "CT") + _pop(rng, 25, "CT", "g", "synthetic") \
        + _pop(rng, 4, "MRI") + _pop(rng, 4, "MRI", "g", "synthetic")
    report = audit_leaks(items)
    small = [s for s in report.strata if s["name"] == "modality mri"]
    assert small and not small[0]["tested"]
    assert any("not tested alone" in w and "modality mri" in w for w in report.warnings)


# --------------------------------------------------------------------------------------
# the prompts readers may see

CAPTIONS = [
    "posteroanterior chest radiograph, no acute findings", "right lower lobe consolidation",
    "small left pleural effusion", "cardiomegaly with pulmonary venous congestion",
    "healed fracture of the left seventh rib", "nasogastric tube tip in the stomach",
    "hyperinflated lungs, flattened diaphragms", "left upper lobe mass, 3 cm",
    "right pneumothorax with 2 cm rim", "bilateral hilar lymphadenopathy",
    "normal heart size and clear lungs", "elevated right hemidiaphragm",
    "calcified granuloma in the right mid zone", "pacemaker with two leads",
    "widened mediastinum after trauma", "atelectasis at the left base",
    "diffuse interstitial opacities", "dextroscoliosis of the thoracic spine",
    "sternotomy wires and clips", "air under the right hemidiaphragm",
    "endotracheal tube 4 cm above the carina", "bilateral perihilar airspace disease",
    "lingular scarring", "aortic knob calcification",
]


def _prompt_items(real_prompts, synth_prompts, groups=True):
    png = render_stimulus(np.zeros((8, 8), np.float32), 8)
    items = [AuditItem("real", "PNG", 8, 8, "L", 8, png, prompt=p, group=f"g{i}" if groups else "")
             for i, p in enumerate(real_prompts)]
    items += [AuditItem("synthetic", "PNG", 8, 8, "L", 8, png, prompt=p,
                        group=f"g{i}" if groups else "") for i, p in enumerate(synth_prompts)]
    return items


def test_prompts_with_a_quality_suffix_are_flagged_with_the_tell_and_the_remedy():
    from studies.audit import audit_prompts

    items = _prompt_items(CAPTIONS, [c + ", high quality, 4k" for c in CAPTIONS])
    rep = audit_prompts(items)
    assert rep["verdict"] == "flagged" and rep["auc"] >= 0.9
    assert any('"high quality 4k"' in t or '"high quality"' in t for t in rep["tells"])
    assert "own captions" in rep["remedy"] and "group" in rep["remedy"]
    full = audit_leaks(items, prompts_shown=True)
    assert full.prompts["verdict"] == "flagged" and full.flagged
    assert any("prompts readers see" in r for r in full.reasons)
    assert "remedy: generate the synthetic images from the real images' own captions" in full.format_text()
    # Not shown in the main cases: reported, but it does not flag the study by itself.
    assert audit_leaks(items, prompts_shown=False).prompts["verdict"] == "flagged"


def test_synthetic_images_generated_from_the_real_captions_are_ok():
    from studies.audit import audit_prompts

    rep = audit_prompts(_prompt_items(CAPTIONS, CAPTIONS))
    assert rep["verdict"] == "ok" and rep["paired"] == 1.0 and rep["tells"] == []
    # the same captions shuffled across groups are still not a tell, but no longer paired
    rep = audit_prompts(_prompt_items(CAPTIONS, CAPTIONS[::-1] + [], groups=False))
    assert rep["verdict"] == "ok"


def test_a_template_used_by_one_source_is_a_tell():
    from studies.audit import audit_prompts

    synth = [f"a chest x-ray showing {c}" for c in CAPTIONS]
    rep = audit_prompts(_prompt_items(CAPTIONS, synth))
    assert rep["verdict"] == "flagged"
    assert any('"a chest x-ray showing"' in t for t in rep["tells"])


def test_no_prompts_and_too_few_prompts():
    from studies.audit import audit_prompts

    assert audit_prompts(_prompt_items([""] * 5, [""] * 5))["verdict"] == "no prompts"
    few = audit_prompts(_prompt_items(CAPTIONS[:6], CAPTIONS[6:12]))
    assert few["verdict"] == "too few"
    only_synth = audit_prompts(_prompt_items([""] * 10, CAPTIONS[:10]))
    assert only_synth["verdict"] == "flagged" and "present for 100% of synthetic" in only_synth["tells"][0]
