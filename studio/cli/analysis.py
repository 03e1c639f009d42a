"""medisyn CLI commands: analysis (`study analyze`, `study power`).

Thin wrappers over studies.stats.analysis.analyze / studies.export.analyze_db, studies.stats.report.write_html and
studies.stats.power.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from studio.cli.groups import cli, model, study  # noqa: F401  (groups these commands attach to)
from studio.cli.groups import one_line_errors
from studies.stats.numbers import fmt_ci, fmt_num, p_text

_PROB = click.FloatRange(0, 1, min_open=True, max_open=True)  # a probability strictly inside (0, 1)


def _f(v, digits: int = 3) -> str:
    return fmt_num(v, digits)


def _p(v) -> str:
    """A p-value in running text ("p = 0.043", "p < 0.001"), as in the report and dashboard."""
    return p_text(v)


def _ci(d: dict, key: str) -> str:
    v = d.get(key)
    return fmt_ci(v) if v else f"n/a ({d.get(f'{key}_reason', 'undefined')})"


def _pair_lines(p: dict) -> list[str]:
    """The paired 2AFC section: pooled and per-reader proportion correct, random readers,
    agreement."""
    pooled, rr = p["pooled"], p["random_readers"]
    lines = [f"Pair (2AFC, {p['n_readers']} readers, {p['n_pairs']} pairs, {p['n']} reads): "
             f"proportion correct {_f(pooled.get('proportion'))} (95% CI {_ci(pooled, 'ci')} "
             f"Clopper–Pearson), {_p(pooled.get('p_binomial'))} vs 0.5 (binomial)",
             f"  {p['interpretation']}",
             f"  per-reader proportion (random readers): mean {_f(rr.get('mean'))} "
             f"(95% CI {_ci(rr, 'ci')}), t-test {_p(rr.get('p'))}"]
    for reader, d in p["per_reader"].items():
        lines.append(f"  {reader}: {d['correct']}/{d['n']} correct, {_f(d.get('proportion'))} "
                     f"(95% CI {_ci(d, 'ci')}), {_p(d.get('p_binomial'))}")
    for key, label in (("by_generator", "generator"), ("by_modality", "modality")):
        groups = p.get(key) or {}
        if len(groups) > 1:
            for name, d in groups.items():
                lines.append(f"  {label} {name}: {d['correct']}/{d['n']} correct, "
                             f"{_f(d.get('proportion'))} (95% CI {_ci(d, 'ci')})")
    fk = p["fleiss_kappa"]
    lines.append(f"  Fleiss' κ on right/wrong {_f(fk.get('kappa'))} ({fk.get('n_pairs', 0)} pairs "
                 f"read by every reader), mean pairwise Cohen's κ "
                 f"{_f(p['cohen_kappa'].get('mean_kappa'))}")
    return lines


def format_summary(result: dict) -> str:
    """A short human-readable summary of an analysis result."""
    inp = result["input"]
    pair = result.get("pair")
    analysed = f"{inp['rows_analysed']} responses analysed"
    if pair:  # pair reads are analysed by their own section, not counted in rows_analysed
        analysed = (f"{pair['n']} pair (2AFC) reads analysed" if not inp["rows_analysed"]
                    else f"{analysed} and {pair['n']} pair (2AFC) reads")
    lines = [f"Study: {inp.get('study')} — {analysed} "
             f"({inp['rows_training_excluded']} training rows excluded, {inp['rows_repeat']} repeat reads, "
             f"{inp['rows_superseded']} superseded)"]
    if pair:
        lines += _pair_lines(pair)
    t = result.get("turing")
    if pair and not t and not inp["rows_analysed"]:
        pass  # a pair study has no single-image sections: no "no responses" lines for them
    elif t:
        p = t["pooled"]
        lines.append(f"Turing ({t['n_readers']} readers, {t['n_cases']} cases): accuracy {_f(p.get('accuracy'))} "
                     f"(95% CI {_ci(p, 'ci_wilson')} Wilson), {_p(p.get('p_binomial'))} vs 0.5; "
                     f"sensitivity {_f(p.get('sensitivity'))}, specificity {_f(p.get('specificity'))}, "
                     f"fool rate {_f(p.get('fool_rate'))}")
        rr = t["accuracy_random_readers"]
        lines.append(f"  per-reader accuracy (random readers): mean {_f(rr.get('mean'))} (95% CI {_ci(rr, 'ci')}), "
                     f"t-test {_p(rr.get('p'))}")
        m = t["mrmc"]
        lines.append(f"  MRMC AUC {_f(m.get('auc'))} (95% CI {_ci(m, 'ci')}), F = {_f(m.get('f'))}, "
                     f"ddf = {_f(m.get('ddf'), 2)}, {_p(m.get('p'))}"
                     + (f" — {m['auc_reason']}" if m.get("auc_reason") else ""))
        for name, d in (m.get("comparison") or {}).get("differences", {}).items():
            lines.append(f"  AUC {name}: {_f(d['difference'])} (95% CI {_ci(d, 'ci')}), {_p(d.get('p'))}")
        lines.append(f"  Fleiss' κ {_f(t['fleiss_kappa'].get('kappa'))}, Krippendorff's α "
                     f"{_f(t['krippendorff_alpha'].get('alpha'))}, mean pairwise Cohen's κ "
                     f"{_f(t['cohen_kappa'].get('mean_kappa'))}")
    else:
        lines.append(f"Turing: {result.get('turing_reason')}")
    for task in ("alignment", "quality"):
        s = result.get(task)
        if not s and pair and not inp["rows_analysed"]:
            continue
        if not s:
            lines.append(f"{task.capitalize()}: {result.get(f'{task}_reason')}")
            continue
        src = s["by_source"]
        lines.append(f"{task.capitalize()} ({s['n_readers']} readers, {s['n_cases']} cases): mean "
                     f"{_f(s['summary'].get('mean'), 2)} (real {_f(src['real'].get('mean'), 2)}, synthetic "
                     f"{_f(src['synthetic'].get('mean'), 2)}), Mann–Whitney {_p(s['mann_whitney'].get('p'))}; "
                     f"ICC2 {_f(s['icc']['ICC2'].get('icc'))}, Krippendorff's α ordinal "
                     f"{_f(s['krippendorff_alpha_ordinal'].get('alpha'))}")
    flags = result.get("reader_flags")
    if flags:
        cases = list(flags["non_diagnostic_cases"])
        listed = ", ".join(cases[:20]) + (f" and {len(cases) - 20} more" if len(cases) > 20 else "")
        lines.append(f"Non-diagnostic: {flags['n_cases_non_diagnostic']} of {flags['n_cases']} images "
                     f"flagged by ≥1 reader" + (f" ({listed})" if cases else "")
                     + f"; {flags['n_comments']} reads with a comment")
    return "\n".join(lines)


@study.command("analyze")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path), help="Study database.")
@click.option("--study", "study_name", help="Study name (with --db).")
@click.option("--responses", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A `long` export CSV instead of a database.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON (keys: docs/statistics.md).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a self-contained HTML report here.")
@click.option("--alpha", default=0.05, show_default=True, type=_PROB, help="Test level; CIs are 1 − alpha.")
@one_line_errors
def analyze_cmd(db_path, study_name, responses, as_json, html_path, alpha):
    """Statistics of a reader study: accuracy, ROC/MRMC, agreement, Likert, ICC."""
    from studies.export import analyze_db
    from studies.stats.analysis import analyze

    if responses is not None and (db_path or study_name):
        raise click.UsageError("give either --responses or --db with --study, not both")
    if responses is None and not (db_path and study_name):
        raise click.UsageError("give --db DB --study NAME, or --responses long.csv")
    try:
        if responses is not None:
            from studies.export import read_long_csv

            result = analyze(read_long_csv(responses), alpha=alpha)
        else:
            if not db_path.exists():
                raise click.BadParameter(f"no such database: {db_path}", param_hint="--db")
            result = analyze_db(db_path, study_name, alpha=alpha)
    except (ValueError, KeyError) as exc:  # bad table or unknown study: one clear line
        raise click.ClickException(str(exc)) from exc
    if html_path is not None:
        from studies.stats.report import write_html

        design = None
        if responses is None:  # a database knows the design, the audit and the readers
            from studies.methods import study_design

            design = study_design(db_path, study_name)
        write_html(result, html_path, design=design)
    if as_json:
        click.echo(json.dumps(result, indent=2, allow_nan=False, ensure_ascii=False))
    else:
        click.echo(format_summary(result))
        if html_path is not None:
            click.echo(f"Report written to {html_path}")


@study.command("power")
@click.option("--readers", type=click.IntRange(min=2), help="Number of readers (omit with --target-power to solve for it).")
@click.option("--cases", type=click.IntRange(min=2), help="Cases per reader (omit with --target-power to solve for it).")
@click.option("--accuracy", type=_PROB, help="Expected mean reader accuracy (binary call).")
@click.option("--auc", type=_PROB, help="Expected AUC (vs 0.5), or the first generator's AUC with --auc2.")
@click.option("--auc2", type=_PROB, help="Second generator's AUC: power for the difference.")
@click.option("--reader-sd", type=click.FloatRange(min=0), help="Between-reader SD: logit scale for --accuracy "
              "(default 0.3), AUC scale for --auc (default 0.05).")
@click.option("--prevalence", default=0.5, show_default=True, type=_PROB, help="Share of synthetic cases (AUC).")
@click.option("--target-power", type=_PROB, help="Solve for readers or cases to reach this power.")
@click.option("--pilot", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Analysis JSON of a pilot study: use its MRMC variance components (AUC).")
@click.option("--simulate", is_flag=True, help="Monte Carlo instead of the analytic approximation (accuracy).")
@click.option("--alpha", default=0.05, show_default=True, type=_PROB)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@one_line_errors
def power_cmd(readers, cases, accuracy, auc, auc2, reader_sd, prevalence, target_power, pilot, simulate,
              alpha, as_json):
    """Power (or readers × cases needed) for a visual Turing test, with between-reader variability."""
    from studies.stats import power

    if (accuracy is None) == (auc is None):
        raise click.UsageError("give exactly one of --accuracy or --auc")
    try:
        if accuracy is not None:
            sd = power.DEFAULT_READER_SD if reader_sd is None else reader_sd
            if target_power is not None:
                res = power.accuracy_sample_size(accuracy, power=target_power, readers=readers, cases=cases,
                                                 reader_sd=sd, alpha=alpha)
            else:
                if readers is None or cases is None:
                    raise click.UsageError("give --readers and --cases (or --target-power and one of them)")
                res = power.accuracy_power(readers, cases, accuracy, reader_sd=sd, alpha=alpha,
                                           method="simulation" if simulate else "analytic")
        else:
            sd = power.DEFAULT_AUC_READER_SD if reader_sd is None else reader_sd
            pilot_vc = None
            if pilot is not None:
                data = json.loads(pilot.read_text(encoding="utf-8"))
                pilot_vc = power.components_from_mrmc((data.get("turing") or {}).get("mrmc") or data,
                                                      "comparison" if auc2 is not None else "single")
            kw = dict(auc2=auc2, prevalence=prevalence, reader_sd=sd, pilot=pilot_vc, alpha=alpha)
            if target_power is not None:
                res = power.auc_sample_size(auc, power=target_power, readers=readers, cases=cases, **kw)
            else:
                if readers is None or cases is None:
                    raise click.UsageError("give --readers and --cases (or --target-power and one of them)")
                res = power.auc_power(readers, cases, auc, **kw)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(res, indent=2, allow_nan=False, ensure_ascii=False))
        return
    what = "accuracy" if accuracy is not None else ("AUC difference" if auc2 is not None else "AUC")
    click.echo(f"{what}: readers = {_f(res.get('readers'))}"
               + (f" ({res['readers_reason']})" if res.get("readers_reason") else "")
               + f", cases per reader = {_f(res.get('cases'))}"
               + (f" ({res['cases_reason']})" if res.get("cases_reason") else "")
               + f", power = {_f(res.get('power'))}"
               + (f" ({res['power_reason']})" if res.get("power_reason") else ""))
    if res.get("power_pooled_binomial") is not None:
        click.echo(f"(pooled binomial test, ignoring reader variability: power {_f(res['power_pooled_binomial'])})")
    click.echo(power.assumptions(res))
