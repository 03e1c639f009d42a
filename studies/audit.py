"""Leak audit: what could still tell real from synthetic stimuli, apart from the content.

Over 600 lines because its three parts share one verdict rule (thresholds, strata, the
family-wise alpha) and one report; the prompt audit calls back into it, so a split would loop.

Parts:
1. The originals: per source, the distributions of format, size, colour mode and bit depth.
   Normalisation removes all of them from what readers see, but they leave traces in the
   pixels (a 64 px original upscaled to 512 is blurry; a 16-bit one has finer grey levels),
   and letterbox padding keeps the aspect ratio visible.
2. The stimuli themselves, as a reader's browser receives them: low-level features of each
   normalised PNG — intensity histogram (mean, spread, minimum, maximum, 1st..99th
   percentiles), colourfulness and signed tint (mean R-G and B-G: a faint colour cast that a
   window/level stretch makes visible), noise level, sharpness, 8x8 JPEG blockiness, the PNG's
   byte size (the Content-Length the browser sees), black padding — and a coarse spatial map
   (mean and edge energy in each cell of a `GRID` x `GRID` grid over the stimulus, to catch
   a mark or overlay in a fixed place).
3. The prompts readers may see (`audit_prompts`): a text classifier and named tells.

Every check runs on the pooled study and within each stratum with at least `MIN_STRATUM`
images per source: each modality (when there are several) and each generator within a
modality (when there are several), each stratum's synthetic images against the real images
of the same modality. A cue that separates the sources inside one modality (PNG bytes,
noise) can vanish when modalities are pooled.

A stratum is **flagged** (one line per cause in `reasons`) when any of:
- a logistic regression on the global features separates the sources: stratified k-fold
  cross-validated AUC (k = min(5, smaller class), pooled out-of-fold probabilities, mean of
  `CV_REPEATS` shuffles) >= the larger of `AUC_THRESHOLD` (0.75) and the AUC a chance split
  of that size exceeds with probability alpha_s / 2 (normal approximation to the
  Mann-Whitney null);
- a single feature differs by |standardised mean difference| >= `EFFECT_THRESHOLD` (0.8,
  Cohen's "large") AND the difference is beyond chance: its max-|t| permutation p-value
  (Westfall-Young, `N_PERMUTATIONS` label shuffles, adjusting for every feature of the
  stratum) <= alpha_s / 2;
- an original property (format, size, colour mode, bit depth) is distributed differently:
  total variation distance >= `PROPERTY_THRESHOLD` (0.5), or the aspect ratios of the two
  sources do not overlap.
alpha_s = `FAMILY_ALPHA` (0.05) / number of strata tested (Bonferroni), so the chance that
a clean study is flagged anywhere stays at or below 5% however many strata it has; the
false-flag and detection rates measured by benchmarks/bench_audit.py are in
docs/benchmarks.md and docs/blinding.md. The study is flagged when any stratum is. When
nothing is flagged but the smaller source has fewer than `MIN_TO_CERTIFY` (20) images, the
verdict is "too few images to certify", not "ok". `leak` is kept as an alias of `flagged`.

An "ok" does not prove blinding (readers see more than these features); it says the cheap
cues that normalisation cannot remove were not found.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import re
import warnings

import numpy as np
from scipy import ndimage, stats

from studies.imaging.stimuli import decode_png, letterbox_geometry

__all__ = [
    "AUC_THRESHOLD", "AuditItem", "AuditReport", "CV_REPEATS", "EFFECT_THRESHOLD",
    "FAMILY_ALPHA", "FEATURE_NAMES", "GRID", "GRID_FEATURE_NAMES", "MIN_STRATUM",
    "MIN_TO_CERTIFY", "PROPERTY_THRESHOLD", "audit_leaks", "audit_prompts", "blockiness",
    "is_flagged", "stimulus_features",
]

AUC_THRESHOLD = 0.75
"""Cross-validated AUC at or above which the stimuli are flagged as separable."""
CV_REPEATS = 5
MAX_FOLDS = 5
SMALL_CLASS = 10
"""Below this many images in a class the AUC is reported with a caution."""
EFFECT_THRESHOLD = 0.8
"""|standardised mean difference| of a single feature at or above which it may be flagged."""
PROPERTY_THRESHOLD = 0.5
"""Total variation distance between the sources' distributions of an original property
(format, size, mode, bit depth) at or above which it is flagged."""
MIN_TO_CERTIFY = 20
"""Images needed in each source before an unflagged audit says "ok"."""
MIN_STRATUM = 10
"""Images needed in each source of a modality/generator stratum before it is tested alone."""
FAMILY_ALPHA = 0.05
"""Chance that a clean study is flagged by the statistical rules, over all its strata."""
N_PERMUTATIONS = 999
"""Label shuffles for the max-|t| test of single features (more when the strata need it)."""
GRID = 4
"""The spatial map: mean and edge energy in each cell of a GRID x GRID grid."""
ERROR_RATES = (
    "false flag in 3.8% of clean random splits (15 of 400; 10 strata of 20 real vs 20 "
    "synthetic); planted leaks found in 100% (40 of 40 each) for a 1-4 level tint, a squeezed "
    "intensity range, a small fixed mark and +0.05 brightness in one stratum; a byte-size "
    "difference in one stratum found in 42% at d = 1 and 100% (20 of 20) at d = 2.9 "
    "(benchmarks/bench_audit.py)")
"""The rule's measured error rates (benchmarks/bench_audit.py; docs/benchmarks.md), printed
with every report."""
VERDICTS = ("leak", "too few images to certify", "ok")
SOURCES = ("real", "synthetic")

FEATURE_NAMES = (
    "mean", "std", "min", "max", "p01", "p05", "p25", "p50", "p75", "p95", "p99",
    "colourfulness", "tint_rg", "tint_bg", "log_noise_sigma", "log_laplacian_var",
    "blockiness", "png_bytes_per_pixel", "padding_fraction",
)
"""Global features: the leak classifier's inputs (and each tested alone)."""
GRID_FEATURE_NAMES = tuple(f"grid_{kind}_{r}{c}" for kind in ("mean", "edges")
                           for r in range(GRID) for c in range(GRID))
