"""The experiment report's augmentation section, rendered from `evaluation.augment.summarise` output."""
from __future__ import annotations

import numpy as np

from evaluation.augment import ONE_REPEAT_NOTE, summarise
from studio.experiment.report import Doc, augment_section, to_markdown

ARMS = [{"arm": "real 4", "n_real": 4, "n_synthetic": 0},
        {"arm": "real 4 + synthetic 4", "n_real": 4, "n_synthetic": 4},
        {"arm": "real 8", "n_real": 8, "n_synthetic": 0}]


def _runs(repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"arm": a["arm"], "repeat": r, "accuracy": float(rng.uniform(0.5, 0.9)),
             "balanced_accuracy": float(rng.uniform(0.5, 0.9)), "auroc": float(rng.uniform(0.5, 0.9))}
            for a in ARMS for r in range(repeats)]


def _render(summary, comparisons) -> str:
    doc = Doc()
    augment_section(doc, {"summary": summary, "comparisons": comparisons, "test": "held-out real groups"})
    return to_markdown(doc)


def test_one_repeat_prints_the_reason_instead_of_intervals():
    summary, comparisons = summarise(_runs(1), ARMS)
    assert summary[0]["accuracy_ci_low"] is None and comparisons[0]["p_value"] is None
    md = _render(summary, comparisons)
    assert ONE_REPEAT_NOTE in md
    assert "real 4 + synthetic 4 − real 4: balanced accuracy" in md
    assert "t-test" not in md and "Holm-adjusted p =" not in md


def test_repeats_name_the_method_and_holm():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 30)
    groups = np.repeat(np.arange(10), 3).astype(object)
    probs = {(a["arm"], r): rng.dirichlet([1, 1], 30) for a in ARMS for r in range(3)}
    summary, comparisons = summarise(_runs(3), ARMS, probabilities=probs, test_y=y, test_groups=groups,
                                     n_classes=2, replicates=200)
    md = _render(summary, comparisons)
    assert "bootstrap over test clusters (patients) and training repeats" in md
    assert "Holm-adjusted p =" in md and "Holm-adjusted over the comparisons" in md
    assert "t-test" not in md and ONE_REPEAT_NOTE not in md


def test_markdown_table_cells_show_user_text_as_typed_and_keep_section_links():
    from studio.experiment.report_doc import to_html

    doc = Doc()
    doc.h(2, "Provenance", "provenance")
    doc.table(["name", "where"], [["![x](http://tracker.example/p.png) a|b\nc", "[Provenance](#provenance)"]])
    md = to_markdown(doc)
    assert "](http://tracker.example" not in md  # no remote image in a rendered report.md
    assert "\\!\\[x\\]\\(http\\:" in md and "a\\|b c" in md  # the text, one line, the table intact
    assert "| [Provenance](#provenance) |" in md  # a link to a section stays a link
    page = to_html(doc, "t")
    assert '<a href="#provenance">Provenance</a>' in page and "<img" not in page
