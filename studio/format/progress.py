"""Shared wording of reader progress for the admin table and `medisyn study progress`, so
the two never disagree about what a column means."""
from __future__ import annotations

ATTENTION_HEADER = "attention passed"


def attention_cell(passed: int, answered: int, total: int) -> str:
    """`passed/answered of total`: checks passed among those answered so far, and how many
    the reader's session holds. "none in this study" when the study has no checks."""
    if not total:
        return "none in this study"
    return f"{passed}/{answered} of {total}"