"""Spatial-map features: tested one by one (a mark in one cell), not fed to the classifier."""
_FEATURE_LABELS = {
    "mean": "mean intensity", "std": "intensity spread (std)", "min": "minimum intensity",
    "max": "maximum intensity", "p01": "1st percentile",
    "p05": "5th percentile", "p25": "25th percentile", "p50": "median intensity",
    "p75": "75th percentile", "p95": "95th percentile", "p99": "99th percentile",
    "colourfulness": "colourfulness", "tint_rg": "red-green tint (mean R-G)",
    "tint_bg": "blue-green tint (mean B-G)", "log_noise_sigma": "noise level",
    "log_laplacian_var": "sharpness (variance of Laplacian)",
    "blockiness": "JPEG 8x8 blockiness",
    "png_bytes_per_pixel": "PNG byte size (the Content-Length a browser sees)",
    "padding_fraction": "black padding fraction",
}
_ROWS = ("top", "upper middle", "lower middle", "bottom") if GRID == 4 else None
_COLS = ("left", "centre-left", "centre-right", "right") if GRID == 4 else None


def _feature_label(name: str) -> str:
    if name in _FEATURE_LABELS:
        return _FEATURE_LABELS[name]
    m = re.fullmatch(r"grid_(mean|edges)_(\d)(\d)", name)
    if m:
        kind = "mean intensity" if m.group(1) == "mean" else "edge energy"
        r, c = int(m.group(2)), int(m.group(3))
        where = (f"{_ROWS[r]} {_COLS[c]}" if _ROWS else f"row {r + 1}, column {c + 1}")
        return f"{kind} in the {where} cell of a {GRID}x{GRID} grid"
    return name


_ATTRIBUTES = {"format": "formats", "size": "sizes", "mode": "colour modes",
               "bit_depth": "bit depths"}
# Immerkaer (1996) fast noise estimate: this kernel cancels image structure up to 2nd order.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


@dataclasses.dataclass
class AuditItem:
    """One stimulus and the facts about its original (and, optionally, its stratum and the
    prompt a reader may see)."""

    source: str                 # 'real' | 'synthetic'
    original_format: str
    original_width: int
    original_height: int
    original_mode: str
    original_bit_depth: int
    png: bytes                  # the normalised stimulus
    modality: str = ""
    generator: str = ""
    prompt: str = ""
    group: str = ""

    @classmethod
    def from_decoded(cls, source: str, decoded, png: bytes, **extra) -> AuditItem:
        """Build from a `studies.imaging.DecodedImage` and its stimulus PNG."""
        return cls(source, decoded.original_format, decoded.original_width,
                   decoded.original_height, decoded.original_mode,
                   decoded.original_bit_depth, png, **extra)


