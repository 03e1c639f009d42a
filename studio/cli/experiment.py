"""medisyn CLI commands: experiment (`medisyn experiment augment | augment-demo | run | status | report`),
thin wrappers over evaluation.augment, studio.experiment.augment_demo and studio.experiment (the pipeline)."""
from __future__ import annotations

import click

from studio.cli.groups import cli, one_line_errors


@cli.group()
def experiment() -> None:
    """Downstream experiments with synthetic images (does synthetic data help a classifier?)."""


def _ints(ctx, param, value):
    if value in (None, ""):
        return ()
    try:
        out = tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated whole numbers expected") from None
    if any(v < 1 for v in out):
        raise click.BadParameter("values must be >= 1")
    return out


def _common(fn):
    for option in reversed([
        click.option("--repeats", type=click.IntRange(1, 1000), default=5, show_default=True,
                     help="Repeats of every arm (own seed and real/synthetic subsamples)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--size", type=click.IntRange(8, 1024), default=64, show_default=True, help="Classifier input size."),
        click.option("--max-epochs", type=click.IntRange(1, 10_000), default=40, show_default=True),
        click.option("--patience", type=click.IntRange(1, 10_000), default=6, show_default=True,
                     help="Early stopping: epochs without a better validation loss."),
        click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True),
        click.option("--lr", type=float, default=1e-3, show_default=True),
        click.option("--widths", callback=_ints, default="16,32,64", show_default=True,
                     help="ResNet stage widths (from scratch)."),
        click.option("--pretrained", type=click.Path(exists=True, file_okay=False), default=None,
                     help="Local transformers image-classification folder to start from (head re-sized)."),
        click.option("--synthetic-only", is_flag=True, help="Also train on the largest synthetic set alone."),
        click.option("--threads", type=click.IntRange(1, 512), default=1, show_default=True),
        click.option("--val-size", type=click.IntRange(1, None), default=None,
                     help="Validation images held out of the real pool, the same for every arm and repeat "
                          "(default: 20% of the pool, less if the pool cannot spare it beside 2N)."),
        click.option("--bootstrap", type=click.IntRange(100, 1_000_000), default=2000, show_default=True,
                     help="Bootstrap replicates over test clusters and repeats (intervals and p-values)."),
        click.option("--quiet", is_flag=True, help="No progress bar or per-run lines."),
    ]):
        fn = option(fn)
    return fn


def _config(n_real, amounts, **kw):
    from evaluation.augment import AugmentConfig

    return AugmentConfig(n_real=n_real, synthetic=amounts, repeats=kw["repeats"], seed=kw["seed"], size=kw["size"],
                         max_epochs=kw["max_epochs"], patience=kw["patience"], batch_size=kw["batch_size"],
                         lr=kw["lr"], widths=kw["widths"], pretrained=kw["pretrained"],
                         synthetic_only=kw["synthetic_only"], threads=kw["threads"], val_size=kw["val_size"],
                         bootstrap=kw["bootstrap"])


def _report(result) -> None:
    def ci(lo, hi, sign=""):
        return "" if lo is None else f" [{lo:{sign}.3f}, {hi:{sign}.3f}]"

    for s in result.summary:
        click.echo(f"{s['arm']:<32} balanced accuracy {s['balanced_accuracy']:.3f}"
                   f"{ci(s['balanced_accuracy_ci_low'], s['balanced_accuracy_ci_high'])}  "
                   f"accuracy {s['accuracy']:.3f}  AUROC {s['auroc']:.3f}")
    for c in result.comparisons:
        if c["metric"] == "balanced_accuracy":
            p = "" if c["p_value"] is None or c["p_holm"] is None else \
                f", p = {c['p_value']:.3g} (Holm {c['p_holm']:.3g})"
            click.echo(f"  {c['arm']} - {c['baseline']}: balanced accuracy {c['difference']:+.3f}"
                       f"{ci(c['ci_low'], c['ci_high'], '+')}{p}")
    if result.summary and result.summary[0].get("note"):
        click.echo(f"No intervals or p-values: {result.summary[0]['note']}")
    click.echo(f"{result.out_dir} ({result.seconds:.0f} s)")


