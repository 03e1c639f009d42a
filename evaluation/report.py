"""Self-contained HTML reports (no scripts, no external files: images inline as data: URIs).

`write_novelty_report` shows, per measure, the histogram of synthetic-to-reference nearest
distances over the held-out-to-reference ones with the threshold marked, then a gallery of the
closest pairs side by side, most similar first. `write_fidelity_report` tabulates the fidelity
and diversity figures with their caveats. Every text is HTML-escaped (file names are user input).
"""
from __future__ import annotations

import base64
import html
import io
import pathlib

import numpy as np
from PIL import Image

__all__ = ["histogram_svg", "write_fidelity_report", "write_novelty_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
.pairs{display:flex;flex-wrap:wrap;gap:12px}.pair{border:1px solid #ccc;padding:6px;font-size:.8em;width:360px}
.pair img{width:170px;height:170px;image-rendering:pixelated}.flag{color:#b00;font-weight:bold}
.caveat{background:#fff4d6;border-left:4px solid #e0a800;padding:.4em .8em}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _thumb(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def histogram_svg(edges, a, b, threshold=None, labels=("synthetic → reference", "reference → reference"),
                  width=480, height=160) -> str:
    """Two overlaid histograms (counts normalised to fractions) with an optional threshold line."""
    edges = np.asarray(edges, float)
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    fa = a / max(a.sum(), 1)
    fb = b / max(b.sum(), 1)
    top = max(fa.max(initial=0), fb.max(initial=0), 1e-9)
    n = len(fa)
    bw = (width - 40) / max(n, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 30}" role="img">']
    for frac, colour, dx in ((fb, "#7aa6d8", 0), (fa, "#e07a5f", bw / 2)):
        for i, f in enumerate(frac):
            h = (height - 10) * f / top
            parts.append(f'<rect x="{30 + i * bw + dx:.1f}" y="{height - h:.1f}" width="{bw / 2:.1f}" '
                         f'height="{h:.1f}" fill="{colour}"/>')
    parts.append(f'<line x1="30" y1="{height}" x2="{width - 10}" y2="{height}" stroke="#333"/>')
    lo, hi = edges[0], edges[-1]
    for x, v in ((30, lo), (width - 10, hi)):
        parts.append(f'<text x="{x}" y="{height + 14}" font-size="11" text-anchor="middle">{v:.3g}</text>')
    if threshold is not None and hi > lo:
        x = 30 + (width - 40) * (threshold - lo) / (hi - lo)
        x = min(max(x, 30), width - 10)
        parts.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="#b00" stroke-dasharray="4 3"/>'
                     f'<text x="{x:.1f}" y="{height + 26}" font-size="11" fill="#b00" text-anchor="middle">'
                     f'threshold {threshold:.3g}</text>')
    parts.append("</svg>")
    legend = (f'<div class="legend"><span style="background:#e07a5f"></span>{_esc(labels[0])}'
              f'<span style="background:#7aa6d8"></span>{_esc(labels[1])}</div>')
    return "".join(parts) + legend


def write_novelty_report(path, summary: dict, closest: list[dict], syn, ref, *, size: int = 192) -> pathlib.Path:
    from evaluation.images import load_normalised

    path = pathlib.Path(path)
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Novelty report</title>",
           f"<style>{_CSS}</style></head><body><h1>Novelty / memorisation report</h1>",
           f"<p>{summary['n_synthetic']} synthetic images against {summary['n_reference']} reference images: "
           f"<b>{summary['n_flagged']} flagged ({summary['fraction_flagged']:.1%})</b>. "
           f"{_esc(summary['flag_rule'])}.</p>"]
    for key, label in (("synthetic_flag_rate", "Synthetic images flagged"),
                       ("holdout_flag_rate", "Held-out real images flagged (each group left out of its calibration)")):
        rate = summary.get(key) or {}
        if rate.get("value") is not None:
            lo, hi = rate["ci_wilson"]
            out.append(f"<p>{_esc(label)}: {rate['x']} of {rate['n']} ({rate['value']:.1%}, 95% CI "
                       f"{lo:.1%}-{hi:.1%}).</p>")
    if summary.get("memorisation_answer"):
        out.append("<p>Closer to the training set than held-out real images (one-sided Mann-Whitney): "
                   f"{_esc(summary['memorisation_answer'])}.</p>")
    for w in summary.get("warnings", []):
        out.append(f"<p class='caveat'>{_esc(w)}</p>")
    out.append("<table><tr><th>measure</th><th>meaning</th><th>threshold</th><th>how chosen</th><th>passing</th></tr>")
    for m, info in summary["measures"].items():
        t = summary["threshold"][m]
        out.append(f"<tr><td>{_esc(m)}</td><td>{_esc(info['description'])} "
                   f"({'higher' if info['higher_is_closer'] else 'lower'} = closer)</td>"
                   f"<td>{t['value']:.4g}</td><td>{_esc(t['rule'])}</td><td>{info['n_passing']}</td></tr>")
    out.append("</table><h2>Nearest-neighbour distributions</h2>")
    for m, h in summary["histogram"].items():
        out.append(f"<h3>{_esc(m)}</h3>" + histogram_svg(
            h["edges"], h["synthetic_to_reference"], h.get("holdout_to_reference", h["reference_to_reference"]),
            summary["threshold"][m]["value"], labels=("synthetic → reference", "held-out real → reference")))
    out.append("<h2>Closest pairs (most similar first)</h2><div class='pairs'>")
    measures = list(summary["measures"])
    for r in closest:
        a = _thumb(load_normalised(syn[r["_syn"]], size))
        b = _thumb(load_normalised(ref[r["_ref"]], size)) if r["_ref"] >= 0 else ""
        vals = ", ".join(f"{m} {r[m]:.3g}" for m in measures)
        flag = "<span class='flag'>flagged</span> " if r["flagged"] else ""
        out.append(f"<div class='pair'><img src='{a}' alt='synthetic'> <img src='{b}' alt='reference'><br>"
                   f"{flag}{_esc(r['synthetic'])} ↔ {_esc(r['nearest_reference'])}<br>{_esc(vals)}</div>")
    out.append("</div></body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
    return path


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return _esc(v)


def write_fidelity_report(path, result: dict) -> pathlib.Path:
    path = pathlib.Path(path)
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Fidelity report</title>",
           f"<style>{_CSS}</style></head><body><h1>Fidelity and diversity report</h1>",
           f"<p>Features: {_esc(result['features'])}.</p>"]
    for c in result.get("caveats", []):
        out.append(f"<p class='caveat'>{_esc(c)}</p>")
    cols = ["group", "n_synthetic", "n_reference", "fid", "kid_mean", "kid_std", "precision", "recall",
            "density", "coverage", "diversity_ms_ssim_synthetic", "diversity_ms_ssim_reference"]
    out.append("<table><tr>" + "".join(f"<th>{_esc(c)}</th>" for c in cols) + "</tr>")
    for g in result["groups"]:
        out.append("<tr>" + "".join(f"<td>{_fmt(g.get(c))}</td>" for c in cols) + "</tr>")
    out.append("</table><p>FID and KID: lower = closer to the reference distribution (torchmetrics). "
               "Precision/density: how much of the synthetic set lies in the reference manifold; "
               "recall/coverage: how much of the reference is covered (Kynkäänniemi et al. 2019; "
               "Naeem et al. 2020). Diversity: mean pairwise MS-SSIM within the group (lower = more "
               "diverse), synthetic and real.</p></body></html>")
    path.write_text("\n".join(out), encoding="utf-8")
    return path
