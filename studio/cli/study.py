"""medisyn CLI commands: study create | audit | invite | export | progress.

Thin wrappers over studies.ingest / readers / export / session. Bad input ends with one
`Error: ...` line on stderr and exit status 1, never a traceback.
"""
from __future__ import annotations

import sys

import click

from studio.cli.groups import cli, model, study  # noqa: F401  (groups these commands attach to)
from studio.cli.groups import one_line_errors as _one_line_errors


_db_option = click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False),
                          help="Study database file (SQLite).")
_study_option = click.option("--study", "study_name", required=True, help="Study name.")


_skip_option = click.option(
    "--skip-unreadable", is_flag=True,
    help="Leave out images that cannot be decoded (listed as SKIPPED) instead of failing the "
         "whole input [default: all or nothing].")


def _report_skipped(skipped: list[dict]) -> None:
    for s in skipped:
        click.echo(f"SKIPPED {s['row']}: {s['path']}: {s['error']}", err=True)
    if skipped:
        click.echo(f"WARNING: {len(skipped)} unreadable image(s) left out (listed above).",
                   err=True)


def _report_duplicates(dups: list[dict]) -> None:
    for d in dups:
        click.echo(f"DUPLICATE {d['row']}: {d['path']} has the same pixels as case "
                   f"{d['same_as']}", err=True)
    if dups:
        click.echo(f"WARNING: {len(dups)} image(s) duplicate the pixels of another case: "
                   "readers see them twice and may recognise them.", err=True)


@study.command("create")
@_db_option
@click.option("--name", required=True, help="Name of the new study (unique in the database).")
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="CSV with columns path, source, modality, prompt [generator, case_id, group, "
                   "frame, window, slice, axis, crop].")
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="Folder with real/ and synthetic/ subfolders (instead of --manifest).")
@click.option("--size", default="auto", show_default=True,
              help="Side of the square stimulus PNG (letterboxed), or auto: the largest "
                   "multiple of 64 in 256-1024 that enlarges at most half of the images "
                   "(their median longest side). The audit lists images scaled more than 2x.")
@click.option("--tasks", default="turing", show_default=True,
              help="Comma-separated: turing, alignment, quality; or pair alone (two images "
                   "side by side: which one is synthetic?).")
@click.option("--training", "training", default=0, show_default=True, type=int,
              help="Cases held aside as training (shown first, with feedback, not analysed).")
@click.option("--repeat-fraction", default=0.0, show_default=True, type=float,
              help="Fraction of cases shown a second time later (intra-reader reliability).")
@click.option("--attention-checks", default=0, show_default=True, type=int,
              help="Instructed-response attention checks per reader.")
@click.option("--counterbalance/--no-counterbalance", default=False, show_default=True,
              help="Rotate the order of the tasks after turing across readers (turing, "
                   "which never shows the prompt, is always asked first).")
@click.option("--cases-per-reader", type=int, default=None,
              help="Incomplete design: each reader reads this many main cases (pairs for the "
                   "pair task), real and synthetic in the pool's proportions, the least-read cases first "
                   "[default: every case].")
@click.option("--readers-per-case", type=int, default=None,
              help="Coverage target K with --cases-per-reader: `study readers` reports how "
                   "many more readers each case needs to be read K times.")
@click.option("--repeat-after", default="",
              help="Wash-out delay for repeat reads, e.g. 7d, 36h, 90m: repeats come after "
                   "all main reads and only this long after the first read of the case "
                   "[default: repeats within the session].")
@_skip_option
@click.option("--title", "reader_title", default=None,
              help="Title readers see on the reader page [default: \"Reader study\"; the "
                   "study's name is never shown to readers].")
@click.option("--seed", type=int, default=None,
              help="Make the reader orders reproducible, for testing only: anyone who knows "
                   "the seed can predict every reader's order, which breaks blinding. "
                   "Default: a random secret that is never shown.")
