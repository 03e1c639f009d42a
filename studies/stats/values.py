"""Reading the long table's values the same way everywhere: yes/no columns and the natural
order of labels (so "case 2" sorts before "case 10")."""
from __future__ import annotations

import re

import pandas as pd

TRUE_TEXTS = ("true", "1", "yes", "t", "y", "1.0")


def natural_key(s: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(s))]


def as_bool(s: pd.Series) -> pd.Series:
    """A yes/no column as booleans: numbers are true when non-zero, text when one of
    `TRUE_TEXTS` (any case, surrounding space ignored); missing is false."""
    if s.dtype == bool:
        return s
    if pd.api.types.is_numeric_dtype(s):
        return s.fillna(0).astype(float) != 0
    text = s.astype("string").str.strip().str.lower()
    return text.isin(TRUE_TEXTS).fillna(False).astype(bool)
