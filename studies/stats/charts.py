"""The study report's plotly figures, one per section of analyze()'s result (forest plots,
confusion matrix, ROC, Likert bars, agreement), and their titles."""
from __future__ import annotations

import plotly.graph_objects as go

from studies.stats.columns import TASKS

def forest_figure(turing: dict) -> go.Figure:
    """Per-reader accuracy with Wilson 95% CIs, pooled last, chance line at 0.5."""
    names, acc, lo, hi = [], [], [], []
    for name, d in list(turing["per_reader"].items()) + [("pooled", turing["pooled"])]:
        if d.get("accuracy") is None:
            continue
        names.append(name)
        acc.append(d["accuracy"])
        lo.append(d["accuracy"] - d["ci_wilson"][0])
        hi.append(d["ci_wilson"][1] - d["accuracy"])
    fig = go.Figure(go.Scatter(
        x=acc, y=names, mode="markers", error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
        marker={"symbol": ["diamond" if n == "pooled" else "circle" for n in names],
                "size": [13 if n == "pooled" else 8 for n in names]}))
    fig.add_vline(x=0.5, line_dash="dash", annotation_text="chance")
    fig.update_layout(title=figure_title("forest"), xaxis_title="accuracy",
                      xaxis_range=[0, 1], yaxis_autorange="reversed", height=max(300, 22 * len(names) + 120))
    return fig


def confusion_figure(turing: dict) -> go.Figure:
    c = turing["pooled"]["confusion"]
    z = [[c["real"]["real"], c["real"]["synthetic"]], [c["synthetic"]["real"], c["synthetic"]["synthetic"]]]
    fig = go.Figure(go.Heatmap(z=z, x=["called real", "called synthetic"], y=["real", "synthetic"],
                               text=z, texttemplate="%{text}", colorscale="Blues", showscale=False))
    fig.update_layout(title=figure_title("confusion"), yaxis_title="truth", yaxis_autorange="reversed",
                      height=360)
    return fig


def roc_figure(turing: dict) -> go.Figure:
    fig = go.Figure()
    for name, d in turing["per_reader"].items():
        r = d.get("roc")
        if r and r.get("fpr") is not None:
            label = f"{name} (AUC {d['auc']:.3f})" if d.get("auc") is not None else name
            fig.add_trace(go.Scatter(x=r["fpr"], y=r["tpr"], mode="lines+markers", name=label,
                                     line={"width": 1}, marker={"size": 4}, opacity=0.6))
    pooled = turing.get("roc_pooled")
    if pooled and pooled.get("fpr") is not None:
        label = f"pooled (AUC {pooled['auc']:.3f})" if pooled.get("auc") is not None else "pooled"
        fig.add_trace(go.Scatter(x=pooled["fpr"], y=pooled["tpr"], mode="lines", name=label,
                                 line={"width": 4, "color": "black"}))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dash", "color": "grey"}))
    fig.update_layout(title=figure_title("roc"),
                      xaxis_title="false-positive rate (real called synthetic)",
                      yaxis_title="true-positive rate (synthetic called synthetic)", height=520)
    return fig


def likert_figure(section: dict, task: str) -> go.Figure:
    """Stacked bars of rating shares by source and generator."""
    groups = [(f"source: {k}", v) for k, v in section["by_source"].items()]
    groups += [(f"generator: {k}", v) for k, v in section["by_generator"].items()]
    groups = [(n, v) for n, v in groups if v.get("n")]
    levels = sorted({lvl for _, v in groups for lvl in v["distribution"]}, key=float)
    words = dict(TASKS[task].scale) if task in TASKS else {}
    fig = go.Figure()
    for lvl in levels:
        word = words.get(int(float(lvl)))
        fig.add_trace(go.Bar(y=[n for n, _ in groups], x=[v["proportions"].get(lvl, 0.0) for _, v in groups],
                             name=f"{lvl} {word}" if word else lvl, orientation="h"))
    # The legend goes under the plot, in rows: at the side it is cut off in a narrow pane.
    fig.update_layout(barmode="stack", title=figure_title(f"likert_{task}"), xaxis_title="share of ratings",
                      xaxis_range=[0, 1], height=max(320, 40 * len(groups) + 220),
                      legend={"title": {"text": "rating"}, "orientation": "h", "x": 0, "y": -0.25,
                              "yanchor": "top", "traceorder": "normal"},
                      margin={"b": 120})
    return fig


