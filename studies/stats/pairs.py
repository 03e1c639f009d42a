"""Analysis of the paired two-alternative forced-choice task (`pair`: which of two images,
one real and one synthetic, is synthetic?).

Input: the long table's `pair` rows (`studies.export.long_table`: `case` left image,
`pair_case` right image, `truth` the side of the synthetic image, `response` the side the
reader called synthetic). Training and repeat reads are left out; the latest answer wins.

- Proportion correct per reader and pooled, each with the exact Clopper–Pearson interval
  and the exact two-sided binomial test against 0.5. In a 2AFC trial the proportion
  correct estimates the area under the ROC curve of the reader's internal real-vs-synthetic
  evidence (Green & Swets 1966): 0.5 = cannot tell, 1 = always right. The pooled test
  treats every read as independent (it generalises to new pairs, not to new readers).
- Random readers: a one-sample t-test of the readers' proportions against 0.5 (df =
  readers − 1), which does generalise to new readers; its interval is clipped to [0, 1]
  (with `ci_note`) when few readers push it past a bound.
- Agreement between readers on whether each pair was called right: Fleiss' κ on the pairs
  every reader read, and Cohen's κ for every reader pair on the pairs both read. The call
  is scored as right/wrong, not left/right, because the sides are randomised per reader.

Undefined values are None with a sibling `<key>_reason` (the analysis convention).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from studies.stats import agreement
from studies.stats.proportions import binomial_p, clopper_pearson_ci, readers_t_test
from studies.stats.proportions import null_fields as _null

TASK = "pair"
INTERPRETATION = ("In a two-alternative forced choice the proportion correct estimates the "
                  "AUC of the reader's real-vs-synthetic judgement (0.5: cannot tell).")


def _truthy(s: pd.Series) -> pd.Series:
    return s.astype(str).str.strip().str.lower().isin(("1", "true", "yes"))


def pair_reads(long_df: pd.DataFrame) -> pd.DataFrame:
    """The analysed 2AFC reads: reader, unit (the unordered pair), generator, modality,
    correct (bool). Training and repeat reads are dropped; the latest answer wins."""
    if "task" not in long_df.columns or "pair_case" not in long_df.columns:
        return pd.DataFrame(columns=["reader", "unit", "generator", "modality", "correct"])
    df = long_df[long_df["task"].astype(str).str.lower() == TASK].copy()
    for col in ("training", "repeat"):
        if col in df.columns:
            df = df[~_truthy(df[col])]
    a, b = df["case"].astype(str), df["pair_case"].astype(str)
    df["unit"] = np.where(a < b, a + " | " + b, b + " | " + a)
    if "answered_at" in df.columns:
        df = df.sort_values("answered_at", kind="stable")
    df = df.drop_duplicates(["reader", "unit"], keep="last")
    df["correct"] = (df["response"].astype(str).str.strip().str.lower()
                     == df["truth"].astype(str).str.strip().str.lower())
    df["reader"] = df["reader"].astype(str)
    for col in ("generator", "modality"):
        df[col] = df[col].fillna("").astype(str) if col in df.columns else ""
    return df[["reader", "unit", "generator", "modality", "correct"]].reset_index(drop=True)


def proportion_correct(correct: int, n: int, *, alpha: float = 0.05) -> dict:
    """{n, correct, proportion, ci (Clopper–Pearson), p_binomial (vs 0.5)}."""
    out: dict = {"n": int(n), "correct": int(correct)}
    if n == 0:
        return _null(out, ("proportion", "ci", "p_binomial"), "no reads")
    lo, hi = clopper_pearson_ci(correct, n, alpha)
    out.update(proportion=correct / n, ci=[float(lo), float(hi)],
               p_binomial=binomial_p(correct, n, 0.5))
    return out


def random_readers_test(proportions, *, alpha: float = 0.05) -> dict:
    """One-sample t-test of per-reader proportions correct against 0.5."""
    return readers_t_test(proportions, alpha=alpha, measure="proportion correct")


def analyze_pairs(long_df: pd.DataFrame, *, alpha: float = 0.05) -> dict | str:
    """The 2AFC section of the analysis result, or a string saying why there is none."""
    reads = pair_reads(long_df)
    if reads.empty:
        return "no responses to the pair task yet"
    readers = sorted(reads["reader"].unique())
    units = sorted(reads["unit"].unique())
    out: dict = {"interpretation": INTERPRETATION, "n": int(len(reads)),
                 "n_readers": len(readers), "n_pairs": len(units)}
    out["pooled"] = proportion_correct(int(reads["correct"].sum()), len(reads), alpha=alpha)
    per = {r: proportion_correct(int(g["correct"].sum()), len(g), alpha=alpha)
           for r, g in reads.groupby("reader", sort=True)}
    out["per_reader"] = per
    out["random_readers"] = random_readers_test(
        [p["proportion"] for p in per.values() if p["proportion"] is not None], alpha=alpha)
    for col in ("generator", "modality"):
        out[f"by_{col}"] = {
            (k or "unspecified"): proportion_correct(int(g["correct"].sum()), len(g), alpha=alpha)
            for k, g in reads.groupby(col, sort=True)}
    # readers x pairs matrix of codes: 1 right, 0 wrong, -1 not read
    matrix = (reads.assign(code=reads["correct"].astype(int))
              .pivot(index="unit", columns="reader", values="code")
              .reindex(index=units, columns=readers))
    codes = matrix.fillna(-1).to_numpy(dtype=int)
    full = codes[(codes >= 0).all(axis=1)]
    fleiss = agreement.fleiss_kappa(agreement.category_counts(full, 2))
    fleiss["n_pairs"] = int(full.shape[0])
    out["fleiss_kappa"] = fleiss
    out["cohen_kappa"] = agreement.pairwise_cohen_kappa(codes.T, 2, readers, alpha=alpha)
    return out
