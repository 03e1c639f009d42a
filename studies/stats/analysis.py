"""Study analysis: the long export table in, one JSON-ready dict out.

Over 600 lines because it assembles every section of the result in one place, so the
result's shape reads top to bottom (the statistics themselves live in their own modules).

`analyze(long_df)` runs every statistic of docs/statistics.md on a `long` table
(columns of `studies.export.long_table`; `studies.export.analyze_db` reads that table from a
study database first). The result's keys are documented in the README
(## Study statistics).

Data rules
- Training rows are excluded. Tasks other than turing/alignment/quality (e.g. attention
  checks) are counted and ignored.
- The latest answer per (reader, case, task, repeat) wins, by `answered_at` (rows without
  a timestamp count as older than any timestamped row; ties keep table order).
- Repeat reads (`repeat` true) are used only for intra-reader agreement: each is paired
  with the same reader's first read of the case.
- Turing: positive class = synthetic. The binary call is `response` (real|synthetic), or
  the rating's side (1–3 real, 4–6 synthetic) when the response is missing; ROC/AUC and
  MRMC use the 6-point rating (6 = definitely synthetic).
- Statistics that need a fully crossed reader × case block (Fleiss' κ, ICC, MRMC) use
  readers who rated at least `min_reader_coverage` × the most any reader rated, and the
  cases all of those readers rated; what was left out is listed. Pairwise κ and
  Krippendorff's α use every available rating.

Convention for undefined values: the value is None and a sibling key `<key>_reason`
(a string) says why. Never NaN, never a silent 0.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from studies.stats import agreement, likert, mrmc, pairs, remarks, roc
from studies.stats.proportions import binary_summaries, binary_summary
from studies.stats.proportions import null_fields as _null
from studies.stats.proportions import readers_t_test
from studies.stats.values import as_bool, natural_key

SCHEMA_VERSION = 1
COLUMNS = ("study", "reader", "case", "task", "source", "generator", "modality", "prompt",
           "truth", "response", "rating", "duration_ms", "answered_at", "training", "repeat")
REQUIRED = ("reader", "case", "task")
TASK_NAMES = ("turing", "alignment", "quality")
LIKERT_TASKS = ("alignment", "quality")
UNSPECIFIED = "unspecified"
CONVENTION = "undefined values are null with a sibling '<key>_reason' string"

MRMC_DESIGN = (
    "Each generator is a treatment: its synthetic images are the positives, the real images "
    "(shared by every treatment) the negatives. Each reader rated each image once, so a real "
    "image's rating enters every treatment's AUC. The jackknife runs over the union of cases: "
    "leaving out a real image changes every treatment's AUC (the source of their covariance), "
    "leaving out a generator's image changes only that treatment's. Negatives are crossed with "
    "treatments, positives nested within them. The pooled test uses all synthetic images as "
    "positives; per-generator tests use that generator's images plus all real images."
)


CLASSES = ["real", "synthetic"]


def _lower(v) -> str | None:
    text = str(v).strip().lower()
    return text or None


def _label(v) -> str | None:
    text = str(v).strip()
    return text or None


def _categorical(s: pd.Series, fn, *, missing: str | None = None) -> pd.Series:
    """Categorical of fn(value), evaluated once per distinct value; empty/missing → `missing`."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    mapped = [fn(u) for u in uniques] + [None]  # last slot: the NA sentinel −1
    mapped = [missing if m is None else m for m in mapped]
    cats = list(dict.fromkeys(m for m in mapped if m is not None))
    index = {c: i for i, c in enumerate(cats)}
    lookup = np.array([index.get(m, -1) if m is not None else -1 for m in mapped], dtype=np.int64)
    return pd.Series(pd.Categorical.from_codes(lookup[codes], categories=cats), index=s.index)


def _class_codes(s: pd.Series) -> np.ndarray:
    """0 = real, 1 = synthetic, −1 otherwise."""
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    lookup = np.array([CLASSES.index(t) if (t := _lower(u)) in CLASSES else -1 for u in uniques] + [-1])
    return lookup[codes]


# --- preparation ----------------------------------------------------------------------

@dataclass
class Prepared:
    main: pd.DataFrame            # analysed rows (no training, no repeats, latest answers)
    repeats: pd.DataFrame         # repeat reads (latest per reader/case/task)
    levels: dict                  # breakdown column -> all levels seen in the study
    has_group: bool
    summary: dict = field(default_factory=dict)


