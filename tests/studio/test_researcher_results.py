"""The researcher's results without friction: 2AFC results in the CLI text, the iMRMC export
and the admin dashboard; coverage that counts reads; one number format for p-values and
statistics; power answers that state their assumptions; unpaired images counted."""
import re
import uuid

import pandas as pd
import pytest
from click.testing import CliRunner

from studies.stats import numbers

from studies import readers
from studies.stats.analysis import analyze
from studies.design import StudyOptions
from studies.stats.report import render_html
from studies.stats.charts import FIGURE_TITLES, figures
from studies.session import next_case, submit
from studio.admin import analysis_tab
from studio.cli import cli
from study_fixtures import make_study, write_images, write_manifest


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _answer(db, reader_id, rating_of, limit=None):
    k = 0
    while (view := next_case(db, reader_id)) is not None and (limit is None or k < limit):
        q = view.pending[0]
        submit(db, reader_id, view.assignment_id, q["task"], rating_of(k, q), 900,
               str(uuid.uuid4()))
        k += 1


@pytest.fixture(scope="module")
def pair_db(tmp_path_factory):
    """A finished pair study: three readers, six pairs each."""
    db, _ = make_study(tmp_path_factory.mktemp("pair"), "duo", tasks=("pair",),
                       options=StudyOptions(seed=5))
    for i in range(3):
        ref = readers.reader_for_token(db, readers.invite(db, "duo", f"r{i}"))
        _answer(db, ref.reader_id, lambda k, q: 2 if k % 3 else 5)
    return db


# ------------------------------------------------------------------- 2AFC everywhere
def test_analyze_text_prints_the_pair_results(pair_db):
    r = run("study", "analyze", "--db", pair_db, "--study", "duo")
    assert r.exit_code == 0, r.output
    assert "0 responses analysed" not in r.output and "18 pair (2AFC) reads analysed" in r.output
    assert "Turing: no responses" not in r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("Pair (2AFC"))
    assert re.search(r"3 readers, 6 pairs, 18 reads\): proportion correct 0\.\d{3} "
                     r"\(95% CI 0\.\d{3} to 0\.\d{3} Clopper–Pearson\), p [=<] ", line)
    for reader in ("r0", "r1", "r2"):
        assert re.search(rf"^  {reader}: \d/6 correct", r.output, re.M)
    assert "Fleiss' κ on right/wrong" in r.output


def test_imrmc_export_of_a_pair_study_refuses_and_writes_nothing(pair_db, tmp_path):
    out = tmp_path / "imrmc.csv"
    r = run("study", "export", "--db", pair_db, "--study", "duo", "--format", "imrmc", "--out", out)
    assert r.exit_code == 1 and not out.exists()
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "pair (2AFC)" in errors[0] and "--format long" in errors[0]
    r = run("study", "export", "--db", pair_db, "--study", "duo", "--format", "long", "--out", out)
    assert r.exit_code == 0 and len(pd.read_csv(out)) == 18


def test_imrmc_export_with_no_ratings_refuses(tmp_path):
    db, _ = make_study(tmp_path, "empty", options=StudyOptions(seed=1))
    out = tmp_path / "imrmc.csv"
    r = run("study", "export", "--db", db, "--study", "empty", "--format", "imrmc", "--out", out)
    assert r.exit_code == 1 and "no turing ratings" in r.output and not out.exists()


def test_admin_dashboard_shows_pair_tables_per_reader_and_human_titles(pair_db):
    d = analysis_tab.dashboard(pair_db, "duo")
    assert list(d.per_reader["reader"]) == ["r0", "r1", "r2"]
    assert set(d.per_reader.columns) >= {"correct", "proportion correct",
                                         "95% CI (Clopper–Pearson)", "p (binomial vs 0.5)"}
    assert d.pooled.loc[0, "n"] == 18 and "2AFC" in d.pooled_label
    assert "2AFC" in d.per_reader_label
    for frame in (d.pooled, d.per_reader, d.agreement):  # no columns headed 0 1 2
        assert all(isinstance(c, str) and not c.isdigit() for c in frame.columns)
    assert d.figures and all("_" not in title for title, _ in d.figures)