@_one_line_errors
def create_cmd(db_path, name, manifest, images_dir, size, tasks, training, repeat_fraction,
               attention_checks, counterbalance, cases_per_reader, readers_per_case,
               repeat_after, skip_unreadable, reader_title, seed):
    """Create a blinded study from a manifest or an images folder, and audit it for leaks."""
    from studies.design import StudyOptions, parse_duration
    from studies.ingest import create_study

    from studies.errors import StudyError

    from studies.imaging.sizing import parse_size

    try:
        size = parse_size(size)
    except StudyError as exc:
        raise StudyError(f"--{exc}") from None
    options = StudyOptions(training_cases=training, repeat_fraction=repeat_fraction,
                           attention_checks=attention_checks, counterbalance=counterbalance,
                           cases_per_reader=cases_per_reader, readers_per_case=readers_per_case,
                           repeat_after_s=parse_duration(repeat_after), seed=seed)
    with click.progressbar(length=1, label="Ingesting", file=sys.stderr,
                           show_pos=True) as bar:
        def progress(done, total):
            bar.length = total
            bar.update(done - bar.pos)

        summary = create_study(db_path, name, manifest=manifest, images_dir=images_dir,
                               size=size, tasks=tasks, options=options, progress=progress,
                               skip_unreadable=skip_unreadable, reader_title=reader_title)
    click.echo(f"Created study {summary.name!r}: {summary.n_cases} images "
               f"({summary.n_real} real, {summary.n_synthetic} synthetic; "
               f"{summary.n_training} held aside for training), tasks {','.join(summary.tasks)}, "
               f"{summary.size}x{summary.size} PNG, in {summary.seconds:.1f} s.")
    if summary.seed is not None:
        click.echo(f"WARNING: reader orders derive from the given seed {summary.seed}: anyone who "
                   "knows it can predict them. Use --seed for testing only.", err=True)
    click.echo(f"Stimuli: {summary.stimuli_dir}")
    if summary.pairing:
        click.echo(summary.pairing)
    _report_skipped(summary.skipped)
    _report_duplicates(summary.duplicates)
    click.echo(summary.audit_text)
    if summary.audit.get("leak"):
        click.echo("WARNING: the leak audit flags this study; see above.", err=True)
    if summary.content_warnings:
        click.echo(f"WARNING: {len(summary.content_warnings)} image(s) show little or nothing "
                   "(see 'Content warnings' above).", err=True)


@study.command("add")
@_db_option
@_study_option
@click.option("--manifest", type=click.Path(dir_okay=False),
              help="CSV in the create --manifest format (e.g. a generation batch's manifest.csv).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False),
              help="Folder with real/ and/or synthetic/ subfolders (instead of --manifest).")
@click.option("--allow-duplicates", is_flag=True,
              help="Add images whose pixels equal a case already in the study (or another new "
                   "image) anyway, with a warning [default: refuse them all].")
@_skip_option
@_one_line_errors
def add_cmd(db_path, study_name, manifest, images_dir, allow_duplicates, skip_unreadable):
    """Add images to a draft study (before the first reader is invited); re-runs the audit."""
    from studies.ingest import add_cases

    summary = add_cases(db_path, study_name, manifest=manifest, images_dir=images_dir,
                        allow_duplicates=allow_duplicates, skip_unreadable=skip_unreadable)
    click.echo(f"Added {summary.n_added} cases ({summary.n_real} real, {summary.n_synthetic} "
               f"synthetic) to {summary.study!r}: {summary.n_cases} cases now.")
    _report_skipped(summary.skipped)
    _report_duplicates(summary.duplicates)
    click.echo(summary.audit_text)


@study.command("audit")
@_db_option
@_study_option
@click.option("--recompute", is_flag=True, help="Re-run the audit on the stored stimuli.")
@click.option("--json", "as_json", is_flag=True,
              help='Print the report as JSON: {"flagged": bool, "reasons": [...], "verdict": ..., '
                   '"auc": ..., ...}.')
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write a contact sheet: the stored stimuli as readers will see them, "
                   "real and synthetic side by side per modality, with the audit's flags "
                   "(one self-contained HTML file).")
@_one_line_errors
def audit_cmd(db_path, study_name, recompute, as_json, html_path):
    """Print the study's leak audit (as stored at creation, or recomputed)."""
    import json

    from studies.audit import is_flagged
    from studies.ingest import audit_study

    report, text = audit_study(db_path, study_name, recompute=recompute)
    if html_path:
        from studies.contact_sheet import write_contact_sheet

        written = write_contact_sheet(db_path, study_name, html_path)
        click.echo(f"Contact sheet: {written}", err=as_json)
    if as_json:
        flagged = bool(is_flagged(report))
        payload = {"study": study_name, "flagged": flagged,
                   "reasons": report.get("reasons", []),
                   "verdict": report.get("verdict", "leak" if flagged else "ok"),
                   "auc": report.get("auc"), **report}
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    click.echo(text)