def prepare(long_df: pd.DataFrame, *, study: str | None = None) -> Prepared:
    """Validate and clean a long table (see module docstring for the rules)."""
    missing = [c for c in REQUIRED if c not in long_df.columns]
    has_study_column = "study" in long_df.columns
    if missing:
        raise ValueError(f"long table lacks required column(s): {', '.join(missing)}")
    # a group column that is blank everywhere (a study without case groups) is no grouping
    has_group = "group" in long_df.columns and bool(
        long_df["group"].fillna("").astype(str).str.strip().ne("").any())
    cols = [c for c in (*COLUMNS, "group") if c in long_df.columns]
    df = long_df.loc[:, cols].copy()
    df["_row"] = np.arange(1, len(df) + 1)  # for messages: the data row of the input
    for c in (*COLUMNS, "group"):
        if c not in df.columns:
            df[c] = pd.NA
    if study is not None:
        df = df[df["study"].astype("string").eq(study).fillna(False).astype(bool)]
    n_total = len(df)
    # Categoricals built once per distinct value: normalising 400k strings row by row, and
    # comparing or selecting rows of them, would dominate the run time.
    df["rating"] = pd.to_numeric(df["rating"], errors="coerce")
    if df["rating"].isna().any():  # a Likert answer given only as `response` ("4")
        df["rating"] = df["rating"].fillna(pd.to_numeric(df["response"], errors="coerce"))
    df["reader"] = _categorical(df["reader"], str)
    df["case"] = _categorical(df["case"], str)
    df["task"] = _categorical(df["task"], _lower)
    _check_scales(df)
    df["response"] = _categorical(df["response"], _lower)
    df["training"] = as_bool(df["training"])
    df["repeat"] = as_bool(df["repeat"])
    # truth falls back to source and vice versa (the Likert tasks carry only source)
    truth = _class_codes(df["truth"])
    source = _class_codes(df["source"])
    truth, source = np.where(truth >= 0, truth, source), np.where(source >= 0, source, truth)
    df["truth"] = pd.Categorical.from_codes(truth, categories=CLASSES)
    df["source"] = pd.Categorical.from_codes(source, categories=CLASSES)
    df["modality"] = _categorical(df["modality"], _label, missing=UNSPECIFIED)
    # synthetic images without a generator name form their own 'unspecified' generator
    gen = _categorical(df["generator"], _label, missing=UNSPECIFIED)
    df["generator"] = pd.Categorical.from_codes(np.where(truth == 1, gen.cat.codes, -1),
                                                categories=gen.cat.categories)
    if has_group:
        df["group"] = _categorical(df["group"], _label, missing=UNSPECIFIED)
    else:
        df["group"] = pd.Categorical.from_codes(np.full(len(df), -1), categories=[])
    levels = {
        "modality": sorted(df["modality"].dropna().unique(), key=natural_key),
        "generator": sorted(df["generator"].dropna().unique(), key=natural_key),
        "group": sorted(df["group"].dropna().unique(), key=natural_key) if has_group else [],
    }
    n_training = int(df["training"].sum())
    df = df[~df["training"]]
    known = df["task"].isin(TASK_NAMES)
    n_other = int((~known).sum())
    df = df[known]
    # latest answer wins: stable sort by time, rows without a time first (only needed when a
    # (reader, case, task, repeat) occurs twice; the database export has already done it)
    key = ["reader", "case", "task", "repeat"]
    before = len(df)
    if df.duplicated(key).any():
        at = df["answered_at"]
        if not pd.api.types.is_numeric_dtype(at):
            at = pd.to_datetime(at, utc=True, errors="coerce", format="ISO8601")
        df = df.assign(_at=at).sort_values("_at", kind="stable", na_position="first")
        df = df.drop_duplicates(key, keep="last").drop(columns="_at")
    df = df.drop(columns=["prompt", "duration_ms", "answered_at", "_row"])
    n_superseded = before - len(df)
    repeats = df[df["repeat"]]
    main = df[~df["repeat"]]
    studies_seen = sorted(main["study"].dropna().astype(str).unique())
    summary = {
        "study": studies_seen[0] if len(studies_seen) == 1 else (studies_seen or study),
        "rows_total": n_total,
        "rows_training_excluded": n_training,
        "rows_other_tasks_ignored": n_other,
        "rows_superseded": n_superseded,
        "rows_repeat": int(len(repeats)),
        "rows_analysed": int(len(main)),
        "readers": sorted(main["reader"].unique(), key=natural_key),
        "tasks": {t: int((main["task"] == t).sum()) for t in TASK_NAMES},
        "has_group_column": has_group,
    }
    if summary["study"] is None or summary["study"] == []:
        summary["study"] = None
        summary["study_reason"] = ("no study column" if not has_study_column else
                                   "no analysed row names a study (and no study was given)")
    return Prepared(main=main, repeats=repeats, levels=levels, has_group=has_group, summary=summary)


