"""Shared helpers for the statistics tests: the oracle folder and JSON invariants."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

# Published reference data carried by the repository (tests/data/oracles/README.md cites
# each file's source), so a clone anywhere passes its own tests.
ORACLES = Path(__file__).resolve().parent / "data" / "oracles"


def oracle_csv(name: str) -> pd.DataFrame:
    path = ORACLES / name
    assert path.exists(), f"oracle file missing: {path} (see tests/data/oracles/README.md)"
    return pd.read_csv(path)


def null_without_reason(obj, path="$") -> list[str]:
    """Paths of null values that have no sibling '<key>_reason' string (the package convention)."""
    bad = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if v is None and not isinstance(obj.get(f"{k}_reason"), str):
                bad.append(f"{path}.{k}")
            bad += null_without_reason(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if v is None:
                bad.append(f"{path}[{i}]")
            bad += null_without_reason(v, f"{path}[{i}]")
    return bad


def assert_json_clean(result: dict) -> None:
    json.dumps(result, allow_nan=False)  # raises on NaN/inf
    assert null_without_reason(result) == []
