"""Does synthetic data help a classifier? MediSyn's augmentation experiment, for any labelled data set.

    medisyn experiment augment --real POOL.csv --test TEST.csv --synthetic SYN.csv --n-real N --out DIR

Design (MediSyn, claim 5: real + synthetic matches twice the real data):

  arms        ``real N``; ``real N + synthetic M`` for each M; ``real 2N`` (the comparison the paper
              makes); optionally ``synthetic M`` alone;
  repeats     each repeat r draws its own stratified subsample of N real images (the 2N arm adds N
              more, so N is nested in 2N) and of the synthetic pool (nested over M), with seed
              ``seed + r``; every arm of a repeat shares them, so arms compare *paired*;
  classifier  the same recipe for every arm (``evaluation.classifier``): a ResNet from transformers,
              from scratch or from a local pretrained folder; early stopping on a stratified
              validation split of the arm's own training images — the test set is only scored,
              after training, never used for selection;
  metrics     accuracy, balanced accuracy, macro one-vs-rest AUROC (scikit-learn) on the test set;
  summary     per arm mean and 95 % t-interval across repeats (clipped to [0, 1]); each arm against ``real N``: paired
              t-test over matched repeats (scipy ``ttest_rel``: p-value and 95 % CI of the mean
              difference);
  output      ``runs.csv``/``runs.json`` (every run), ``summary.csv``/``summary.json``,
              ``comparisons.csv``, ``augment.html`` (metric vs amount of synthetic data, plotly) and
              ``experiment.json`` (every parameter). Reproducible from ``seed``.

Inputs are tables of labelled images (``path,label``; paths relative to the CSV). Decoding is
pluggable (``decode=``), as in ``model_runtime.finetune``: the CLI passes the studio's reader.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

METRICS = ("accuracy", "balanced_accuracy", "auroc")


class AugmentError(ValueError):
    """Bad inputs (missing labels, too few images for the arms asked); the message says which."""


@dataclass(frozen=True)
class LabelledImage:
    path: pathlib.Path
    label: str


@dataclass
class AugmentConfig:
    n_real: int                                   # N: real training images per repeat (stratified)
    synthetic: tuple[int, ...] = ()               # the M values of the real N + synthetic M arms
    double_real: bool = True                      # the real 2N arm
    synthetic_only: bool = False                  # synthetic M alone, for the largest M
    repeats: int = 5
    seed: int = 0
    size: int = 64                                # images are resized to size x size RGB
    val_fraction: float = 0.2
    max_epochs: int = 40
    patience: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (16, 32, 64)        # ResNet stage widths when training from scratch
    pretrained: str | None = None                 # a local transformers image-classification folder
    threads: int = 1


@dataclass
class AugmentResult:
    out_dir: pathlib.Path
    runs: list[dict]
    summary: list[dict]
    comparisons: list[dict]
    seconds: float
    files: dict[str, pathlib.Path] = field(default_factory=dict)


# --- inputs ------------------------------------------------------------------------------

def read_labelled(table, *, label_column: str = "label") -> list[LabelledImage]:
    """Rows of a CSV with ``path`` and ``label`` (or another ``label_column``, e.g. ``modality``)."""
    table = pathlib.Path(table)
    if not table.is_file():
        raise AugmentError(f"{table}: no such file")
    with open(table, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        rows = list(reader)
    if "path" not in columns or label_column not in columns:
        raise AugmentError(f"{table}: needs columns 'path' and {label_column!r}, found {sorted(columns)}")
    out = []
    for line, row in enumerate(rows, start=2):
        label = (row[label_column] or "").strip()
        if not label:
            raise AugmentError(f"{table} line {line}: empty {label_column}")
        path = table.parent / (row["path"] or "").strip()
        if not path.is_file():
            raise AugmentError(f"{table} line {line}: image {row['path']!r} not found")
        out.append(LabelledImage(path, label))
    if not out:
        raise AugmentError(f"{table} lists no images")
    return out


def _open_rgb(path: pathlib.Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def decode(items: Sequence[LabelledImage], size: int, decode_fn=None) -> np.ndarray:
    """uint8 N x size x size x 3; an unreadable image is an AugmentError naming it."""
    decode_fn = decode_fn or _open_rgb
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        try:
            out[i] = np.asarray(decode_fn(item.path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except Exception as exc:  # noqa: BLE001 - PIL, pydicom, nibabel raise their own types
            raise AugmentError(f"{item.path}: cannot read the image ({type(exc).__name__}: {exc})") from None
    return out


# --- sampling ------------------------------------------------------------------------------

def stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation whose every prefix is as close to class-balanced as the pool allows
    (round-robin over shuffled classes), so nested subsamples stay stratified."""
    per_class = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    classes = list(per_class)
    order = []
    while any(per_class.values()):
        for c in rng.permutation(classes):
            if per_class[c]:
                order.append(per_class[c].pop())
    return np.array(order, dtype=int)