def _check_scales(df: pd.DataFrame) -> None:
    """Refuse a rating off its task's scale (turing 1–6, Likert 1–5; whole numbers), naming
    the first such row: the studio never records one, so it is an edited or foreign file,
    and dropping it silently in some statistics but not others would be worse."""
    from studies.stats.columns import TASKS

    for task in TASK_NAMES:
        values = TASKS[task].values
        rating = df.loc[(df["task"] == task).fillna(False).astype(bool), "rating"]
        bad = rating.notna() & ~rating.isin(values)
        if bad.any():
            first = df.loc[bad[bad].index, "_row"].min()
            value = df.loc[df["_row"] == first, "rating"].iloc[0]
            raise ValueError(
                f"row {first} (line {first + 1} of a CSV with a header): {task} rating "
                f"{value:g} is not on the {task} scale {min(values)}-{max(values)} (whole "
                "numbers); correct or remove the row")


# --- matrices -------------------------------------------------------------------------

def _positions(values: pd.Series, labels) -> np.ndarray:
    """Index of each value in labels (−1 if absent), through the categorical codes when possible."""
    index = pd.Index(labels)
    if isinstance(values.dtype, pd.CategoricalDtype):
        lookup = np.append(index.get_indexer(values.cat.categories), -1)
        return lookup[values.cat.codes.to_numpy()]  # code −1 (missing) → last entry, −1
    return index.get_indexer(values)


def _matrix(rows: pd.DataFrame, value: str, readers, cases) -> np.ndarray:
    """readers × cases float matrix of `value` (NaN = not rated)."""
    r = _positions(rows["reader"], readers)
    c = _positions(rows["case"], cases)
    out = np.full((len(readers), len(cases)), np.nan)
    v = pd.to_numeric(rows[value], errors="coerce").to_numpy(dtype=float)
    keep = (r >= 0) & (c >= 0)
    out[r[keep], c[keep]] = v[keep]
    return out


def complete_block(mask: np.ndarray, min_coverage: float) -> tuple[np.ndarray, np.ndarray]:
    """Readers with coverage ≥ min_coverage × the best coverage, and the cases all of them rated."""
    coverage = mask.sum(axis=1)
    if coverage.size == 0 or coverage.max() == 0:
        return np.zeros(mask.shape[0], bool), np.zeros(mask.shape[1], bool)
    keep_r = coverage >= max(min_coverage * coverage.max(), 1)
    keep_c = mask[keep_r].all(axis=0)
    return keep_r, keep_c


def _codes(matrix: np.ndarray, offset: int, n_categories: int) -> np.ndarray:
    """Integer category codes (value − offset), −1 for missing or off-scale values."""
    with np.errstate(invalid="ignore"):
        codes = np.where(np.isnan(matrix), -1, matrix - offset)
    ok = (codes >= 0) & (codes < n_categories) & (codes == np.round(codes))
    return np.where(ok, codes, -1).astype(np.int64)


def _intra_reader(main: pd.DataFrame, repeats: pd.DataFrame, value: str, n_categories: int,
                  offset: int, weights: str | None, alpha: float, readers) -> dict:
    """Cohen's κ between each reader's first and repeated read of the same case."""
    out: dict = {"weights": weights or "none"}
    if repeats.empty:
        out["n_pairs"] = 0
        out["per_reader"] = {}
        return _null(out, ("pooled",), "no repeated reads")
    pairs = repeats[["reader", "case", value]].merge(
        main[["reader", "case", value]], on=["reader", "case"], suffixes=("_repeat", "_first"))
    first = pd.to_numeric(pairs[f"{value}_first"], errors="coerce").to_numpy(float) - offset
    second = pd.to_numeric(pairs[f"{value}_repeat"], errors="coerce").to_numpy(float) - offset
    ok = ~np.isnan(first) & ~np.isnan(second)
    ok &= (first >= 0) & (first < n_categories) & (second >= 0) & (second < n_categories)
    pairs = pairs[ok]
    first, second = first[ok].astype(int), second[ok].astype(int)
    out["n_pairs"] = int(len(pairs))
    if not len(pairs):
        out["per_reader"] = {}
        return _null(out, ("pooled",), "no repeated read has a matching first read")
    table = np.zeros((n_categories, n_categories))
    np.add.at(table, (first, second), 1)
    out["pooled"] = agreement.cohen_kappa(table, weights=weights, alpha=alpha)
    rd = _positions(pairs["reader"], readers)
    tables = np.zeros((len(readers), n_categories, n_categories))
    known = rd >= 0
    np.add.at(tables, (rd[known], first[known], second[known]), 1)
    have = tables.sum(axis=(1, 2)) > 0
    idx = np.flatnonzero(have)
    entries = agreement.kappa_entries(tables[idx], [{} for _ in idx], weights=weights, alpha=alpha)
    out["per_reader"] = {readers[i]: e for i, e in zip(idx, entries)}
    return out


