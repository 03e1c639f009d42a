"""evaluation.augment on a toy two-class task (bright discs vs dark stripes): every arm and repeat
is run and recorded, the statistics are scipy's, synthetic images really enter training, the test
set never steers model selection, runs are reproducible, and bad inputs are one Error: line."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from evaluation import augment  # noqa: E402


def make_set(folder, n_per_class, seed, *, swap=False):
    """Discs ('disc') and stripes ('stripes') with random size/phase/brightness; swap mislabels all."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    rows = []
    for i in range(2 * n_per_class):
        kind = ("disc", "stripes")[i % 2]
        img = np.full((16, 16, 3), rng.integers(0, 40), np.uint8)
        if kind == "disc":
            r = rng.uniform(3, 6)
            img[(yy - 8 + rng.integers(-2, 3)) ** 2 + (xx - 8) ** 2 < r * r] = rng.integers(150, 255)
        else:
            img[((xx + rng.integers(0, 4)) // 2) % 2 == 0] = rng.integers(150, 255)
        Image.fromarray(img).save(folder / f"{i}.png")
        label = {"disc": "stripes", "stripes": "disc"}[kind] if swap else kind
        rows.append({"path": f"{i}.png", "label": label})
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    return folder / "labels.csv"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    return {"real": make_set(root / "real", 12, 0), "test": make_set(root / "test", 10, 1),
            "syn": make_set(root / "syn", 12, 2), "swapped": make_set(root / "swapped", 12, 3, swap=True),
            "root": root}


def cfg(**kw):
    base = dict(n_real=4, synthetic=(4, 8), repeats=3, seed=0, size=16, max_epochs=6, patience=3, batch_size=8,
                lr=3e-3, widths=(8, 16))
    base.update(kw)
    return augment.AugmentConfig(**base)


def run(sets, out, synthetic="syn", test="test", **kw):
    read = augment.read_labelled
    return augment.run_augment(read(sets["real"]), read(sets[test]), read(sets[synthetic]), out, cfg(**kw),
                               log=lambda m: None, progress=False)


@pytest.fixture(scope="module")
def result(sets):
    return run(sets, sets["root"] / "out", synthetic_only=True)


def test_every_arm_and_repeat_is_run_and_written(result):
    arms = ["real 4", "real 4 + synthetic 4", "real 4 + synthetic 8", "real 8", "synthetic 8"]
    assert [s["arm"] for s in result.summary] == arms
    assert sorted((r["arm"], r["repeat"]) for r in result.runs) == sorted((a, k) for a in arms for k in range(3))
    for r in result.runs:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["balanced_accuracy"] <= 1 and 0 <= r["auroc"] <= 1
        assert r["train_images"] + r["val_images"] == r["n_real"] + r["n_synthetic"] and r["val_images"] >= 2
    with open(result.files["runs_csv"], newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 15
    assert json.loads(result.files["runs_json"].read_text()) == result.runs
    assert "plotly" in result.files["plot"].read_text()[:20000].lower()
    assert json.loads(result.files["experiment"].read_text())["config"]["n_real"] == 4


def test_summary_and_paired_comparisons_are_scipys(result):
    from scipy import stats
    from statsmodels.stats.weightstats import DescrStatsW

    for s in result.summary:
        values = [r["accuracy"] for r in result.runs if r["arm"] == s["arm"]]
        assert s["accuracy"] == pytest.approx(np.mean(values))
        if np.std(values) > 0:  # independent cross-check of the 95% t-interval
            lo, hi = DescrStatsW(values).tconfint_mean(0.05)
            assert (s["accuracy_ci_low"], s["accuracy_ci_high"]) == pytest.approx((max(lo, 0), min(hi, 1)))
    comparisons = {(c["arm"], c["metric"]): c for c in result.comparisons}
    assert len(comparisons) == 4 * 3 and all(c["baseline"] == "real 4" for c in comparisons.values())
    base = [r["balanced_accuracy"] for r in sorted(result.runs, key=lambda r: r["repeat"]) if r["arm"] == "real 4"]
    arm = [r["balanced_accuracy"] for r in sorted(result.runs, key=lambda r: r["repeat"]) if r["arm"] == "real 8"]
    c = comparisons[("real 8", "balanced_accuracy")]
    assert c["difference"] == pytest.approx(np.mean(np.subtract(arm, base)))
    if np.std(np.subtract(arm, base)) > 0:
        assert c["p_value"] == pytest.approx(stats.ttest_rel(arm, base).pvalue)
        assert c["ci_low"] <= c["difference"] <= c["ci_high"]


def test_subsamples_are_stratified_and_nested():
    labels = np.array([0] * 10 + [1] * 30)
    order = augment.stratified_order(labels, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(40))
    assert sorted(labels[order[:4]].tolist()) == [0, 0, 1, 1]
    assert np.bincount(labels[order[:20]]).tolist() == [10, 10]


def test_synthetic_images_enter_training(sets, tmp_path):
    """Synthetic images with every label swapped, alone, teach the swapped task: far below chance."""
    swapped = augment.run_augment(
        augment.read_labelled(sets["real"]), augment.read_labelled(sets["test"]),
        augment.read_labelled(sets["swapped"]), tmp_path / "swapped",
        cfg(synthetic=(24,), repeats=1, max_epochs=15, patience=15, synthetic_only=True, double_real=False),
        log=lambda m: None, progress=False)
    only = [r for r in swapped.runs if r["arm"] == "synthetic 24"][0]
    assert only["accuracy"] < 0.3


def test_the_test_set_never_steers_selection(sets, tmp_path, result):
    """Relabelling the test set changes the scores but not one training decision (epochs, best
    epoch, validation loss): selection only ever sees training images."""
    flipped = augment.run_augment(
        augment.read_labelled(sets["real"]), augment.read_labelled(make_set(tmp_path / "t", 10, 1, swap=True)),
        augment.read_labelled(sets["syn"]), tmp_path / "o", cfg(synthetic_only=True), log=lambda m: None,
        progress=False)
    key = ("arm", "repeat", "epochs", "best_epoch", "best_val_loss")
    assert [{k: r[k] for k in key} for r in flipped.runs] == [{k: r[k] for k in key} for r in result.runs]
    assert [r["accuracy"] for r in flipped.runs] == pytest.approx([1 - r["accuracy"] for r in result.runs])


def test_same_seed_same_runs(sets, tmp_path, result):
    again = run(sets, tmp_path / "again", synthetic_only=True)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in again.runs]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in result.runs]


def test_bad_inputs(sets, tmp_path):
    read = augment.read_labelled
    with pytest.raises(augment.AugmentError, match="2N"):
        augment.run_augment(read(sets["real"]), read(sets["test"]), read(sets["syn"]), tmp_path / "x",
                            cfg(n_real=20), log=lambda m: None, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (8, 8)).save(other / "a.png")
    (other / "labels.csv").write_text("path,label\na.png,cat\n")
    with pytest.raises(augment.AugmentError, match="cat"):
        augment.run_augment(read(sets["real"]), read(other / "labels.csv"), read(sets["syn"]), tmp_path / "x",
                            cfg(), log=lambda m: None, progress=False)
    (other / "nolabel.csv").write_text("path,diagnosis\na.png,cat\n")
    with pytest.raises(augment.AugmentError, match="label"):
        read(other / "nolabel.csv")


def test_cli_runs_and_reports_errors_in_one_line(sets, tmp_path):
    from click.testing import CliRunner

    from studio.cli import cli

    out = tmp_path / "cli"
    args = ["experiment", "augment", "--real", str(sets["real"]), "--test", str(sets["test"]),
            "--synthetic", str(sets["syn"]), "--out", str(out), "--size", "16", "--max-epochs", "2",
            "--widths", "8,16", "--quiet"]
    ok = CliRunner().invoke(cli, args + ["--n-real", "4", "--synthetic-amounts", "4", "--repeats", "2"])
    assert ok.exit_code == 0, ok.output
    assert (out / "summary.csv").is_file() and "real 4 + synthetic 4" in ok.output
    bad = CliRunner().invoke(cli, args + ["--n-real", "50", "--synthetic-amounts", "4", "--repeats", "2"])
    assert bad.exit_code == 1
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "2N" in lines[0]


def test_demo_on_shipped_images_runs_end_to_end(tmp_path):
    """Tiny scale: real crops from the training views, held-out test crops, synthetic images from the
    embedded model; held-out test images come from other files/slices than the real pool."""
    from model_runtime import registry
    from studio.augment_demo import run_demo

    if not registry.get("embedded").available():
        pytest.skip("embedded model not built")
    result = run_demo(tmp_path, cfg(n_real=6, synthetic=(6,), repeats=1, size=16, max_epochs=1, patience=1),
                      pool=24, test_crops=1, steps=2, log=lambda m: None, progress=False)
    assert [s["arm"] for s in result.summary] == ["real 6", "real 6 + synthetic 6", "real 12"]
    with open(tmp_path / "synthetic" / "generation.csv", newline="") as fh:
        generated = list(csv.DictReader(fh))
    assert len(generated) == 6 and len({g["seed"] for g in generated}) == 6
    with open(tmp_path / "test" / "labels.csv", newline="") as fh:
        test_views = {r["view"] for r in csv.DictReader(fh)}
    with open(tmp_path / "real" / "captions.csv", newline="") as fh:
        real_views = {r["view"] for r in csv.DictReader(fh)}
    assert test_views and not test_views & real_views