def plan_arms(cfg: AugmentConfig) -> list[dict]:
    arms = [{"arm": f"real {cfg.n_real}", "n_real": cfg.n_real, "n_synthetic": 0}]
    for m in sorted(set(cfg.synthetic)):
        if m > 0:
            arms.append({"arm": f"real {cfg.n_real} + synthetic {m}", "n_real": cfg.n_real, "n_synthetic": m})
    if cfg.double_real:
        arms.append({"arm": f"real {2 * cfg.n_real}", "n_real": 2 * cfg.n_real, "n_synthetic": 0})
    if cfg.synthetic_only and cfg.synthetic:
        m = max(cfg.synthetic)
        arms.append({"arm": f"synthetic {m}", "n_real": 0, "n_synthetic": m})
    return arms


# --- statistics (scipy / scikit-learn; nothing hand-rolled) ------------------------------------

def test_metrics(y_true: np.ndarray, probabilities: np.ndarray, n_classes: int) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    predicted = probabilities.argmax(axis=1)
    present = np.unique(y_true)
    if len(present) < 2:
        auroc = float("nan")
    elif n_classes == 2:
        auroc = roc_auc_score(y_true, probabilities[:, 1])
    else:
        # one-vs-rest, macro over the classes present in the test set
        probs = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        auroc = roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=present) \
            if len(present) > 2 else roc_auc_score(y_true == present[1], probs[:, 1])
    return {"accuracy": float(accuracy_score(y_true, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, predicted)),
            "auroc": float(auroc)}


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval across repeats (scipy's one-sample t CI)."""
    from scipy import stats

    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(x) < 2 or np.all(x == x[0]):
        return float(x.mean()), float(x.mean()), float(x.mean())
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    return float(x.mean()), float(ci.low), float(ci.high)


def paired_comparison(arm: Sequence[float], baseline: Sequence[float]) -> dict:
    """Paired t-test over matched repeats: mean difference (arm - baseline), its 95 % CI, p-value."""
    from scipy import stats

    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    diff = a - b
    if len(diff) < 2 or np.all(diff == diff[0]):
        d = float(diff.mean()) if len(diff) else float("nan")
        return {"difference": d, "ci_low": d, "ci_high": d, "p_value": float("nan"), "pairs": int(len(diff))}
    test = stats.ttest_rel(a, b)
    ci = test.confidence_interval(0.95)
    return {"difference": float(diff.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "p_value": float(test.pvalue), "pairs": int(len(diff))}


# --- the experiment ----------------------------------------------------------------------------

def run_augment(real_pool: Sequence[LabelledImage], test: Sequence[LabelledImage],
                synthetic: Sequence[LabelledImage], out_dir, cfg: AugmentConfig, *,
                decode_fn: Callable | None = None, log=print, progress: bool = True) -> AugmentResult:
    """Run every arm ``cfg.repeats`` times and write the outputs to ``out_dir`` (module docstring)."""
    import torch

    from evaluation import classifier

    started = time.perf_counter()
    out_dir = pathlib.Path(out_dir)
    arms = plan_arms(cfg)
    labels = sorted({x.label for x in real_pool})
    index = {label: i for i, label in enumerate(labels)}
    for name, items in (("test", test), ("synthetic", synthetic)):
        unknown = sorted({x.label for x in items} - set(labels))
        if unknown:
            raise AugmentError(f"{name} set has label(s) {unknown} that the real training pool lacks")
    need_real = max(a["n_real"] for a in arms)
    need_syn = max(a["n_synthetic"] for a in arms)
    if cfg.n_real < len(labels):
        raise AugmentError(f"n_real={cfg.n_real} is fewer than the {len(labels)} classes")
    if need_real > len(real_pool):
        raise AugmentError(f"the arms need {need_real} real training images (2N with N={cfg.n_real}); "
                           f"the pool has {len(real_pool)}")
    if need_syn > len(synthetic):
        raise AugmentError(f"the arms need {need_syn} synthetic images; {len(synthetic)} given")
    if not test:
        raise AugmentError("the test set is empty")

    size = cfg.size
    real_x, real_y = decode(real_pool, size, decode_fn), np.array([index[x.label] for x in real_pool])
    test_x, test_y = decode(test, size, decode_fn), np.array([index[x.label] for x in test])
    syn_x = decode(synthetic, size, decode_fn) if synthetic else np.empty((0, size, size, 3), np.uint8)
    syn_y = np.array([index[x.label] for x in synthetic], dtype=int)
    log(f"{len(labels)} classes; real pool {len(real_pool)}, synthetic {len(synthetic)}, test {len(test)}; "
        f"{len(arms)} arms x {cfg.repeats} repeats")

    recipe = classifier.Recipe(size=size, val_fraction=cfg.val_fraction, max_epochs=cfg.max_epochs,
                               patience=cfg.patience, batch_size=cfg.batch_size, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, widths=cfg.widths, pretrained=cfg.pretrained)
    runs: list[dict] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    from tqdm.auto import tqdm
    bar = tqdm(total=len(arms) * cfg.repeats, unit="run", desc="augment", disable=not progress)
    try:
        for r in range(cfg.repeats):
            seed = cfg.seed + r
            rng = np.random.default_rng(seed)
            real_order = stratified_order(real_y, rng)
            syn_order = stratified_order(syn_y, rng) if len(syn_y) else np.empty(0, int)
            for arm in arms:
                pick_r, pick_s = real_order[:arm["n_real"]], syn_order[:arm["n_synthetic"]]
                x = np.concatenate([real_x[pick_r], syn_x[pick_s]])
                y = np.concatenate([real_y[pick_r], syn_y[pick_s]])
                source = np.array([0] * len(pick_r) + [1] * len(pick_s))
                t0 = time.perf_counter()
                fit = classifier.train(x, y, len(labels), recipe, seed=seed, strata=source)
                probabilities = classifier.predict_proba(fit.model, test_x, recipe)
                row = {**arm, "repeat": r, "seed": seed, **test_metrics(test_y, probabilities, len(labels)),
                       "epochs": fit.epochs, "best_epoch": fit.best_epoch, "best_val_loss": round(fit.best_val_loss, 6),
                       "train_images": int(len(y) - fit.n_val), "val_images": int(fit.n_val),
                       "seconds": round(time.perf_counter() - t0, 2)}
                runs.append(row)
                bar.update(1)
                log(f"repeat {r} {arm['arm']}: accuracy {row['accuracy']:.3f}, balanced {row['balanced_accuracy']:.3f}, "
                    f"AUROC {row['auroc']:.3f} ({row['epochs']} epochs)")
    finally:
        bar.close()
        torch.set_num_threads(threads)

    summary, comparisons = summarise(runs, arms)
    result = AugmentResult(out_dir=out_dir, runs=runs, summary=summary, comparisons=comparisons,
                           seconds=round(time.perf_counter() - started, 1))
    result.files = write_outputs(result, cfg, labels, arms,
                                 inputs={"real_pool": len(real_pool), "test": len(test), "synthetic": len(synthetic)})
    return result


def summarise(runs: list[dict], arms: list[dict]) -> tuple[list[dict], list[dict]]:
    summary, comparisons = [], []
    baseline = arms[0]["arm"]
    by_arm = {a["arm"]: sorted((r for r in runs if r["arm"] == a["arm"]), key=lambda r: r["repeat"]) for a in arms}
    for arm in arms:
        rows = by_arm[arm["arm"]]
        entry = {**arm, "repeats": len(rows)}
        for metric in METRICS:
            mean, lo, hi = mean_ci([r[metric] for r in rows])
            # every metric lives in [0, 1]; a t-interval over few repeats can overshoot it
            entry.update({metric: mean, f"{metric}_ci_low": max(0.0, lo), f"{metric}_ci_high": min(1.0, hi)})
        summary.append(entry)
        if arm["arm"] == baseline:
            continue
        for metric in METRICS:
            # matched by repeat: the same real subsample (and seed) in both arms
            base = {r["repeat"]: r[metric] for r in by_arm[baseline]}
            pairs = [(r[metric], base[r["repeat"]]) for r in rows if r["repeat"] in base]
            comparisons.append({"arm": arm["arm"], "baseline": baseline, "metric": metric,
                                **paired_comparison([p[0] for p in pairs], [p[1] for p in pairs])})
    return summary, comparisons


def write_outputs(result: AugmentResult, cfg: AugmentConfig, labels, arms, inputs: dict) -> dict[str, pathlib.Path]:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    files = {"runs_csv": out / "runs.csv", "runs_json": out / "runs.json", "summary_csv": out / "summary.csv",
             "summary_json": out / "summary.json", "comparisons_csv": out / "comparisons.csv",
             "plot": out / "augment.html", "experiment": out / "experiment.json"}
    _write_csv(files["runs_csv"], result.runs)
    files["runs_json"].write_text(json.dumps(result.runs, indent=1) + "\n", encoding="utf-8")
    _write_csv(files["summary_csv"], result.summary)
    files["summary_json"].write_text(json.dumps({"summary": result.summary, "comparisons": result.comparisons},
                                                indent=1) + "\n", encoding="utf-8")
    _write_csv(files["comparisons_csv"], result.comparisons)
    files["experiment"].write_text(json.dumps({"config": dataclasses.asdict(cfg), "labels": labels, "arms": arms,
                                               "inputs": inputs, "seconds": result.seconds}, indent=1) + "\n",
                                   encoding="utf-8")
    plot(result.summary, cfg, files["plot"])
    return files


def plot(summary: list[dict], cfg: AugmentConfig, path: pathlib.Path, metric: str = "balanced_accuracy") -> None:
    """Metric vs amount of synthetic data (real N + M), with the real N and real 2N arms as lines."""
    import plotly.graph_objects as go

    mixed = sorted((s for s in summary if s["n_real"] == cfg.n_real), key=lambda s: s["n_synthetic"])
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[s["n_synthetic"] for s in mixed], y=[s[metric] for s in mixed], mode="lines+markers",
        name=f"real {cfg.n_real} + synthetic M",
        error_y={"type": "data", "symmetric": False,
                 "array": [s[f"{metric}_ci_high"] - s[metric] for s in mixed],
                 "arrayminus": [s[metric] - s[f"{metric}_ci_low"] for s in mixed]}))
    for s in summary:
        if s["n_synthetic"] == 0 and s["n_real"] == 2 * cfg.n_real:
            fig.add_hline(y=s[metric], line_dash="dash", annotation_text=f"real {2 * cfg.n_real} (95% CI "
                          f"{s[f'{metric}_ci_low']:.2f}-{s[f'{metric}_ci_high']:.2f})")
        if s["n_real"] == 0:
            fig.add_trace(go.Scatter(x=[s["n_synthetic"]], y=[s[metric]], mode="markers", name=s["arm"],
                                     marker_symbol="x"))
    fig.update_layout(title=f"{metric.replace('_', ' ')} on the real test set vs synthetic images added "
                            f"(mean and 95% CI over {cfg.repeats} repeats)",
                      xaxis_title="synthetic training images (M)", yaxis_title=metric.replace("_", " "))
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    from studies.export import spreadsheet_safe  # arm and file names are text

    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["arm"])
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in row.items()} for row in rows)