# --- turing ---------------------------------------------------------------------------

def _call_value(df: pd.DataFrame) -> pd.Series:
    """Binary call: 1.0 synthetic, 0.0 real, NaN none; from `response`, else the rating's side."""
    resp = df["response"]
    from_resp = np.where(resp == "synthetic", 1.0, np.where(resp == "real", 0.0, np.nan))
    rating = df["rating"].to_numpy(dtype=float)
    from_rating = np.where(np.isnan(rating), np.nan, (rating >= 4).astype(float))
    return pd.Series(np.where(np.isnan(from_resp), from_rating, from_resp), index=df.index)


def _counts(df: pd.DataFrame) -> tuple[int, int, int, int]:
    syn_truth = df["truth_syn"].to_numpy()
    syn_call = df["v"].to_numpy() == 1
    tp = int((syn_truth & syn_call).sum())
    fn = int((syn_truth & ~syn_call).sum())
    fp = int((~syn_truth & syn_call).sum())
    tn = int((~syn_truth & ~syn_call).sum())
    return tp, fn, fp, tn


def _grouped_counts(df: pd.DataFrame, by: str) -> pd.DataFrame:
    syn_truth = df["truth_syn"].to_numpy()
    syn_call = df["v"].to_numpy() == 1
    ind = pd.DataFrame({
        by: df[by],
        "tp": syn_truth & syn_call, "fn": syn_truth & ~syn_call,
        "fp": ~syn_truth & syn_call, "tn": ~syn_truth & ~syn_call,
    })
    return ind.groupby(by, observed=True)[["tp", "fn", "fp", "tn"]].sum()


def _breakdown(df: pd.DataFrame, by: str, levels, alpha: float) -> dict:
    counts = _grouped_counts(df, by) if len(df) else pd.DataFrame(columns=["tp", "fn", "fp", "tn"])
    counts = counts.reindex(list(levels), fill_value=0)
    rows = binary_summaries(counts.to_numpy(dtype=np.int64), alpha=alpha)
    return {str(level): row for level, row in zip(levels, rows)}


def _flatten_single(single: dict) -> dict:
    rr = single["random_readers"]
    out = {"auc": single["auc"], "null_auc": single["null_auc"]}
    for key in ("se", "t", "f", "ndf", "ddf", "p", "ci"):
        if key in rr:
            out[key] = rr[key]
            if f"{key}_reason" in rr:
                out[f"{key}_reason"] = rr[f"{key}_reason"]
    if "ci_note" in rr:
        out["ci_note"] = rr["ci_note"]
    out["ndf"] = 1
    out["fixed_readers"] = single["fixed_readers"]
    vc = dict(single["variance_components"])
    if "ms_r" in rr:
        vc["ms_r"] = rr["ms_r"]
    else:
        vc["ms_r"], vc["ms_r_reason"] = None, "only one reader"
    out["variance_components"] = vc
    return out


_MRMC_KEYS = ("auc", "se", "t", "f", "ddf", "p", "ci")


def _block_note(n_readers: int, of_readers: int, n_cases: int, of_cases: int) -> str:
    """What the MRMC block is: the readers and cases fully crossed (every included reader
    rated every included case), said plainly when it is smaller than the study."""
    if n_cases == 0 or n_readers == 0:
        return (f"MRMC: no fully crossed block (no case was read by every included reader; "
                f"{of_readers} readers and {of_cases} cases in the study): not computable; "
                "an incomplete (split-plot) design needs a crossed subset of readers and cases")
    text = (f"MRMC on {n_readers} fully crossed reader{'s' if n_readers != 1 else ''} "
            f"and {n_cases} cases")
    if n_readers < of_readers or n_cases < of_cases:
        text += f" (of {of_readers} readers and {of_cases} cases in the study)"
    if n_readers < 2:
        text += ": random-readers test not computable, fixed-readers result only"
    return text