@experiment.command("augment")
@click.option("--real", "real_csv", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Labelled real training pool: CSV with path,label (paths relative to the CSV).")
@click.option("--test", "test_csv", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Labelled real test set: only ever scored, never used for training or selection.")
@click.option("--synthetic", "synthetic_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Labelled synthetic images (CSV with path,label).")
@click.option("--model", default=None, help="Or generate them: a model `medisyn generate` accepts ...")
@click.option("--label-prompts", type=click.Path(exists=True, dir_okay=False), default=None,
              help="... with this CSV of label,prompt rows (several prompts per label are used in turn).")
@click.option("--lora", "loras", multiple=True, help="LoRA for --model (PATH[:SCALE]).")
@click.option("--label-column", default="label", show_default=True, help="Label column of the CSVs.")
@click.option("--validation", "validation_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Real validation images (CSV) for early stopping, outside the pool; default: held out of it.")
@click.option("--n-real", type=click.IntRange(1, None), required=True, help="N: real training images per arm.")
@click.option("--synthetic-amounts", "amounts", callback=_ints, required=True,
              help="M values, comma-separated: arms real N + synthetic M.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@_common
@one_line_errors
def augment_command(real_csv, test_csv, synthetic_csv, model, label_prompts, loras, label_column, validation_csv,
                    n_real, amounts, out, **kw):
    """Train the same classifier on real N, real N + synthetic M (each M), real 2N and optionally
    synthetic only, over several seeds and subsamples; report accuracy, balanced accuracy and macro
    AUROC with 95% bootstrap CIs (test clusters x repeats; a `group` column marks images of one
    source) and Holm-corrected paired comparisons against real N and real 2N (evaluation/augment.py)."""
    import csv
    import pathlib

    from evaluation.augment import AugmentError, read_labelled, run_augment
    from studies.imaging import decode_rgb
    from studio.experiment.augment_generate import generate_synthetic

    if (synthetic_csv is None) == (model is None):
        raise click.UsageError("give exactly one of --synthetic or --model (with --label-prompts)")
    try:
        real = read_labelled(real_csv, label_column=label_column)
        test = read_labelled(test_csv, label_column=label_column)
        validation = read_labelled(validation_csv, label_column=label_column) if validation_csv else None
        if synthetic_csv:
            synthetic = read_labelled(synthetic_csv, label_column=label_column)
        else:
            if not label_prompts:
                raise click.UsageError("--model needs --label-prompts")
            prompts: dict[str, list[str]] = {}
            with open(label_prompts, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    if not (row.get("label") or "").strip() or not (row.get("prompt") or "").strip():
                        raise AugmentError(f"{label_prompts}: every row needs a label and a prompt")
                    prompts.setdefault(row["label"].strip(), []).append(row["prompt"].strip())
            per_label = -(-max(amounts) // max(1, len(prompts)))
            synthetic = generate_synthetic(model, prompts, per_label, pathlib.Path(out) / "synthetic",
                                           seed=kw["seed"], options={"loras": list(loras)} if loras else None)
        result = run_augment(real, test, synthetic, out, _config(n_real, amounts, **kw), decode_fn=decode_rgb,
                             log=(lambda m: None) if kw["quiet"] else (lambda m: click.echo(m, err=True)),
                             progress=not kw["quiet"], validation=validation)
    except ValueError as exc:  # checks that raise plain ValueError; the library's errors: one_line_errors
        raise click.ClickException(str(exc)) from None
    _report(result)


@experiment.command("augment-demo")
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--model", default="embedded", show_default=True, help="Generator of the synthetic images.")
@click.option("--n-real", type=click.IntRange(1, None), default=30, show_default=True)
@click.option("--synthetic-amounts", "amounts", callback=_ints, default="30,60", show_default=True)
@click.option("--pool", type=click.IntRange(12, None), default=240, show_default=True,
              help="Real training crops built from the shipped training views.")
@_common
@one_line_errors
def augment_demo_command(out, model, n_real, amounts, pool, **kw):
    """The augmentation experiment at CPU scale on the public images shipped with pydicom, nibabel and
    scikit-image: modality classification (6 classes), real images from the training views, test
    images from held-out slices/frames/regions, synthetic images from the embedded model."""
    from studio.experiment.augment_demo import run_demo

    try:
        result = run_demo(out, _config(n_real, amounts, **kw), model=model, pool=pool,
                          log=(lambda m: None) if kw["quiet"] else (lambda m: click.echo(m, err=True)),
                          progress=not kw["quiet"])
    except ValueError as exc:  # checks that raise plain ValueError; the library's errors: one_line_errors
        raise click.ClickException(str(exc)) from None
    _report(result)


# --- the validation-study pipeline (studio.experiment.pipeline) ---------------------------------------

def _stages():
    from studio.experiment import STAGES

    return click.Choice(STAGES)


@experiment.command("run")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--until", "until", type=_stages(), default=None, help="Stop after this stage.")
@click.option("--force", "force", type=_stages(), multiple=True,
              help="Redo this stage even if its inputs are unchanged (repeatable).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where images are generated (same bytes either way).")
def experiment_run(config, until, force, engine) -> None:
    """Run an experiment config (TOML): split → generate → novelty → fidelity → study → analyze →
    augment → report. Unchanged stages are skipped; see docs/experiments.md."""
    from studio.experiment import ExperimentError, run_experiment

    try:
        result = run_experiment(config, until=until, force=force, engine=engine, log=click.echo)
    except ExperimentError as exc:
        raise click.ClickException(str(exc)) from None
    ran = result.ran
    click.echo(f"{result.out}: ran {', '.join(ran) if ran else 'nothing (all stages unchanged)'}")
    if result.report:
        click.echo(f"report: {result.report}")


@experiment.command("status")
@click.argument("out", type=click.Path(file_okay=False))
def experiment_status_cmd(out) -> None:
    """Each stage's state and the readers' progress."""
    from studio.experiment import ExperimentError, experiment_status

    try:
        status = experiment_status(out)
    except ExperimentError as exc:
        raise click.ClickException(str(exc)) from None
    for line in status.lines():
        click.echo(line)


@experiment.command("report")
@click.argument("out", type=click.Path(file_okay=False))
def experiment_report_cmd(out) -> None:
    """Redo the analysis and the report with the readers' answers so far."""
    from studio.experiment import ExperimentError, experiment_report

    try:
        result = experiment_report(out, log=click.echo)
    except ExperimentError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"report: {result.report}")
