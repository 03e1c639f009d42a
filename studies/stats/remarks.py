"""Readers' remarks on cases: the "non-diagnostic image" flags and free-text comments sent
with the answers (`session.submit`), summarised for the report and the dashboard.

Input: a long table (`studies.export.long_table`, columns `comment`, `non_diagnostic`).
Training rows are left out, as in the statistics; every other read counts (main, repeat,
attention check: each showed the image). Per read the export already carries the remarks
sent with its latest answer; when a table holds several rows of one (reader, case) — e.g.
two tasks, or a repeat read — the case counts as flagged by that reader if any of them is.
For a paired (2AFC) read the flag concerns the pair: both of its cases are listed.
Comments are only counted here; their text stays in the export (plain text, never
rendered).
"""
from __future__ import annotations

import pandas as pd

from studies.stats.proportions import null_fields
from studies.stats.values import as_bool, natural_key

NO_COLUMNS = "the table has no non_diagnostic column (exported before comments and flags existed)"


def summarise(long_df: pd.DataFrame) -> dict:
    """{"reader_flags": {...}} or {"reader_flags": None, "reader_flags_reason": ...}.

    reader_flags: n_cases (cases read outside training), n_cases_non_diagnostic (flagged by
    at least one reader), non_diagnostic_cases ({case: readers who flagged it}, in case
    order), n_reads_non_diagnostic, n_comments (reads with a comment), n_cases_commented."""
    if "non_diagnostic" not in long_df.columns or "case" not in long_df.columns:
        return null_fields({}, ["reader_flags"], NO_COLUMNS)
    df = long_df
    if "training" in df.columns:
        df = df[~as_bool(df["training"])]
    flag = as_bool(df["non_diagnostic"])
    comment = (df["comment"].astype("string").fillna("").str.strip() if "comment" in df.columns
               else pd.Series("", index=df.index))
    reader = df["reader"].astype(str) if "reader" in df.columns else pd.Series("", index=df.index)
    case = df["case"].astype(str)
    units = pd.DataFrame({"reader": reader, "case": case, "flag": flag,
                          "commented": comment.ne("")})
    if "pair_case" in df.columns:  # a pair read's remark concerns both of its images
        pair = df["pair_case"].astype("string").fillna("").astype(str)
        right = units[pair.ne("")].assign(case=pair[pair.ne("")])
        units = pd.concat([units, right], ignore_index=True)
    per_read = units.groupby(["reader", "case"], sort=False).agg(
        flag=("flag", "any"), commented=("commented", "any")).reset_index()
    flagged = per_read[per_read["flag"]]
    counts = flagged.groupby("case").size()
    ordered = sorted(counts.index, key=natural_key)
    return {"reader_flags": {
        "n_cases": int(per_read["case"].nunique()),
        "n_cases_non_diagnostic": int(len(counts)),
        "non_diagnostic_cases": {c: int(counts[c]) for c in ordered},
        "n_reads_non_diagnostic": int(len(flagged)),
        "n_comments": int(per_read["commented"].sum()),
        "n_cases_commented": int(per_read.loc[per_read["commented"], "case"].nunique()),
    }}