def _turing_mrmc(rows: pd.DataFrame, readers, cases: pd.DataFrame, *, min_coverage: float,
                 alpha: float) -> dict:
    out: dict = {"method": mrmc.METHOD, "design": MRMC_DESIGN, "null_auc": 0.5}
    case_ids = list(cases.index)
    scores = _matrix(rows, "rating", readers, case_ids)
    keep_r, keep_c = complete_block(~np.isnan(scores), min_coverage)
    out["readers_excluded"] = [r for r, k in zip(readers, keep_r) if not k]
    out["cases_excluded"] = int((~keep_c).sum())
    used_readers = [r for r, k in zip(readers, keep_r) if k]
    block = scores[np.ix_(keep_r, keep_c)]
    sub = cases[keep_c]
    truth = (sub["truth"] == "synthetic").to_numpy()
    out.update(n_readers=len(used_readers), n_cases=int(keep_c.sum()),
               n_real=int((~truth).sum()), n_synthetic=int(truth.sum()))
    out["block"] = _block_note(len(used_readers), len(readers), int(keep_c.sum()), len(case_ids))
    if block.size == 0 or truth.sum() < 2 or (~truth).sum() < 2:
        reason = ("no case was rated (with a rating) by every included reader" if block.size == 0 else
                  "needs at least two real and two synthetic cases rated by every included reader")
        _null(out, _MRMC_KEYS, reason)
        for key in ("fixed_readers", "by_generator", "comparison"):
            out[key], out[f"{key}_reason"] = None, reason
        return out
    pooled = mrmc.mrmc_auc(block, truth, treatments=["all"], readers=used_readers, alpha=alpha)
    out["auc_per_reader"] = pooled["auc_per_reader"]["all"]
    out.update(_flatten_single(pooled["single"]["all"]))
    if len(used_readers) < 2:  # say which block the single-reader result comes from
        for key in ("se", "t", "f", "ddf", "p", "ci"):
            if out.get(f"{key}_reason"):
                out[f"{key}_reason"] = (f"MRMC on {len(used_readers)} fully crossed reader: "
                                        "random-readers test not computable with only one reader")
    sub_gen = sub["generator"].astype(object).fillna("").astype(str).to_numpy()
    gens = sorted(set(sub_gen[truth]), key=natural_key)
    n_pos = {g: int((truth & (sub_gen == g)).sum()) for g in gens}
    usable = [g for g in gens if n_pos[g] >= 2]
    res = None
    if usable:
        # one OR run over all generators: its per-treatment results are exactly each
        # generator's own single-treatment analysis (see mrmc_auc), its comparison the test
        member = np.stack([(~truth) | (sub_gen == g) for g in usable])
        res = mrmc.mrmc_auc(np.broadcast_to(block, (len(usable), *block.shape)), truth, member,
                            treatments=usable, readers=used_readers, alpha=alpha)
    by_gen = {}
    for g in gens:
        entry = {"n_synthetic": n_pos[g]}
        if g in usable:
            entry["auc_per_reader"] = res["auc_per_reader"][g]
            entry.update(_flatten_single(res["single"][g]))
        else:
            _null(entry, _MRMC_KEYS, "needs at least two of this generator's images in the crossed block")
        by_gen[g] = entry
    out["by_generator"] = by_gen
    if len(usable) < 2:
        out["comparison"] = None
        out["comparison_reason"] = ("only one generator" if len(gens) < 2 else
                                    "fewer than two generators with at least two images in the crossed block")
    else:
        comp = res["comparison"]
        rr = comp.pop("random_readers")
        comp.update({k: v for k, v in rr.items() if k != "differences"})
        comp["differences"] = rr["differences"]
        out["comparison"] = comp
    return out