def test_dashboard_of_an_unanswered_study_says_why_instead_of_empty_tables(tmp_path):
    db, _ = make_study(tmp_path, "quiet", options=StudyOptions(seed=1))
    d = analysis_tab.dashboard(db, "quiet")
    assert list(d.pooled.columns) == ["result"] and "no responses" in d.pooled.iloc[0, 0]


def test_create_pair_study_with_unequal_counts_says_how_many_were_left_unpaired(tmp_path):
    rows = write_images(tmp_path / "data")
    rows += [dict(r, path=r["path"]) for r in rows if r["source"] == "synthetic"][:2]
    rows[-1] = dict(rows[-1], case_id="extra-1")
    rows[-2] = dict(rows[-2], case_id="extra-2")
    manifest = write_manifest(tmp_path / "data" / "cases.csv", rows,
                              columns=["path", "source", "modality", "prompt", "generator",
                                       "group", "case_id"])
    r = run("study", "create", "--db", tmp_path / "s.db", "--name", "duo", "--manifest",
            manifest, "--size", 32, "--tasks", "pair")
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("Pairs:"))
    assert "Pairs: 6; 2 image(s) left unpaired (0 real, 2 synthetic" in line
    listed = line.split("never shown to readers: ")[1].split(", ")
    synthetic_ids = {r.get("case_id") or r["path"] for r in rows if r["source"] == "synthetic"}
    assert len(listed) == 2 and set(listed) <= synthetic_ids  # which two: keyed random


# ------------------------------------------------------------------- coverage counts reads
def test_readers_coverage_counts_reads_not_assignments(tmp_path):
    db, _ = make_study(tmp_path, "pilot", options=StudyOptions(seed=2, readers_per_case=2))
    ids = [readers.reader_for_token(db, readers.invite(db, "pilot", n)).reader_id
           for n in ("a", "b")]
    _answer(db, ids[0], lambda k, q: 1)          # a: everything
    _answer(db, ids[1], lambda k, q: 1, limit=5)  # b: 5 of 12
    cov = readers.coverage(db, "pilot")
    assert (cov.min_reads, cov.max_reads) == (1, 2)
    assert (cov.min_assigned, cov.max_assigned) == (2, 2)
    r = run("study", "readers", "--db", db, "--study", "pilot")
    assert r.exit_code == 0, r.output
    assert ("Coverage: each of 12 main cases read 1-2 times so far (2-2 once every invited "
            "reader finishes); target 2: reached once every invited reader finishes.") in r.output


# ------------------------------------------------------------------- one number format
def test_number_format_is_journal_style():
    assert numbers.fmt_p(4.13e-05) == "< 0.001" and numbers.p_text(4.13e-05) == "p < 0.001"
    assert numbers.p_text(0.0431) == "p = 0.043" and numbers.fmt_p(None) == "n/a"
    assert numbers.fmt_num(5.27e-17) == "0.000" and numbers.fmt_num(-1e-12) == "0.000"
    assert numbers.fmt_num(0.12345) == "0.123" and numbers.fmt_num(7) == "7"


def _strong_result():
    """Two readers who always tell: p far below 0.001, ICC computed on planted ratings."""
    rows = []
    for reader in ("a", "b"):
        for i in range(40):
            src = "synthetic" if i % 2 else "real"
            rows.append({"study": "s", "reader": reader, "case": f"c{i}", "task": "turing",
                         "source": src, "truth": src, "response": src,
                         "rating": 6 if i % 2 else 1, "training": 0, "repeat": 0})
            rows.append({"study": "s", "reader": reader, "case": f"c{i}", "task": "quality",
                         "source": src, "rating": 1 + (i * 7 + (reader == "b")) % 5,
                         "training": 0, "repeat": 0})
    return pd.DataFrame(rows)


