"""Export a study's responses: the long table (input of studies.stats.analysis) and iMRMC.

`long_table`: one row per effective response, columns `LONG_COLUMNS`. Responses are
append-only; when a reader changed an answer, the latest one for that (read, task) wins and
the earlier ones are left out (pass `include_superseded=True` to get them too, with an
extra `superseded` column). `group` (after the columns the issue names) is the manifest's
case group, so the analysis can break results down by it. The reader's profile follows
each answer: `specialty`, `years_experience`, then one column per profile field the study
defines (`lifecycle.set_texts`). Pair-task reads (2AFC) are one row each: `case` is the
left image, `pair_case` the right one, `source` is `pair`, `truth` the side of the
synthetic image (`left`/`right`), `response` the side the reader called synthetic,
`generator` the synthetic image's generator; `pair_case` is empty for single-image reads. `duration_flagged` is 1 where
the browser's time on case was implausibly short (< 50 ms) and the server's was stored. Rows of every kind are present and flagged: `training` (1 for
training reads, excluded from analysis), `repeat` (1 for the second read of a case, for
intra-reader reliability), and attention checks appear with task `attention`
(truth = the value the reader was told to pick, response/rating = what they picked).
`comment` and `non_diagnostic` are the reader's free-text comment and "non-diagnostic
image" flag (1/0) for the case: per read, those sent with the read's latest answer, so
every task row of a read carries the same (a superseded row, with `include_superseded`,
carries what was sent with it). A comment is plain text as typed; in the CSV it is
escaped like any other text cell (below).

`imrmc_table`: the iMRMC data-frame layout `readerID, caseID, modalityID, score` for the
turing task only, training/repeat/attention reads excluded, score = the 6-point rating
(6 = definitely synthetic), plus one truth row per case (`readerID="truth"`,
`modalityID="truth"`, score 1 = synthetic, 0 = real). modalityID is the generator; real
cases are listed under every generator so each modality is a full real-vs-that-generator
ROC task (paired on the real cases). With a single (or no named) generator, modalityID
is the study name.

Spreadsheet safety (`write_export`): every text cell goes through `studies.cells.spreadsheet_safe`
(see that module); `read_long_csv` undoes it. The in-memory tables (`long_table`,
`imrmc_table`) are never escaped.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile

import pandas as pd

from studies.records import log_action, study_row
from studies.storage.connections import reading, stimuli_dir
from studies.storage.group_commit import write_if_writable
from studies.design import ATTENTION
from studies.cells import spreadsheet_safe, spreadsheet_unsafe
from studies.errors import StudyError
from studies.stats.columns import IMRMC_COLUMNS, LONG_COLUMNS

FORMATS = ("long", "imrmc")
def _escape_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):  # object or str: text cells
            out[col] = out[col].map(spreadsheet_safe).astype(object)
    return out


def read_long_csv(path: str | pathlib.Path) -> pd.DataFrame:
    """A `long` export CSV as written by `write_export`, with the spreadsheet escapes undone."""
    df = pd.read_csv(path)
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]):
            df[col] = df[col].map(spreadsheet_unsafe)
    return df


def long_table(db_path: str | pathlib.Path, study: str, *,
               include_superseded: bool = False) -> pd.DataFrame:
    """One row per response (latest answer per read and task), columns `LONG_COLUMNS`."""
    with reading(db_path) as db:
        srow = study_row(db, study)
        rows = db.execute(
            "SELECT rd.name, c.case_key, r.task, c.source, c.generator, c.modality, c.prompt, c.group_name, "
            "a.kind, a.expected, r.answer, r.rating, r.duration_ms, r.answered_at, r.duration_flagged, "
            "r.id = (SELECT max(r2.id) FROM responses r2 "
            "        WHERE r2.assignment_id = r.assignment_id AND r2.task = r.task) AS latest, "
            "p.case_key, p.source, p.generator, rd.profile, r.assignment_id, r.id, r.comment, "
            "r.non_diagnostic "
            "FROM responses r JOIN assignments a ON a.id = r.assignment_id "
            "JOIN readers rd ON rd.id = r.reader_id JOIN cases c ON c.id = r.case_id "
            "LEFT JOIN cases p ON p.id = a.pair_case_id "
            "WHERE rd.study_id = ? ORDER BY rd.ordinal, a.position, r.id",
            [srow["id"]]).fetchall()
    fields = json.loads(srow.get("profile_fields") or "[]")
    remarks: dict[int, tuple[int, str, int]] = {}  # read -> (id, comment, flag) of its latest answer
    for *_, aid, rid, comment, nondiag in rows:
        if aid not in remarks or rid > remarks[aid][0]:
            remarks[aid] = (rid, comment or "", int(nondiag or 0))
    records = []
    for (reader, case, task, source, generator, modality, prompt, group, kind, expected, answer,
         rating, duration, answered_at, flagged, latest, pair_case, _pair_source, pair_generator,
         profile, aid, _rid, own_comment, own_nondiag) in rows:
        if not latest and not include_superseded:
            continue
        profile = json.loads(profile or "{}")
        if pair_case is not None:  # 2AFC: truth is the side of the synthetic image
            truth = "left" if source == "synthetic" else "right"
            generator = generator if source == "synthetic" else pair_generator
            source = "pair"
        elif task == "turing":
            truth = source
        elif task == ATTENTION:
            truth = str(json.loads(expected)["value"])
        else:
            truth = None
        rec = {
            "study": srow["name"], "reader": reader, "case": case, "task": task,
            "source": source, "generator": generator or "", "modality": modality or "",
            "prompt": prompt or "", "truth": truth, "response": answer, "rating": rating,
            "duration_ms": duration, "answered_at": answered_at,
            "training": int(kind == "training"), "repeat": int(kind == "repeat"),
            "group": group or "", "duration_flagged": int(flagged or 0),
            "pair_case": pair_case or "",
            "specialty": profile.get("specialty", ""),
            "years_experience": profile.get("years_experience", ""),
            "comment": remarks[aid][1] if latest else (own_comment or ""),
            "non_diagnostic": remarks[aid][2] if latest else int(own_nondiag or 0),
            **{f: profile.get(f, "") for f in fields},
        }
        if include_superseded:
            rec["superseded"] = int(not latest)
        records.append(rec)
    columns = LONG_COLUMNS + fields + (["superseded"] if include_superseded else [])
    df = pd.DataFrame.from_records(records, columns=columns)
    for col in ("rating", "duration_ms", "training", "repeat", "duration_flagged", "non_diagnostic") + (("superseded",) if include_superseded else ()):
        df[col] = df[col].astype("int64")
    return df


def imrmc_table(db_path: str | pathlib.Path, study: str) -> pd.DataFrame:
    """iMRMC layout (readerID, caseID, modalityID, score) of the turing ratings."""
    long = long_table(db_path, study)
    reads = long[(long.task == "turing") & (long.training == 0) & (long["repeat"] == 0)
                 & (long.source != "pair")]
    if reads.empty:
        return pd.DataFrame(columns=IMRMC_COLUMNS)
    generators = sorted(set(reads.loc[reads.source == "synthetic", "generator"]))
    if len(generators) <= 1:
        modalities = {str(long.study.iloc[0]): reads}
    else:
        modalities = {
            (g or "unnamed"): reads[(reads.source == "real") | (reads.generator == g)]
            for g in generators
        }
    parts = []
    truth = reads.drop_duplicates("case")[["case", "source"]]
    parts.append(pd.DataFrame({
        "readerID": "truth", "caseID": truth["case"].to_numpy(), "modalityID": "truth",
        "score": (truth["source"] == "synthetic").astype(int).to_numpy(),
    }))
    for modality, df in modalities.items():
        parts.append(pd.DataFrame({
            "readerID": df["reader"].to_numpy(), "caseID": df["case"].to_numpy(),
            "modalityID": modality, "score": df["rating"].to_numpy(),
        }))
    out = pd.concat(parts, ignore_index=True)[IMRMC_COLUMNS]
    out["score"] = out["score"].astype("int64")
    return out


def write_export(db_path: str | pathlib.Path, study: str, fmt: str, out: str | pathlib.Path,
                 *, include_superseded: bool = False, actor: str = "cli") -> int:
    """Write the `long` or `imrmc` table as CSV to `out` (atomically); returns data rows."""
    if fmt not in FORMATS:
        raise StudyError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    out = pathlib.Path(out)
    if not out.parent.is_dir():
        raise StudyError(f"output folder does not exist: {out.parent}")
    if fmt == "long":
        df = long_table(db_path, study, include_superseded=include_superseded)
    else:
        df = imrmc_table(db_path, study)
        if df.empty:  # an empty file and exit 0 reads as success; say why instead
            raise StudyError(no_imrmc_reason(db_path, study))
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            _escape_frame(df).to_csv(fh, index=False)
        os.replace(tmp, out)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise

    def log(db):
        log_action(db, actor, "export", study_row(db, study)["id"], format=fmt, rows=len(df),
                   out=str(out))

    write_if_writable(db_path, log)  # a read-only database is exported, just not logged
    return len(df)


def no_imrmc_reason(db_path, study: str) -> str:
    """Why a study has no iMRMC table (pair reads have no one-rating-per-image form)."""
    long = long_table(db_path, study)
    if (long["task"] == "pair").any():
        return ("the pair (2AFC) task has no iMRMC layout: iMRMC takes one rating per image, "
                "a 2AFC read is one call per pair of images; use --format long (one row per "
                "pair read: reader, case, pair_case, truth, response) or `medisyn study "
                "analyze` for proportion correct")
    return ("no turing ratings to export yet: the iMRMC layout holds the turing task's "
            "6-point ratings of main reads (training, repeat and attention reads excluded)")


def case_images(db_path: str | pathlib.Path, study: str, *, source: str | None = None) -> list[dict]:
    """A study's stored stimulus PNGs (for evaluation against its real images): one dict per
    case with `case`, `source`, `modality`, `prompt`, `generator` and `path` (the stimulus file
    under `stimuli_dir`). `source` ('real' or 'synthetic') filters; cases in case order."""
    with reading(db_path) as db:
        srow = study_row(db, study)
        rows = db.execute(
            "SELECT case_key, source, modality, prompt, generator, stimulus_id FROM cases "
            "WHERE study_id = ? AND (? IS NULL OR source = ?) ORDER BY id",
            [srow["id"], source, source]).fetchall()
    folder = stimuli_dir(db_path)
    return [{"case": c, "source": s, "modality": m or "", "prompt": p or "", "generator": g or "",
             "path": folder / f"{sid}.png"} for c, s, m, p, g, sid in rows]


def analyze_db(db_path, study: str, **kwargs) -> dict:
    """`studies.stats.analysis.analyze` on `long_table(db_path, study)`.

    The study name is passed on (the export's `study` column holds it, so the filter keeps
    every row) so that `input.study` names the study even before anyone has answered.
    """
    from studies.stats.analysis import analyze  # lazy: scipy/statsmodels load only when analysing

    return analyze(long_table(db_path, study), study=study, **kwargs)
