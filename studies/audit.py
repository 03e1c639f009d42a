"""Leak audit: what could still tell real from synthetic stimuli, apart from the content.

Two parts:
1. The originals: per source, the distributions of format, size, colour mode and bit depth.
   Normalisation removes all of them from what readers see, but they leave traces in the
   pixels (a 64 px original upscaled to 512 is blurry; a 16-bit one has finer grey levels),
   and letterbox padding keeps the aspect ratio visible.
2. The stimuli themselves: low-level features of each normalised PNG (intensity histogram
   summary, colourfulness, noise level, sharpness, 8x8 JPEG blockiness, PNG bytes per
   pixel, black padding) feed a standardised logistic regression; its cross-validated AUC
   for real vs synthetic (stratified k-fold, k = min(5, smaller class), pooled out-of-fold
   probabilities, averaged over `CV_REPEATS` shuffles with fixed seeds) measures how well
   such cues alone separate the sources.

The study is **flagged** (`flagged`, with one line per cause in `reasons`) when any of:
- the classifier AUC >= `AUC_THRESHOLD` (0.75);
- any single feature differs by |standardised mean difference| >= `EFFECT_THRESHOLD` (0.8,
  Cohen's "large"): one strong cue is enough for a reader, even when a classifier over all
  15 features, cross-validated on few images, does not reach its threshold;
- any original property (format, size, colour mode, bit depth) is distributed differently
  between sources: total variation distance >= `PROPERTY_THRESHOLD` (0.5, e.g. every
  synthetic image one size while the real ones vary), or aspect ratios that do not overlap.
When nothing is flagged but the smaller source has fewer than `MIN_TO_CERTIFY` (20) images,
the verdict is "too few images to certify", not "ok": such small samples cannot show the
absence of a cue. `leak` is kept as an alias of `flagged` for older callers.

An "ok" does not prove blinding (readers see more than these features); it says the cheap
cues that normalisation cannot remove were not found.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import warnings

import numpy as np
from scipy import ndimage

from studies.stimuli import decode_png, letterbox_geometry

__all__ = [
    "AUC_THRESHOLD", "AuditItem", "AuditReport", "CV_REPEATS", "EFFECT_THRESHOLD",
    "FEATURE_NAMES", "MIN_TO_CERTIFY", "PROPERTY_THRESHOLD", "audit_leaks", "blockiness",
    "is_flagged", "stimulus_features",
]

AUC_THRESHOLD = 0.75
"""Cross-validated AUC at or above which the stimuli are flagged as separable."""
CV_REPEATS = 5
MAX_FOLDS = 5
SMALL_CLASS = 10
"""Below this many images in a class the AUC is reported with a caution."""
EFFECT_THRESHOLD = 0.8
"""|standardised mean difference| of a single feature at or above which it is flagged."""
PROPERTY_THRESHOLD = 0.5
"""Total variation distance between the sources' distributions of an original property
(format, size, mode, bit depth) at or above which it is flagged."""
MIN_TO_CERTIFY = 20
"""Images needed in each source before an unflagged audit says "ok"."""
VERDICTS = ("leak", "too few images to certify", "ok")
SOURCES = ("real", "synthetic")

FEATURE_NAMES = (
    "mean", "std", "p01", "p05", "p25", "p50", "p75", "p95", "p99",
    "colourfulness", "log_noise_sigma", "log_laplacian_var", "blockiness",
    "png_bytes_per_pixel", "padding_fraction",
)
_FEATURE_LABELS = {
    "mean": "mean intensity", "std": "intensity spread (std)", "p01": "1st percentile",
    "p05": "5th percentile", "p25": "25th percentile", "p50": "median intensity",
    "p75": "75th percentile", "p95": "95th percentile", "p99": "99th percentile",
    "colourfulness": "colourfulness", "log_noise_sigma": "noise level",
    "log_laplacian_var": "sharpness (variance of Laplacian)",
    "blockiness": "JPEG 8x8 blockiness", "png_bytes_per_pixel": "PNG bytes per pixel",
    "padding_fraction": "black padding fraction",
}
_ATTRIBUTES = {"format": "formats", "size": "sizes", "mode": "colour modes",
               "bit_depth": "bit depths"}
# Immerkaer (1996) fast noise estimate: this kernel cancels image structure up to 2nd order.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


@dataclasses.dataclass
class AuditItem:
    """One stimulus and the facts about its original."""

    source: str                 # 'real' | 'synthetic'
    original_format: str
    original_width: int
    original_height: int
    original_mode: str
    original_bit_depth: int
    png: bytes                  # the normalised stimulus

    @classmethod
    def from_decoded(cls, source: str, decoded, png: bytes) -> AuditItem:
        """Build from a `studies.imaging.DecodedImage` and its stimulus PNG."""
        return cls(source, decoded.original_format, decoded.original_width,
                   decoded.original_height, decoded.original_mode,
                   decoded.original_bit_depth, png)


@dataclasses.dataclass
class AuditReport:
    counts: dict[str, int]                               # source -> images
    distributions: dict[str, dict[str, dict[str, int]]]  # attribute -> source -> value -> n
    auc: float | None                                    # mean cross-validated AUC
    auc_std: float | None                                # spread across CV repeats
    auc_reason: str | None                               # why auc is None
    cv: str                                              # the scheme actually used
    threshold: float
    feature_effects: dict[str, float]                    # standardised mean difference
    warnings: list[str]
    leak: bool                                           # = flagged (kept for old callers)
    flagged: bool = False
    reasons: list[str] = dataclasses.field(default_factory=list)  # one line per cause
    verdict: str = "ok"                                  # one of VERDICTS
    property_distances: dict[str, float] = dataclasses.field(default_factory=dict)
    effect_threshold: float = EFFECT_THRESHOLD
    property_threshold: float = PROPERTY_THRESHOLD
    min_to_certify: int = MIN_TO_CERTIFY

    def to_dict(self) -> dict:
        """JSON-ready dict (round-trips through `from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AuditReport:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def format_text(self) -> str:
        """A readable report for the CLI and the studio."""
        lines = ["Leak audit (what could tell real from synthetic apart from the content)"]
        lines.append("  images: " + ", ".join(f"{s} {self.counts.get(s, 0)}" for s in SOURCES))
        lines.append("  originals (normalised away; shown for the record):")
        for attr, label in _ATTRIBUTES.items():
            dist = self.distributions.get(attr, {})
            for s in SOURCES:
                values = dist.get(s, {})
                shown = ", ".join(f"{v} x{n}" for v, n in sorted(
                    values.items(), key=lambda kv: (-kv[1], kv[0]))[:6])
                more = len(values) - 6
                lines.append(f"    {label:<12} {s:<9} {shown}"
                             + (f", ... {more} more" if more > 0 else ""))
        if self.property_distances:
            lines.append("    distance between sources (total variation; flag at >= "
                         f"{self.property_threshold:.2f}): " + ", ".join(
                             f"{_ATTRIBUTES[a]} {d:.2f}" for a, d in self.property_distances.items()))
        if self.auc is None:
            lines.append(f"  stimulus classifier AUC: not computed ({self.auc_reason})")
        else:
            above = "at or above" if self.auc >= self.threshold else "below"
            lines.append(f"  stimulus classifier AUC: {self.auc:.3f} (+/- {self.auc_std:.3f} "
                         f"over repeats; {above} the flag threshold {self.threshold:.2f})")
            lines.append(f"    {self.cv}")
            top = sorted(self.feature_effects.items(), key=lambda kv: -abs(kv[1]))[:4]
            lines.append("    largest differences (synthetic - real, in SD; flag at |d| >= "
                         f"{self.effect_threshold:.1f}): " + ", ".join(
                             f"{_FEATURE_LABELS.get(k, k)} {v:+.2f}" for k, v in top))
        if self.flagged:
            lines.append(f"  verdict: LEAK ({len(self.reasons)} reason"
                         f"{'s' if len(self.reasons) != 1 else ''}):")
            lines.extend(f"    - {r}" for r in self.reasons)
        elif self.verdict == VERDICTS[1]:
            lines.append(f"  verdict: too few images to certify (nothing flagged, but fewer than "
                         f"{self.min_to_certify} images in a source)")
        else:
            lines.append("  verdict: ok (no cue flagged; this does not prove blinding)")
        if self.warnings:
            lines.append("  warnings:")
            lines.extend(f"    - {w}" for w in self.warnings)
        else:
            lines.append("  warnings: none")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# features of one stimulus

def stimulus_features(png: bytes, original_width: int | None = None,
                      original_height: int | None = None) -> dict[str, float]:
    """Low-level features of a stimulus PNG (see FEATURE_NAMES).

    The original's size, when given, locates the original 8x8 JPEG grid in the stimulus
    (letterbox offset and scale) for the blockiness measure.
    """
    rgb = decode_png(png)
    h, w = rgb.shape[:2]
    r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
    grey_full = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
    # Channel max/min pairwise: far faster than reducing over the short last axis.
    hi = np.maximum(np.maximum(r, g), b)
    chroma_full = hi - np.minimum(np.minimum(r, g), b)  # exactly 0 for grey

    # Padding = black border rows/columns, as a reader sees it.
    lit = hi > 0
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if rows.size == 0:
        box = (0, h, 0, w)
    else:
        box = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
    content_area = (box[1] - box[0]) * (box[3] - box[2])
    padding = 1.0 - content_area / (h * w) if rows.size else 1.0
    grey = grey_full[box[0]:box[1], box[2]:box[3]]
    chroma = chroma_full[box[0]:box[1], box[2]:box[3]]

    pcts = np.percentile(grey, [1, 5, 25, 50, 75, 95, 99])
    feats = {
        "mean": float(grey.mean()), "std": float(grey.std()),
        **{name: float(v) for name, v in zip(("p01", "p05", "p25", "p50", "p75", "p95", "p99"),
                                             pcts)},
        "colourfulness": float(chroma.mean(dtype=np.float64) / 255.0),
        "log_noise_sigma": math.log10(_noise_sigma(grey) + 1e-4),
        "log_laplacian_var": math.log10(_laplacian_var(grey) + 1e-6),
        "blockiness": _grid_blockiness(grey_full, original_width, original_height, box),
        "png_bytes_per_pixel": len(png) / (h * w),
        "padding_fraction": float(padding),
    }
    return feats


def _noise_sigma(grey: np.ndarray) -> float:
    if min(grey.shape) < 3:
        return 0.0
    resid = ndimage.convolve(grey.astype(np.float64), _NOISE_KERNEL, mode="reflect")[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(resid).mean() / 6.0)


def _laplacian_var(grey: np.ndarray) -> float:
    if min(grey.shape) < 3:
        return 0.0
    return float(ndimage.laplace(grey.astype(np.float64))[1:-1, 1:-1].var())


def blockiness(grey: np.ndarray, period_x: float = 8.0, period_y: float = 8.0) -> float:
    """Mean absolute step across block boundaries / mean step elsewhere (1 = no blocking).

    Boundaries sit after every `period` pixels from the array origin (rounded), so a
    resampled JPEG grid can be followed. Returns 1.0 when the grid is too fine to see.
    """
    ratios = []
    for axis, period in ((1, period_x), (0, period_y)):
        n = grey.shape[axis]
        if period < 3 or n < 2 * period + 2:
            continue
        steps = np.abs(np.diff(grey.astype(np.float32), axis=axis)).mean(axis=1 - axis)
        edges = np.round(np.arange(period, n - 1, period)).astype(int) - 1
        edges = edges[(edges >= 0) & (edges < steps.size)]
        mask = np.zeros(steps.size, bool)
        mask[edges] = True
        inside = steps[~mask].mean()
        ratios.append(float(steps[mask].mean() / inside) if inside > 1e-6 else 1.0)
    return float(np.mean(ratios)) if ratios else 1.0


def _grid_blockiness(grey_full, ow, oh, box) -> float:
    size = grey_full.shape[0]
    if ow and oh and grey_full.shape[0] == grey_full.shape[1]:
        new_w, new_h, left, top = letterbox_geometry(int(ow), int(oh), size)
        region = grey_full[top:top + new_h, left:left + new_w]
        return blockiness(region, 8.0 * new_w / ow, 8.0 * new_h / oh)
    return blockiness(grey_full[box[0]:box[1], box[2]:box[3]])


# ---------------------------------------------------------------------------------------
# the audit

def audit_leaks(items: list[AuditItem], *, threshold: float = AUC_THRESHOLD,
                seed: int = 0) -> AuditReport:
    """Audit a study's stimuli for cues that separate real from synthetic (see module doc)."""
    for i, it in enumerate(items):
        if it.source not in SOURCES:
            raise ValueError(f"item {i}: source must be 'real' or 'synthetic', not {it.source!r}")
    counts = {s: sum(it.source == s for it in items) for s in SOURCES}
    distributions = _distributions(items)
    warns = _distribution_warnings(distributions, items, counts)

    auc = auc_std = None
    reason = None
    cv = ""
    effects: dict[str, float] = {}
    if min(counts.values()) < 2:
        reason = ("needs at least 2 images per source; have "
                  + ", ".join(f"{counts[s]} {s}" for s in SOURCES))
        warns.append(f"Leak classifier not run: {reason}.")
    else:
        X = np.array([[f[k] for k in FEATURE_NAMES] for f in (
            stimulus_features(it.png, it.original_width, it.original_height) for it in items)])
        y = np.array([it.source == "synthetic" for it in items], int)
        effects = _effects(X, y)
        auc, auc_std, cv = _cross_validated_auc(X, y, seed)
        if min(counts.values()) < SMALL_CLASS:
            warns.append(f"Only {min(counts.values())} images in the smaller source: the "
                         "classifier AUC is a rough estimate.")
    auc_leak = auc is not None and auc >= threshold
    if auc_leak:
        top = sorted(effects.items(), key=lambda kv: -abs(kv[1]))[:3]
        warns.insert(0, (
            f"Low-level image statistics separate real from synthetic stimuli: cross-validated "
            f"AUC {auc:.2f} >= {threshold:.2f}. Readers may succeed without judging the "
            "content. Largest differences (synthetic - real, in SD): "
            + ", ".join(f"{_FEATURE_LABELS[k]} {v:+.1f}" for k, v in top)
            + ". Match intensity range, resolution and compression of the sources."))
    distances = _property_distances(distributions, counts)
    reasons = _reasons(auc if auc_leak else None, threshold, effects, distances,
                       distributions, items, counts)
    flagged = bool(reasons)
    if flagged:
        verdict = VERDICTS[0]
    elif min(counts.values()) < MIN_TO_CERTIFY:
        verdict = VERDICTS[1]
    else:
        verdict = VERDICTS[2]
    return AuditReport(counts, distributions, auc, auc_std, reason, cv, threshold,
                       effects, warns, flagged, flagged=flagged, reasons=reasons,
                       verdict=verdict, property_distances=distances)


def is_flagged(report: dict | None) -> bool | None:
    """Whether a stored report (dict) flags its study; reports stored before `flagged`
    existed fall back to their `leak`. None when there is no report."""
    if not report:
        return None
    return bool(report.get("flagged", report.get("leak")))


def _property_distances(distributions, counts) -> dict[str, float]:
    """Total variation distance between the sources' distributions of each original
    property: 0 = identical, 1 = no value in common."""
    if min(counts.values()) == 0:
        return {}
    out = {}
    for attr in _ATTRIBUTES:
        real, synth = (distributions[attr][s] for s in SOURCES)
        values = set(real) | set(synth)
        out[attr] = round(0.5 * sum(abs(real.get(v, 0) / counts["real"]
                                        - synth.get(v, 0) / counts["synthetic"])
                                    for v in values), 4)
    return out


def _reasons(auc, threshold, effects, distances, distributions, items, counts) -> list[str]:
    reasons = []
    if auc is not None:
        reasons.append(f"a classifier on low-level features separates the sources: "
                       f"cross-validated AUC {auc:.2f} >= {threshold:.2f}")
    for name, d in sorted(effects.items(), key=lambda kv: -abs(kv[1])):
        if abs(d) >= EFFECT_THRESHOLD:
            way = "higher" if d > 0 else "lower"
            shown = f"{d:+.2f} SD" if abs(d) < 99 else "constant within each source"
            reasons.append(f"{_FEATURE_LABELS[name]} is {way} in synthetic images "
                           f"({shown}; flag at |d| >= {EFFECT_THRESHOLD})")
    for attr, dist in distances.items():
        if dist >= PROPERTY_THRESHOLD:
            label = _ATTRIBUTES[attr]
            real, synth = (distributions[attr][s] for s in SOURCES)
            reasons.append(f"original {label} are distributed differently (real: "
                           f"{_few_counts(real)}; synthetic: {_few_counts(synth)}; distance "
                           f"{dist:.2f} >= {PROPERTY_THRESHOLD}); rescaling and quantisation "
                           "traces survive normalisation")
    if min(counts.values()) > 0:
        aspects = {s: {round(it.original_width / it.original_height, 2) for it in items
                       if it.source == s} for s in SOURCES}
        if aspects["real"].isdisjoint(aspects["synthetic"]):
            reasons.append("aspect ratios do not overlap between sources: the letterbox "
                           "padding shows them")
    return reasons


def _few_counts(counter: dict[str, int], n: int = 3) -> str:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{v} x{c}" for v, c in items[:n])
    return shown + (f", +{len(items) - n} more values" if len(items) > n else "")


def _distributions(items):
    def value(it, attr):
        if attr == "size":
            return f"{it.original_width}x{it.original_height}"
        if attr == "format":
            return str(it.original_format)
        if attr == "mode":
            return str(it.original_mode)
        return str(it.original_bit_depth)

    out: dict[str, dict[str, dict[str, int]]] = {}
    for attr in _ATTRIBUTES:
        out[attr] = {s: dict(collections.Counter(value(it, attr) for it in items
                                                 if it.source == s)) for s in SOURCES}
    return out


def _distribution_warnings(distributions, items, counts) -> list[str]:
    if min(counts.values()) == 0:
        return []
    warns = []
    for attr, label in _ATTRIBUTES.items():
        real, synth = (set(distributions[attr][s]) for s in SOURCES)
        if real.isdisjoint(synth):
            warns.append(
                f"Original {label} differ completely between sources (real: "
                f"{_few(real)}; synthetic: {_few(synth)}). Every stimulus is re-encoded to "
                "the same size, mode and PNG form, so this is not visible as such, but it "
                "can leave traces in the pixels (see the classifier AUC).")
    aspects = {s: {round(it.original_width / it.original_height, 2) for it in items
                   if it.source == s} for s in SOURCES}
    if aspects["real"].isdisjoint(aspects["synthetic"]):
        warns.append(
            f"Aspect ratios differ completely between sources (real: {_few(aspects['real'])}; "
            f"synthetic: {_few(aspects['synthetic'])}). Letterboxing keeps proportions, so "
            "the black padding differs visibly: crop or pad the originals to matching shapes.")
    return warns


def _few(values, n=4) -> str:
    vals = sorted(map(str, values))
    return ", ".join(vals[:n]) + (f" (+{len(vals) - n} more)" if len(vals) > n else "")


def _effects(X, y) -> dict[str, float]:
    """Standardised mean difference (synthetic - real) of each feature."""
    a, b = X[y == 1], X[y == 0]
    pooled = np.sqrt((a.var(axis=0, ddof=1) + b.var(axis=0, ddof=1)) / 2)
    diff = a.mean(axis=0) - b.mean(axis=0)
    tiny = 1e-9
    d = np.where(pooled > tiny, diff / np.where(pooled > tiny, pooled, 1),
                 np.where(np.abs(diff) > tiny, np.sign(diff) * 99.0, 0.0))
    return {k: float(np.clip(v, -99, 99)) for k, v in zip(FEATURE_NAMES, d)}


def _cross_validated_auc(X, y, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = int(min(MAX_FOLDS, np.bincount(y).min()))
    # newton-cholesky: exact and fast for few features (lbfgs was 10x slower here).
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(C=1.0, solver="newton-cholesky", max_iter=200))
    aucs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on perfectly separable data
        for rep in range(CV_REPEATS):
            folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + rep)
            proba = cross_val_predict(model, X, y, cv=folds, method="predict_proba")[:, 1]
            aucs.append(roc_auc_score(y, proba))
    cv = (f"logistic regression on {len(FEATURE_NAMES)} standardised features, stratified "
          f"{k}-fold, pooled out-of-fold AUC, mean of {CV_REPEATS} shuffles")
    return float(np.mean(aucs)), float(np.std(aucs)), cv


# ------------------------------------------------------------------ scaling (not a leak)
SCALE_WARN = 2.0  # warn when an image is enlarged or reduced more than this factor
SCALE_LIST = 10   # how many of the worst to list


def scaling_check(originals: list[tuple[str, int | None, int | None]], size: int, *,
                  warn: float = SCALE_WARN, top: int = SCALE_LIST) -> dict:
    """How much each image is scaled to the stimulus side `size` (factor = size /
    longest original side): counts of images enlarged or reduced more than `warn`×, and
    the worst ones (label, original size, factor), largest distortion first. A quality
    warning, not a leak flag: readers see enlarged images blurred and reduced ones
    without their native detail."""
    rows = []
    for label, w, h in originals:
        if not w or not h:
            continue
        factor = size / max(w, h)
        rows.append({"case": label, "width": int(w), "height": int(h), "factor": factor})
    up = [r for r in rows if r["factor"] > warn]
    down = [r for r in rows if r["factor"] < 1 / warn]
    worst = sorted(up + down, key=lambda r: -abs(np.log(r["factor"])))[:top]
    return {"size": size, "warn_factor": warn, "n_images": len(rows),
            "n_upscaled": len(up), "n_downscaled": len(down), "worst": worst}


def format_scaling(check: dict) -> str:
    """The scaling check as text lines for the audit report ("" when nothing to say)."""
    if not check.get("n_upscaled") and not check.get("n_downscaled"):
        return ""
    w = check["warn_factor"]
    lines = [f"Scaling: {check['n_upscaled']} of {check['n_images']} images enlarged more than "
             f"{w:g}x and {check['n_downscaled']} reduced more than {w:g}x to "
             f"{check['size']}x{check['size']}. Worst:"]
    for r in check["worst"]:
        verb = "enlarged" if r["factor"] > 1 else "reduced"
        lines.append(f"  {r['case']}: {r['width']}x{r['height']} {verb} "
                     f"{max(r['factor'], 1 / r['factor']):.1f}x")
    return "\n".join(lines)