def test_p_values_read_the_same_in_cli_report_and_dashboard(tmp_path):
    csv = tmp_path / "long.csv"
    _strong_result().to_csv(csv, index=False)
    r = run("study", "analyze", "--responses", csv)
    assert r.exit_code == 0, r.output
    assert "p < 0.001 vs 0.5" in r.output and "e-" not in r.output
    result = analyze(_strong_result())
    pooled, _ = analysis_tab.turing_tables(result)
    assert pooled.loc[0, "p (binomial vs 0.5)"] == "< 0.001"  # words, not result keys
    cells = [str(v) for v in pooled.to_numpy().ravel()] + \
        [str(v) for v in analysis_tab.agreement_table(result).to_numpy().ravel()]
    assert "0" not in cells and not any(re.search(r"\de-\d", c) for c in cells)
    html = render_html(result)
    assert "<td>&lt; 0.001</td>" in html and not re.search(r"\d\.\d\de-\d\d", html)


def test_figure_titles_are_human_and_the_rating_legend_sits_below(tmp_path):
    figs = figures(analyze(_strong_result()))
    for key, fig in figs.items():
        title = fig.layout.title.text
        assert title == FIGURE_TITLES[key] and "_" not in title and "likert" not in title
    legend = figs["likert_quality"].layout.legend
    assert legend.orientation == "h" and legend.y < 0
    names = [t.name for t in figs["likert_quality"].data]
    assert names[0].startswith("1 ") and "realistic" in names[0]


# ------------------------------------------------------------------- power assumptions
def test_unreachable_power_states_its_assumptions():
    r = run("study", "power", "--accuracy", 0.6, "--readers", 3, "--target-power", 0.9)
    assert r.exit_code == 0, r.output
    assert "not reachable with 3 readers" in r.output and "SD 0.3 on the logit scale" in r.output
    assert re.search(r"^Assumptions: mean reader accuracy 0\.6; readers differ with SD 0\.3", r.output,
                     re.M)
    r = run("study", "power", "--auc", 0.6, "--readers", 3, "--target-power", 0.9,
            "--reader-sd", 0.08)
    assert "SD 0.08 of the reader AUCs" in r.output
    assert "Assumptions: AUC 0.6 vs 0.5; reader AUCs differ with SD 0.08" in r.output


# ------------------------------------------------------------------- the HTML report
def test_html_report_has_date_design_audit_readers_methods_and_versions(tmp_path):
    db, _ = make_study(tmp_path, "pilot", options=StudyOptions(seed=3, repeat_fraction=0.25,
                                                               attention_checks=1))
    for name, spec, years in (("dr-a", "radiology", "12"), ("dr-b", "nuclear medicine", "4")):
        token = readers.invite(db, "pilot", name, profile={"specialty": spec,
                                                           "years_experience": years})
        _answer(db, readers.reader_for_token(db, token).reader_id, lambda k, q: 1 + k % 6)
    out = tmp_path / "report.html"
    r = run("study", "analyze", "--db", db, "--study", "pilot", "--html", out)
    assert r.exit_code == 0, r.output
    html = out.read_text(encoding="utf-8")
    assert re.search(r"Report generated 20\d\d-\d\d-\d\d \d\d:\d\d UTC; study created 20", html)
    for heading in ("Study design", "Readers", "Leak audit", "Results", "Methods", "References",
                    "Software"):
        assert f"<h2>{heading}</h2>" in html, heading
    assert "Main cases per modality" in html and "25% of cases" in html
    assert "<td style='text-align:left'>nuclear medicine</td>" in html and "Verdict: <b>" in html
    para = html.split("id=methods-paragraph>")[1].split("</p>")[0]
    assert para.startswith("2 readers (nuclear medicine, radiology; median 8.0 years of "
                           "experience, range 4–12) read 12 images (6 real, 6 synthetic")
    assert "DeLong" in para and "Obuchowski" in para and "Paired 2AFC" not in para
    assert "Analyses were run with python 3." in para and "numpy" in para
    assert "Wilson EB. Probable inference" in html