def _turing(rows: pd.DataFrame, repeats: pd.DataFrame, prep: Prepared, *, alpha: float,
            min_coverage: float) -> dict | str:
    """The turing section, or (a string) the reason it is undefined."""
    n_answers = len(rows)
    rows = rows[rows["truth"].isin(["real", "synthetic"])]
    if rows.empty:
        return (f"none of the {n_answers} turing answers has a truth or source "
                "(real or synthetic) to score it against")
    n_with_truth = len(rows)
    rows = rows.assign(v=_call_value(rows), truth_syn=(rows["truth"] == "synthetic").to_numpy())
    rows = rows[rows["v"].notna()]
    if rows.empty:
        return (f"none of the {n_with_truth} turing answers with a known truth has a call: "
                "neither a response (real or synthetic) nor a rating")
    readers = sorted(rows["reader"].unique(), key=natural_key)
    cases = rows.drop_duplicates("case").set_index("case")[["truth", "generator", "modality", "group"]]
    cases = cases.loc[sorted(cases.index, key=natural_key)]
    out: dict = {"n": int(len(rows)), "n_readers": len(readers), "n_cases": int(len(cases)),
                 "n_real_cases": int((cases["truth"] == "real").sum()),
                 "n_synthetic_cases": int((cases["truth"] == "synthetic").sum())}
    out["pooled"] = binary_summary(*_counts(rows), alpha=alpha)
    # per reader: counts, then DeLong AUC and ROC points from the ratings
    counts = _grouped_counts(rows, "reader")
    rated = rows[rows["rating"].notna()]
    # split the rated rows by reader once (a DataFrame groupby would copy 100 frames)
    r_pos = _positions(rated["reader"], readers)
    order = np.argsort(r_pos, kind="stable")
    bounds = np.searchsorted(r_pos[order], np.arange(len(readers) + 1))
    r_truth = (rated["truth"] == "synthetic").to_numpy()[order]
    r_score = rated["rating"].to_numpy(float)[order]
    summaries = binary_summaries(counts.reindex(readers, fill_value=0).to_numpy(dtype=np.int64), alpha=alpha)
    per_reader = {}
    for i, (r, entry) in enumerate(zip(readers, summaries)):
        lo, hi = bounds[i], bounds[i + 1]
        if lo == hi:
            _null(entry, ("auc", "auc_se", "auc_ci"), "no ratings")
            entry["roc"], entry["roc_reason"] = None, "no ratings"
        else:
            truth, score = r_truth[lo:hi], r_score[lo:hi]
            entry.update(roc.delong(score[~truth], score[truth], alpha=alpha))
            entry["roc"] = roc.roc_points(truth, score)
        per_reader[r] = entry
    out["per_reader"] = per_reader
    out["accuracy_random_readers"] = readers_t_test(
        [e["accuracy"] for e in per_reader.values() if e.get("accuracy") is not None],
        alpha=alpha, measure="accuracy")
    out["by_modality"] = _breakdown(rows, "modality", prep.levels["modality"], alpha)
    gen_rows = {}
    real_rows = rows[rows["truth"] == "real"]
    syn_counts = _grouped_counts(rows[rows["truth"] == "synthetic"], "generator") if len(rows) else None
    real_counts = _counts(real_rows)
    for g in prep.levels["generator"]:
        tp, fn = ((int(syn_counts.loc[g, "tp"]), int(syn_counts.loc[g, "fn"]))
                  if syn_counts is not None and g in syn_counts.index else (0, 0))
        gen_rows[str(g)] = binary_summary(tp, fn, real_counts[2], real_counts[3], alpha=alpha)
    out["by_generator"] = gen_rows
    out["by_generator_note"] = "each generator's synthetic images plus all real images"
    if prep.has_group:
        out["by_group"] = _breakdown(rows, "group", prep.levels["group"], alpha)
    else:
        out["by_group"], out["by_group_reason"] = None, "no case groups (no non-blank 'group' column)"
    # pooled ROC over every rating (descriptive; MRMC gives the inference)
    if len(rated):
        truth = (rated["truth"] == "synthetic").to_numpy()
        score = rated["rating"].to_numpy(float)
        pooled_roc = roc.roc_points(truth, score)
        if truth.any() and (~truth).any():
            pooled_roc["auc"] = roc.auc(score[~truth], score[truth])
        else:
            _null(pooled_roc, ("auc",), "needs real and synthetic cases")
        out["roc_pooled"] = pooled_roc
    else:
        out["roc_pooled"], out["roc_pooled_reason"] = None, "no ratings"
    # agreement on the binary call
    case_ids = list(cases.index)
    calls = _matrix(rows, "v", readers, case_ids)
    codes = _codes(calls, 0, 2)
    keep_r, keep_c = complete_block(codes >= 0, min_coverage)
    fk = agreement.fleiss_kappa(agreement.category_counts(codes[np.ix_(keep_r, keep_c)].T, 2))
    fk["readers_excluded"] = [r for r, k in zip(readers, keep_r) if not k]
    if len(readers) < 2:
        _null(fk, ("kappa", "z", "p"), "only one reader")
    out["fleiss_kappa"] = fk
    out["krippendorff_alpha"] = agreement.krippendorff_alpha(calls, "nominal")
    out["cohen_kappa"] = agreement.pairwise_cohen_kappa(codes, 2, readers, alpha=alpha)
    rep = repeats[repeats["truth"].isin(["real", "synthetic"])]
    rep = rep.assign(v=_call_value(rep))
    out["intra_reader_kappa"] = _intra_reader(rows, rep, "v", 2, 0, None, alpha, readers)
    out["mrmc"] = _turing_mrmc(rows, readers, cases, min_coverage=min_coverage, alpha=alpha)
    return out


