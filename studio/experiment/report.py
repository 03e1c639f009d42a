"""The experiment report: OUT/report.md and OUT/report.html, written from the run's own records.

``write_report(out, cfg, stamps)`` reads what the stages recorded (stamps, novelty.json,
fidelity.json, analysis.json, the augment summary) and writes Methods, Results, a reporting
checklist, and a provenance appendix. The HTML is one self-contained file: plotly.js inline
(once), images as data URIs, every text from the run escaped. The Markdown has the same text
and tables, without figures.

The checklist never ticks an item by default: each points to the section that answers it, or
says "not reported" when the run has nothing that answers it.
"""
from __future__ import annotations

import base64
import html
import importlib.metadata
import io
import json
import pathlib
import platform
import subprocess

from studio.experiment.report_doc import NOT_REPORTED, Doc, cell, to_html, to_markdown

FORMAT_VERSION = 2
CLAIM_REF = ("Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in Medical "
             "Imaging (CLAIM): 2024 Update. Radiol Artif Intell 2024;6(4):e240300")
# what generation and evaluation add to the study report's packages (studies.stats.report.PACKAGES)
PACKAGES = ("torch", "diffusers", "transformers", "scikit-learn", "faiss-cpu", "torchmetrics", "gradio", "ray")


# ------------------------------------------------------------------ helpers

