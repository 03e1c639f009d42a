"""Leak audit: what could still tell real from synthetic stimuli, apart from the content.

    rules      the shared rule: thresholds, the family-wise alpha, the input item (`AuditItem`),
               strata, the chance level of a cross-validated AUC
    features   low-level features of one stimulus as a browser receives it
    leaks      the verdict over the originals and the stimuli, per stratum (`audit_leaks`)
    prompts    whether the prompts readers may see tell the sources apart
    scaling    how much each original is enlarged or reduced (a warning, not a leak)

The names below are the public interface; the study flow, `studio` and the benchmarks import
them from here.
"""
from studies.audit.features import FEATURE_NAMES, GRID_FEATURE_NAMES, blockiness, stimulus_features
from studies.audit.leaks import AuditReport, audit_leaks, is_flagged
from studies.audit.prompts import audit_prompts, format_prompts
from studies.audit.rules import (
    AUC_THRESHOLD,
    CV_REPEATS,
    EFFECT_THRESHOLD,
    FAMILY_ALPHA,
    GRID,
    MIN_STRATUM,
    MIN_TO_CERTIFY,
    PROPERTY_THRESHOLD,
    AuditItem,
    loose_key,
)
from studies.audit.scaling import format_scaling, scaling_check

__all__ = [
    "AUC_THRESHOLD", "CV_REPEATS", "EFFECT_THRESHOLD", "FAMILY_ALPHA", "FEATURE_NAMES",
    "GRID", "GRID_FEATURE_NAMES", "MIN_STRATUM", "MIN_TO_CERTIFY", "PROPERTY_THRESHOLD",
    "AuditItem", "AuditReport", "audit_leaks", "audit_prompts", "blockiness",
    "format_prompts", "format_scaling", "is_flagged", "loose_key", "scaling_check", "stimulus_features",
]
