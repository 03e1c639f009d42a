"""The Analysis tab: the statistics of `studies.stats.analysis` as tables and figures, and
the downloads (long and iMRMC exports, the self-contained HTML report)."""
from __future__ import annotations

import dataclasses
import pathlib

import pandas as pd

from studies.errors import StudyError
from studies.stats.numbers import fmt_num, fmt_p, is_p_key, p_text
from studio.format.plain_text import plain_markdown


_BINARY_COLS = ("n", "accuracy", "sensitivity", "specificity", "fool_rate", "ci_wilson",
                "p_binomial", "auc", "auc_ci")


def _reasoned(d: dict, key: str):
    """The value, or "n/a (reason)" from the analysis' `<key>_reason` (never a bare dash)."""
    v = d.get(key)
    if v is None:
        return f"n/a ({d.get(f'{key}_reason') or 'not computed'})"
    text = fmt_p(v) if is_p_key(key) and isinstance(v, (int, float)) else _fmt(v)
    if d.get(f"{key}_note"):
        return f"{text} ({d[f'{key}_note']})"
    return text


def _fmt(v):
    """The studies.stats.numbers format (as in the CLI and the HTML report), as table text."""
    if isinstance(v, float):
        return fmt_num(v)
    if isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) or x is None for x in v):
        return "[" + ", ".join("—" if x is None else fmt_num(float(x)) for x in v) + "]"
    if v is None:
        return "—"
    return v


_PAIR_COLS = ("n", "correct", "proportion", "ci", "p_binomial")


def pair_tables(result: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pooled, per-reader) tables of the paired 2AFC section: proportion correct with its
    Clopper–Pearson CI and binomial p; empty frames when the study has no pair reads."""
    p = result.get("pair") or {}
    if not p:
        return pd.DataFrame(), pd.DataFrame()
    pooled = p["pooled"]
    rr = p.get("random_readers") or {}
    prow = {"readers": f"all {p['n_readers']} (pooled, {p['n_pairs']} pairs)",
            **{c: _reasoned(pooled, c) for c in _PAIR_COLS},
            "random-readers mean": _reasoned(rr, "mean"), "random-readers p": _reasoned(rr, "p")}
    rrows = [{"reader": name, **{c: _reasoned(v, c) for c in _PAIR_COLS}}
             for name, v in p["per_reader"].items()]
    names = {"proportion": "proportion correct", "ci": "95% CI (Clopper–Pearson)",
             "p_binomial": "p (binomial vs 0.5)"}
    return (pd.DataFrame([prow]).rename(columns=names),
            pd.DataFrame(rrows, columns=["reader", *_PAIR_COLS]).rename(columns=names))


def _reason_frame(text: str) -> pd.DataFrame:
    """A one-cell table that says why there is nothing to show (an empty frame renders as
    columns headed 1 2 3)."""
    return pd.DataFrame({"result": [text]})


def turing_tables(result: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pooled, per-reader) turing tables from `studies.stats.analysis.analyze`'s result."""
    t = result.get("turing") or {}
    pooled = t.get("pooled") or {}
    prow = {"readers": "all (pooled)", **{c: _reasoned(pooled, c) for c in _BINARY_COLS
                                          if c in pooled or f"{c}_reason" in pooled}}
    per = t.get("per_reader") or {}
    rrows = [{"reader": name, **{c: _reasoned(v, c) for c in _BINARY_COLS
                                 if c in v or f"{c}_reason" in v}}
             for name, v in per.items()]
    names = {"fool_rate": "fool rate", "ci_wilson": "95% CI (Wilson)",
             "p_binomial": "p (binomial vs 0.5)", "auc_ci": "AUC 95% CI (DeLong)"}
    return ((pd.DataFrame([prow]) if pooled else pd.DataFrame()).rename(columns=names),
            pd.DataFrame(rrows).rename(columns=names))


def _scalar(v):
    if isinstance(v, dict):
        for key in ("value", "kappa", "alpha", "icc", "estimate", "auc"):
            if key in v:
                return v[key]
        return None
    return v


def _value_note(stat, reason) -> dict:
    """value + note of an agreement statistic (a dict with its own `<key>_reason`s)."""
    if isinstance(stat, dict):
        for key in ("value", "kappa", "alpha", "icc", "estimate", "auc", "mean_kappa"):
            if key in stat or f"{key}_reason" in stat:
                return {"value": _reasoned(stat, key), "note": ""}
    if stat is None:
        return {"value": f"n/a ({reason or 'not computed'})", "note": ""}
    return {"value": _fmt(stat), "note": reason or ""}


def _p_note(d: dict, key: str) -> str:
    """"p = 0.043" / "p < 0.001", or "p n/a (reason)"."""
    v = d.get(key)
    return p_text(v) if v is not None else f"p {_reasoned(d, key)}"