# --- Likert ---------------------------------------------------------------------------

def _likert(rows: pd.DataFrame, repeats: pd.DataFrame, prep: Prepared, *, alpha: float,
            min_coverage: float) -> dict | str:
    """The alignment/quality section, or (a string) the reason it is undefined."""
    n_answers, task = len(rows), str(rows["task"].iloc[0])
    rows = rows[rows["rating"].notna()]
    if rows.empty:
        return f"none of the {n_answers} {task} answers has a rating"
    readers = sorted(rows["reader"].unique(), key=natural_key)
    case_ids = sorted(rows["case"].unique(), key=natural_key)
    out: dict = {"n": int(len(rows)), "n_readers": len(readers), "n_cases": len(case_ids)}
    out["summary"] = likert.summarise(rows["rating"])
    out["by_source"] = likert.summarise_by(rows, "source", ["real", "synthetic"])
    out["by_modality"] = likert.summarise_by(rows, "modality", prep.levels["modality"])
    out["by_generator"] = likert.summarise_by(rows[rows["source"] == "synthetic"], "generator",
                                              prep.levels["generator"])
    if prep.has_group:
        out["by_group"] = likert.summarise_by(rows, "group", prep.levels["group"])
    else:
        out["by_group"], out["by_group_reason"] = None, "no case groups (no non-blank 'group' column)"
    out["per_reader"] = likert.summarise_by(rows, "reader", readers)
    syn = rows["source"] == "synthetic"
    real = rows["source"] == "real"
    out["mann_whitney"] = likert.mann_whitney(rows.loc[syn, "rating"], rows.loc[real, "rating"])
    mw_mod = {}
    for m in prep.levels["modality"]:
        at = rows["modality"] == m
        mw_mod[str(m)] = likert.mann_whitney(rows.loc[syn & at, "rating"], rows.loc[real & at, "rating"])
    out["mann_whitney_by_modality"] = mw_mod
    ratings = _matrix(rows, "rating", readers, case_ids)
    keep_r, keep_c = complete_block(~np.isnan(ratings), min_coverage)
    block = ratings[np.ix_(keep_r, keep_c)]
    icc = agreement.icc(block.T, alpha=alpha)
    if len(readers) < 2:
        icc = {f: _null({"n_targets": int(keep_c.sum()), "n_judges": len(readers)},
                        ("icc", "f", "df1", "df2", "p", "ci"), "only one reader") for f in agreement.ICC_FORMS}
    out["icc"] = icc
    out["icc_readers_excluded"] = [r for r, k in zip(readers, keep_r) if not k]
    out["krippendorff_alpha_ordinal"] = agreement.krippendorff_alpha(ratings, "ordinal")
    out["krippendorff_alpha_interval"] = agreement.krippendorff_alpha(ratings, "interval")
    codes = _codes(ratings, 1, len(likert.SCALE))
    out["cohen_kappa_weighted"] = agreement.pairwise_cohen_kappa(codes, len(likert.SCALE), readers,
                                                                 weights="linear", alpha=alpha)
    out["intra_reader_kappa"] = _intra_reader(rows, repeats, "rating", len(likert.SCALE), 1, "linear",
                                              alpha, readers)
    return out


# --- entry points ---------------------------------------------------------------------