def _load(path: pathlib.Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _ci(d: dict | None, key: str, ci_key: str) -> str:
    if not d or d.get(key) is None:
        return "n/a" + (f" ({d.get(key + '_reason')})" if d and d.get(key + "_reason") else "")
    ci = d.get(ci_key)
    return f"{d[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{d[key]:.3f}"


def _interval(d: dict, metric: str) -> str:
    lo, hi = d.get(f"{metric}_ci_low"), d.get(f"{metric}_ci_high")
    if d.get(metric) is None:
        return "n/a"
    return f"{d[metric]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def _rate(rate) -> str:
    """A flag rate {x, n, value, ci_wilson} as 'x of n (v%, 95% CI lo-hi)'."""
    if not isinstance(rate, dict) or rate.get("value") is None:
        return "n/a" + (f" ({rate['value_reason']})" if isinstance(rate, dict) and rate.get("value_reason") else "")
    lo, hi = rate["ci_wilson"]
    return f"{rate['x']} of {rate['n']} ({_pct(rate['value'])}, 95% CI {_pct(lo)}–{_pct(hi)})"


def _signed(v) -> str:
    return "n/a" if v is None or v != v else f"{v:+.3f}"


def _thumb(path: str, size: int = 96) -> str:
    """A data URI of the image as a study would show it (normalised), or '' if unreadable."""
    from PIL import Image

    from evaluation.images import ImageRef, load_normalised

    try:
        pixels = load_normalised(ImageRef(pathlib.Path(path), pathlib.Path(path).name), size)
    except Exception:  # noqa: BLE001 - a moved file: the pair is still listed by name
        return ""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _hist_svg(title: str, syn: list[float], held: list[float], threshold: float, higher: bool) -> str:
    import numpy as np

    vals = [v for v in syn + held + [threshold] if v == v]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1e-6
    edges = np.linspace(lo, hi, 21)
    hs = np.histogram(syn, edges)[0]
    hh = np.histogram(held, edges)[0]
    top = max(1, int(hs.max(initial=0)), int(hh.max(initial=0)))
    w, h, pad = 340, 120, 20
    bw = (w - 2 * pad) / 20
    parts = [f'<svg class="svg-hist" width="{w}" height="{h + 46}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{pad}" y="12" font-size="11">{html.escape(title)}</text>']
    for i in range(20):
        x = pad + i * bw
        for counts, colour, off in ((hs, "#3b6fd4", 0), (hh, "#e08a1e", bw / 2)):
            bh = (h - 30) * counts[i] / top
            parts.append(f'<rect x="{x + off:.1f}" y="{h - bh:.1f}" width="{bw / 2:.1f}" height="{bh:.1f}" '
                         f'fill="{colour}"/>')
    tx = pad + (threshold - lo) / (hi - lo) * (w - 2 * pad)
    parts.append(f'<line x1="{tx:.1f}" y1="16" x2="{tx:.1f}" y2="{h}" stroke="#a00" stroke-dasharray="3,2"/>')
    parts.append(f'<text x="{pad}" y="{h + 14}" font-size="10">{lo:.3g}</text>'
                 f'<text x="{w - pad}" y="{h + 14}" font-size="10" text-anchor="end">{hi:.3g}</text>')
    parts.append(f'<text x="{pad}" y="{h + 28}" font-size="10"><tspan fill="#3b6fd4">■ synthetic</tspan> '
                 f'<tspan fill="#e08a1e">■ held-out real</tspan></text>'
                 f'<text x="{pad}" y="{h + 42}" font-size="10" fill="#a00">┆ threshold '
                 f'({"higher" if higher else "lower"} = closer to a reference image)</text></svg>')
    return "".join(parts)


def software_versions() -> dict[str, str]:
    """The study report's versions, the platform, the packages generation and evaluation use,
    and the source commit."""
    from studies.stats import report as study_report

    study = study_report.software_versions()
    out = {"python": study.pop("python"), "platform": platform.platform(), **study}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        root = pathlib.Path(__file__).resolve().parent.parent.parent
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if commit:
            out["medisyn source"] = commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# ------------------------------------------------------------------ the report

def write_report(out, cfg, stamps: dict) -> list[pathlib.Path]:
    out = pathlib.Path(out)
    doc, figures = build(out, cfg, stamps)
    title = f"Experiment {cfg.name}"
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(to_markdown(doc), encoding="utf-8")
    page = to_html(doc, title)
    if figures:
        page = page.replace("<!--FIGURES-->", figures, 1)
    html_path.write_text(page, encoding="utf-8")
    return [md_path, html_path]


_CI_METHOD = {"bootstrap: test clusters x repeats": "two-level bootstrap over test clusters (patients) and "
                                                     "training repeats, percentile intervals",
              "t-interval over repeats": "t-interval over training repeats"}
_P_METHOD = {"paired bootstrap: test clusters x repeats": "paired two-level bootstrap over test clusters (patients) "
                                                          "and training repeats",
             "paired t-test over repeats": "paired t-test over training repeats"}


def augment_section(doc: Doc, aug: dict) -> None:
    """The augmentation results: per-arm means with intervals and the comparisons' differences with
    raw and Holm-adjusted p-values, or, where ``evaluation.augment.summarise`` gave none (one
    repeat), the reason it gave."""
    summary, comps = aug.get("summary") or [], aug.get("comparisons") or []
    doc.table(["arm", "accuracy [95% CI]", "balanced accuracy [95% CI]", "AUROC"],
              [[s["arm"], _interval(s, "accuracy"), _interval(s, "balanced_accuracy"), cell(s.get("auroc"))]
               for s in summary], f"Classifier test set: {aug.get('test', NOT_REPORTED)}")
    notes = sorted({s["note"] for s in summary + comps if s.get("note")})
    methods = sorted({s["ci_method"] for s in summary if s.get("ci_method") and s["ci_method"] != "none"})
    if methods:
        doc.p("Intervals: " + "; ".join(_CI_METHOD.get(m, m) for m in methods) + ".")
    for note in notes:
        doc.p(f"No interval or p-value: {note}.")
    comps = [c for c in comps if c.get("metric") == "balanced_accuracy"]
    if comps:
        p_methods = sorted({c["method"] for c in comps if c.get("method") and c["method"] != "none"})
        if p_methods:
            doc.p("Comparisons: " + "; ".join(_P_METHOD.get(m, m) for m in p_methods) + "; p-values Holm-adjusted "
                  "over the comparisons of each metric.")

        def line(c):
            text = f"{c['arm']} − {c['baseline']}: balanced accuracy {_signed(c.get('difference'))}"
            if c.get("ci_low") is None or c.get("ci_high") is None or c.get("p_value") is None:
                return text + f" (no interval or p-value: {c.get('note') or 'not computed'})"
            return (text + f" [{_signed(c['ci_low'])}, {_signed(c['ci_high'])}], p = {cell(c['p_value'])}"
                    + (f", Holm-adjusted p = {cell(c['p_holm'])}" if c.get("p_holm") is not None else ""))
        doc.items([line(c) for c in comps])


def build(out: pathlib.Path, cfg, stamps: dict) -> tuple[Doc, str]:
    doc = Doc()
    split = stamps["split"]["summary"]
    gens = stamps["generate"]["summary"]["generators"]
    nov = _load(out / "novelty" / "novelty.json") or {}
    fid = _load(out / "fidelity" / "fidelity.json") or {}
    study = stamps.get("study", {}).get("summary") or {}
    analysis = _load(out / "analyze" / "analysis.json") or {}
    result = analysis.get("result")
    aug = stamps.get("augment", {}).get("summary") if cfg.augment else None
    answered = set()  # anchors of sections that exist (the checklist points only to these)

    doc.h(1, f"Experiment {cfg.name}")
    n_answers = (stamps.get("analyze") or {}).get("summary", {}).get("n_answers", 0)
    doc.p(f"Written from the run in {out.name}/ by MediSyn Studio. Reader answers so far: {n_answers}. "
          "Re-run `medisyn experiment report` after more answers.")

    # ---------------- methods
    doc.h(2, "Methods", "methods")
    doc.h(3, "Real images", "real-images")
    answered.add("real-images")
    doc.p(f"Source: {split.get('source') or NOT_REPORTED}. Licences: {', '.join(split['licences'])}. "
          f"Split: {split['rule']}; {split['n_reference']} reference images in {split['groups_reference']} groups "
          f"(shown in the study, compared against in the novelty check, the real pool of the augmentation "
          f"experiment) and {split['n_holdout']} held-out images in {split['groups_holdout']} groups (only "
          "used to calibrate the novelty rule and, if run, as the augmentation test set). A group (patient, "
          "volume or source file) is never split between the two.")
    mods = sorted(set(split["reference_per_modality"]) | set(split["holdout_per_modality"]))
    doc.table(["modality", "reference", "held out"],
              [[m, split["reference_per_modality"].get(m, 0), split["holdout_per_modality"].get(m, 0)] for m in mods],
              "Real images per modality")
    if split.get("origins"):
        doc.p("Origins: " + "; ".join(split["origins"]) + ".")

    doc.h(3, "Generators", "generators")
    answered.add("generators")
    params = [("model", lambda g: g["model_label"] or g["model"]),
              ("weights SHA-256", lambda g: (g["weights_sha256"] or "")[:16] + "…"),
              ("LoRA", lambda g: g["loras"] or "none"), ("licence", lambda g: g["licence"]),
              ("sampler", lambda g: g["scheduler"]), ("steps", lambda g: g["steps"]),
              ("guidance", lambda g: g["guidance_scale"]), ("size", lambda g: g["size"]),
              ("seeds", lambda g: g["seeds"]), ("images", lambda g: g["n"])]
    doc.table(["", *gens], [[label, *[fn(g) for g in gens.values()]] for label, fn in params],
              "Generators as run (from each image's generation record; full hashes under Provenance)")
    doc.h(3, "Prompts", "prompts")
    answered.add("prompts")
    doc.items([f"{n}: {g['prompts']}; {g['images_per_prompt']} image(s) per prompt"
               + (f"; {g['truncated']} prompt(s) cut by the text encoder" if g.get("truncated") else "")
               for n, g in gens.items()])

    doc.h(3, "Novelty (memorisation) rule", "novelty-rule")
    if nov:
        answered.add("novelty-rule")
        doc.p(f"Every synthetic image was matched against the {split['n_reference']} reference real images "
              f"(and their mirror images) under {len(nov['measures'])} measures ({', '.join(nov['measures'])}). "
              f"Thresholds were calibrated on {nov['holdout_description'] or 'held-out real images'}: per measure "
              f"the split-conformal quantile of their nearest-reference values, so that a real image unrelated to "
              f"the reference part is flagged with probability at most {_pct(nov['alpha'])}; "
              f"{nov['flag_rule']}. False-flag rate on held-out real images (each held-out group judged by "
              f"thresholds calibrated without it; Wilson 95% CI): {_rate(nov.get('holdout_rate'))}. "
              + ("Flagged images were excluded before the study (gate on)." if nov["gate"] else
                 "The gate was off: flagged images stayed in the study."))
        doc.p("Are the synthetic images closer to the reference images than held-out real images are "
              f"(one-sided Mann-Whitney U, per modality)? {nov.get('memorisation_answer') or NOT_REPORTED}.")
        if nov.get("warnings"):
            doc.items([f"Warning: {w}" for w in nov["warnings"]])
        doc.table(["measure", "threshold", "rule"],
                  [[m, nov["thresholds"][m], nov["threshold_rules"][m]] for m in nov["measures"]])
        if nov["gate"]:
            if nov["excluded"]:
                doc.table(["excluded synthetic image", "nearest reference image", "measures passed"],
                          [[e["name"], e["nearest_reference"], e["flagged_by"]] for e in nov["excluded"]],
                          f"{len(nov['excluded'])} synthetic image(s) excluded as near-copies")
            else:
                doc.p("No synthetic image was flagged; none was excluded.")
        else:
            doc.p("Flagged (not excluded): " + (", ".join(nov["flagged"]) or "none") + ".")

    doc.h(3, "Fidelity", "fidelity-methods")
    answered.add("fidelity-methods")
    caveats = sorted({c for r in fid.values() if isinstance(r, dict) for c in r.get("caveats", [])})
    doc.p(f"Features: {cfg.fidelity_features}" + (f" (weights SHA-256 {stamps['fidelity']['inputs']['weights']})"
                                                   if cfg.fidelity_weights else "")
          + ". Per generator, the kept synthetic images against the reference real images, overall and per "
            "modality: FID and KID (torchmetrics), precision and recall (Kynkäänniemi et al. 2019), density and "
            "coverage (Naeem et al. 2020), diversity as mean pairwise MS-SSIM (lower is more diverse).")
    if caveats:
        doc.items(["Caveat: " + c for c in caveats])

    doc.h(3, "Study design", "study-design")
    if study:
        answered.add("study-design")
        reader_rows = _reader_rows(study)
        doc.p(f"Blinded reader study {study['study']!r}: tasks {', '.join(cfg.tasks)}; {study['n_real']} real and "
              f"{study['n_synthetic']} synthetic images, all normalised to the same {cfg.study_size}-pixel "
              "letterboxed 8-bit PNG without metadata under random ids; truth is the image's source (real or "
              f"synthetic); {cfg.training_cases} training case(s) with feedback; repeat fraction "
              f"{cfg.repeat_fraction:g}; each reader's order is shuffled by the study's secret. Readers: "
              f"{len(study['readers'])}.")
        if reader_rows:
            doc.table(["reader", "specialty", "years of experience", "reads completed"], reader_rows)
        leak = study.get("leak")
        auc = study.get("audit_auc")
        doc.p("Leak audit (a classifier on low-level image properties, cross-validated): "
              + ("flagged" if leak else "not flagged") + (f", AUC {auc:.2f}" if auc is not None else "")
              + (". The flag was acknowledged in the config (study.acknowledge_leak = true): readers may tell the "
                 "sources apart by low-level properties; interpret accuracy with this in mind." if leak else "."))
        if study.get("audit_reasons"):
            doc.items(study["audit_reasons"][:5])

    doc.h(3, "Statistical methods", "statistics")
    answered.add("statistics")
    from studies.stats import report as study_report

    doc.items([f"{h}: {t}" for h, t in study_report.METHODS])

    # ---------------- results
    doc.h(2, "Results", "results")
    doc.h(3, "Readers", "reader-results")
    figures = ""
    if result and result.get("turing"):
        answered.add("reader-results")
        t = result["turing"]
        pooled = t.get("pooled") or {}
        rows = [["pooled", pooled.get("n"), _ci(pooled, "accuracy", "ci_wilson"),
                 _ci(pooled, "sensitivity", "sensitivity_ci_wilson"), _ci(pooled, "specificity",
                                                                          "specificity_ci_wilson")]]
        for name, r in (t.get("per_reader") or {}).items():
            rows.append([name, r.get("n"), _ci(r, "accuracy", "ci_wilson"), _ci(r, "sensitivity", "sensitivity_ci_wilson"),
                         _ci(r, "specificity", "specificity_ci_wilson")])
        doc.table(["reader", "reads", "accuracy [95% CI]", "sensitivity (synthetic)", "specificity (real)"], rows,
                  "Real-or-synthetic calls (Wilson intervals)")
        rr = t.get("accuracy_random_readers") or {}
        if rr.get("mean") is not None:
            doc.p(f"Random-readers test: mean reader accuracy {_ci(rr, 'mean', 'ci')}, t = {cell(rr.get('t'))}, "
                  f"p = {cell(rr.get('p'))} (df {rr.get('df')}).")
        roc = t.get("roc_pooled") or {}
        mrmc = t.get("mrmc") or {}
        doc.table(["statistic", "value", "note"], [
            ["pooled ROC AUC (6-point rating)", cell(roc.get("auc")), roc.get("auc_reason", "")],
            ["MRMC AUC [95% CI]", _ci(mrmc, "auc", "ci"), mrmc.get("block") or mrmc.get("auc_reason", "")],
            ["MRMC p (AUC = 0.5)", cell(mrmc.get("p")), ""],
            ["Fleiss' κ", cell((t.get("fleiss_kappa") or {}).get("kappa")),
             (t.get("fleiss_kappa") or {}).get("kappa_reason") or t.get("fleiss_kappa_reason", "")],
            ["Krippendorff's α", cell((t.get("krippendorff_alpha") or {}).get("alpha")),
             t.get("krippendorff_alpha_reason", "")],
            ["mean Cohen's κ (reader pairs)", cell((t.get("cohen_kappa") or {}).get("mean_kappa")),
             (t.get("cohen_kappa") or {}).get("mean_kappa_reason", "")],
        ], "ROC, MRMC and agreement")
        by_gen = t.get("by_generator") or {}
        if by_gen:
            doc.table(["generator", "reads", "accuracy [95% CI]"],
                      [[g, r.get("n"), _ci(r, "accuracy", "ci_wilson")] for g, r in by_gen.items()],
                      t.get("by_generator_note", ""))
        by_mod = t.get("by_modality") or {}
        if by_mod:
            doc.table(["modality", "reads", "accuracy [95% CI]"],
                      [[m, r.get("n"), _ci(r, "accuracy", "ci_wilson")] for m, r in by_mod.items()])
        figures = _figures(result)
        if figures:
            doc.raw_html("<!--FIGURES-->")
    else:
        doc.p("No reader results yet: " + (analysis.get("reason") or "the analysis has not run") + ".")
    for task in ("alignment", "quality"):
        s = (result or {}).get(task)
        if s:
            answered.add("reader-results")
            rows = [[k, v.get("n"), cell(v.get("mean")), cell(v.get("median")), cell(v.get("sd"))]
                    for k, v in (s.get("by_source") or {}).items() if v]
            rows += [[f"generator {k}", v.get("n"), cell(v.get("mean")), cell(v.get("median")), cell(v.get("sd"))]
                     for k, v in (s.get("by_generator") or {}).items() if v]
            doc.table(["images", "ratings", "mean", "median", "SD"], rows, f"{task.capitalize()} ratings (1–5)")
            mw = s.get("mann_whitney") or {}
            if mw.get("p") is not None:
                doc.p(f"{mw.get('test', 'Mann–Whitney U')}: p = {cell(mw.get('p'))}.")

    doc.h(3, "Fidelity per generator and modality", "fidelity-results")
    rows = []
    for gname, r in fid.items():
        if not isinstance(r, dict) or "groups" not in r:
            rows.append([gname, "—", 0, 0, "—", "—", "—", "—", "—", "—", "—"])
            continue
        answered.add("fidelity-results")
        for g in r["groups"]:
            rows.append([gname, g["group"], g["n_synthetic"], g["n_reference"], g.get("fid"),
                         g.get("kid_mean"), g.get("precision"), g.get("recall"), g.get("density"), g.get("coverage"),
                         g.get("diversity_ms_ssim_synthetic")])
    doc.table(["generator", "modality", "synthetic", "reference", "FID", "KID", "precision", "recall", "density",
               "coverage", "MS-SSIM diversity"], rows, "Small samples: see the caveats under Methods › Fidelity")

    doc.h(3, "Novelty", "novelty-results")
    if nov:
        answered.add("novelty-results")
        doc.p(f"{nov['n_flagged']} of {nov['n_synthetic']} synthetic images flagged; {nov['n_kept']} entered the study.")
        from evaluation import descriptors as D

        hists = "".join(_hist_svg(m, nov["synthetic_values"][m], nov["holdout_values"].get(m, []), nov["thresholds"][m],
                                  D.MEASURES[m].higher_is_closer) for m in nov["measures"])
        doc.raw_html(f'<div class="hists">{hists}</div>')
        closest = nov.get("closest") or []
        doc.table(["synthetic", "nearest reference", *nov["measures"], "flagged"],
                  [[c["synthetic"], c["nearest_reference"], *[c[m] for m in nov["measures"]],
                    "yes" if c["flagged"] else "no"] for c in closest], "Closest pairs (most votes first)")
        cards = []
        for c in closest:
            a, b = _thumb(c.get("synthetic_path", "")), _thumb(c.get("reference_path", ""))
            img = "".join(f'<img alt="{html.escape(alt)}" src="{src}">' for src, alt in ((a, c["synthetic"]),
                                                                                         (b, c["nearest_reference"])) if src)
            flag = '<span class="flag">flagged</span> ' if c["flagged"] else ""
            cards.append(f'<div class="pair">{img}<br>{flag}{html.escape(c["synthetic"])} ↔ '
                         f'{html.escape(c["nearest_reference"])}</div>')
        doc.raw_html(f'<div class="pairs">{"".join(cards)}</div>')

    doc.h(3, "Augmentation", "augment-results")
    if aug:
        answered.add("augment-results")
        augment_section(doc, aug)
    else:
        doc.p("Not run (no [augment] section in the config).")

    # ---------------- checklist
    answered.add("provenance")  # written below, always
    doc.h(2, "Reporting checklist", "checklist")
    doc.p(f"Items of CLAIM 2024 ({CLAIM_REF}) that apply to a reader study of synthetic images, and items of "
          "synthetic-data reporting. Each points to the section of this report that answers it, or says "
          f"“{NOT_REPORTED}”: the run does not know it, and the authors must supply it.")
    doc.table(["source", "item", "where"], _checklist(answered, split, gens, study, nov, cfg))

    # ---------------- provenance
    doc.h(2, "Provenance", "provenance")
    info = _load(out / "experiment.json") or {}
    doc.p("Reproduce: `" + reproduce_command(cfg, info.get("engine", "local")) + "`"
          + (f"; study database: {info['db']}" if info.get("db") else "") + ".")
    doc.table(["software", "version"], [[k, v] for k, v in software_versions().items()])
    hashes = []
    for stage, s in stamps.items():
        hashes.append([stage, "inputs", s["key"]])
        hashes.append([stage, "outputs", s["outputs"]])
    for n, g in gens.items():
        hashes.append([f"generator {n}", "weights", g["weights_sha256"]])
        if g.get("lora_sha256"):
            hashes.append([f"generator {n}", "LoRA", g["lora_sha256"]])
    doc.table(["stage", "hash of", "SHA-256"], hashes, "Stage stamps (inputs: parameters and upstream outputs)")
    files = [[stage, name, h] for stage, s in stamps.items() for name, h in sorted(s.get("files", {}).items())
             if stage in ("split", "generate", "novelty", "study")]
    doc.table(["stage", "file", "SHA-256"], files[:2000], "Output files" + (" (first 2,000)" if len(files) > 2000 else ""))
    real = stamps["split"]["inputs"]
    doc.p(f"Real manifest SHA-256 {real['manifest']}; listed real images (name → SHA-256, hashed) {real['images']}.")
    doc.h(3, "Config", "config")
    doc.pre(cfg.text)
    return doc, figures


def reproduce_command(cfg, engine: str = "local") -> str:
    import shlex

    return f"medisyn experiment run {shlex.quote(str(cfg.path))}" + (f" --engine {engine}" if engine != "local" else "")


def _reader_rows(study: dict) -> list[list]:
    from studies import readers

    try:
        table = readers.reader_table(study["db"], study["study"])
    except Exception:  # noqa: BLE001 - a moved database: the design text still stands
        return []
    return [[r.reader, r.profile.get("specialty") or NOT_REPORTED, r.profile.get("years_experience") or NOT_REPORTED,
             f"{r.completed}/{r.total}"] for r in table]


def _figures(result: dict) -> str:
    """The study report's figures (studies.stats.charts.figures), plotly.js inline once."""
    from studies.stats import charts

    try:
        figs = charts.figures(result)
    except Exception:  # noqa: BLE001 - too few answers for a figure: the tables stand
        return ""
    parts, first = [], True
    for fig in figs.values():
        parts.append(fig.to_html(full_html=False, include_plotlyjs="inline" if first else False,
                                 config={"displaylogo": False, "responsive": True}))
        first = False
    return "".join(parts)


def _checklist(answered: set, split, gens, study, nov, cfg) -> list[list]:
    def at(anchor: str, title: str) -> str:
        return f"[{title}](#{anchor})" if anchor in answered else NOT_REPORTED

    licences_known = all("not reported" not in g["licence"] for g in gens.values())
    real_licence = all(lic != "not reported" for lic in split["licences"])
    readers_profiled = bool(study) and bool(_reader_rows(study)) and all(
        r[1] != NOT_REPORTED for r in _reader_rows(study))
    claim = [
        ("Data sources", at("real-images", "Real images") if split.get("source") or split.get("origins") else NOT_REPORTED),
        ("Eligibility criteria (inclusion/exclusion of images)", NOT_REPORTED),
        ("Data pre-processing", at("study-design", "Study design")),
        ("Selection of data subsets; partitions and their independence (group-wise split)",
         at("real-images", "Real images")),
        ("De-identification methods", NOT_REPORTED),
        ("Handling of missing data", at("statistics", "Statistical methods")),
        ("Image acquisition protocol", NOT_REPORTED),
        ("Reference standard (ground truth) and its rationale", at("study-design", "Study design")),
        ("Annotators/readers: number, qualifications, experience",
         at("study-design", "Study design") if readers_profiled else NOT_REPORTED),
        ("Annotation/reading instructions and blinding", at("study-design", "Study design")),
        ("Model description (generators)", at("generators", "Generators")),
        ("Software libraries, frameworks and versions", at("provenance", "Provenance")),
        ("Metrics of performance", at("statistics", "Statistical methods")),
        ("Statistical measures of significance and uncertainty", at("statistics", "Statistical methods")),
        ("Flow of images through the study (exclusions)", at("novelty-rule", "Novelty rule")),
        ("Demographic and clinical characteristics of cases", NOT_REPORTED),
        ("Performance estimates with confidence intervals", at("reader-results", "Readers")),
        ("Failure analysis (misclassified/flagged cases)", at("novelty-results", "Novelty")),
        ("Limitations, including sample size", at("fidelity-methods", "Fidelity caveats")),
        ("Availability of code, data, and protocol (config)", at("provenance", "Provenance")),
        ("Registration, funding and conflicts of interest", NOT_REPORTED),
    ]
    synthetic = [
        ("Generator identity, weights hash and fine-tuning (LoRA)", at("generators", "Generators")),
        ("Generator's training data", NOT_REPORTED),
        ("Generator licence and terms of use", at("generators", "Generators") if licences_known else NOT_REPORTED),
        ("Licence of the real images", at("real-images", "Real images") if real_licence else NOT_REPORTED),
        ("Sampling parameters and seeds", at("generators", "Generators")),
        ("How prompts were chosen", at("prompts", "Prompts")),
        ("Memorisation check, its calibration and error rate", at("novelty-rule", "Novelty rule")),
        ("Near-copies excluded, listed", at("novelty-rule", "Novelty rule") if nov else NOT_REPORTED),
        ("Fidelity metrics with features and sample sizes", at("fidelity-results", "Fidelity")),
        ("Normalisation of real and synthetic images and leak audit", at("study-design", "Study design")),
        ("Downstream utility (augmentation)", at("augment-results", "Augmentation")),
    ]
    return ([["CLAIM 2024", item, where] for item, where in claim]
            + [["synthetic data", item, where] for item, where in synthetic])
