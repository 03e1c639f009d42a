"""The augment stage (optional): `evaluation.augment` on the run's images: the reference part as the
real pool, the held-out part as the test set, the kept synthetic images as the added ones."""
from __future__ import annotations

import pathlib
import re

from studio.experiment.config import ExperimentError
from studio.experiment.records import Context, holdout_rows, kept_rows, reference_rows


def augment_inputs(ctx: Context) -> dict | None:
    a = ctx.cfg.augment
    if a is None:
        return None
    return {"split": ctx.outputs("split"), "novelty": ctx.outputs("novelty"), "params": a}


def _labelled(rows: list[dict], column: str, label_of=None):
    from evaluation.augment import LabelledImage

    # the group (patient, volume, source) lets the augment statistics resample whole sources
    return [LabelledImage(pathlib.Path(r["path"]), label_of(r) if label_of else r[column], group=r.get("group") or None)
            for r in rows]


def run_augment_on(real_pool, test, synthetic, out_dir: pathlib.Path, params: dict, log):
    """The utility experiment on the run's images (``evaluation.augment``'s public entry point)."""
    from evaluation.augment import AugmentConfig, run_augment
    from studies.imaging import decode_rgb

    cfg = AugmentConfig(n_real=params["n_real"], synthetic=tuple(params["amounts"]), repeats=params["repeats"],
                        seed=params["seed"], size=params["size"], max_epochs=params["max_epochs"],
                        patience=params["patience"], batch_size=params["batch_size"], threads=params["threads"])
    return run_augment(real_pool, test, synthetic, out_dir, cfg, decode_fn=decode_rgb, log=log, progress=False)


def augment_stage(ctx: Context):
    from evaluation.augment import AugmentError

    a = ctx.cfg.augment
    col = a["label"]
    ref, held = reference_rows(ctx.out), holdout_rows(ctx.out)
    for r in ref + held:
        if not r.get(col):
            raise ExperimentError(f"augment.label: real image {r['name']} has no {col!r}")
    kept = kept_rows(ctx.out)
    if col == "modality":
        syn = _labelled(kept, "modality")
    else:
        by_case = {f"{g.name}-r{i:05d}": r[col] for g in ctx.cfg.generators for i, r in enumerate(ref)}
        syn = _labelled(kept, col, lambda r: by_case[re.sub(r"_\d+$", "", r["case_id"])
                                                     if r["case_id"] not in by_case else r["case_id"]])
    d = ctx.dir("augment")
    try:
        res = run_augment_on(_labelled(ref, col), _labelled(held, col), syn, d, a, ctx.log)
    except AugmentError as exc:
        raise ExperimentError(f"augment: {exc}") from None
    files = [p for p in d.iterdir() if p.is_file() and p.name not in ("stamp.json", "state.json")]
    return files, {"summary": res.summary, "comparisons": res.comparisons, "test": "held-out real groups"}