@study.command("invite")
@_db_option
@_study_option
@click.option("--reader", help="Reader name (unique within the study).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Invite many readers: a CSV with a `reader` column and optional profile "
                   "columns (specialty, years_experience and the study's own fields).")
@click.option("--specialty", default=None, help="Reader profile: specialty.")
@click.option("--years-experience", default=None, help="Reader profile: years of experience.")
@click.option("--base-url", default=None,
              help="Where the studio is reachable for this reader [default: the address "
                   "`medisyn studio` stored in the database, else http://127.0.0.1:7860/].")
@click.option("--reissue", is_flag=True,
              help="Give an existing reader a new link (the old one stops working).")
@click.option("--acknowledge-leak", is_flag=True,
              help="Invite even though the leak audit flags the study (after reading it: "
                   "`medisyn study audit`). Remembered until the audit is re-run.")
@_one_line_errors
def invite_cmd(db_path, study_name, reader, csv_path, specialty, years_experience, base_url,
               reissue, acknowledge_leak):
    """Invite readers and print their personal links (shown once; only a hash is stored)."""
    from studies.storage import settings
    from studies.errors import ReaderError
    from studies.readers import invite, invite_csv, reader_link

    if (reader is None) == (csv_path is None):
        raise ReaderError("give exactly one of --reader or --csv")
    url = settings.check_base_url(base_url) if base_url else settings.base_url(db_path)
    if csv_path:
        if reissue or specialty or years_experience:
            raise ReaderError("--csv takes the profile from its columns and cannot reissue")
        for inv in invite_csv(db_path, study_name, csv_path, acknowledge_leak=acknowledge_leak):
            click.echo(f"{inv.reader},{reader_link(inv.token, url)}")
        return
    profile = {k: v for k, v in (("specialty", specialty),
                                 ("years_experience", years_experience)) if v is not None}
    token = invite(db_path, study_name, reader, reissue=reissue, profile=profile or None,
                   acknowledge_leak=acknowledge_leak)
    click.echo(reader_link(token, url))


@study.command("readers")
@_db_option
@_study_option
@_one_line_errors
def readers_cmd(db_path, study_name):
    """List readers: link status (never the link itself), consent, profile, progress."""
    from studies.readers import coverage, reader_table
    from studies.stats.numbers import fmt_time

    rows = reader_table(db_path, study_name)
    if not rows:
        click.echo("No readers invited yet.")
    else:
        click.echo(f"{'reader':<24} {'link':<12} {'done':>11}  {'consented':<10} "
                   f"{'profile form':<17} profile")
        for r in rows:
            profile = ", ".join(f"{k}={v}" for k, v in r.profile.items()) or "-"
            form = fmt_time(r.profile_completed_at, minutes=True) or "-"
            click.echo(f"{r.reader[:24]:<24} {r.link:<12} {r.completed:>5}/{r.total:<5}  "
                       f"{'yes' if r.consented_at else 'no':<10} {form:<17} {profile}")
    cov = coverage(db_path, study_name)
    line = (f"Coverage: each of {cov.n_units} main cases read {cov.min_reads}-{cov.max_reads} "
            f"times so far ({cov.min_assigned}-{cov.max_assigned} once every invited reader "
            "finishes)")
    if cov.target:
        line += (f"; target {cov.target}: " +
                 (f"invite {cov.readers_needed} more reader(s)" if cov.readers_needed
                  else "reached" if cov.min_reads >= cov.target
                  else "reached once every invited reader finishes"))
    click.echo(line + ".")


def _reader_switch(active: bool):
    @_db_option
    @_study_option
    @click.option("--reader", required=True, help="Reader name.")
    @_one_line_errors
    def cmd(db_path, study_name, reader):
        from studies.readers import set_reader_active

        set_reader_active(db_path, study_name, reader, active)
        click.echo(f"Reader {reader!r} {'reactivated: their link works again' if active else 'deactivated: their link no longer works (answers kept)'}.")
    return cmd


study.command("deactivate", help="Deactivate a reader: their link stops working; answers are "
              "kept.")(_reader_switch(False))
study.command("reactivate", help="Reactivate a deactivated reader (same link).")(
    _reader_switch(True))


def _status_switch(status: str, message: str):
    @_db_option
    @_study_option
    @_one_line_errors
    def cmd(db_path, study_name):
        from studies.lifecycle import set_status

        set_status(db_path, study_name, status)
        click.echo(f"Study {study_name!r} {message}.")
    return cmd