def _finalise(obj):
    """JSON-ready copy: numpy → Python, non-finite floats → null + reason."""
    t = type(obj)
    if t is float:
        return obj if math.isfinite(obj) else None
    if t is str or t is int or t is bool or obj is None:
        return obj
    if t is dict:
        out = {}
        for k, v in obj.items():
            v2 = _finalise(v)
            out[str(k)] = v2
            if v2 is None and v is not None and f"{k}_reason" not in obj:
                out[f"{k}_reason"] = "not finite"
        return out
    if t is list or t is tuple:
        return [_finalise(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_finalise(v) for v in obj.tolist()]
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return _finalise(float(obj))
    if obj is pd.NA:
        return None
    return obj


def analyze(long_df: pd.DataFrame, *, study: str | None = None, alpha: float = 0.05,
            min_reader_coverage: float = 0.5) -> dict:
    """Analyse a study's long table; returns the JSON-ready result documented in the README.

    study: restrict to rows of this study (default: every row). alpha: 1 − CI level and
    test level. min_reader_coverage: see "fully crossed block" in the module docstring.
    """
    prep = prepare(long_df, study=study)
    result: dict = {
        "schema_version": SCHEMA_VERSION,
        "conventions": {"undefined": CONVENTION, "alpha": alpha, "ci_level": 1 - alpha,
                        "positive_class": "synthetic",
                        "min_reader_coverage": min_reader_coverage},
        "input": prep.summary,
    }
    main, repeats = prep.main, prep.repeats
    for task in TASK_NAMES:
        rows = main[main["task"] == task]
        rep = repeats[repeats["task"] == task]
        if not len(rows):
            section = f"no responses to the {task} task yet"
        else:  # a string: the section's own reason why it is undefined
            section = (_turing if task == "turing" else _likert)(
                rows, rep, prep, alpha=alpha, min_coverage=min_reader_coverage)
        if isinstance(section, str):
            result[task] = None
            result[f"{task}_reason"] = section
        else:
            result[task] = section
    own = (long_df if study is None or "study" not in long_df.columns
           else long_df[long_df["study"].astype(str) == study])
    pair = pairs.analyze_pairs(own, alpha=alpha)
    result["pair"], result["pair_reason"] = (None, pair) if isinstance(pair, str) else (pair, None)
    if result["pair_reason"] is None:
        del result["pair_reason"]
    result.update(remarks.summarise(own))  # non-diagnostic flags and comments per case
    if isinstance(result.get("reader_flags"), dict):
        result["reader_flags"].update(fast_answers(own))
    try:  # fast path (C speed): succeeds unless some value is NaN/inf or not JSON-serialisable
        return json.loads(json.dumps(result, allow_nan=False, default=_json_default))
    except (TypeError, ValueError):
        return _finalise(result)


# Below this, an answer cannot have come from looking at the image: a two-choice reaction
# to a visual stimulus alone takes ~300-450 ms, and radiologists' fastest image-based calls
# ("gist", above chance) need a 250-500 ms view before the response (docs/statistics.md).
FAST_ANSWER_MS = 500


def fast_answers(long_df: pd.DataFrame) -> dict:
    """Reads answered faster than `FAST_ANSWER_MS`, per reader: the time of a read's first
    question (from the image appearing to the answer; later questions on the same image
    follow a look already taken). Training reads and attention checks are left out.
    {fast_answer_ms, n_reads_timed, n_reads_fast, fast_reads_by_reader {reader: {n_fast,
    n_reads}} for readers with any}; the counts are null with a reason for a table
    without durations."""
    out: dict = {"fast_answer_ms": FAST_ANSWER_MS}
    if "duration_ms" not in long_df.columns or "reader" not in long_df.columns:
        out.update(n_reads_timed=None, n_reads_fast=None, fast_reads_by_reader=None,
                   n_reads_fast_reason="the table has no duration_ms column")
        return out
    df = long_df
    if "training" in df.columns:
        df = df[~as_bool(df["training"])]
    if "task" in df.columns:
        df = df[df["task"].astype("string").str.strip().str.lower().ne("attention").fillna(True)]
    df = df.assign(_ms=pd.to_numeric(df["duration_ms"], errors="coerce"))
    if "answered_at" in df.columns:  # a read's first question is its earliest answer
        at = pd.to_datetime(df["answered_at"], utc=True, errors="coerce", format="ISO8601")
        df = df.assign(_at=at).sort_values("_at", kind="stable", na_position="last")
    read = [c for c in ("reader", "case", "repeat") if c in df.columns]
    first = df.drop_duplicates(read, keep="first")
    first = first[first["_ms"].notna()]
    fast = first["_ms"] < FAST_ANSWER_MS
    readers = first["reader"].astype(str)
    by_reader = pd.DataFrame({"reader": readers, "fast": fast}).groupby("reader")["fast"].agg(
        ["sum", "size"])
    out.update(n_reads_timed=int(len(first)), n_reads_fast=int(fast.sum()),
               fast_reads_by_reader={
                   r: {"n_fast": int(by_reader.at[r, "sum"]), "n_reads": int(by_reader.at[r, "size"])}
                   for r in sorted(by_reader.index, key=natural_key) if by_reader.at[r, "sum"] > 0})
    return out


def _json_default(obj):
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)
