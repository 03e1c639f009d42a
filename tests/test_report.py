"""The HTML report: self-contained, one plotly bundle, every figure, methods with references."""
import re

import pytest

from studies.analysis import analyze
from studies.report import figures, render_html, write_html
from studies.simulate import simulate_long


@pytest.fixture(scope="module")
def result():
    return analyze(simulate_long(4, 40, tasks=("turing", "alignment"), generators=("g1", "g2"), seed=1))


def test_figures_cover_the_report(result):
    figs = figures(result)
    assert {"forest", "confusion", "roc", "agreement", "likert_alignment", "agreement_alignment"} <= set(figs)
    forest = figs["forest"].data[0]
    assert list(forest.y) == [*result["turing"]["per_reader"], "pooled"]
    assert forest.x[-1] == pytest.approx(result["turing"]["pooled"]["accuracy"])
    conf = figs["confusion"].data[0].z
    assert conf[1][0] == result["turing"]["pooled"]["confusion"]["synthetic"]["real"]
    roc_names = [tr.name for tr in figs["roc"].data]
    assert sum(name.startswith("reader") for name in roc_names) == 4 and any("pooled" in n for n in roc_names)
    heat = figs["agreement"].data[0].z
    assert len(heat) == 4 and heat[0][0] == 1.0


def test_html_is_self_contained(result, tmp_path):
    path = write_html(result, tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched
    assert not re.search(r"<link[^>]+href=\"?https?:", text)
    assert text.count("plotly.js v") == 1  # the bundle is embedded exactly once
    assert text.count("Plotly.newPlot") == len(figures(result))
    for ref in ("Newcombe", "DeLong", "Hillis", "Obuchowski", "Fleiss", "Krippendorff", "Shrout", "Mann–Whitney"):
        assert ref in text
    assert "Methods" in text


def test_html_without_turing_and_with_undefined_values():
    res = analyze(simulate_long(1, 20, tasks=("alignment",), seed=2))
    text = render_html(res)
    assert "no responses to the turing task yet" in text
    assert 'title="only one reader"' in text  # undefined ICC shown as n/a with its reason


@pytest.mark.parametrize("edge", ["all real", "one answer", "no turing ratings", "disjoint readers"])
def test_report_survives_edge_cases(edge):
    import numpy as np

    base = simulate_long(3, 20, tasks=("turing", "alignment"), seed=1)
    df = {
        "all real": base[base.source == "real"],
        "one answer": base.iloc[:1],
        "no turing ratings": base.assign(rating=np.where(base.task == "turing", np.nan, base.rating)),
        "disjoint readers": base[((base.reader == "reader001") & (base.case < "c00010"))
                                 | ((base.reader == "reader002") & (base.case >= "c00010"))],
    }[edge]
    text = render_html(analyze(df))
    assert "<h2>Methods</h2>" in text and 'title="' in text  # undefined values shown with their reason
