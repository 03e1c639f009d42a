"""evaluation.augment on a toy two-class task (bright discs vs dark stripes): every arm and repeat
is run and recorded, one protocol serves every arm (a fixed validation set outside every arm's
training images; real 2N trains on 2N), the intervals include the test set (cluster bootstrap x
repeats, Holm-corrected paired comparisons), synthetic images really enter training, the test set
never steers model selection, runs are reproducible, and bad inputs are one Error: line."""
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
    with open(result.files["runs_csv"], newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 15
    with open(result.files["predictions"], newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 15 * 20
    assert json.loads(result.files["runs_json"].read_text()) == result.runs
    assert "plotly" in result.files["plot"].read_text()[:20000].lower()
    assert json.loads(result.files["experiment"].read_text())["config"]["n_real"] == 4


def test_every_arm_trains_on_its_own_images_and_stops_on_one_shared_validation_set(result):
    """real 2N trains on 2N images (not 2N minus a validation share); the validation images are the
    same for every arm and repeat and outside every arm's training draw."""
    for r in result.runs:
        assert r["train_images"] == r["n_real"] + r["n_synthetic"]
    assert {r["val_images"] for r in result.runs} == {len(result.validation)} and len(result.validation) >= 2
    assert {x.label for x in result.validation} == {"disc", "stripes"}
    splits = json.loads(result.files["splits"].read_text())
    assert sorted(splits["real_draws"]) == ["0", "1", "2"]
    for draw in splits["real_draws"].values():
        assert len(draw) == 8 and not set(draw) & set(splits["validation"])
    assert len({tuple(d) for d in splits["real_draws"].values()}) == 3  # repeats draw differently


def test_the_classifier_sees_the_same_validation_images_in_every_arm(sets, tmp_path, monkeypatch):
    from evaluation import classifier

    seen, real_train = [], classifier.train

    def spy(x, y, n_classes, recipe, **kw):
        seen.append((len(y), kw["validation"][0].tobytes(), kw["validation"][1].tolist(), recipe.patience,
                     recipe.max_epochs))
        return real_train(x, y, n_classes, recipe, **kw)

    monkeypatch.setattr(classifier, "train", spy)
    run(sets, tmp_path / "spy", max_epochs=1, repeats=2)
    assert sorted(n for n, *_ in seen) == sorted([4, 8, 12, 8] * 2)
    assert len({(v, tuple(labels), patience, epochs) for _, v, labels, patience, epochs in seen}) == 1


def test_validation_takes_whole_groups_and_a_given_set_is_used_as_is(sets, tmp_path):
    real = augment.read_labelled(sets["real"])
    grouped = [augment.LabelledImage(x.path, x.label, f"g{i // 3}") for i, x in enumerate(real)]  # 8 groups of 3
    res = augment.run_augment(grouped, augment.read_labelled(sets["test"]), augment.read_labelled(sets["syn"]),
                              tmp_path / "g", cfg(synthetic=(4,), repeats=2, max_epochs=1, val_size=5),
                              log=lambda m: None, progress=False)
    val_groups = {x.group for x in res.validation}
    assert len(res.validation) == 3 * len(val_groups) >= 5
    for items in res.draws.values():
        assert not {x.group for x in items} & val_groups
    given = res.validation[:2]
    rest = [x for x in grouped if x not in given]
    again = augment.run_augment(rest, augment.read_labelled(sets["test"]), augment.read_labelled(sets["syn"]),
                                tmp_path / "v", cfg(synthetic=(4,), repeats=2, max_epochs=1), validation=given,
                                log=lambda m: None, progress=False)
    assert again.validation == given and {r["val_images"] for r in again.runs} == {2}
    with pytest.raises(augment.AugmentError, match="also in the real training pool"):
        augment.run_augment(grouped, augment.read_labelled(sets["test"]), augment.read_labelled(sets["syn"]),
                            tmp_path / "x", cfg(synthetic=(4,), repeats=2, max_epochs=1), validation=given,
                            log=lambda m: None, progress=False)


def test_weighted_metrics_equal_sklearn_on_the_resampled_set():
    """The vectorised bootstrap metrics equal scikit-learn run on the explicitly resampled test set."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(3)
    for n_classes in (2, 4):
        y = np.repeat(np.arange(n_classes), 6)
        p = rng.dirichlet(np.ones(n_classes), size=len(y))
        p[3] = p[4]  # a tie
        groups = np.array([f"s{i // 2}" for i in range(len(y))], dtype=object)
        w = augment.cluster_bootstrap_weights(groups, y, 50, rng)
        got = augment.weighted_metrics(y, p, n_classes, w)
        for b in range(50):
            idx = np.repeat(np.arange(len(y)), w[b].astype(int))
            yy, pp = y[idx], p[idx]
            assert got["accuracy"][b] == pytest.approx(accuracy_score(yy, pp.argmax(1)))
            assert got["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(yy, pp.argmax(1)))
            ref = roc_auc_score(yy, pp[:, 1]) if n_classes == 2 else \
                roc_auc_score(yy, pp, multi_class="ovr", average="macro")
            assert got["auroc"][b] == pytest.approx(ref)
        assert augment.test_metrics(y, p, n_classes) == pytest.approx(
            {k: v[0] for k, v in augment.weighted_metrics(y, p, n_classes, np.ones(len(y))).items()})


def test_cluster_bootstrap_resamples_whole_clusters_within_each_label():
    groups = np.array(["a", "a", "b", "b", "b", "c", "d", "d"], dtype=object)
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    w = augment.cluster_bootstrap_weights(groups, labels, 400, np.random.default_rng(0))
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 2] == w[:, 4]).all() and (w[:, 6] == w[:, 7]).all()
    # label 0 has clusters a, b: two draws among them; label 1 has c, d: two draws
    assert (w[:, 0] + w[:, 2] == 2).all() and (w[:, 5] + w[:, 6] == 2).all()
    assert len({tuple(r) for r in w}) > 4


def test_holm_matches_the_step_down_rule_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(0.04, 0.06): Holm (1979)
    assert augment.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert augment.holm([0.5, None, 0.01]) == [pytest.approx(0.5), None, pytest.approx(0.02)]


def _probs(y, n, rng, skill):
    """Fake classifier outputs: the true class gets ``skill`` extra probability mass."""
    p = rng.dirichlet(np.ones(n), size=len(y))
    p[np.arange(len(y)), y] += skill
    return p / p.sum(1, keepdims=True)


def test_intervals_include_test_set_sampling():
    """Two repeats with identical outputs have no training spread; a t-interval over repeats
    collapses to a point, but the test set is a sample: the bootstrap interval does not."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    groups = np.array([f"src{i // 2}" for i in range(30)], dtype=object)
    arms = [{"arm": "real 4", "n_real": 4, "n_synthetic": 0}, {"arm": "real 4 + synthetic 4", "n_real": 4,
            "n_synthetic": 4}, {"arm": "real 8", "n_real": 8, "n_synthetic": 0}]
    probs, runs = {}, []
    for k, a in enumerate(arms):
        p = _probs(y, 3, rng, 0.3 + 0.3 * k)
        for r in range(2):
            probs[(a["arm"], r)] = p
            runs.append({**a, "repeat": r, **augment.test_metrics(y, p, 3)})
    summary, comparisons = augment.summarise(runs, arms, probabilities=probs, test_y=y, test_groups=groups,
                                             n_classes=3, replicates=1000, seed=0)
    for s in summary:
        assert s["balanced_accuracy_ci_low"] < s["balanced_accuracy"] < s["balanced_accuracy_ci_high"] or \
            s["balanced_accuracy"] == 1.0
        assert s["ci_method"].startswith("bootstrap")
    pairs = {(c["arm"], c["baseline"], c["metric"]): c for c in comparisons}
    # every arm against real N, and every arm with synthetic images against real 2N
    assert set(pairs) == {(a, b, m) for a, b in [("real 4 + synthetic 4", "real 4"), ("real 8", "real 4"),
                                                  ("real 4 + synthetic 4", "real 8")] for m in augment.METRICS}
    for m in augment.METRICS:
        family = [c for c in comparisons if c["metric"] == m]
        assert [c["p_holm"] for c in family] == pytest.approx(augment.holm([c["p_value"] for c in family]))
        assert all(c["p_holm"] >= c["p_value"] for c in family)
    c = pairs[("real 4 + synthetic 4", "real 4", "balanced_accuracy")]
    assert c["ci_low"] < c["difference"] < c["ci_high"]
    # t-interval over repeats alone would say [x, x]
    base = [r["balanced_accuracy"] for r in runs if r["arm"] == "real 4"]
    assert augment.mean_ci(base)[1] == augment.mean_ci(base)[2]


def test_bootstrap_interval_agrees_with_scipys_bootstrap_in_the_plain_case():
    """Independent check: one label, every image its own cluster, repeats identical — the two-level
    bootstrap reduces to the ordinary percentile bootstrap of the accuracy, which scipy computes."""
    from scipy import stats

    rng = np.random.default_rng(5)
    y = np.zeros(60, dtype=int)
    p = np.column_stack([rng.uniform(size=60), np.zeros(60)])
    p[:, 1] = 1 - p[:, 0]  # correct (class 0) where p0 > 0.5: about half the images
    arms = [{"arm": "real 4", "n_real": 4, "n_synthetic": 0}, {"arm": "real 8", "n_real": 8, "n_synthetic": 0}]
    probs = {(a["arm"], r): p for a in arms for r in range(3)}
    runs = [{**a, "repeat": r, **augment.test_metrics(y, p, 2)} for a in arms for r in range(3)]
    summary, _ = augment.summarise(runs, arms, probabilities=probs, test_y=y, test_groups=None, n_classes=2,
                                   replicates=20000, seed=0)
    ref = stats.bootstrap(((p.argmax(1) == 0).astype(float),), np.mean, n_resamples=20000, method="percentile",
                          random_state=1).confidence_interval
    assert (summary[0]["accuracy_ci_low"], summary[0]["accuracy_ci_high"]) == pytest.approx((ref.low, ref.high),
                                                                                             abs=0.02)


def test_one_repeat_gives_no_interval_and_says_why(sets, tmp_path):
    res = run(sets, tmp_path / "one", repeats=1, max_epochs=1)
    for s in res.summary:
        assert s["accuracy_ci_low"] is None and s["balanced_accuracy_ci_high"] is None
        assert "one repeat" in s["note"]
    for c in res.comparisons:
        assert c["ci_low"] is None and c["p_value"] is None and c["p_holm"] is None and "one repeat" in c["note"]
        assert np.isfinite(c["difference"])
    assert "nan" not in res.files["summary_json"].read_text().lower()


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
    assert "real 4 + synthetic 4 - real 8" in ok.output and "Holm" in ok.output
    one = CliRunner().invoke(cli, args + ["--n-real", "4", "--synthetic-amounts", "4", "--repeats", "1"])
    assert one.exit_code == 0, one.output
    assert "nan" not in one.output and "No intervals or p-values: one repeat" in one.output
    lines = [line for line in one.output.splitlines() if line.startswith("real 4 ")]
    assert lines and not any("[" in line for line in lines)
    bad = CliRunner().invoke(cli, args + ["--n-real", "50", "--synthetic-amounts", "4", "--repeats", "2"])
    assert bad.exit_code == 1
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "2N" in lines[0]


def test_demo_on_shipped_images_runs_end_to_end(tmp_path):
    """Tiny scale: real crops from the training views, held-out test crops, synthetic images from the
    embedded model; held-out test images come from other files/slices than the real pool."""
    from model_runtime import registry
    from studio.experiment.augment_demo import run_demo

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
    groups = {x.group for x in augment.read_labelled(tmp_path / "test" / "labels.csv")}
    assert len(groups) == 9 and json.loads((tmp_path / "results" / "experiment.json").read_text())[
        "inputs"]["test_clusters"] == 9