study.command("close", help="Close a study: readers can no longer answer (they see a closed "
              "page); results stay.")(_status_switch("closed", "closed"))
study.command("reopen", help="Reopen a closed or archived study.")(
    _status_switch("open", "reopened"))
study.command("archive", help="Archive a study: closed, and listed apart in the admin.")(
    _status_switch("archived", "archived"))


@study.command("configure")
@_db_option
@_study_option
@click.option("--instructions-file", type=click.Path(dir_okay=False, exists=True),
              help="Text file: instructions shown before the first case.")
@click.option("--consent-file", type=click.Path(dir_okay=False, exists=True),
              help="Text file: consent text the reader must agree to before the first case.")
@click.option("--profile-fields", default=None,
              help="Comma-separated extra reader profile fields, e.g. site,country.")
@click.option("--ask-profile/--no-ask-profile", default=None,
              help="Readers fill in their profile (specialty, years of experience and the "
                   "study's fields, all required) before the first case.")
@click.option("--allow-back/--no-back", "allow_back", default=None,
              help="Whether readers may go back to the previous case and change their "
                   "answer (new studies: allowed).")
@click.option("--title", default=None,
              help="Title readers see on the reader page (\"\" clears it: readers then see "
                   "\"Reader study\"; the study's name is never shown to readers).")
@_one_line_errors
def configure_cmd(db_path, study_name, instructions_file, consent_file, profile_fields,
                  ask_profile, allow_back, title):
    """Set the reader-facing title, instructions, consent text, profile fields, profile form
    and going-back rule of a study."""
    import pathlib

    from studies.lifecycle import set_texts

    from studies.errors import StudyError

    def read(path):
        try:
            return pathlib.Path(path).read_text(encoding="utf-8") if path else None
        except UnicodeDecodeError:
            raise StudyError(f"{path} is not UTF-8 text") from None

    texts = set_texts(db_path, study_name, instructions=read(instructions_file),
                      consent=read(consent_file), profile_fields=profile_fields,
                      ask_profile=ask_profile, allow_back=allow_back, title=title)
    title_line = (f"reader title {texts.reader_title!r}" if texts.reader_title else
                  "no reader title (readers see \"Reader study\")")
    click.echo(f"Study {study_name!r}: {texts.status}; {title_line}; instructions "
               f"{len(texts.instructions)} characters; consent "
               f"{len(texts.consent) or 'none'}{' characters' if texts.consent else ''}; "
               f"profile fields specialty, years_experience"
               f"{''.join(', ' + f for f in texts.profile_fields)}"
               f" ({'readers fill them in' if texts.ask_profile else 'not asked of readers'}); "
               f"going back {'allowed' if texts.allow_back else 'not allowed'}.")


@study.command("export")
@_db_option
@_study_option
@click.option("--format", "fmt", type=click.Choice(["long", "imrmc"]), required=True,
              help="long: one row per response; imrmc: iMRMC readerID,caseID,modalityID,score.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output CSV file.")
@click.option("--all-responses", is_flag=True,
              help="long only: also export superseded answers (adds a 'superseded' column).")
@_one_line_errors
def export_cmd(db_path, study_name, fmt, out, all_responses):
    """Export responses as a long table or in iMRMC layout (CSV)."""
    from studies.export import write_export

    n = write_export(db_path, study_name, fmt, out, include_superseded=all_responses)
    click.echo(f"Wrote {n} rows to {out}")


@study.command("progress")
@_db_option
@_study_option
@_one_line_errors
def progress_cmd(db_path, study_name):
    """Per-reader progress (completed reads, training, attention checks)."""
    from studies.monitoring import progress
    from studio.format.progress import ATTENTION_HEADER, attention_cell

    rows = progress(db_path, study_name)
    if not rows:
        click.echo("No readers invited yet.")
        return
    click.echo(f"{'reader':<24} {'done':>11} {'training':>9}  {ATTENTION_HEADER:<18}  last answer")
    for p in rows:
        attention = attention_cell(p.attention_passed, p.attention_answered, p.attention_total)
        click.echo(f"{p.reader[:24]:<24} {p.completed:>5}/{p.total:<5} "
                   f"{p.training_completed:>4}/{p.training_total:<4}  {attention:<18}  "
                   f"{p.last_answered_at or '-'}")
