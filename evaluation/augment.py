"""Does synthetic data help a classifier? MediSyn's augmentation experiment, for any labelled data set.

    medisyn experiment augment --real POOL.csv --test TEST.csv --synthetic SYN.csv --n-real N --out DIR

Design (MediSyn, claim 5: real + synthetic matches twice the real data). One protocol for every arm:

  arms        ``real N``; ``real N + synthetic M`` for each M; ``real 2N`` (the comparison the paper
              makes); optionally ``synthetic M`` alone;
  validation  one fixed set of real images, stratified by label, taken *out of* the real pool before
              any arm draws (or given with ``validation=``); it is the same for every arm and every
              repeat and no arm trains on it. Images that share a ``group`` (slices of one volume,
              crops of one source) go to validation together. Every arm stops early on it with the
              same rule (``patience``, ``max_epochs``) — so ``real 2N`` trains on 2N images;
  repeats     each repeat r draws its own stratified subsample of N real images from the rest of the
              pool (the 2N arm adds N more, so N is nested in 2N) and of the synthetic pool (nested
              over M), with seed ``seed + r``; every arm of a repeat shares them, so arms compare *paired*;
  classifier  the same recipe for every arm (``evaluation.classifier``): a ResNet from transformers,
              from scratch or from a local pretrained folder; the test set is only scored, after
              training, never used for selection;
  metrics     accuracy, balanced accuracy, macro one-vs-rest AUROC (scikit-learn) on the test set;
  statistics  a two-level bootstrap that includes the test set: each replicate resamples the test
              images' clusters (``group``: source image or patient; stratified by label) and the
              repeats, both with replacement. Per arm: the mean over repeats and its 95 % percentile
              interval. Comparisons — every arm against ``real N`` and every arm with synthetic images
              against ``real 2N`` — are paired (the same resampled test images and repeats in both
              arms): mean difference, 95 % interval and a two-sided bootstrap p-value, Holm-corrected
              (statsmodels) over all comparisons of a metric. With one repeat there is no interval
              and no p-value (the spread between training runs is unknown), and a note says so;
  output      ``runs.csv``/``runs.json`` (every run), ``predictions.csv`` (every test probability),
              ``summary.csv``/``summary.json``, ``comparisons.csv``, ``splits.json`` (the validation
              images and each repeat's real draw), ``augment.html`` (metric vs amount of synthetic
              data, plotly) and ``experiment.json`` (every parameter). Reproducible from ``seed``.

Inputs are tables of labelled images (``path,label`` and optionally ``group``; paths relative to the
CSV). Images decode through ``studies.imaging.decode_rgb`` (DICOM and NIfTI as at study ingest), as
fine-tuning's do; ``decode_fn=`` replaces it.
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

from evaluation.augment_stats import (
    bootstrap_p,
    cluster_bootstrap_weights,
    holm,
    mean_ci,
    nanmean,
    paired_comparison,
    test_metrics,
    weighted_metrics,
)
from evaluation.errors import EvaluationError
from studies.imaging import decode_rgb

METRICS = ("accuracy", "balanced_accuracy", "auroc")
ONE_REPEAT_NOTE = ("one repeat: the spread between training runs cannot be estimated, so there is no "
                   "interval and no p-value (use --repeats 2 or more; 5-10 recommended)")


class AugmentError(EvaluationError):
    """Bad inputs (missing labels, too few images for the arms asked); the message says which."""


@dataclass(frozen=True)
class LabelledImage:
    path: pathlib.Path
    label: str
    group: str | None = None    # images of one source (patient, volume, source image) share a group


@dataclass
class AugmentConfig:
    n_real: int                                   # N: real training images per repeat (stratified)
    synthetic: tuple[int, ...] = ()               # the M values of the real N + synthetic M arms
    double_real: bool = True                      # the real 2N arm
    synthetic_only: bool = False                  # synthetic M alone, for the largest M
    repeats: int = 5
    seed: int = 0
    size: int = 64                                # images are resized to size x size RGB
    val_fraction: float = 0.2                     # validation: this share of the real pool (see val_size)
    max_epochs: int = 40
    patience: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (16, 32, 64)        # ResNet stage widths when training from scratch
    pretrained: str | None = None                 # a local transformers image-classification folder
    threads: int = 1
    val_size: int | None = None                   # validation images held out of the pool; None: val_fraction
    bootstrap: int = 2000                         # bootstrap replicates (test clusters x repeats)


@dataclass
class AugmentResult:
    out_dir: pathlib.Path
    runs: list[dict]
    summary: list[dict]
    comparisons: list[dict]
    seconds: float
    files: dict[str, pathlib.Path] = field(default_factory=dict)
    validation: list[LabelledImage] = field(default_factory=list)
    draws: dict[int, list[LabelledImage]] = field(default_factory=dict)  # repeat -> real images of its 2N draw


# --- inputs ------------------------------------------------------------------------------

def read_labelled(table, *, label_column: str = "label", group_column: str | None = None) -> list[LabelledImage]:
    """Rows of a CSV with ``path`` and ``label`` (or another ``label_column``, e.g. ``modality``).

    ``group_column`` (default: ``group`` when the table has one) names the source of each image —
    patient, volume or source image — so that validation takes whole groups and the test
    bootstrap resamples whole groups."""
    table = pathlib.Path(table)
    if not table.is_file():
        raise AugmentError(f"{table}: no such file")
    with open(table, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        rows = list(reader)
    if "path" not in columns or label_column not in columns:
        raise AugmentError(f"{table}: needs columns 'path' and {label_column!r}, found {sorted(columns)}")
    if group_column is not None and group_column not in columns:
        raise AugmentError(f"{table}: no group column {group_column!r}, found {sorted(columns)}")
    group_column = group_column or ("group" if "group" in columns else None)
    out = []
    for line, row in enumerate(rows, start=2):
        label = (row[label_column] or "").strip()
        if not label:
            raise AugmentError(f"{table} line {line}: empty {label_column}")
        path = table.parent / (row["path"] or "").strip()
        if not path.is_file():
            raise AugmentError(f"{table} line {line}: image {row['path']!r} not found")
        group = (row[group_column] or "").strip() if group_column else ""
        out.append(LabelledImage(path, label, group or None))
    if not out:
        raise AugmentError(f"{table} lists no images")
    return out


def decode(items: Sequence[LabelledImage], size: int, decode_fn=None) -> np.ndarray:
    """uint8 N x size x size x 3; an unreadable image is an AugmentError naming it."""
    decode_fn = decode_fn or decode_rgb
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, item in enumerate(items):
        try:
            out[i] = np.asarray(decode_fn(item.path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
        except Exception as exc:  # noqa: BLE001 - PIL, pydicom, nibabel raise their own types
            raise AugmentError(f"{item.path}: cannot read the image ({type(exc).__name__}: {exc})") from None
    return out


def _groups(items: Sequence[LabelledImage]) -> np.ndarray:
    """Group ids; an image without a group is a group of its own."""
    return np.array([x.group if x.group is not None else f"\0{i}" for i, x in enumerate(items)], dtype=object)


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


def validation_mask(labels: np.ndarray, groups: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of ``n_val`` (or a few more) pool images for validation: whole groups, taken
    round-robin over labels so every label gets some, as balanced as the groups allow."""
    members: dict = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    keys = sorted(members, key=str)
    order = stratified_order(np.array([labels[members[g][0]] for g in keys]), rng)
    mask = np.zeros(len(labels), dtype=bool)
    taken = 0
    for k in order:
        if taken >= n_val:
            break
        mask[members[keys[k]]] = True
        taken += len(members[keys[k]])
    return mask


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


