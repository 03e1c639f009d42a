"""The stages that screen the synthetic images before the study: novelty (near-copies of the
reference part flagged, thresholds calibrated on the held-out part; `calibrated_novelty`) and
fidelity (per generator, overall and per modality)."""
from __future__ import annotations

import pathlib
import shutil

from studies.cells import write_csv
from studio.experiment.config import ExperimentCancelled, ExperimentError
from studio.experiment.records import (Context, holdout_rows, kept_rows, reference_rows, sha_file,
                                       synthetic_rows, write_json)


def novelty_inputs(ctx: Context) -> dict:
    c = ctx.cfg
    return {"split": ctx.outputs("split"), "generate": ctx.outputs("generate"), "gate": c.novelty_gate,
            "measures": list(c.novelty_measures), "alpha": c.novelty_alpha, "size": c.novelty_size,
            "seed": c.seed}


def _refs(rows: list[dict]):
    from evaluation.images import ImageRef

    # the group travels with each image so the novelty check never compares an image with its own
    # patient / volume and leaves whole held-out groups out of their own calibration
    return [ImageRef(pathlib.Path(r["path"]), r["name"], r.get("modality", ""), r.get("prompt", ""),
                     r.get("generator", ""), patient_group=r.get("group", "") or "") for r in rows]


def calibrated_novelty(synthetic: list[dict], reference: list[dict], holdout: list[dict], out_dir: pathlib.Path,
                       *, measures, alpha: float, size: int, seed: int, cancel=None) -> dict:
    """Flag synthetic images that are near-copies of reference images: one call of
    ``evaluation.novelty.run_novelty`` with the held-out part as its held-out real images.

    That function calibrates each measure's threshold on the held-out images (split-conformal, so a
    real image unrelated to the reference part is flagged with probability at most ``alpha``),
    measures the held-out flag rate leaving each held-out group out of its own calibration (Wilson
    95 % CI), and asks whether the synthetic images are closer to the reference than the held-out
    ones are (one-sided Mann-Whitney U per modality). Returns the rows and a JSON-able summary.
    """
    from evaluation.novelty import format_rate, memorisation_answer, run_novelty

    cache = out_dir / ".cache"
    measures = tuple(measures)
    try:
        res = run_novelty(_refs(synthetic), _refs(reference), out_dir, holdout=_refs(holdout), measures=measures,
                          alpha=alpha, size=size, cache_dir=cache, seed=seed, progress=False, cancel=cancel)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    hold_rows = res.holdout.get("rows", [])
    n_groups = res.holdout.get("n_groups")
    # run_novelty words its calibration set for the CLI; here it is the split's held-out part
    where = f"{res.holdout.get('n', len(hold_rows))} held-out real images of the split ({n_groups} groups)"
    rules = {m: r.replace(f"held-out real images ({len(holdout)} given with --holdout)", "held-out real images "
                          "of the split") for m, r in res.threshold_rules.items()}
    first = [r for r in res.memorisation if r["measure"] == measures[0]]
    return {
        "rows": res.rows, "thresholds": res.thresholds, "threshold_rules": rules,
        "min_votes": res.min_votes, "measures": list(measures), "alpha": alpha,
        "flag_rule": f"flagged when at least {res.min_votes} of {len(measures)} measures pass their threshold",
        "holdout_n": res.holdout.get("n", len(hold_rows)), "holdout_groups": n_groups,
        "holdout_description": where,
        "holdout_flagged": sorted(r["holdout"] for r in hold_rows if r["flagged"]),
        "holdout_rate": res.holdout_rate, "holdout_rate_text": format_rate(res.holdout_rate),
        "synthetic_rate": res.synthetic_rate, "synthetic_rate_text": format_rate(res.synthetic_rate),
        "memorisation": res.memorisation, "memorisation_answer": memorisation_answer(first),
        "warnings": list(res.warnings),
        "duplicates": {"exact": len(res.duplicates.get("exact", [])), "near": len(res.duplicates.get("near", []))},
        "holdout_values": {m: [float(v) for v in res.calibration[m]] for m in measures},
    }