def agreement_figure(pairwise: dict, title: str) -> go.Figure:
    """Heatmap of pairwise Cohen's κ (diagonal = 1)."""
    readers = list(dict.fromkeys(r for p in pairwise["pairs"] for r in (p["reader_a"], p["reader_b"])))
    index = {r: i for i, r in enumerate(readers)}
    z = [[1.0 if i == j else None for j in range(len(readers))] for i in range(len(readers))]
    for p in pairwise["pairs"]:
        i, j = index[p["reader_a"]], index[p["reader_b"]]
        z[i][j] = z[j][i] = p.get("kappa")
    # Cell labels, so an undefined κ reads "n/a" rather than passing for a pale κ ≈ 0.
    text = [["n/a" if v is None else f"{v:.2f}" for v in row] for row in z]
    fig = go.Figure(go.Heatmap(z=z, x=readers, y=readers, zmin=-1, zmax=1, colorscale="RdBu",
                               text=text, texttemplate="%{text}" if len(readers) <= 20 else None,
                               hovertemplate="%{y} × %{x}: κ %{text}<extra></extra>",
                               colorbar={"title": "κ"}))
    fig.update_layout(title=title, yaxis_autorange="reversed", height=max(400, 18 * len(readers) + 160))
    return fig


FIGURE_TITLES = {
    "forest": "Accuracy per reader (95% Wilson CI)",
    "confusion": "Confusion matrix (all readers)",
    "roc": "ROC curves (positive = synthetic)",
    "agreement": "Pairwise Cohen's κ (real/synthetic call)",
    "pair_forest": "Which image is synthetic? Proportion correct per reader (95% CI)",
    "likert_alignment": "Image–text alignment: rating distribution",
    "likert_quality": "Realism (quality): rating distribution",
    "agreement_alignment": "Pairwise weighted Cohen's κ (image–text alignment)",
    "agreement_quality": "Pairwise weighted Cohen's κ (realism)",
}


def figure_title(key: str) -> str:
    """The human title of a figure of `figures()` (never its internal key)."""
    return FIGURE_TITLES.get(key) or key.replace("_", " ").capitalize()


def pair_forest_figure(pair: dict) -> go.Figure:
    """Per-reader proportion correct in the 2AFC task with Clopper–Pearson CIs, pooled last."""
    names, val, lo, hi = [], [], [], []
    for name, d in list(pair["per_reader"].items()) + [("pooled", pair["pooled"])]:
        if d.get("proportion") is None:
            continue
        names.append(name)
        val.append(d["proportion"])
        lo.append(d["proportion"] - d["ci"][0])
        hi.append(d["ci"][1] - d["proportion"])
    fig = go.Figure(go.Scatter(
        x=val, y=names, mode="markers",
        error_x={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
        marker={"symbol": ["diamond" if n == "pooled" else "circle" for n in names],
                "size": [13 if n == "pooled" else 8 for n in names]}))
    fig.add_vline(x=0.5, line_dash="dash", annotation_text="chance")
    fig.update_layout(title=figure_title("pair_forest"), xaxis_title="proportion correct",
                      xaxis_range=[0, 1], yaxis_autorange="reversed",
                      height=max(300, 22 * len(names) + 120))
    return fig


def figures(result: dict) -> dict[str, go.Figure]:
    """Every figure the result supports, keyed by name."""
    out: dict[str, go.Figure] = {}
    t = result.get("turing")
    if t:
        out["forest"] = forest_figure(t)
        out["confusion"] = confusion_figure(t)
        out["roc"] = roc_figure(t)
        if t["cohen_kappa"]["pairs"]:
            out["agreement"] = agreement_figure(t["cohen_kappa"], figure_title("agreement"))
    if result.get("pair"):
        out["pair_forest"] = pair_forest_figure(result["pair"])
    for task in ("alignment", "quality"):
        sec = result.get(task)
        if sec:
            out[f"likert_{task}"] = likert_figure(sec, task)
            if sec["cohen_kappa_weighted"]["pairs"]:
                out[f"agreement_{task}"] = agreement_figure(sec["cohen_kappa_weighted"],
                                                            figure_title(f"agreement_{task}"))
    return out