# --- the experiment ----------------------------------------------------------------------------

def _validation_size(cfg: AugmentConfig, pool: int, need_real: int, n_classes: int) -> int:
    if cfg.val_size is not None:
        n_val = int(cfg.val_size)
        if pool - n_val < need_real:
            raise AugmentError(f"the arms need {need_real} real training images (2N with N={cfg.n_real}) besides "
                               f"the {n_val} validation images; the pool has {pool}")
    else:
        # the default share of the pool, less when the pool cannot spare it beside 2N
        n_val = min(max(n_classes, int(round(cfg.val_fraction * pool))), pool - need_real)
    if n_val < n_classes:
        raise AugmentError(f"the arms need {need_real} real training images (2N with N={cfg.n_real}) and at least "
                           f"one validation image per class ({n_classes}) outside them; the pool has {pool} "
                           "(give a larger pool or a separate validation set)")
    return n_val


def run_augment(real_pool: Sequence[LabelledImage], test: Sequence[LabelledImage],
                synthetic: Sequence[LabelledImage], out_dir, cfg: AugmentConfig, *,
                decode_fn: Callable | None = None, log=print, progress: bool = True,
                validation: Sequence[LabelledImage] | None = None) -> AugmentResult:
    """Run every arm ``cfg.repeats`` times and write the outputs to ``out_dir`` (module docstring).

    ``validation``: real images for early stopping, outside the pool; without it they are held out
    of ``real_pool`` (``cfg.val_size`` or ``cfg.val_fraction`` of it, whole groups)."""
    import torch

    from evaluation import classifier

    started = time.perf_counter()
    out_dir = pathlib.Path(out_dir)
    arms = plan_arms(cfg)
    labels = sorted({x.label for x in real_pool})
    index = {label: i for i, label in enumerate(labels)}
    for name, items in (("test", test), ("synthetic", synthetic), ("validation", validation or ())):
        unknown = sorted({x.label for x in items} - set(labels))
        if unknown:
            raise AugmentError(f"{name} set has label(s) {unknown} that the real training pool lacks")
    need_real = max(a["n_real"] for a in arms)
    need_syn = max(a["n_synthetic"] for a in arms)
    if cfg.n_real < len(labels):
        raise AugmentError(f"n_real={cfg.n_real} is fewer than the {len(labels)} classes")
    if validation is not None:
        if len(validation) == 0:
            raise AugmentError("the validation set is empty")
        overlap = {x.path.resolve() for x in validation} & {x.path.resolve() for x in real_pool}
        if overlap:
            raise AugmentError(f"{len(overlap)} validation image(s) are also in the real training pool, e.g. "
                               f"{sorted(overlap)[0]}")
        if need_real > len(real_pool):
            raise AugmentError(f"the arms need {need_real} real training images (2N with N={cfg.n_real}); "
                               f"the pool has {len(real_pool)}")
    if need_syn > len(synthetic):
        raise AugmentError(f"the arms need {need_syn} synthetic images; {len(synthetic)} given")
    if not test:
        raise AugmentError("the test set is empty")

    pool_y_all = np.array([index[x.label] for x in real_pool])
    if validation is None:
        n_val = _validation_size(cfg, len(real_pool), need_real, len(labels))
        # one draw for the whole experiment: the same validation images for every arm and repeat
        val_mask = validation_mask(pool_y_all, _groups(real_pool), n_val, np.random.default_rng((cfg.seed, 1)))
        if len(real_pool) - val_mask.sum() < need_real:
            raise AugmentError(f"the arms need {need_real} real training images (2N with N={cfg.n_real}) outside the "
                               f"validation groups ({int(val_mask.sum())} images); the pool has {len(real_pool)}")
        validation = [x for x, v in zip(real_pool, val_mask) if v]
        train_pool = [x for x, v in zip(real_pool, val_mask) if not v]
        val_source = "held out of the real pool"
    else:
        validation, train_pool, val_source = list(validation), list(real_pool), "given"
    missing = sorted(set(labels) - {x.label for x in validation})
    if missing:
        log(f"warning: no validation image of {missing}")

    size = cfg.size
    real_x, real_y = decode(train_pool, size, decode_fn), np.array([index[x.label] for x in train_pool])
    val_x, val_y = decode(validation, size, decode_fn), np.array([index[x.label] for x in validation])
    test_x, test_y = decode(test, size, decode_fn), np.array([index[x.label] for x in test])
    syn_x = decode(synthetic, size, decode_fn) if synthetic else np.empty((0, size, size, 3), np.uint8)
    syn_y = np.array([index[x.label] for x in synthetic], dtype=int)
    test_groups = _groups(test)
    log(f"{len(labels)} classes; real pool {len(train_pool)} + validation {len(validation)} ({val_source}), "
        f"synthetic {len(synthetic)}, test {len(test)} in {len(set(test_groups.tolist()))} clusters; "
        f"{len(arms)} arms x {cfg.repeats} repeats")

    recipe = classifier.Recipe(size=size, val_fraction=cfg.val_fraction, max_epochs=cfg.max_epochs,
                               patience=cfg.patience, batch_size=cfg.batch_size, lr=cfg.lr,
                               weight_decay=cfg.weight_decay, widths=cfg.widths, pretrained=cfg.pretrained)
    runs: list[dict] = []
    probabilities: dict[tuple[str, int], np.ndarray] = {}
    draws: dict[int, list[LabelledImage]] = {}
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
            draws[r] = [train_pool[i] for i in real_order[:need_real]]
            for arm in arms:
                pick_r, pick_s = real_order[:arm["n_real"]], syn_order[:arm["n_synthetic"]]
                x = np.concatenate([real_x[pick_r], syn_x[pick_s]])
                y = np.concatenate([real_y[pick_r], syn_y[pick_s]])
                t0 = time.perf_counter()
                fit = classifier.train(x, y, len(labels), recipe, seed=seed, validation=(val_x, val_y))
                probs = classifier.predict_proba(fit.model, test_x, recipe)
                probabilities[(arm["arm"], r)] = probs
                row = {**arm, "repeat": r, "seed": seed, **test_metrics(test_y, probs, len(labels)),
                       "epochs": fit.epochs, "best_epoch": fit.best_epoch, "best_val_loss": round(fit.best_val_loss, 6),
                       "train_images": int(len(y)), "val_images": int(fit.n_val),
                       "seconds": round(time.perf_counter() - t0, 2)}
                runs.append(row)
                bar.update(1)
                log(f"repeat {r} {arm['arm']}: accuracy {row['accuracy']:.3f}, balanced {row['balanced_accuracy']:.3f}, "
                    f"AUROC {row['auroc']:.3f} ({row['epochs']} epochs)")
    finally:
        bar.close()
        torch.set_num_threads(threads)

    summary, comparisons = summarise(runs, arms, probabilities=probabilities, test_y=test_y, test_groups=test_groups,
                                     n_classes=len(labels), replicates=cfg.bootstrap, seed=cfg.seed)
    result = AugmentResult(out_dir=out_dir, runs=runs, summary=summary, comparisons=comparisons,
                           seconds=round(time.perf_counter() - started, 1), validation=validation, draws=draws)
    result.files = write_outputs(result, cfg, labels, arms,
                                 inputs={"real_pool": len(real_pool), "train_pool": len(train_pool),
                                         "validation": len(validation), "validation_source": val_source,
                                         "test": len(test), "test_clusters": len(set(test_groups.tolist())),
                                         "synthetic": len(synthetic)},
                                 test=test, test_y=test_y, labels_index=labels, probabilities=probabilities)
    return result