def agreement_table(result: dict) -> pd.DataFrame:
    rows = []
    t = result.get("turing") or {}
    for key, label in (("fleiss_kappa", "turing: Fleiss' κ"),
                       ("krippendorff_alpha", "turing: Krippendorff's α")):
        if key in t:
            rows.append({"statistic": label, **_value_note(t.get(key), t.get(f"{key}_reason"))})
    mr = t.get("mrmc") or {}
    if isinstance(mr, dict) and mr:
        if mr.get("p") is not None:
            note = f"{p_text(mr.get('p'))}, CI {_reasoned(mr, 'ci')}"
        else:
            note = f"random-readers test: n/a ({mr.get('p_reason') or 'not computed'})"
            fr = mr.get("fixed_readers")
            if isinstance(fr, dict) and fr.get("p") is not None:
                note += f"; fixed readers: {p_text(fr['p'])}, CI {_reasoned(fr, 'ci')}"
        if mr.get("block"):
            note = f"{mr['block']}. {note}"
        rows.append({"statistic": "turing: MRMC AUC (Obuchowski–Rockette)",
                     "value": _reasoned(mr, "auc"), "note": note})
    pair = result.get("pair") or {}
    if pair:
        pooled = pair["pooled"]
        rows.append({"statistic": "pair (2AFC): proportion correct, pooled (estimates the AUC)",
                     "value": _reasoned(pooled, "proportion"),
                     "note": f"CI {_reasoned(pooled, 'ci')} (Clopper–Pearson), "
                             f"{_p_note(pooled, 'p_binomial')}"})
        rr = pair["random_readers"]
        rows.append({"statistic": "pair (2AFC): mean reader proportion (random readers)",
                     "value": _reasoned(rr, "mean"),
                     "note": f"{_p_note(rr, 'p')}, CI {_reasoned(rr, 'ci')}"})
        rows.append({"statistic": "pair (2AFC): Fleiss' κ on right/wrong",
                     **_value_note(pair["fleiss_kappa"], None)})
    for task in ("alignment", "quality"):
        s = result.get(task) or {}
        for key in ("krippendorff_alpha_ordinal", "krippendorff_alpha_interval"):
            if key in s:
                rows.append({"statistic": f"{task}: {key.replace('_', ' ')}",
                             **_value_note(s.get(key), s.get(f"{key}_reason"))})
        icc = (s.get("icc") or {}) if isinstance(s.get("icc"), dict) else {}
        for form in ("ICC2", "ICC2k"):
            if isinstance(icc.get(form), dict):
                rows.append({"statistic": f"{task}: {form}",
                             "value": _reasoned(icc[form], "icc"),
                             "note": f"CI {_reasoned(icc[form], 'ci')}"})
    return pd.DataFrame(rows, columns=["statistic", "value", "note"])


def remarks_markdown(flags: dict) -> str:
    """The readers' non-diagnostic flags and comments (studies.stats.remarks) in one line; case
    ids are the study's own text, escaped (plain_markdown)."""
    cases = flags.get("non_diagnostic_cases") or {}
    listed = ", ".join(f"{plain_markdown(c)} ({n})" for c, n in cases.items())
    return (f"**{flags['n_cases_non_diagnostic']} of {flags['n_cases']} images flagged "
            f"non-diagnostic by ≥1 reader**" + (f" (readers): {listed}" if listed else "")
            + f"; {flags['n_comments']} reads with a comment (see the long export's "
            "`comment` column).")


@dataclasses.dataclass
class Dashboard:
    result: dict
    pooled: pd.DataFrame
    per_reader: pd.DataFrame
    agreement: pd.DataFrame
    figures: list            # plotly figures (title, figure)
    note: str
    pooled_label: str = "Real vs synthetic (turing), pooled"
    per_reader_label: str = "Per reader"


def dashboard(db_path, study: str) -> Dashboard:
    """The statistics module's result, tables and figures for one study."""
    from studies.stats import analysis
    from studies.export import long_table

    long_df = long_table(db_path, study)
    result = analysis.analyze(long_df)
    pooled, per_reader = turing_tables(result)
    labels = {}
    if result.get("pair") and not result.get("turing"):
        pooled, per_reader = pair_tables(result)
        labels = {"pooled_label": "Which image is synthetic? (pair, 2AFC): proportion correct, "
                                  "pooled (estimates the AUC; 0.5 = cannot tell)",
                  "per_reader_label": "Per reader (pair, 2AFC): proportion correct"}
    if pooled.empty:
        pooled = _reason_frame(result.get("turing_reason") or "no turing responses yet")
    if per_reader.empty:
        per_reader = _reason_frame(result.get("turing_reason") or "no turing responses yet")
    from studies.stats import charts

    figures = [(charts.figure_title(k), fig) for k, fig in charts.figures(result).items()]
    n = int(len(long_df))
    note = (f"{n} responses from {long_df['reader'].nunique() if n else 0} readers "
            "(training rows excluded from the statistics; latest answer wins).")
    if result.get("reader_flags"):
        note += "  \n" + remarks_markdown(result["reader_flags"])
    return Dashboard(result, pooled, per_reader, agreement_table(result), figures, note,
                     **labels)


def export_files(db_path, study: str, out_dir, *, actor="admin") -> list[pathlib.Path]:
    """The long and iMRMC exports and the self-contained HTML report, in `out_dir`."""
    from studies.stats import analysis, report
    from studies.export import long_table, write_export

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in study)[:60] or "study"
    paths = []
    for fmt in ("long", "imrmc"):
        p = out_dir / f"{safe}-{fmt}.csv"
        try:
            write_export(db_path, study, fmt, p, actor=actor)
        except (StudyError, ValueError, KeyError):
            continue  # e.g. no turing responses yet for iMRMC: offer what exists
        paths.append(p)
    from studies.methods import study_design

    result = analysis.analyze(long_table(db_path, study))
    paths.append(report.write_html(result, out_dir / f"{safe}-report.html",
                                   title=f"Reader study {study}",
                                   design=study_design(db_path, study)))
    return paths
