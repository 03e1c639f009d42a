"""The leak audit's verdict: what could still tell real from synthetic stimuli, apart from the content.

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

import numpy as np
from scipy import stats

from studies.audit.features import FEATURE_NAMES, GRID_FEATURE_NAMES, feature_label, stimulus_features
from studies.audit.prompts import audit_prompts, format_prompts
from studies.audit.rules import (
    AUC_THRESHOLD, CV_REPEATS, EFFECT_THRESHOLD, FAMILY_ALPHA, MAX_FOLDS, MIN_STRATUM,
    MIN_TO_CERTIFY, N_PERMUTATIONS, PROPERTY_THRESHOLD, SMALL_CLASS, SOURCES, VERDICTS,
    ERROR_RATES, AuditItem, auc_critical, loose_key,
)

_ATTRIBUTES = {"format": "formats", "size": "sizes", "mode": "colour modes",
               "bit_depth": "bit depths"}

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
                             f"{feature_label(k)} {v:+.2f}" for k, v in top))
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
            + ", ".join(f"{feature_label(k)} {v:+.1f}" for k, v in top)
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


def _strata(items) -> list[tuple[str, str | None, str | None, bool, np.ndarray]]:
    """(name, modality, generator, tested alone, item indices); the pooled one first."""
    all_idx = np.arange(len(items))
    out = [("all images", None, None, True, all_idx)]
    mods = sorted({loose_key(it.modality) for it in items})
    for m in mods:
        real = [i for i, it in enumerate(items) if it.source == "real"
                and loose_key(it.modality) == m]
        synth = [i for i, it in enumerate(items) if it.source == "synthetic"
                 and loose_key(it.modality) == m]
        label = f"modality {m or '(blank)'}"
        if len(mods) > 1:
            out.append((label, m, None, _big_enough(real, synth),
                        np.array(sorted(real + synth), int)))
        gens = sorted({loose_key(items[i].generator) for i in synth})
        if len(gens) > 1:
            for g in gens:
                sg = [i for i in synth if loose_key(items[i].generator) == g]
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
        res["auc_threshold"] = max(threshold, auc_critical(counts["real"], counts["synthetic"],
                                                             alpha_s / 2))
        res["top_effects"] = dict(sorted(effects.items(), key=lambda kv: -abs(kv[1]))[:5])
    res["_effects"] = effects
    res["reasons"] = _reasons(auc if auc is not None and auc >= res["auc_threshold"] else None,
                              res["auc_threshold"], effects, pvals, alpha_s / 2, distances,
                              dist, sub, counts)
    res["flagged"] = bool(res["reasons"])
    return res


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
    """Whether a stored report (dict) flags its study (a report without `flagged` says so
    by its `leak`). None when there is no report."""
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
            reasons.append(f"{feature_label(name)} is {way} in synthetic images "
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
