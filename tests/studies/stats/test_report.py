"""The HTML report: self-contained, one plotly bundle, every figure, methods with references."""
import html
import re

import pytest

from studies.stats.analysis import analyze
from studies.stats.report import render_html, write_html
from studies.stats.charts import figures
from studies.stats.simulate import simulate_long


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
    assert '<td class=na>n/a<small>only one reader</small></td>' in text  # ICC: n/a + reason


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
    assert "<h2>Methods</h2>" in text
    # undefined values are table cells showing n/a with their reason, visibly
    assert re.search(r'<td class=na>n/a<small>[^<>]+</small></td>', text)
    _assert_every_dash_has_a_reason(text)


def _methods(text: str) -> list[str]:
    """The methods paragraph of a report, one unescaped entry per <b>heading</b>."""
    para = text.split("<h2>Methods</h2>", 1)[1].split("</p>", 1)[0]
    return [html.unescape(re.sub(r"<[^>]+>", "", e)) for e in para.split("<b>")[1:]]


# (test as named in the methods, its reference): both must appear in the same entry
METHOD_REFERENCES = [
    ("Wilson's score", "Wilson 1927, J Am Stat Assoc 22:209"),
    ("Clopper–Pearson exact", "Clopper & Pearson 1934, Biometrika 26:404"),
    ("exact two-sided binomial test", "Newcombe 1998, Stat Med 17:857"),
    ("one-sample Student's t-test of the per-reader accuracies against 0.5", "Student 1908, Biometrika 6:1"),
    ("DeLong's variance", "DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837"),
    ("Obuchowski–Rockette", "Obuchowski & Rockette 1995, Commun Stat Simul Comput 24:285"),
    ("Hillis' denominator degrees of freedom", "Hillis 2007, Stat Med 26:596"),
    ("Fleiss' κ", "Fleiss 1971, Psychol Bull 76:378"),
    ("Cohen's κ", "Cohen 1960, Educ Psychol Meas 20:37"),
    ("Krippendorff's α", "Krippendorff 2004"),
    ("Shrout & Fleiss (1979) ICCs", "McGraw & Wong (1996)"),
    ("Mann–Whitney U", "Mann & Whitney 1947, Ann Math Stat 18:50–60"),
]


@pytest.mark.parametrize("test,reference", METHOD_REFERENCES)
def test_methods_name_each_test_with_its_reference(result, test, reference):
    entries = _methods(render_html(result))
    assert any(test in e and reference in e for e in entries), (test, reference)


def test_methods_describe_the_random_readers_test(result):
    entry = next(e for e in _methods(render_html(result)) if "Random-readers" in e)
    assert "one-sample" in entry and "per-reader accuracies against 0.5" in entry
    assert "df = readers − 1" in entry and "new readers" in entry


def _caption_table(text: str, caption: str) -> str:
    start = text.index(f"<caption>{html.escape(caption)}")
    return text[start:text.index("</table>", start)]


def test_fixed_reader_mrmc_tables(result):
    text = render_html(result)
    m = result["turing"]["mrmc"]
    fixed = _caption_table(text, "MRMC vs AUC 0.5, fixed readers")
    for name, entry in [("all synthetic vs real", m), *m["by_generator"].items()]:
        row = fixed.split(f"<th>{html.escape(name)}</th>", 1)[1].split("</tr>", 1)[0]
        fr = entry["fixed_readers"]
        assert f"<td>{fr['z']:.3f}</td>" in row and f"<td>{fr['se']:.3f}</td>" in row
    comp = m["comparison"]
    diffs = _caption_table(text, "Generator differences in AUC, fixed readers")
    (name, d), = comp["differences"].items()
    assert f"<th>{html.escape(name)}</th>" in diffs
    assert f"<td>{d['fixed_readers']['z']:.3f}</td>" in diffs
    assert f"χ² = {comp['fixed_readers']['chi2']:.3f}" in diffs


def test_fixed_reader_mrmc_table_without_a_crossed_block_gives_reasons():
    base = simulate_long(3, 20, tasks=("turing",), seed=1)
    res = analyze(base[base.source == "real"])  # no synthetic images: MRMC undefined
    fixed = _caption_table(render_html(res), "MRMC vs AUC 0.5, fixed readers")
    assert re.search(r'<td class=na>n/a<small>[^<]*synthetic[^<]*</small></td>', fixed)


def test_likert_group_breakdown_is_in_the_html():
    res = analyze(simulate_long(3, 30, tasks=("alignment",), groups=("adult", "child"), seed=4))
    summary = _caption_table(render_html(res), "Summary")
    for group, entry in res["alignment"]["by_group"].items():
        row = summary.split(f"<th>group: {group}</th>", 1)[1].split("</tr>", 1)[0]
        assert f"<td>{entry['n']}</td>" in row and f"<td>{entry['mean']:.3f}</td>" in row


def test_agreement_heatmap_labels_undefined_kappa():
    from studies.stats.charts import agreement_figure

    pairwise = {"pairs": [{"reader_a": "a", "reader_b": "b", "kappa": None},
                          {"reader_a": "a", "reader_b": "c", "kappa": 0.25},
                          {"reader_a": "b", "reader_b": "c", "kappa": None}]}
    heat = agreement_figure(pairwise, "t").data[0]
    assert heat.z[0][1] is None and heat.text[0][1] == "n/a"
    assert heat.text[0][2] == "0.25" and heat.text[2][2] == "1.00"


def _assert_every_dash_has_a_reason(text: str) -> None:
    for cell in re.findall(r"<td[^>]*>(.*?)</td>", text):
        if cell.startswith(("—", "n/a")):
            assert re.fullmatch(r"(—|n/a)<small>[^<]+</small>", cell), cell


def test_one_reader_report_says_the_mrmc_block_and_why_random_readers_is_missing():
    res = analyze(simulate_long(1, 30, tasks=("turing",), seed=3))
    text = render_html(res)
    assert "MRMC on 1 fully crossed reader and 30 cases: random-readers test not computable" in text
    mrmc_table = _caption_table(text, "MRMC vs AUC 0.5 (Obuchowski")
    assert "n/a<small>MRMC on 1 fully crossed reader: random-readers test not computable" in mrmc_table
    _assert_every_dash_has_a_reason(text)


def test_confidence_intervals_stay_within_0_1_and_say_when_clipped():
    import numpy as np

    base = simulate_long(2, 30, tasks=("turing",), seed=4)
    # two readers, one nearly perfect: the t interval on the reader mean passes 1
    good = base.reader == base.reader.iloc[0]
    base.loc[good, "rating"] = np.where(base.loc[good, "source"] == "synthetic", 6, 1)
    base.loc[good, "response"] = base.loc[good, "source"]
    res = analyze(base)
    acc = res["turing"]["accuracy_random_readers"]
    assert 0 <= acc["ci"][0] <= acc["ci"][1] <= 1 and "clipped to [0, 1]" in acc["ci_note"]

    def intervals(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "ci" and isinstance(v, list) and len(v) == 2 and None not in v:
                    yield v
                else:
                    yield from intervals(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from intervals(v)

    cis = list(intervals(res["turing"]))
    assert len(cis) > 5 and all(0 <= lo <= hi <= 1 for lo, hi in cis)
    text = render_html(res)
    assert "*<small>clipped to [0, 1]" in text