def novelty_stage(ctx: Context):
    c = ctx.cfg
    d = ctx.dir("novelty")
    syn = synthetic_rows(ctx.out, c.generators)
    from evaluation.errors import EvaluationCancelled, EvaluationError

    try:
        res = calibrated_novelty(syn, reference_rows(ctx.out), holdout_rows(ctx.out), d,
                                 measures=c.novelty_measures, alpha=c.novelty_alpha,
                                 size=c.novelty_size, seed=c.seed, cancel=ctx.cancel)
    except EvaluationCancelled:
        raise ExperimentCancelled("cancelled") from None
    except EvaluationError as exc:
        raise ExperimentError(f"novelty: {exc}") from None
    by_name = {r["name"]: r for r in syn}
    flagged = {r["synthetic"] for r in res["rows"] if r["flagged"]}
    kept = [r for r in syn if not (c.novelty_gate and r["name"] in flagged)]
    excluded = [dict(by_name[r["synthetic"]], nearest_reference=r["nearest_reference"], votes=r["votes"],
                     flagged_by=r["flagged_by"]) for r in res["rows"] if r["flagged"]]
    fields = ("path", "name", "modality", "prompt", "generator", "case_id", "group")
    files = [write_csv(d / "kept.csv", kept, fields),
             write_csv(d / "flagged.csv", excluded, (*fields, "nearest_reference", "votes", "flagged_by"))]
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in res["rows"]]
    first = res["measures"][0]
    from evaluation import descriptors as D

    sign = -1 if D.MEASURES[first].higher_is_closer else 1
    closest = sorted(rows, key=lambda r: (-r["votes"], sign * r[first]))[:12]
    ref_paths = {r["name"]: r["path"] for r in reference_rows(ctx.out)}
    for r in closest:
        r["synthetic_path"] = by_name[r["synthetic"]]["path"]
        r["reference_path"] = ref_paths.get(r["nearest_reference"], "")
    summary = {k: v for k, v in res.items() if k != "rows"}
    summary.update({"n_synthetic": len(syn), "n_flagged": len(flagged), "n_kept": len(kept), "gate": c.novelty_gate,
                    "excluded": [{"name": e["name"], "nearest_reference": e["nearest_reference"],
                                  "flagged_by": e["flagged_by"]} for e in excluded] if c.novelty_gate else [],
                    "flagged": sorted(flagged), "closest": closest,
                    "synthetic_values": {m: [float(r[m]) for r in rows] for m in res["measures"]}})
    write_json(d / "novelty.json", summary)
    files += [d / "novelty.json"] + [p for p in (d / "novelty.csv", d / "holdout.csv", d / "summary.json")
                                     if p.is_file()]
    if not kept:
        raise ExperimentError("novelty: every synthetic image was flagged as a near-copy; nothing is left for "
                              "the study (see OUT/novelty/flagged.csv)")
    ctx.log(f"novelty: {len(flagged)} of {len(syn)} synthetic images flagged; held-out real images flagged "
            f"{res['holdout_rate_text']}"
            + (f"; {len(syn) - len(kept)} kept out of the study" if c.novelty_gate else ""))
    ctx.log("novelty: synthetic images closer to the reference than held-out real images? "
            + res["memorisation_answer"])
    for w in res["warnings"]:
        ctx.log(f"novelty: warning: {w}")
    return files, {k: summary[k] for k in ("n_synthetic", "n_flagged", "n_kept", "gate", "holdout_rate",
                                           "memorisation_answer", "warnings")}


def fidelity_inputs(ctx: Context) -> dict:
    c = ctx.cfg
    return {"split": ctx.outputs("split"), "novelty": ctx.outputs("novelty"), "features": c.fidelity_features,
            "weights": sha_file(c.fidelity_weights) if c.fidelity_weights else None, "seed": c.seed}


def fidelity_stage(ctx: Context):
    from evaluation.errors import EvaluationCancelled, EvaluationError
    from evaluation.fidelity import run_fidelity

    c = ctx.cfg
    kept = kept_rows(ctx.out)
    reference = _refs(reference_rows(ctx.out))
    results = {}
    for g in c.generators:
        ctx.check()
        syn = _refs([r for r in kept if r["generator"] == g.name])
        if not syn:
            results[g.name] = {"error": "no synthetic images kept"}
            continue
        try:
            results[g.name] = run_fidelity(syn, reference, features=c.fidelity_features,
                                           weights=str(c.fidelity_weights) if c.fidelity_weights else None,
                                           by="modality", seed=c.seed, progress=False, cancel=ctx.cancel,
                                           kid_subset_size=min(1000, len(syn), len(reference)))
        except EvaluationCancelled:
            raise ExperimentCancelled("cancelled") from None
        except EvaluationError as exc:
            raise ExperimentError(f"fidelity ({g.name}): {exc}") from None
    d = ctx.dir("fidelity")
    path = d / "fidelity.json"
    write_json(path, results)
    return [path], {"generators": sorted(results)}

