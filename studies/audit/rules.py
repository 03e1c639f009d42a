"""The audit's shared rule: thresholds, the family-wise alpha, the input item, strata and the
chance level of a cross-validated AUC (used by the stimulus and the prompt audits alike)."""
from __future__ import annotations

import dataclasses
import math

from scipy import stats

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


def loose_key(value: str) -> str:
    """A label or text as compared: whitespace collapsed, case folded ("CT " and "ct" are one
    modality; two prompts that differ only so are one text)."""
    return " ".join(str(value or "").split()).casefold()


CV_AUC_INFLATION = 1.25
"""The cross-validated AUC of a chance split varies more than a fixed score's: measured 1.05-
1.25x the Mann-Whitney standard deviation (300 chance splits of 10-40 per source,
benchmarks/bench_audit.py's population); the null's spread is taken as this many times it."""


def auc_critical(n_real: int, n_synth: int, alpha: float) -> float:
    """The AUC a chance split of this size exceeds with probability `alpha` (normal
    approximation to the Mann-Whitney statistic under the null, widened by
    `CV_AUC_INFLATION` for cross-validation)."""
    sd = CV_AUC_INFLATION * math.sqrt((n_real + n_synth + 1) / (12.0 * n_real * n_synth))
    return 0.5 + float(stats.norm.isf(alpha)) * sd
