"""One way to print a statistic, shared by the CLI, the admin dashboard and the HTML report.

Journals print p-values to three decimals and anything smaller as "< 0.001" (APA, NEJM,
Radiology); other statistics to three decimals. A value that is zero up to floating-point
noise (an ICC of 5e-17) prints as 0.000, never as a bare "0" that reads like a rounding
accident or as 5.27e-17 that reads like a finding.
"""
from __future__ import annotations

import math

P_FLOOR = 0.001
NA = "n/a"


def fmt_num(v, digits: int = 3) -> str:
    """A statistic: `digits` decimals (ints as they are); None or non-finite → "n/a"."""
    if v is None:
        return NA
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(v):
        return NA
    text = f"{v:.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")  # "-0.000" is noise, not a sign
    return text


def fmt_p(p) -> str:
    """A p-value as a table cell: "0.043", "< 0.001"; None → "n/a"."""
    if p is None:
        return NA
    p = float(p)
    if not math.isfinite(p):
        return NA
    return f"< {P_FLOOR:.3f}" if p < P_FLOOR else f"{min(p, 1.0):.3f}"


def p_text(p) -> str:
    """A p-value in running text: "p = 0.043", "p < 0.001", "p n/a"."""
    cell = fmt_p(p)
    if cell == NA:
        return f"p {NA}"
    return f"p {cell}" if cell.startswith("<") else f"p = {cell}"


def is_p_key(key: str) -> bool:
    """Whether a result key holds a p-value (`p`, `p_binomial`, `p_value`, ...)."""
    return key == "p" or key.startswith("p_")


def fmt_ci(ci, digits: int = 3, sep: str = " to ") -> str:
    """A two-number interval; anything else → "n/a"."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or any(x is None for x in ci):
        return NA
    return f"{fmt_num(ci[0], digits)}{sep}{fmt_num(ci[1], digits)}"


def fmt_time(iso, *, minutes: bool = False) -> str:
    """An ISO timestamp as "YYYY-MM-DD HH:MM:SS" (or to the minute); None → ""."""
    return str(iso or "")[:16 if minutes else 19].replace("T", " ")