@dataclasses.dataclass
class AuditReport:
    counts: dict[str, int]                               # source -> images
    distributions: dict[str, dict[str, dict[str, int]]]  # attribute -> source -> value -> n
    auc: float | None                                    # pooled mean cross-validated AUC
    auc_std: float | None                                # spread across CV repeats
    auc_reason: str | None                               # why auc is None
    cv: str                                              # the scheme actually used
    threshold: float
    feature_effects: dict[str, float]                    # pooled standardised mean difference
    warnings: list[str]
    leak: bool                                           # = flagged (kept for old callers)
    flagged: bool = False
    reasons: list[str] = dataclasses.field(default_factory=list)  # one line per cause
    verdict: str = "ok"                                  # one of VERDICTS
    property_distances: dict[str, float] = dataclasses.field(default_factory=dict)
    effect_threshold: float = EFFECT_THRESHOLD
    property_threshold: float = PROPERTY_THRESHOLD
    min_to_certify: int = MIN_TO_CERTIFY
    strata: list[dict] = dataclasses.field(default_factory=list)  # see _audit_stratum
    family_alpha: float = FAMILY_ALPHA
    prompts: dict = dataclasses.field(default_factory=dict)       # see audit_prompts

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
            pooled = self.strata[0] if self.strata else {}
            limit = pooled.get("auc_threshold", self.threshold)
            above = "at or above" if self.auc >= limit else "below"
            lines.append(f"  stimulus classifier AUC (all images): {self.auc:.3f} (+/- "
                         f"{self.auc_std:.3f} over repeats; {above} the flag threshold "
                         f"{limit:.2f})")
            lines.append(f"    {self.cv}")
            top = sorted(self.feature_effects.items(), key=lambda kv: -abs(kv[1]))[:4]
            lines.append("    largest differences (synthetic - real, in SD; flag at |d| >= "
                         f"{self.effect_threshold:.1f} beyond chance): " + ", ".join(
                             f"{_feature_label(k)} {v:+.2f}" for k, v in top))
        if len(self.strata) > 1 or any(not s.get("tested") for s in self.strata):
            lines.append(f"  strata (each tested alone; family-wise false-flag rate "
                         f"{self.family_alpha:.0%} over {sum(s.get('tested', False) for s in self.strata)} tested):")
            untested = [s["name"] for s in self.strata if not s.get("tested")]
            for s in self.strata:
                c = s["counts"]
                if not s.get("tested"):
                    continue
                auc = "n/a" if s.get("auc") is None else f"{s['auc']:.2f}"
                state = "FLAGGED" if s["flagged"] else "ok"
                lines.append(f"    {s['name']}: real {c['real']}, synthetic {c['synthetic']}, "
                             f"AUC {auc} (flag at >= {s['auc_threshold']:.2f}): {state}")
            if untested:
                lines.append(f"    not tested alone (fewer than {MIN_STRATUM} images in a "
                             f"source): " + "; ".join(untested))
        if self.prompts:
            lines.extend("  " + ln for ln in format_prompts(self.prompts).splitlines())
        lines.append(f"  error rates of this rule: {ERROR_RATES}")
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
    """Low-level features of a stimulus PNG (FEATURE_NAMES and GRID_FEATURE_NAMES).

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
    inner = (slice(box[0], box[1]), slice(box[2], box[3]))
    grey = grey_full[inner]
    chroma = chroma_full[inner]

    pcts = np.percentile(grey, [1, 5, 25, 50, 75, 95, 99])
    feats = {
        "mean": float(grey.mean()), "std": float(grey.std()),
        "min": float(grey.min()), "max": float(grey.max()),
        **{name: float(v) for name, v in zip(("p01", "p05", "p25", "p50", "p75", "p95", "p99"),
                                             pcts)},
        "colourfulness": float(chroma.mean(dtype=np.float64) / 255.0),
        # Signed: a consistent cast (SD's warm greys) is a cue even when faint.
        "tint_rg": float((r[inner] - g[inner]).mean(dtype=np.float64) / 255.0),
        "tint_bg": float((b[inner] - g[inner]).mean(dtype=np.float64) / 255.0),
        "log_noise_sigma": math.log10(_noise_sigma(grey) + 1e-4),
        "log_laplacian_var": math.log10(_laplacian_var(grey) + 1e-6),
        "blockiness": _grid_blockiness(grey_full, original_width, original_height, box),
        "png_bytes_per_pixel": len(png) / (h * w),
        "padding_fraction": float(padding),
    }
    feats.update(_grid_features(grey_full))
    return feats


def _grid_features(grey: np.ndarray) -> dict[str, float]:
    """Mean and edge energy (mean absolute step to the right and down neighbours) per cell of
    a GRID x GRID grid over the whole stimulus, padding included: where a mark would sit."""
    h, w = grey.shape
    dx = np.zeros_like(grey)
    dy = np.zeros_like(grey)
    dx[:, :-1] = np.abs(np.diff(grey, axis=1))
    dy[:-1] = np.abs(np.diff(grey, axis=0))
    edges = dx + dy
    ys = np.linspace(0, h, GRID + 1).round().astype(int)
    xs = np.linspace(0, w, GRID + 1).round().astype(int)
    out = {}
    for i in range(GRID):
        for j in range(GRID):
            cell = (slice(ys[i], max(ys[i + 1], ys[i] + 1)), slice(xs[j], max(xs[j + 1], xs[j] + 1)))
            out[f"grid_mean_{i}{j}"] = float(grey[cell].mean())
            out[f"grid_edges_{i}{j}"] = float(edges[cell].mean())
    return out


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
                seed: int = 0, prompts_shown: bool = False) -> AuditReport:
    """Audit a study's stimuli for cues that separate real from synthetic (see module doc).

    `prompts_shown`: readers see the prompts in the main cases (the alignment task), so a
    flagged prompt audit flags the study; otherwise it is reported (and training feedback
    leaves the prompt out unless it is "ok").
    """
    for i, it in enumerate(items):
        if it.source not in SOURCES:
            raise ValueError(f"item {i}: source must be 'real' or 'synthetic', not {it.source!r}")
    counts = {s: sum(it.source == s for it in items) for s in SOURCES}
    distributions = _distributions(items)
    warns = _distribution_warnings(distributions, items, counts)

    feats = None
    if min(counts.values()) >= 2:
        feats = np.array([[f[k] for k in FEATURE_NAMES + GRID_FEATURE_NAMES] for f in (
            stimulus_features(it.png, it.original_width, it.original_height) for it in items)])
    strata = _strata(items)
    n_tests = max(1, sum(tested for _, _, _, tested, _ in strata))
    alpha_s = FAMILY_ALPHA / n_tests
    results = []
    for k, (name, modality, generator, tested, idx) in enumerate(strata):
        res = _audit_stratum(name, modality, generator, items, idx, feats, tested, alpha_s,
                             threshold, seed + 1000 * k)
        results.append(res)
    pooled = results[0]
    effects = pooled.pop("_effects", {})
    for res in results[1:]:
        res.pop("_effects", None)
    auc, auc_std, cv = pooled.get("auc"), pooled.get("auc_std"), pooled.get("cv", "")
    reason = None
    if min(counts.values()) < 2:
        reason = ("needs at least 2 images per source; have "
                  + ", ".join(f"{counts[s]} {s}" for s in SOURCES))
        warns.append(f"Leak classifier not run: {reason}.")
    elif min(counts.values()) < SMALL_CLASS:
        warns.append(f"Only {min(counts.values())} images in the smaller source: the "
                     "classifier AUC is a rough estimate.")
    if auc is not None and auc >= pooled["auc_threshold"]:
        top = sorted(effects.items(), key=lambda kv: -abs(kv[1]))[:3]
        warns.insert(0, (
            f"Low-level image statistics separate real from synthetic stimuli: cross-validated "
            f"AUC {auc:.2f} >= {pooled['auc_threshold']:.2f}. Readers may succeed without "
            "judging the content. Largest differences (synthetic - real, in SD): "
            + ", ".join(f"{_feature_label(k)} {v:+.1f}" for k, v in top)
            + ". Match intensity range, resolution and compression of the sources."))
    reasons = []
    for res in results:
        prefix = "" if res is pooled else f"[{res['name']}] "
        reasons.extend(prefix + r for r in res["reasons"])
    untested = [r["name"] for r in results[1:] if not r["tested"]]
    if untested:
        warns.append(f"Strata with fewer than {MIN_STRATUM} images in a source were not tested "
                     "alone (only within the pooled test): " + "; ".join(untested) + ".")
    prompt_report = audit_prompts(items, seed=seed, shown=prompts_shown)
    if prompt_report["verdict"] == "flagged" and prompts_shown:
        reasons.append("the prompts readers see tell the sources apart: "
                       + prompt_report["summary"])
    flagged = bool(reasons)
    if flagged:
        verdict = VERDICTS[0]
    elif min(counts.values()) < MIN_TO_CERTIFY:
        verdict = VERDICTS[1]
    else:
        verdict = VERDICTS[2]
    return AuditReport(counts, distributions, auc, auc_std, reason, cv, threshold,
                       effects, warns, flagged, flagged=flagged, reasons=reasons,
                       verdict=verdict, property_distances=pooled.get("property_distances", {}),
                       strata=results, prompts=prompt_report)


def _stratum_key(value: str) -> str:
    return " ".join(str(value or "").split()).casefold()


def _strata(items) -> list[tuple[str, str | None, str | None, bool, np.ndarray]]:
    """(name, modality, generator, tested alone, item indices); the pooled one first."""
    all_idx = np.arange(len(items))
    out = [("all images", None, None, True, all_idx)]
    mods = sorted({_stratum_key(it.modality) for it in items})
    for m in mods:
        real = [i for i, it in enumerate(items) if it.source == "real"
                and _stratum_key(it.modality) == m]
        synth = [i for i, it in enumerate(items) if it.source == "synthetic"
                 and _stratum_key(it.modality) == m]
        label = f"modality {m or '(blank)'}"
        if len(mods) > 1:
            out.append((label, m, None, _big_enough(real, synth),
                        np.array(sorted(real + synth), int)))
        gens = sorted({_stratum_key(items[i].generator) for i in synth})
        if len(gens) > 1:
            for g in gens:
                sg = [i for i in synth if _stratum_key(items[i].generator) == g]
                out.append((f"{label}, generator {g or '(blank)'}", m, g,
                            _big_enough(real, sg), np.array(sorted(real + sg), int)))
    return out


def _big_enough(real, synth) -> bool:
    return min(len(real), len(synth)) >= MIN_STRATUM


def _audit_stratum(name, modality, generator, items, idx, feats, tested, alpha_s, threshold,
                   seed) -> dict:
    sub = [items[i] for i in idx]
    counts = {s: sum(it.source == s for it in sub) for s in SOURCES}
    res = {"name": name, "modality": modality, "generator": generator, "counts": counts,
           "tested": bool(tested), "flagged": False, "reasons": [], "auc": None,
           "auc_std": None, "auc_threshold": threshold, "top_effects": {}}
    if not tested:
        res["note"] = f"fewer than {MIN_STRATUM} images in a source"
        return res
    dist = _distributions(sub)
    distances = _property_distances(dist, counts)
    res["property_distances"] = distances
    effects: dict[str, float] = {}
    pvals: dict[str, float] = {}
    auc = None
    if feats is not None and min(counts.values()) >= 2:
        X = feats[idx]
        y = np.array([it.source == "synthetic" for it in sub], int)
        names = FEATURE_NAMES + GRID_FEATURE_NAMES
        d = _effects(X, y)
        p = _max_t_pvalues(X, y, max(N_PERMUTATIONS, math.ceil(10 / alpha_s) - 1),
                           np.random.default_rng(seed))
        effects = {k: float(v) for k, v in zip(names, d)}
        pvals = {k: float(v) for k, v in zip(names, p)}
        n_global = len(FEATURE_NAMES)
        auc, auc_std, cv = _cross_validated_auc(X[:, :n_global], y, seed)
        res.update(auc=auc, auc_std=auc_std, cv=cv)
        res["auc_threshold"] = max(threshold, _auc_critical(counts["real"], counts["synthetic"],
                                                             alpha_s / 2))
        res["top_effects"] = dict(sorted(effects.items(), key=lambda kv: -abs(kv[1]))[:5])
    res["_effects"] = effects
    res["reasons"] = _reasons(auc if auc is not None and auc >= res["auc_threshold"] else None,
                              res["auc_threshold"], effects, pvals, alpha_s / 2, distances,
                              dist, sub, counts)
    res["flagged"] = bool(res["reasons"])
    return res


CV_AUC_INFLATION = 1.25
"""The cross-validated AUC of a chance split varies more than a fixed score's: measured 1.05-
1.25x the Mann-Whitney standard deviation (300 chance splits of 10-40 per source,
benchmarks/bench_audit.py's population); the null's spread is taken as this many times it."""


def _auc_critical(n_real: int, n_synth: int, alpha: float) -> float:
    """The AUC a chance split of this size exceeds with probability `alpha` (normal
    approximation to the Mann-Whitney statistic under the null, widened by
    `CV_AUC_INFLATION` for cross-validation)."""
    sd = CV_AUC_INFLATION * math.sqrt((n_real + n_synth + 1) / (12.0 * n_real * n_synth))
    return 0.5 + float(stats.norm.isf(alpha)) * sd


def _welch_t(X, y1, XX=None):
    """|Welch t| of each column of X between rows where y1 (bool, shape (..., n)) is set and
    the rest; y1 may hold many labelings (one per row)."""
    y1 = np.atleast_2d(y1).astype(np.float64)
    XX = X * X if XX is None else XX
    n1 = y1.sum(axis=1, keepdims=True)
    n0 = y1.shape[1] - n1
    s1, q1 = y1 @ X, y1 @ XX
    s0, q0 = X.sum(axis=0) - s1, XX.sum(axis=0) - q1
    m1, m0 = s1 / n1, s0 / n0
    v1 = np.maximum(q1 / n1 - m1 * m1, 0) * n1 / np.maximum(n1 - 1, 1)
    v0 = np.maximum(q0 / n0 - m0 * m0, 0) * n0 / np.maximum(n0 - 1, 1)
    se = np.sqrt(v1 / n1 + v0 / n0)
    diff = np.abs(m1 - m0)
    tiny = 1e-9 * (np.abs(X).max(axis=0) + 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > tiny, diff / np.where(se > tiny, se, 1),
                        np.where(diff > tiny, 1e12, 0.0))


def _max_t_pvalues(X, y, n_perm: int, rng) -> np.ndarray:
    """Westfall-Young single-step max-|t| adjusted p-values: for each feature, the share of
    label shuffles whose largest |t| over all features reaches the feature's observed |t|.
    Controls the chance of flagging any feature of a clean stratum, whatever the features'
    correlations and distributions."""
    X = np.asarray(X, np.float64)
    X = X - X.mean(axis=0)
    XX = X * X
    observed = _welch_t(X, y.astype(bool), XX)[0]
    exceed = np.zeros(X.shape[1])
    done = 0
    while done < n_perm:
        batch = min(1000, n_perm - done)
        perms = rng.permuted(np.tile(np.asarray(y, bool), (batch, 1)), axis=1)
        tmax = _welch_t(X, perms, XX).max(axis=1)
        exceed += (tmax[:, None] >= observed[None, :] * (1 - 1e-9)).sum(axis=0)
        done += batch
    return (1 + exceed) / (n_perm + 1)


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


def _reasons(auc, threshold, effects, pvals, alpha, distances, distributions, items,
             counts) -> list[str]:
    reasons = []
    if auc is not None:
        reasons.append(f"a classifier on low-level features separates the sources: "
                       f"cross-validated AUC {auc:.2f} >= {threshold:.2f}")
    for name, d in sorted(effects.items(), key=lambda kv: -abs(kv[1])):
        if abs(d) >= EFFECT_THRESHOLD and pvals.get(name, 1.0) <= alpha:
            way = "higher" if d > 0 else "lower"
            shown = f"{d:+.2f} SD" if abs(d) < 99 else "constant within each source"
            reasons.append(f"{_feature_label(name)} is {way} in synthetic images "
                           f"({shown}, adjusted p {pvals[name]:.4f}; flag at |d| >= "
                           f"{EFFECT_THRESHOLD} and p <= {alpha:.4f})")
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


def _effects(X, y) -> np.ndarray:
    """Standardised mean difference (synthetic - real) of each column (±99: the feature is
    constant within each source but differs between them)."""
    a, b = X[y == 1], X[y == 0]
    pooled = np.sqrt((a.var(axis=0, ddof=1) + b.var(axis=0, ddof=1)) / 2)
    diff = a.mean(axis=0) - b.mean(axis=0)
    tiny = 1e-9
    d = np.where(pooled > tiny, diff / np.where(pooled > tiny, pooled, 1),
                 np.where(np.abs(diff) > tiny, np.sign(diff) * 99.0, 0.0))
    return np.clip(d, -99, 99)


def _cross_validated_auc(X, y, seed):
    from sklearn.model_selection import StratifiedKFold

    k = int(min(MAX_FOLDS, np.bincount(y).min()))
    X = np.asarray(X, np.float64)
    aucs = []
    for rep in range(CV_REPEATS):
        folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + rep)
        proba = np.empty(len(y))
        for train, test in folds.split(X, y):
            proba[test] = _logistic_fit_predict(X[train], y[train], X[test])
        aucs.append(auc_of(y, proba))
    cv = (f"logistic regression on {len(FEATURE_NAMES)} standardised features, stratified "
          f"{k}-fold, pooled out-of-fold AUC, mean of {CV_REPEATS} shuffles")
    return float(np.mean(aucs)), float(np.std(aucs)), cv


def auc_of(y, score) -> float:
    """ROC AUC of `score` for labels `y` (1 = positive): the Mann-Whitney U / (n1 n0)."""
    y = np.asarray(y).astype(bool)
    ranks = stats.rankdata(score)
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _logistic_fit_predict(Xtr, ytr, Xte, C: float = 1.0, iters: int = 50) -> np.ndarray:
    """P(y = 1) on Xte from an L2-penalised logistic regression fitted on standardised Xtr
    (the objective of scikit-learn's LogisticRegression(C): C * log-loss + |w|^2 / 2, the
    intercept unpenalised), by Newton's method: the audit fits it hundreds of times, and
    the library's per-call overhead was 90% of the audit's time."""
    mu = Xtr.mean(axis=0)
    sd = Xtr.std(axis=0)
    sd[sd < 1e-12] = 1.0
    A = np.hstack([np.ones((len(Xtr), 1)), (Xtr - mu) / sd])
    B = np.hstack([np.ones((len(Xte), 1)), (Xte - mu) / sd])
    y = np.asarray(ytr, np.float64)
    w = np.zeros(A.shape[1])
    reg = np.full(A.shape[1], 1.0 / C)
    reg[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(A @ w, -35, 35)))
        grad = A.T @ (p - y) + reg * w
        H = (A * (p * (1 - p))[:, None]).T @ A + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return 1.0 / (1.0 + np.exp(-np.clip(B @ w, -35, 35)))


# ------------------------------------------------------------------ the prompts' text
PROMPT_REMEDY = ("generate the synthetic images from the real images' own captions (pair "
                 "them by `group`), or leave the prompt out of a Turing study")
PRESENCE_THRESHOLD = 0.5
"""Difference in the share of cases that have a prompt at or above which it is a tell."""
_WORD = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


def _norm_text(text: str) -> str:
    return " ".join(str(text or "").split()).casefold()


def _ngrams(text: str, n_max: int = 5) -> set[str]:
    words = _WORD.findall(_norm_text(text))
    return {" ".join(words[i:i + n]) for n in range(1, n_max + 1)
            for i in range(len(words) - n + 1)}


def audit_prompts(items: list[AuditItem], *, seed: int = 0, shown: bool = False) -> dict:
    """Whether the prompts readers may see tell real from synthetic.

    Returns {"verdict": "ok" | "flagged" | "too few" | "no prompts", "auc", "auc_threshold",
    "tells": [...], "counts", "paired", "summary", "remedy", "shown"}:
    - a logistic regression on word (1-2) and character (2-4) n-gram TF-IDF and the length,
      stratified k-fold cross-validated AUC, flagged at the image rule's threshold;
    - named tells: a word n-gram (1-5 words) used by one source only, more often than chance allows
      (Fisher's exact test, Bonferroni over all n-grams, at `FAMILY_ALPHA`); the length
      (|d| >= `EFFECT_THRESHOLD`, Welch p <= `FAMILY_ALPHA`); prompts present for one source
      much more often than for the other;
    - "ok" without the classifier when every synthetic prompt is a real image's own caption
      (of the same `group` where groups are given): the wording cannot differ.
    """
    by = {s: [it for it in items if it.source == s] for s in SOURCES}
    texts = {s: [_norm_text(it.prompt) for it in by[s] if _norm_text(it.prompt)]
             for s in SOURCES}
    counts = {s: len(texts[s]) for s in SOURCES}
    out = {"verdict": "no prompts", "auc": None, "auc_threshold": AUC_THRESHOLD, "tells": [],
           "counts": counts, "paired": None, "summary": "", "remedy": PROMPT_REMEDY,
           "shown": bool(shown), "cv": ""}
    if not counts["real"] and not counts["synthetic"]:
        out["summary"] = "no case has a prompt"
        return out
    tells = []
    share = {s: counts[s] / len(by[s]) if by[s] else 0.0 for s in SOURCES}
    if by["real"] and by["synthetic"] and abs(share["real"] - share["synthetic"]) >= PRESENCE_THRESHOLD:
        tells.append(f"a prompt is present for {share['synthetic']:.0%} of synthetic and "
                     f"{share['real']:.0%} of real cases")
    # Paired: the synthetic prompts are the real captions themselves.
    real_by_group = collections.defaultdict(set)
    for it in by["real"]:
        if _norm_text(it.prompt):
            real_by_group[_stratum_key(it.group)].add(_norm_text(it.prompt))
    all_real = set(texts["real"])
    synth_items = [it for it in by["synthetic"] if _norm_text(it.prompt)]
    if synth_items and all_real:
        hits = sum(_norm_text(it.prompt) in (
            real_by_group.get(_stratum_key(it.group), set()) if _stratum_key(it.group)
            else all_real) for it in synth_items)
        out["paired"] = round(hits / len(synth_items), 4)
    if min(counts.values()) >= 2:
        tells += _word_tells(texts)
        tells += _length_tell(texts)
        y = np.array([0] * counts["real"] + [1] * counts["synthetic"])
        out["auc_threshold"] = max(AUC_THRESHOLD, _auc_critical(
            counts["real"], counts["synthetic"], FAMILY_ALPHA / 2))
        if len(set(texts["real"]) | set(texts["synthetic"])) > 1:
            auc, auc_std, cv = _prompt_auc(texts["real"] + texts["synthetic"], y, seed)
            out.update(auc=auc, auc_std=auc_std, cv=cv)
    out["tells"] = tells
    auc_flag = out["auc"] is not None and out["auc"] >= out["auc_threshold"]
    if out["paired"] == 1.0 and not tells:
        out["verdict"] = "ok"
        out["summary"] = "every synthetic prompt is a real image's own caption"
    elif auc_flag or tells:
        out["verdict"] = "flagged"
        parts = []
        if auc_flag:
            parts.append(f"a text classifier separates them (cross-validated AUC "
                         f"{out['auc']:.2f} >= {out['auc_threshold']:.2f})")
        if tells:
            parts.append("tells: " + "; ".join(tells[:5]))
        out["summary"] = "; ".join(parts) + f". Remedy: {PROMPT_REMEDY}"
    elif min(counts.values()) < MIN_TO_CERTIFY:
        out["verdict"] = "too few"
        out["summary"] = (f"nothing found, but fewer than {MIN_TO_CERTIFY} prompts in a source "
                          "cannot show that the wording is alike")
    else:
        out["verdict"] = "ok"
        out["summary"] = "no tell found and no classifier separates the wording"
    return out


def _word_tells(texts: dict[str, list[str]]) -> list[str]:
    docs = {s: [_ngrams(t) for t in texts[s]] for s in SOURCES}
    freq = {s: collections.Counter(g for d in docs[s] for g in d) for s in SOURCES}
    vocab = set(freq["real"]) | set(freq["synthetic"])
    if not vocab:
        return []
    n = {s: len(texts[s]) for s in SOURCES}
    alpha = FAMILY_ALPHA / 2 / len(vocab)
    found = []
    for g in vocab:
        a, b = freq["synthetic"].get(g, 0), freq["real"].get(g, 0)
        if a and b:
            continue  # used by both sources: not a one-source tell
        # One-sided Fisher: the chance of so lopsided a split of the cases using it.
        table = [[a, n["synthetic"] - a], [b, n["real"] - b]]
        p = stats.fisher_exact(table, alternative="greater" if a else "less").pvalue
        if p <= alpha:
            source = "synthetic" if a else "real"
            found.append((g, source, max(a, b), n[source], p))
    # Longest first; drop a shorter n-gram inside a listed one with the same count.
    found.sort(key=lambda f: (-len(f[0].split()), -f[2], f[0]))
    kept = []
    for g, source, k, total, p in found:
        if any(source == s2 and k == k2 and f" {g} " in f" {g2} " for g2, s2, k2, _, _ in kept):
            continue
        kept.append((g, source, k, total, p))
    kept.sort(key=lambda f: (-f[2] / f[3], f[0]))
    return [f'"{g}" in {k} of {total} {source} prompts and no {other} one'
            for g, source, k, total, _ in kept
            for other in ["real" if source == "synthetic" else "synthetic"]]


def _length_tell(texts: dict[str, list[str]]) -> list[str]:
    lens = {s: np.array([len(t.split()) for t in texts[s]], float) for s in SOURCES}
    a, b = lens["synthetic"], lens["real"]
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    diff = a.mean() - b.mean()
    if pooled == 0:
        if diff == 0:
            return []
        d, p = math.copysign(99.0, diff), 0.0
    else:
        d = diff / pooled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # near-identical lengths: precision chatter
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    if abs(d) >= EFFECT_THRESHOLD and p <= FAMILY_ALPHA / 2:
        return [f"synthetic prompts are {'longer' if d > 0 else 'shorter'} (mean "
                f"{a.mean():.1f} vs {b.mean():.1f} words, d {d:+.1f})"]
    return []


def _prompt_auc(texts: list[str], y: np.ndarray, seed: int):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    def lengths(docs):
        return np.array([[math.log1p(len(d)), math.log1p(len(d.split()))] for d in docs])

    # Fitted inside each fold: the vocabulary never sees the held-out prompts.
    model = make_pipeline(
        make_union(TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True,
                                   token_pattern=r"(?u)\b\w+\b"),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True),
                   make_pipeline(FunctionTransformer(lengths), StandardScaler())),
        LogisticRegression(C=1.0, max_iter=1000))
    k = int(min(MAX_FOLDS, np.bincount(y).min()))
    aucs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rep in range(CV_REPEATS):
            folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + rep)
            proba = cross_val_predict(model, np.array(texts, dtype=object), y, cv=folds,
                                      method="predict_proba")[:, 1]
            aucs.append(roc_auc_score(y, proba))
    cv = (f"logistic regression on word 1-2-gram and character 2-4-gram TF-IDF and length, "
          f"stratified {k}-fold, mean of {CV_REPEATS} shuffles")
    return float(np.mean(aucs)), float(np.std(aucs)), cv


def format_prompts(report: dict) -> str:
    """The prompt audit as text lines."""
    if not report:
        return ""
    c = report.get("counts", {})
    head = (f"prompt text audit: {report['verdict'].upper()} (prompts: real {c.get('real', 0)}, "
            f"synthetic {c.get('synthetic', 0)}; "
            + ("shown to readers in the main cases" if report.get("shown")
               else "not shown in the main cases; training feedback shows it only when ok")
            + ")")
    lines = [head]
    if report.get("auc") is not None:
        lines.append(f"  text classifier AUC {report['auc']:.3f} (flag at >= "
                     f"{report['auc_threshold']:.2f})")
    if report.get("paired") is not None:
        lines.append(f"  synthetic prompts that are a real image's own caption: "
                     f"{report['paired']:.0%}")
    lines.extend(f"  tell: {t}" for t in report.get("tells", [])[:8])
    if report["verdict"] == "flagged":
        lines.append(f"  remedy: {report.get('remedy', PROMPT_REMEDY)}")
    elif report.get("summary"):
        lines.append(f"  {report['summary']}")
    return "\n".join(lines)


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
