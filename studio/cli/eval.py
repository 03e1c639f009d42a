"""medisyn eval: novelty, fidelity, alignment — thin wrappers over `evaluation.*`."""
from __future__ import annotations

import json
from pathlib import Path

import click

from studio.cli.groups import cli, one_line_errors


@cli.group("eval")
def eval_group() -> None:
    """Evaluate synthetic images: memorisation, fidelity/diversity, prompt alignment."""


_INPUT = click.Path(exists=False, path_type=Path)


@eval_group.command("novelty")
@click.option("--synthetic", required=True, type=_INPUT, help="Folder of generated images or a manifest.csv.")
@click.option("--reference", required=True, type=_INPUT, help="Folder or manifest.csv of real (training) images.")
@click.option("--holdout", type=_INPUT, default=None,
              help="Folder or manifest.csv of real images NOT used for training (other patients): calibrates the "
                   "thresholds. Default: each reference group against the other groups.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: novelty.csv, holdout.csv, summary.json, report.html.")
@click.option("--measures", default="pixel,patch", show_default=True,
              help="Comma-separated: pixel, patch, tiled_l2, ssim, ms_ssim, phash, features.")
@click.option("--threshold", default="auto", show_default=True,
              help="auto (calibrated), or MEASURE=VALUE[,MEASURE=VALUE] overrides (a bare number with one measure).")
@click.option("--alpha", default=0.05, show_default=True, type=click.FloatRange(0.001, 0.5),
              help="Target rate of held-out real images flagged.")
@click.option("--min-votes", type=click.IntRange(min=1), default=None,
              help="Measures that must pass for a flag (default: 1).")
@click.option("--features", "features_spec", default=None,
              help="Also compare deep features: 'inception', a TorchScript file (a vision network or a copy "
                   "detection descriptor such as SSCD) or a local HF vision model folder.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), help="Inception TorchScript file.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(64, 1024),
              help="Images are normalised to size x size first, as a study does.")
@click.option("--k", default=5, show_default=True, type=click.IntRange(1, 50), help="Candidates per search.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def novelty_cmd(synthetic, reference, holdout, out, measures, threshold, alpha, min_votes, features_spec, weights,
                size, k, quiet):
    """Nearest real image of every synthetic one; flags near-copies at a rate calibrated on held-out real images."""
    from evaluation.features import load_extractor
    from evaluation.novelty import format_rate, memorisation_answer, parse_thresholds, run_novelty

    names = [m.strip() for m in measures.split(",") if m.strip()]
    extractor = load_extractor(features_spec, weights=weights) if features_spec else None
    if extractor is not None and "features" not in names:
        names.append("features")
    result = run_novelty(synthetic, reference, out, holdout=holdout, measures=names,
                         thresholds=parse_thresholds(threshold, names), alpha=alpha, min_votes=min_votes,
                         size=size, k=k, features=extractor, progress=not quiet)
    for m in result.measures:
        click.echo(f"threshold {m} = {result.thresholds[m]:.4g} ({result.threshold_rules[m]})")
    click.echo(f"flag rule: at least {result.min_votes} of {len(result.measures)} measures pass")
    click.echo(f"held-out real images flagged: {format_rate(result.holdout_rate)} "
               f"(each held-out group left out of its own calibration)")
    click.echo(f"synthetic images flagged: {format_rate(result.synthetic_rate)} "
               f"against {result.n_reference} reference images -> {out}")
    first = [r for r in result.memorisation if r["measure"] == result.measures[0]]
    click.echo(f"closer to the training set than held-out real images? {memorisation_answer(first)}")
    dup = result.duplicates
    if dup.get("exact") or dup.get("near"):
        click.echo(f"reference duplicates: {len(dup.get('exact', []))} exact groups, {len(dup.get('near', []))} "
                   "near-duplicate pairs across groups (summary.json)")
    for w in result.warnings:
        click.echo(f"Warning: {w}", err=True)


@eval_group.command("fidelity")
@click.option("--synthetic", required=True, type=_INPUT, help="Folder or manifest.csv of generated images.")
@click.option("--reference", required=True, type=_INPUT, help="Folder or manifest.csv of real images.")
@click.option("--features", "features_spec", default="inception", show_default=True,
              help="inception (local TorchScript weights), pixels, a TorchScript file or a HF vision model folder.")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), help="Inception TorchScript file.")
@click.option("--by", type=click.Choice(["modality", "prompt", "generator"]), default=None,
              help="Break every number down by this manifest column.")
@click.option("--kid-subset-size", default=1000, show_default=True, type=click.IntRange(2, 100_000))
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), help="Write an HTML report.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder: fidelity.csv (one row per group), fidelity.json, report.html.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def fidelity_cmd(synthetic, reference, features_spec, weights, by, kid_subset_size, as_json, html_path, out, quiet):
    """FID, KID, precision/recall/density/coverage and MS-SSIM diversity."""
    from evaluation.fidelity import format_fidelity, run_fidelity, write_fidelity_outputs

    result = run_fidelity(synthetic, reference, features=features_spec, weights=weights, by=by,
                          kid_subset_size=kid_subset_size, progress=not quiet)
    if out is not None:
        write_fidelity_outputs(result, out)
    if html_path is not None:
        from evaluation.report import write_fidelity_report

        write_fidelity_report(html_path, result)
    if as_json:
        click.echo(json.dumps(result, indent=2, allow_nan=False))
        for c in result["caveats"]:
            click.echo(f"Caveat: {c}", err=True)
    else:
        click.echo(format_fidelity(result))
        if html_path is not None:
            click.echo(f"Report written to {html_path}")
        if out is not None:
            click.echo(f"-> {out}")


@eval_group.command("alignment")
@click.option("--images", required=True, type=_INPUT,
              help="manifest.csv with a prompt column (or a folder with <name>.txt prompt sidecars).")
@click.option("--clip", "clip_path", required=True, type=click.Path(path_type=Path),
              help="Local CLIP-like model folder (e.g. BiomedCLIP in transformers format).")
@click.option("--ratings", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Reader ratings: a long export CSV (case, task, rating).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Study database: read the readers' alignment ratings from it (with --study).")
@click.option("--study", "study_name", help="Study name (with --db).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@one_line_errors
def alignment_cmd(images, clip_path, ratings, db_path, study_name, as_json, quiet):
    """CLIP score, prompt retrieval accuracy, and Spearman vs readers' alignment ratings."""
    from evaluation.alignment import format_alignment, run_alignment

    if ratings is not None and (db_path or study_name):
        raise click.UsageError("give either --ratings or --db with --study, not both")
    if bool(db_path) != bool(study_name):
        raise click.UsageError("--db and --study go together")
    table = ratings
    if db_path is not None:
        if not db_path.exists():
            raise click.BadParameter(f"no such database: {db_path}", param_hint="--db")
        from studies.export import long_table

        table = long_table(db_path, study_name)
    result = run_alignment(images, clip_path, ratings=table, progress=not quiet)
    if as_json:
        click.echo(json.dumps(result, indent=2, allow_nan=False))
    else:
        click.echo(format_alignment(result))
