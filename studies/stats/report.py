"""The study report: one self-contained HTML file built from analyze()'s result (its figures:
`studies.stats.charts`).

Everything here reads the JSON-ready result only, so a report can be rebuilt from a saved
`--json` file. The HTML embeds plotly.js once (inline, no CDN) and opens offline.
"""
from __future__ import annotations

import html
import platform
import statistics
from importlib import metadata
from pathlib import Path

from studies.stats.charts import figures
from studies.stats.likert import MWU_TEST
from studies.stats.numbers import fmt_num, fmt_p, fmt_time, is_p_key, p_text

# (heading, text): each test named with its reference; tests/studies/stats/test_report.py checks the pairs
METHODS = [
    ("Accuracy, sensitivity, specificity, fool rate",
     "95% intervals by Wilson's score method (Wilson 1927, J Am Stat Assoc 22:209) and the "
     "Clopper–Pearson exact method (Clopper & Pearson 1934, Biometrika 26:404), compared in Newcombe "
     "1998, Stat Med 17:857; exact two-sided binomial test of the pooled accuracy against 0.5, which "
     "treats every read as independent."),
    ("Random-readers accuracy test",
     "Two-sided one-sample Student's t-test of the per-reader accuracies against 0.5 (Student 1908, "
     "Biometrika 6:1): each reader's accuracy is one observation, df = readers − 1, so the result "
     "generalises to new readers, unlike the pooled binomial test; it assumes the reader accuracies "
     "are roughly normal."),
    ("ROC", "Empirical (Wilcoxon) AUC from the 6-point rating (6 = definitely synthetic, positive class = "
            "synthetic) with DeLong's variance and a Wald 95% CI (DeLong, DeLong & Clarke-Pearson 1988, "
            "Biometrics 44:837)."),
    ("MRMC", "Obuchowski–Rockette analysis of reader AUCs with jackknife covariances and Hillis' denominator "
             "degrees of freedom, for random readers & random cases and for fixed readers (Obuchowski & "
             "Rockette 1995, Commun Stat Simul Comput 24:285; Hillis 2007, Stat Med 26:596). Generators are "
             "treatments sharing the real images as negatives."),
    ("Agreement", "Fleiss' κ (Fleiss 1971, Psychol Bull 76:378) with the Fleiss, Nee & Landis (1979) z-test; "
                  "Cohen's κ (Cohen 1960, Educ Psychol Meas 20:37) per reader pair with the "
                  "Fleiss, Cohen & Everitt (1969) asymptotic SE (linearly weighted for Likert ratings); "
                  "Krippendorff's α (Krippendorff 2004; Hayes & Krippendorff 2007). Intra-reader: Cohen's κ "
                  "between a reader's first and repeated read."),
    ("Paired 2AFC",
     "Proportion correct per reader and pooled with Clopper–Pearson exact intervals and exact "
     "binomial tests against 0.5; in a two-alternative forced choice the proportion correct "
     "estimates the AUC (Green & Swets 1966, Signal Detection Theory and Psychophysics); "
     "one-sample t-test of the reader proportions against 0.5 for random readers; Fleiss' and "
     "Cohen's κ on right/wrong calls."),
    ("Likert", f"Mean, median, quartiles and distributions; six Shrout & Fleiss (1979) ICCs with F-tests and "
               f"McGraw & Wong (1996) CIs; {MWU_TEST} (Mann & Whitney 1947, Ann Math Stat 18:50–60) for "
               f"synthetic vs real (assumes independent ratings)."),
]


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return fmt_num(v, digits)
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return f"{_fmt(v[0], digits)} – {_fmt(v[1], digits)}"
    return str(v)


NOT_COMPUTED = "not computed for this row"


def _cell(d: dict | None, key: str, digits: int = 3) -> str:
    """A table cell; an undefined value shows its reason (the JSON's `<key>_reason`) in
    the cell itself, and a clipped CI says it was clipped."""
    if d is None or (key not in d and f"{key}_reason" not in d):
        return f'<td class=na>—<small>{NOT_COMPUTED}</small></td>'
    v = d.get(key)
    if v is None:
        reason = d.get(f"{key}_reason") or "undefined"
        return f'<td class=na>n/a<small>{html.escape(reason)}</small></td>'
    note = d.get(f"{key}_note")
    text = fmt_p(v) if is_p_key(key) and isinstance(v, (int, float)) else _fmt(v, digits)
    if note:
        return (f'<td>{html.escape(text)}*<small>{html.escape(note)}</small></td>')
    return f"<td>{html.escape(text)}</td>"