def _percentile_ci(draws: np.ndarray) -> tuple[float | None, float | None]:
    if not np.isfinite(draws).any():
        return None, None
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def summarise(runs: list[dict], arms: list[dict], *, probabilities: dict | None = None, test_y=None,
              test_groups=None, n_classes: int | None = None, replicates: int = 2000,
              seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Per-arm means with 95 % intervals, and paired comparisons (module docstring).

    With ``probabilities`` ((arm, repeat) -> test probabilities) the intervals and p-values come from
    the two-level bootstrap over test clusters and repeats; without them (a table of runs alone)
    from repeats only (t-interval, paired t-test)."""
    repeats = sorted({r["repeat"] for r in runs})
    by_arm = {a["arm"]: {r["repeat"]: r for r in runs if r["arm"] == a["arm"]} for a in arms}
    baseline = arms[0]["arm"]
    double = next((a["arm"] for a in arms if a["n_synthetic"] == 0 and a["n_real"] == 2 * arms[0]["n_real"]), None)
    pairs = [(a["arm"], baseline) for a in arms[1:]]
    if double is not None:
        pairs += [(a["arm"], double) for a in arms if a["n_synthetic"] > 0]
    note = ONE_REPEAT_NOTE if len(repeats) < 2 else ""
    boot = None
    if probabilities is not None and len(repeats) >= 2:
        rng = np.random.default_rng((seed, 2))
        groups = test_groups if test_groups is not None else np.arange(len(test_y)).astype(object)
        test_w = cluster_bootstrap_weights(np.asarray(groups, dtype=object), np.asarray(test_y), replicates, rng)
        rep_w = rng.multinomial(len(repeats), np.full(len(repeats), 1.0 / len(repeats)), size=replicates)
        boot = {}
        for a in arms:
            per_repeat = [weighted_metrics(test_y, probabilities[(a["arm"], r)], n_classes, test_w) for r in repeats]
            # mean over the resampled repeats: rep_w[b, r] copies of repeat r
            boot[a["arm"]] = {m: (np.stack([pr[m] for pr in per_repeat], axis=1) * rep_w).sum(axis=1) / len(repeats)
                              for m in METRICS}

    summary = []
    for arm in arms:
        rows = [by_arm[arm["arm"]][k] for k in sorted(by_arm[arm["arm"]])]
        entry = {**arm, "repeats": len(rows)}
        for metric in METRICS:
            values = np.array([r[metric] for r in rows], dtype=float)
            mean = float(nanmean(values))
            if note:
                lo = hi = None
            elif boot is not None:
                lo, hi = _percentile_ci(boot[arm["arm"]][metric])
            else:
                _, lo, hi = mean_ci(values)
                lo, hi = max(0.0, lo), min(1.0, hi)  # a t-interval over few repeats can overshoot [0, 1]
            entry.update({metric: mean, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi})
        entry["ci_method"] = ("none" if note else "bootstrap: test clusters x repeats" if boot is not None
                              else "t-interval over repeats")
        entry["note"] = note
        summary.append(entry)

    comparisons = []
    for metric in METRICS:
        found = []
        for arm, base in pairs:
            common = sorted(set(by_arm[arm]) & set(by_arm[base]))
            a = np.array([by_arm[arm][k][metric] for k in common], dtype=float)
            b = np.array([by_arm[base][k][metric] for k in common], dtype=float)
            row = {"arm": arm, "baseline": base, "metric": metric, "pairs": len(common)}
            if note:
                row.update(difference=float(np.mean(a - b)) if common else float("nan"), ci_low=None, ci_high=None,
                           p_value=None)
            elif boot is not None:
                d = boot[arm][metric] - boot[base][metric]
                lo, hi = _percentile_ci(d)
                row.update(difference=float(nanmean(a - b)), ci_low=lo, ci_high=hi, p_value=bootstrap_p(d))
            else:
                t = paired_comparison(a, b)
                row.update(difference=t["difference"], ci_low=t["ci_low"], ci_high=t["ci_high"], p_value=t["p_value"])
            row["method"] = ("none" if note else "paired bootstrap: test clusters x repeats" if boot is not None
                             else "paired t-test over repeats")
            row["note"] = note
            found.append(row)
        for row, adjusted in zip(found, holm([r["p_value"] for r in found])):
            row["p_holm"] = adjusted
        comparisons += found
    return summary, comparisons


def write_outputs(result: AugmentResult, cfg: AugmentConfig, labels, arms, inputs: dict, *, test=(), test_y=None,
                  labels_index=None, probabilities=None) -> dict[str, pathlib.Path]:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    files = {"runs_csv": out / "runs.csv", "runs_json": out / "runs.json", "summary_csv": out / "summary.csv",
             "summary_json": out / "summary.json", "comparisons_csv": out / "comparisons.csv",
             "splits": out / "splits.json", "plot": out / "augment.html", "experiment": out / "experiment.json"}
    _write_csv(files["runs_csv"], result.runs)
    files["runs_json"].write_text(json.dumps(result.runs, indent=1) + "\n", encoding="utf-8")
    _write_csv(files["summary_csv"], result.summary)
    files["summary_json"].write_text(json.dumps({"summary": result.summary, "comparisons": result.comparisons},
                                                indent=1) + "\n", encoding="utf-8")
    _write_csv(files["comparisons_csv"], result.comparisons)
    files["splits"].write_text(json.dumps({
        "validation": [str(x.path) for x in result.validation],
        "real_draws": {str(r): [str(x.path) for x in items] for r, items in result.draws.items()},
    }, indent=1) + "\n", encoding="utf-8")
    if probabilities:
        files["predictions"] = out / "predictions.csv"
        rows = []
        for (arm, r), probs in probabilities.items():
            for i, item in enumerate(test):
                rows.append({"arm": arm, "repeat": r, "path": str(item.path), "group": item.group or "",
                             "label": item.label, **{f"p_{c}": round(float(p), 6) for c, p in zip(labels, probs[i])}})
        _write_csv(files["predictions"], rows)
    files["experiment"].write_text(json.dumps({"config": dataclasses.asdict(cfg), "labels": labels, "arms": arms,
                                               "inputs": inputs, "seconds": result.seconds}, indent=1) + "\n",
                                   encoding="utf-8")
    plot(result.summary, cfg, files["plot"])
    return files


def plot(summary: list[dict], cfg: AugmentConfig, path: pathlib.Path, metric: str = "balanced_accuracy") -> None:
    """Metric vs amount of synthetic data (real N + M), with the real N and real 2N arms as lines."""
    import plotly.graph_objects as go

    def err(s, side):
        lo, hi = s[f"{metric}_ci_low"], s[f"{metric}_ci_high"]
        if lo is None or hi is None:
            return 0.0
        return hi - s[metric] if side == "high" else s[metric] - lo

    mixed = sorted((s for s in summary if s["n_real"] == cfg.n_real), key=lambda s: s["n_synthetic"])
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[s["n_synthetic"] for s in mixed], y=[s[metric] for s in mixed], mode="lines+markers",
        name=f"real {cfg.n_real} + synthetic M",
        error_y={"type": "data", "symmetric": False, "array": [err(s, "high") for s in mixed],
                 "arrayminus": [err(s, "low") for s in mixed]}))
    for s in summary:
        if s["n_synthetic"] == 0 and s["n_real"] == 2 * cfg.n_real:
            ci = (f" (95% CI {s[f'{metric}_ci_low']:.2f}-{s[f'{metric}_ci_high']:.2f})"
                  if s[f"{metric}_ci_low"] is not None else "")
            fig.add_hline(y=s[metric], line_dash="dash", annotation_text=f"real {2 * cfg.n_real}{ci}")
        if s["n_real"] == 0:
            fig.add_trace(go.Scatter(x=[s["n_synthetic"]], y=[s[metric]], mode="markers", name=s["arm"],
                                     marker_symbol="x"))
    what = (f"mean and 95% bootstrap CI (test clusters x {cfg.repeats} repeats)" if cfg.repeats >= 2
            else "one repeat: no CI")
    fig.update_layout(title=f"{metric.replace('_', ' ')} on the real test set vs synthetic images added ({what})",
                      xaxis_title="synthetic training images (M)", yaxis_title=metric.replace("_", " "))
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    from studies.cells import write_csv  # arm and file names are text

    write_csv(path, rows, list(rows[0]) if rows else ["arm"])