"""The one exception evaluation raises for bad input (shown as one `Error:` line by the CLI)."""
from __future__ import annotations


class EvaluationError(ValueError):
    """Bad input to an evaluation: empty folder, unreadable image, wrong model folder ..."""


class EvaluationCancelled(RuntimeError):
    """A caller's cancel event was set; partial results are discarded."""