def _table(rows: list[tuple[str, dict | None]], columns: list[tuple[str, str]], caption: str) -> str:
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in columns)
    body = "".join(
        f"<tr><th>{html.escape(str(name))}</th>{''.join(_cell(d, key) for _, key in columns)}</tr>"
        for name, d in rows)
    return (f"<table><caption>{html.escape(caption)}</caption><thead><tr><th></th>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


_BINARY_COLS = [("n", "n"), ("accuracy", "accuracy"), ("95% CI (Wilson)", "ci_wilson"),
                ("95% CI (Clopper–Pearson)", "ci_clopper_pearson"), ("p (binomial)", "p_binomial"),
                ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("fool rate", "fool_rate")]
_LIKERT_COLS = [("n", "n"), ("mean", "mean"), ("sd", "sd"), ("median", "median"), ("Q1", "q1"), ("Q3", "q3")]


# --- HTML -----------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
tbody th{text-align:left}caption{text-align:left;font-weight:600;margin-bottom:.3rem}
td.na{color:#777}td small{display:block;font-size:.75rem;color:#777;text-align:left;
max-width:16rem}.note{color:#555;font-size:.9rem}
"""


def _turing_html(t: dict) -> list[str]:
    parts = ["<h2>Visual Turing test</h2>",
             f"<p>{t['n']} reads by {t['n_readers']} readers of {t['n_cases']} cases "
             f"({t['n_real_cases']} real, {t['n_synthetic_cases']} synthetic).</p>"]
    parts.append(_table([("pooled", t["pooled"])] + list(t["per_reader"].items()),
                        _BINARY_COLS + [("AUC", "auc"), ("AUC 95% CI (DeLong)", "auc_ci")],
                        "Accuracy per reader"))
    parts.append(_table([("per-reader accuracies vs 0.5", t["accuracy_random_readers"])],
                        [("readers", "n_readers"), ("mean accuracy", "mean"), ("95% CI", "ci"), ("t", "t"),
                         ("df", "df"), ("p", "p")], "Random-readers test of accuracy (one-sample t-test)"))
    for key, label in (("by_modality", "modality"), ("by_generator", "generator"), ("by_group", "group")):
        if t.get(key):
            parts.append(_table(list(t[key].items()), _BINARY_COLS, f"By {label}"))
    m = t["mrmc"]
    rows = [("all synthetic vs real", m)] + list((m.get("by_generator") or {}).items())
    parts.append(_table(rows, [("synthetic images", "n_synthetic"), ("AUC", "auc"), ("F", "f"), ("ddf", "ddf"),
                               ("p", "p"), ("95% CI", "ci")],
                        f"MRMC vs AUC 0.5 (Obuchowski–Rockette, Hillis ddf; random readers and cases; "
                        f"{m.get('n_readers')} readers, {m.get('n_real')} real images)"))
    if m.get("block"):
        parts.append(f"<p class=note>{html.escape(m['block'])}.</p>")
    parts.append(_table([(name, _fixed_readers(d)) for name, d in rows],
                        [("AUC", "auc"), ("SE", "se"), ("z", "z"), ("p", "p"), ("95% CI", "ci")],
                        "MRMC vs AUC 0.5, fixed readers (random cases; conclusions hold for these readers only)"))
    comp = m.get("comparison")
    if comp:
        diffs = list(comp["differences"].items())
        parts.append(_table(diffs,
                            [("difference", "difference"), ("F", "f"), ("ddf", "ddf"), ("p", "p"), ("95% CI", "ci")],
                            f"Generator differences in AUC (overall F = {_fmt(comp.get('f'))}, "
                            f"{p_text(comp.get('p'))})"))
        fixed = comp.get("fixed_readers") or {}
        parts.append(_table([(name, _fixed_readers(d, "difference")) for name, d in diffs],
                            [("difference", "difference"), ("SE", "se"), ("z", "z"), ("p", "p"), ("95% CI", "ci")],
                            f"Generator differences in AUC, fixed readers (overall χ² = {_fmt(fixed.get('chi2'))}, "
                            f"df = {_fmt(fixed.get('df'))}, {p_text(fixed.get('p'))})"))
    parts.append(_agreement_table([
        ("Fleiss' κ (all readers)", t["fleiss_kappa"], "kappa"),
        ("Krippendorff's α (nominal)", t["krippendorff_alpha"], "alpha"),
        ("mean pairwise Cohen's κ", t["cohen_kappa"], "mean_kappa"),
        ("intra-reader κ (first vs repeated read, pooled)", _pooled(t["intra_reader_kappa"]), "kappa"),
    ], "Agreement on the binary call"))
    return parts


def _pair_html(p: dict) -> list[str]:
    cols = [("reads", "n"), ("correct", "correct"), ("proportion correct", "proportion"),
            ("95% CI (Clopper–Pearson)", "ci"), ("p (binomial vs 0.5)", "p_binomial")]
    parts = ["<h2>Paired 2AFC: which image is synthetic?</h2>",
             f"<p>{p['n']} pair reads by {p['n_readers']} readers of {p['n_pairs']} pairs. "
             f"{html.escape(p['interpretation'])}</p>",
             _table([("pooled", p["pooled"])] + list(p["per_reader"].items()), cols,
                    "Proportion correct per reader"),
             _table([("per-reader proportions vs 0.5", p["random_readers"])],
                    [("readers", "n_readers"), ("mean", "mean"), ("95% CI", "ci"), ("t", "t"),
                     ("df", "df"), ("p", "p")], "Random-readers test (one-sample t-test)")]
    for key, label in (("by_generator", "generator"), ("by_modality", "modality")):
        if p.get(key):
            parts.append(_table(list(p[key].items()), cols, f"By {label}"))
    fk = dict(p["fleiss_kappa"])
    parts.append(_agreement_table([
        (f"Fleiss' κ ({fk.get('n_pairs', 0)} pairs read by every reader)", fk, "kappa"),
        ("mean pairwise Cohen's κ", p["cohen_kappa"], "mean_kappa"),
    ], "Agreement between readers on right/wrong"))
    return parts


def _fixed_readers(d: dict | None, value: str = "auc") -> dict | None:
    """An MRMC entry's fixed-readers test next to its estimate; reasons carried over."""
    if d is None:
        return None
    fr = d.get("fixed_readers")
    out = {value: d.get(value)}
    if d.get(f"{value}_reason"):
        out[f"{value}_reason"] = d[f"{value}_reason"]
    if isinstance(fr, dict):
        out.update(fr)
    else:
        reason = d.get("fixed_readers_reason") or d.get(f"{value}_reason") or "undefined"
        for key in ("se", "z", "p", "ci"):
            out[key], out[f"{key}_reason"] = None, reason
    return out


def _pooled(intra: dict) -> dict:
    return intra.get("pooled") or {"kappa": None, "kappa_reason": intra.get("pooled_reason", "undefined")}


def _agreement_table(rows, caption: str) -> str:
    """Rows of (label, statistic dict, key of its value) as value / 95% CI / p."""
    shaped = []
    for label, d, key in rows:
        if d is None:
            shaped.append((label, None))
            continue
        entry = {"value": d.get(key), "ci": d.get("ci"), "p": d.get("p")}
        for k, src in (("value", key), ("ci", "ci"), ("p", "p")):
            if d.get(f"{src}_reason"):
                entry[f"{k}_reason"] = d[f"{src}_reason"]
        shaped.append((label, entry))
    return _table(shaped, [("value", "value"), ("95% CI", "ci"), ("p", "p")], caption)


def _likert_html(task: str, s: dict) -> list[str]:
    parts = [f"<h2>{html.escape(task.capitalize())} ratings</h2>",
             f"<p>{s['n']} ratings by {s['n_readers']} readers of {s['n_cases']} cases.</p>"]
    rows = [("all", s["summary"])] + [(f"source: {k}", v) for k, v in s["by_source"].items()]
    rows += [(f"modality: {k}", v) for k, v in s["by_modality"].items()]
    rows += [(f"generator: {k}", v) for k, v in s["by_generator"].items()]
    rows += [(f"group: {k}", v) for k, v in (s.get("by_group") or {}).items()]
    parts.append(_table(rows, _LIKERT_COLS, "Summary"))
    parts.append(_table([("synthetic vs real", s["mann_whitney"])],
                        [("U", "u"), ("p", "p"), ("P(synthetic > real)", "prob_superiority"),
                         ("rank-biserial", "rank_biserial")], MWU_TEST))
    parts.append(_table(list(s["icc"].items()), [("ICC", "icc"), ("F", "f"), ("df1", "df1"), ("df2", "df2"),
                                                 ("p", "p"), ("95% CI", "ci")],
                        "Intraclass correlation (Shrout & Fleiss)"))
    parts.append(_agreement_table([
        ("Krippendorff's α (ordinal)", s["krippendorff_alpha_ordinal"], "alpha"),
        ("Krippendorff's α (interval)", s["krippendorff_alpha_interval"], "alpha"),
        ("mean pairwise weighted Cohen's κ", s["cohen_kappa_weighted"], "mean_kappa"),
        ("intra-reader weighted κ (pooled)", _pooled(s["intra_reader_kappa"]), "kappa"),
    ], "Agreement"))
    return parts


def remarks_html(result: dict) -> list[str]:
    """Readers' non-diagnostic flags and comments (studies.stats.remarks): counts and the flagged
    case ids for the researcher to check; comment texts stay in the export."""
    flags = result.get("reader_flags")
    if not isinstance(flags, dict):
        reason = result.get("reader_flags_reason")
        return [f"<h2>Image quality remarks</h2><p>{html.escape(reason)}</p>"] if reason else []
    cases = flags.get("non_diagnostic_cases") or {}
    listed = ", ".join(f"{html.escape(str(c))} ({n} reader{'s' if n != 1 else ''})"
                       for c, n in cases.items())
    out = ["<h2>Image quality remarks</h2>",
           f"<p>{flags['n_cases_non_diagnostic']} of {flags['n_cases']} images flagged "
           f"non-diagnostic by ≥1 reader ({flags['n_reads_non_diagnostic']} reads)"
           + (f": {listed}" if listed else "") + ".</p>",
           f"<p>{flags['n_comments']} reads with a comment, on {flags['n_cases_commented']} "
           "images (the texts are in the <code>comment</code> column of the long export).</p>"]
    return out


REFERENCES = [
    "Clopper CJ, Pearson ES. The use of confidence or fiducial limits illustrated in the case of "
    "the binomial. Biometrika 1934;26:404–413.",
    "Cohen J. A coefficient of agreement for nominal scales. Educ Psychol Meas 1960;20:37–46.",
    "DeLong ER, DeLong DM, Clarke-Pearson DL. Comparing the areas under two or more correlated "
    "receiver operating characteristic curves: a nonparametric approach. Biometrics "
    "1988;44:837–845.",
    "Fleiss JL. Measuring nominal scale agreement among many raters. Psychol Bull "
    "1971;76:378–382.",
    "Green DM, Swets JA. Signal Detection Theory and Psychophysics. New York: Wiley; 1966.",
    "Hayes AF, Krippendorff K. Answering the call for a standard reliability measure for coding "
    "data. Commun Methods Meas 2007;1:77–89.",
    "Hillis SL. A comparison of denominator degrees of freedom methods for multiple observer ROC "
    "analysis. Stat Med 2007;26:596–619.",
    "Mann HB, Whitney DR. On a test of whether one of two random variables is stochastically "
    "larger than the other. Ann Math Stat 1947;18:50–60.",
    "McGraw KO, Wong SP. Forming inferences about some intraclass correlation coefficients. "
    "Psychol Methods 1996;1:30–46.",
    "Newcombe RG. Two-sided confidence intervals for the single proportion: comparison of seven "
    "methods. Stat Med 1998;17:857–872.",
    "Obuchowski NA, Rockette HE. Hypothesis testing of diagnostic accuracy for multiple readers "
    "and multiple tests: an ANOVA approach with dependent observations. Commun Stat Simul Comput "
    "1995;24:285–308.",
    "Shrout PE, Fleiss JL. Intraclass correlations: uses in assessing rater reliability. Psychol "
    "Bull 1979;86:420–428.",
    "Wilson EB. Probable inference, the law of succession, and statistical inference. J Am Stat "
    "Assoc 1927;22:209–212.",
]

_TASK_WORDS = {
    "turing": "whether each image was real or synthetic, on a 6-point scale from “definitely "
              "real” to “definitely synthetic”",
    "alignment": "how well each image matched its text, on a 5-point scale",
    "quality": "how realistic each image looked, on a 5-point scale",
    "pair": "which of two images shown side by side (one real, one synthetic of the same "
            "modality) was synthetic, on a 6-point scale from “definitely left” to "
            "“definitely right”",
}


def _counts_text(counts: dict) -> str:
    return ", ".join(f"{n} {html.escape(str(k))}" for k, n in counts.items()) or "none"


def _years(readers: list[dict]) -> list[float]:
    out = []
    for r in readers:
        try:
            out.append(float(str(r.get("years_experience", "")).strip()))
        except ValueError:
            continue
    return out


def _design_html(d: dict) -> list[str]:
    """Design, readers and leak-audit sections from `studies.methods.study_design`."""
    o, c = d["options"], d["cases"]
    tasks = ", ".join(html.escape(t) for t in d["tasks"])
    rows = [("Tasks (in this order; turing is always first)", tasks),
            ("Stimuli", f"{d.get('size')}×{d.get('size')} px PNG, letterboxed, metadata "
                        "removed, served under random ids"),
            ("Main cases", f"{c['main']} ({_counts_text(c['by_source'])})"),
            ("Synthetic images per generator", _counts_text(c["by_generator"])),
            ("Training cases (with feedback, not analysed)", str(c["training"])),
            ("Cases per reader", "all (fully crossed)" if not o.get("cases_per_reader")
             else f"{o['cases_per_reader']} (incomplete design, balanced real/synthetic)"),
            ("Target readers per case", str(o.get("readers_per_case") or "—")),
            ("Repeated reads (intra-reader agreement)",
             f"{fmt_num(float(o.get('repeat_fraction') or 0) * 100, 0)}% of cases"
             + (f", at least {o['repeat_after_s'] // 3600} h after the first read"
                if o.get("repeat_after_s") else "")),
            ("Attention checks per reader", str(o.get("attention_checks", 0))),
            ("Task order counterbalanced", "yes" if o.get("counterbalance") else "no"),
            ("Readers may go back and change an answer", "yes" if o.get("allow_back") else "no"),
            ("Reader order", "reproducible from a seed (testing only)"
             if o.get("reproducible_seed") else "random per reader, from a secret never shown")]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{v}</td></tr>"
                   for k, v in rows)
    parts = ["<h2>Study design</h2>", f"<table><tbody>{body}</tbody></table>"]
    mods = c.get("by_modality") or {}
    if mods:
        mrows = "".join(f"<tr><th>{html.escape(m)}</th><td>{v.get('real', 0)}</td>"
                        f"<td>{v.get('synthetic', 0)}</td></tr>" for m, v in mods.items())
        parts.append("<table><caption>Main cases per modality</caption><thead><tr><th></th>"
                     f"<th>real</th><th>synthetic</th></tr></thead><tbody>{mrows}</tbody></table>")
    readers = d.get("readers") or []
    parts.append("<h2>Readers</h2>")
    if readers:
        rrows = "".join(
            f"<tr><th>{html.escape(r['reader'])}</th>"
            f"<td style='text-align:left'>{html.escape(str(r.get('specialty') or '—'))}</td>"
            f"<td>{html.escape(str(r.get('years_experience') or '—'))}</td>"
            f"<td>{r['completed']}/{r['total']}</td><td>{'yes' if r.get('consented') else 'no'}</td>"
            "</tr>" for r in readers)
        parts.append("<table><caption>Reader profiles and progress</caption><thead><tr><th>reader"
                     "</th><th>specialty</th><th>years of experience</th><th>reads done</th>"
                     f"<th>consent recorded</th></tr></thead><tbody>{rrows}</tbody></table>")
    else:
        parts.append("<p>No readers invited.</p>")
    a = d.get("audit") or {}
    parts.append("<h2>Leak audit</h2>")
    if a.get("verdict") is None and a.get("flagged") is None:
        parts.append("<p>No audit stored.</p>")
    else:
        auc = (f"cross-validated AUC {fmt_num(a['auc'])} of a classifier of image statistics "
               f"(flag at ≥ {fmt_num(a.get('threshold'))}; {html.escape(str(a.get('cv') or ''))})"
               if a.get("auc") is not None else
               f"classifier AUC not computed ({html.escape(str(a.get('auc_reason') or ''))})")
        parts.append(f"<p>Verdict: <b>{html.escape(str(a.get('verdict') or ('leak' if a.get('flagged') else 'ok')))}"
                     f"</b>; {auc}. Audited images: {_counts_text(a.get('counts') or {})}."
                     + (f" Images scaled more than 2×: {a.get('n_enlarged_over_2x') or 0} enlarged, "
                        f"{a.get('n_reduced_over_2x') or 0} reduced." if a.get("n_enlarged_over_2x")
                        is not None else "") + "</p>")
        if a.get("reasons"):
            parts.append("<ul>" + "".join(f"<li>{html.escape(str(x))}</li>" for x in a["reasons"])
                         + "</ul>")
    return parts


def methods_paragraph(result: dict, design: dict | None, versions: dict | None) -> str:
    """The methods section as prose a manuscript can start from (plain text)."""
    out = []
    if design:
        c, o = design["cases"], design["options"]
        readers = design.get("readers") or []
        specs = sorted({str(r.get("specialty")).strip() for r in readers
                        if str(r.get("specialty") or "").strip()})
        yrs = _years(readers)
        who = f"{len(readers)} reader{'s' if len(readers) != 1 else ''}"
        if specs:
            who += f" ({', '.join(specs)}"
            who += (f"; median {fmt_num(statistics.median(yrs), 1)} years of experience, "
                    f"range {fmt_num(min(yrs), 0)}–{fmt_num(max(yrs), 0)})" if yrs else ")")
        gens = ", ".join(c["by_generator"]) or "unnamed generators"
        tasks = "; ".join(_TASK_WORDS.get(t, t) for t in design["tasks"])
        n_pairs = (result.get("pair") or {}).get("n_pairs")
        out.append(
            f"{who} read "
            + (f"{n_pairs} pairs made from " if "pair" in design["tasks"] and n_pairs else "")
            + f"{c['main']} images ({c['by_source'].get('real', 0)} real, "
            f"{c['by_source'].get('synthetic', 0)} synthetic from {gens}) "
            + ("each" if not o.get("cases_per_reader") else
               f"{o['cases_per_reader']} per reader, balanced between real and synthetic,")
            + f" in a random order per reader. Every image was re-encoded to the same "
            f"{design.get('size')}×{design.get('size')} px PNG without metadata and served under a "
            f"random identifier, so that only its pixels could tell its source. Readers judged "
            f"{tasks}.")
        if c["training"]:
            out.append(f"{c['training']} training images with feedback came first and were not "
                       "analysed.")
        if o.get("repeat_fraction"):
            out.append(f"{fmt_num(float(o['repeat_fraction']) * 100, 0)}% of the images were shown "
                       "a second time to measure intra-reader agreement.")
        if o.get("attention_checks"):
            out.append(f"Each reader answered {o['attention_checks']} instructed-response "
                       "attention checks.")
        a = design.get("audit") or {}
        if a.get("auc") is not None:
            out.append(f"Before reading, a leak audit compared the stimuli's image statistics "
                       f"between sources (cross-validated classifier AUC {fmt_num(a['auc'])}; "
                       f"verdict: {a.get('verdict') or ('leak' if a.get('flagged') else 'ok')}).")
    used = set()
    if result.get("turing"):
        used |= {"Accuracy, sensitivity, specificity, fool rate", "Random-readers accuracy test",
                 "ROC", "MRMC", "Agreement"}
    if result.get("pair"):
        used.add("Paired 2AFC")
    if result.get("alignment") or result.get("quality"):
        used |= {"Likert", "Agreement"}
    out.append("Statistical analysis. " + " ".join(
        f"{k}: {v}" for k, v in METHODS if k in used or not used))
    if versions:
        out.append("Analyses were run with " + ", ".join(
            f"{k} {v}" for k, v in versions.items()) + ".")
    return " ".join(out)


PACKAGES = ("medisyn-studio", "numpy", "scipy", "pandas", "statsmodels", "plotly", "pydicom",
            "nibabel", "Pillow")


def software_versions() -> dict[str, str]:
    """Python and the installed version of each package in PACKAGES (missing ones left out)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def render_html(result: dict, *, title: str | None = None, design: dict | None = None,
                generated_at: str | None = None, versions: dict | None = None) -> str:
    """One self-contained HTML document (plotly.js inline, once).

    design: `studies.methods.study_design` (adds the design, readers and leak-audit
    sections and a methods paragraph); generated_at: the date line (default: now, UTC);
    versions: `software_versions()` (the default)."""
    import datetime as _dt


    study = result.get("input", {}).get("study")
    title = title or (f"Reader study report — {study}" if study else "Reader study report")
    generated_at = generated_at or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = software_versions() if versions is None else versions
    parts = [f"<h1>{html.escape(str(title))}</h1>",
             f"<p class=note>Report generated {html.escape(generated_at)}"
             + (f"; study created {html.escape(fmt_time(design.get('created_at'), minutes=True))}"
                f" UTC, status {html.escape(str(design.get('status')))}" if design else "")
             + ".</p>"]
    if design:
        parts += _design_html(design)
    inp = result.get("input", {})
    n_pair = (result.get("pair") or {}).get("n", 0)
    parts.append("<h2>Results</h2>")
    parts.append(f"<p class=note>{inp.get('rows_analysed', 0)} responses"
                 + (f" and {n_pair} pair (2AFC) reads" if n_pair else "") + " analysed "
                 f"({inp.get('rows_training_excluded', 0)} training rows excluded, {inp.get('rows_repeat', 0)} "
                 f"repeat reads used for intra-reader agreement only, {inp.get('rows_superseded', 0)} superseded "
                 f"answers). Each “n/a” says why the value is undefined; * marks an interval clipped to the "
                 f"parameter's range.</p>")
    figs = figures(result)
    first = [True]

    def fig_html(name):
        if name not in figs:
            return ""
        out = figs[name].to_html(full_html=False, include_plotlyjs=first[0], config={"displaylogo": False})
        first[0] = False
        return out

    # a pair study has no single-image tasks: no "no responses yet" sections for them
    pair_only = bool(result.get("pair")) and not inp.get("rows_analysed")
    if result.get("turing"):
        parts += _turing_html(result["turing"])
        parts += [fig_html(n) for n in ("forest", "confusion", "roc", "agreement")]
    elif pair_only:
        pass
    else:
        parts.append(f"<h2>Visual Turing test</h2><p>{html.escape(result.get('turing_reason', ''))}</p>")
    if result.get("pair"):
        parts += _pair_html(result["pair"])
        parts.append(fig_html("pair_forest"))
    for task in ("alignment", "quality"):
        if result.get(task):
            parts += _likert_html(task, result[task])
            parts += [fig_html(f"likert_{task}"), fig_html(f"agreement_{task}")]
        elif not pair_only:
            parts.append(f"<h2>{task.capitalize()} ratings</h2><p>{html.escape(result.get(f'{task}_reason', ''))}</p>")
    parts += remarks_html(result)
    parts.append("<h2>Methods</h2>")
    parts.append("<p>" + " ".join(f"<b>{html.escape(k)}.</b> {html.escape(v)}" for k, v in METHODS) + "</p>")
    parts.append("<p class=note>Training reads are excluded, the latest answer per reader, case and task is used, "
                 "and repeated reads serve only intra-reader agreement.</p>")
    parts.append("<h3>Methods paragraph (for a manuscript)</h3>")
    parts.append(f"<p id=methods-paragraph>{html.escape(methods_paragraph(result, design, versions))}</p>")
    parts.append("<h2>References</h2><ol>" + "".join(f"<li>{html.escape(r)}</li>" for r in REFERENCES)
                 + "</ol>")
    parts.append("<h2>Software</h2><table><tbody>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in versions.items())
                 + "</tbody></table>")
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(str(title))}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


def write_html(result: dict, path, *, title: str | None = None, design: dict | None = None) -> Path:
    """render_html to `path`; design: `studies.methods.study_design` of the study, if known."""
    path = Path(path)
    path.write_text(render_html(result, title=title, design=design), encoding="utf-8")
    return path
