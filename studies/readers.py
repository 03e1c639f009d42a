"""Readers: invitations, access tokens, assignments, access and deactivation, coverage.

`invite` creates the reader, stores their whole session (the slots of
`design.reader_order`) as assignment rows, and returns a fresh access token. The token
(`secrets.token_urlsafe(32)`, 256 bits) is shown once; only its SHA-256 is stored, so a
leaked database does not leak working links (`reader_table` lists readers with their link
status, never a token; `invite(..., reissue=True)` gives a new link). Each assignment
carries its own random `view_id`, the only id a reader ever sees for an image: ids differ
per reader and per read, so a repeated case does not repeat its id and readers cannot
compare ids.

Incomplete designs (`StudyOptions.cases_per_reader`): each new reader gets the
least-read cases (real and synthetic in the pool's proportions, so a case's expected reads
do not depend on its source; ties broken by the order secret), so coverage stays even;
`coverage` reports reads per case and how many more readers reach the target K.
Pair task: the pairs (`design.make_pairs`, keyed by the order secret, so every reader
gets the same pairs) are stored as assignments with `pair_case_id` (the right image) and
its own `pair_view_id`.

Profiles and consent: `studies.profiles`.

Access (`reader_status`): a deactivated reader's link stops working (`reader_for_token`
returns None; answers are kept); a reader of a closed or archived study still resolves,
with `ReaderRef.study_status` saying so, so the page can show a polite closed page.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import hmac
import io
import json
import math
import pathlib
import secrets

from studies import audit as audit_mod
from studies.imaging import stimuli
from studies.records import log_action, order_secret, study_row
from studies.storage.connections import reading
from studies.storage.schema import utc_now
from studies.storage.group_commit import write
from studies.design import (
    StudyOptions, choose_subset, make_pairs, pair_unit, reader_order,
)
from studies.errors import ReaderError
from studies.profiles import check_profile, study_profile_fields

DEFAULT_BASE_URL = "http://127.0.0.1:7860/"
MAX_READER_NAME = 100
_TOKEN_MAX = 256  # anything longer is not one of ours; refuse before hashing


MAX_CSV_READERS = 10_000
STUDY_OPEN = "open"


@dataclasses.dataclass(frozen=True)
class ReaderRef:
    reader_id: int
    study_id: int
    study: str
    name: str
    study_status: str = STUDY_OPEN  # open | closed | archived: only open studies take answers

    @property
    def study_open(self) -> bool:
        return self.study_status == STUDY_OPEN


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def reader_link(token: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """The personal link a reader opens: `<base_url>/?token=<token>`."""
    return f"{base_url.rstrip('/')}/?token={token}"


def _check_reader_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ReaderError("reader name must not be empty")
    name = name.strip()
    if len(name) > MAX_READER_NAME or any(ord(c) < 32 for c in name):
        raise ReaderError(f"reader name must be at most {MAX_READER_NAME} printable characters")
    return name


def _check_open(srow: dict) -> None:
    status = srow.get("status") or STUDY_OPEN
    if status != STUDY_OPEN:
        raise ReaderError(f"study {srow['name']!r} is {status}; reopen it to invite readers")


def _unit_reads(db, study_id: int) -> dict:
    """Main reads assigned so far per case key (or per pair unit)."""
    reads: dict = {}
    for key, pkey in db.execute(
            "SELECT c.case_key, p.case_key FROM assignments a JOIN readers r ON r.id = a.reader_id "
            "JOIN cases c ON c.id = a.case_id LEFT JOIN cases p ON p.id = a.pair_case_id "
            "WHERE r.study_id = ? AND a.kind = 'main'", [study_id]):
        reads[key] = reads.get(key, 0) + 1
        if pkey is not None:
            reads[pkey] = reads.get(pkey, 0) + 1
    return reads


def _leak_gate(db, srow: dict, acknowledge: bool, actor: str) -> None:
    """Refuse a new reader for a study whose leak audit is flagged, unless the researcher
    acknowledges it (now, or earlier for the same audit report). The acknowledgement is
    stored in the report (a re-run audit drops it) and in the audit log."""
    report = json.loads(srow.get("audit_report") or "{}")
    if not audit_mod.is_flagged(report) or report.get("acknowledged"):
        return
    if not acknowledge:
        reasons = report.get("reasons") or []
        first = f": {reasons[0]}" if reasons else ""
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        raise ReaderError(
            f"the leak audit flags study {srow['name']!r}{first}{more}. Readers could tell real "
            "from synthetic without judging the images. Read the audit (medisyn study audit), "
            "then invite with --acknowledge-leak (in the admin: tick the acknowledgement) to "
            "open it anyway")
    report["acknowledged"] = {"by": actor, "at": utc_now(),
                              "n_reasons": len(report.get("reasons") or [])}
    db.execute("UPDATE studies SET audit_report = ? WHERE id = ?",
               [json.dumps(report, default=str), srow["id"]])
    srow["audit_report"] = json.dumps(report, default=str)
    log_action(db, actor, "acknowledge_leak", srow["id"],
               reasons=report.get("reasons", [])[:5])


def acknowledge_leak(db_path: str | pathlib.Path, study: str, *, actor: str = "cli") -> bool:
    """Record that the researcher read the flagged audit and opens the study anyway (what
    `invite(..., acknowledge_leak=True)` does first); False when the audit is not flagged."""
    out = []

    def tx(db):
        srow = study_row(db, study)
        flagged = bool(audit_mod.is_flagged(json.loads(srow.get("audit_report") or "{}")))
        if flagged:
            _leak_gate(db, srow, True, actor)
        out.append(flagged)

    write(db_path, tx)
    return out[0]


def leak_acknowledgement(db_path: str | pathlib.Path, study: str) -> dict | None:
    """Whether inviting needs an acknowledgement: None when the study's audit is not
    flagged; else {"acknowledged": who/when or None, "reasons": [...]}."""
    with reading(db_path) as db:
        report = json.loads(study_row(db, study).get("audit_report") or "{}")
    if not audit_mod.is_flagged(report):
        return None
    return {"acknowledged": report.get("acknowledged"), "reasons": report.get("reasons", [])}


def _invite_tx(db, srow: dict, name: str, digest: str, *, reissue: bool, profile: dict | None,
               actor: str, acknowledge_leak: bool = False) -> None:
    existing = db.execute("SELECT id, deactivated_at FROM readers WHERE study_id = ? AND name = ?",
                          [srow["id"], name]).fetchone()
    now = utc_now()
    if existing:
        if not reissue:
            raise ReaderError(f"reader {name!r} is already invited to study {srow['name']!r} "
                              "(use --reissue / reissue=True for a new link)")
        if existing[1]:
            raise ReaderError(f"reader {name!r} is deactivated; reactivate them first")
        db.execute("UPDATE readers SET token_hash = ?, token_issued_at = ? WHERE id = ?",
                   [digest, now, existing[0]])
        log_action(db, actor, "reissue_token", srow["id"], reader=name)
        return
    if reissue:
        raise ReaderError(f"no reader {name!r} in study {srow['name']!r} to reissue a link for")
    _check_open(srow)
    _leak_gate(db, srow, acknowledge_leak, actor)
    profile = check_profile(profile, study_profile_fields(srow))
    ordinal = db.execute("SELECT count(*) FROM readers WHERE study_id = ?",
                         [srow["id"]]).fetchone()[0]
    reader_id = db["readers"].insert({
        "study_id": srow["id"], "name": name, "token_hash": digest, "ordinal": ordinal,
        "created_at": now, "token_issued_at": now, "profile": json.dumps(profile),
    }).last_pk
    options = StudyOptions.from_dict(json.loads(srow["options"]))
    secret = order_secret(db, srow["id"])
    # The order is derived from case keys (stable across databases, so a --seed study
    # is reproducible), keyed by the study's secret; database ids follow manifest order.
    main, training, ids, meta = [], [], {}, []
    for cid, key, role, source, modality, group in db.execute(
            "SELECT id, case_key, role, source, modality, group_name FROM cases "
            "WHERE study_id = ?", [srow["id"]]):
        ids[key] = cid
        (training if role == "training" else main).append(key)
        if role != "training":
            meta.append((key, source, modality or "", group or ""))
    pairs: list = []
    if "pair" in options.tasks:
        pairs, _ = make_pairs(meta, secret)
        if not pairs:
            raise ReaderError("the pair task needs at least one real and one synthetic image "
                              "of the same modality (and group)")
    if options.cases_per_reader:
        reads = _unit_reads(db, srow["id"])
        if pairs:
            by_unit = {pair_unit(r, s_): (r, s_) for r, s_ in pairs}
            units = [(u, "pair") for u in by_unit]
            unit_reads = {u: reads.get(r, 0) for u, (r, _) in by_unit.items()}
            chosen = choose_subset(units, unit_reads, options.cases_per_reader, secret, name)
            pairs = [by_unit[u] for u in chosen]
        else:
            source_of = {k: s_ for k, s_, _, _ in meta}
            main = choose_subset([(k, source_of[k]) for k in main], reads,
                                 options.cases_per_reader, secret, name)
    slots = reader_order(secret, name, main, options, training_ids=training,
                         reader_index=ordinal, pairs=pairs)
    db["assignments"].insert_all(({
        "reader_id": reader_id, "case_id": ids[slot.case_id], "position": pos,
        "kind": slot.kind, "tasks": json.dumps(list(slot.tasks)), "n_tasks": len(slot.tasks),
        "expected": json.dumps({"scale": slot.scale_task, "value": slot.expected})
        if slot.expected is not None else None,
        "view_id": stimuli.new_stimulus_id(), "completed_at": None,
        "pair_case_id": ids[slot.pair_case_id] if slot.pair_case_id is not None else None,
        "pair_view_id": stimuli.new_stimulus_id() if slot.pair_case_id is not None else None,
        "min_delay_s": slot.min_delay_s,
    } for pos, slot in enumerate(slots, start=1)), batch_size=1000)
    log_action(db, actor, "invite_reader", srow["id"], reader=name, slots=len(slots))


def invite(db_path: str | pathlib.Path, study: str, reader: str, *, reissue: bool = False,
           actor: str = "cli", profile: dict | None = None,
           acknowledge_leak: bool = False) -> str:
    """Invite `reader` to `study` and return their raw access token (shown once).

    Reader names are unique per study: inviting an existing name raises ReaderError unless
    `reissue=True`, which replaces the token (the old link stops working) and keeps the
    reader's assignments and answers. `profile`: specialty, years_experience and the
    study's own profile fields (`study_texts`), exported with each answer. Closed and
    archived studies take no new readers. A study whose leak audit is flagged takes new
    readers only once the researcher acknowledges it (`acknowledge_leak=True`, the CLI's
    --acknowledge-leak, the admin's tick box; remembered until the audit is re-run).
    """
    name = _check_reader_name(reader)
    token = secrets.token_urlsafe(32)
    digest = token_hash(token)
    write(db_path, lambda db: _invite_tx(db, study_row(db, study), name, digest,
                                        reissue=reissue, profile=profile, actor=actor,
                                        acknowledge_leak=acknowledge_leak))
    return token


@dataclasses.dataclass(frozen=True)
class Invitation:
    reader: str
    token: str  # raw, shown once


def read_readers_csv(text: str) -> list[tuple[int, str, dict]]:
    """(line, reader, profile) rows of a readers CSV: a `reader` column (required) and optional
    profile columns (header names case-insensitive). ReaderError naming the row otherwise."""
    try:
        rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    except csv.Error as exc:
        raise ReaderError(f"readers CSV is not valid CSV ({exc})") from None
    numbered = [(n, r) for n, r in enumerate(rows, start=1) if any(c.strip() for c in r)]
    if not numbered:
        raise ReaderError("readers CSV is empty")
    rows = [r for _, r in numbered]
    header = [h.strip().lower() for h in rows[0]]
    if "reader" not in header:
        raise ReaderError("readers CSV needs a 'reader' column")
    if len(set(header)) != len(header) or "" in header:
        raise ReaderError("readers CSV has duplicate or empty column names")
    if len(rows) - 1 > MAX_CSV_READERS:
        raise ReaderError(f"readers CSV has more than {MAX_CSV_READERS} rows")
    out, seen = [], set()
    for n, row in numbered[1:]:
        if len(row) != len(header):
            raise ReaderError(f"readers CSV row {n}: {len(row)} cells for {len(header)} columns")
        rec = dict(zip(header, row))
        try:
            name = _check_reader_name(rec.pop("reader"))
        except ReaderError as exc:
            raise ReaderError(f"readers CSV row {n}: {exc}") from None
        if name in seen:
            raise ReaderError(f"readers CSV row {n}: reader {name!r} listed twice")
        seen.add(name)
        out.append((n, name, rec))
    return out


def invite_csv(db_path: str | pathlib.Path, study: str, csv_path: str | pathlib.Path, *,
               actor: str = "cli", acknowledge_leak: bool = False) -> list[Invitation]:
    """Invite every reader of a readers CSV (`read_readers_csv`) in one transaction: all
    or none (a bad row, an unknown profile column or an already-invited name aborts it).
    A flagged study needs `acknowledge_leak`, as in `invite`."""
    try:
        text = pathlib.Path(csv_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReaderError(f"cannot read readers CSV {csv_path}: {exc}") from None
    rows = read_readers_csv(text)
    tokens = [secrets.token_urlsafe(32) for _ in rows]

    def tx(db) -> None:
        srow = study_row(db, study)
        fields = study_profile_fields(srow)
        _leak_gate(db, srow, acknowledge_leak, actor)
        for (n, name, profile), token in zip(rows, tokens):
            try:
                _invite_tx(db, srow, name, token_hash(token), reissue=False,
                           profile=check_profile(profile, fields), actor=actor)
            except ReaderError as exc:
                raise ReaderError(f"readers CSV row {n}: {exc}") from None

    write(db_path, tx)
    return [Invitation(name, token) for (_, name, _), token in zip(rows, tokens)]


def reader_for_token(db_path: str | pathlib.Path, token: str | None) -> ReaderRef | None:
    """The reader a token belongs to, or None (also for a deactivated reader). Only the
    token's hash is looked up, and the stored hash is compared in constant time. A reader
    of a closed/archived study is returned with `study_status` saying so: check
    `ref.study_open` before accepting answers (`reader_status` gives the reason for None)."""
    ref, _ = _lookup(db_path, token)
    return ref


def _lookup(db_path, token) -> tuple[ReaderRef | None, str]:
    if not isinstance(token, str) or not token or len(token) > _TOKEN_MAX:
        return None, "unknown"
    digest = token_hash(token)
    with reading(db_path) as db:
        row = db.execute(
            "SELECT r.id, r.study_id, s.name, r.name, r.token_hash, r.deactivated_at, s.status "
            "FROM readers r JOIN studies s ON s.id = r.study_id WHERE r.token_hash = ?",
            [digest]).fetchone()
    if row is None or not hmac.compare_digest(row[4], digest):
        return None, "unknown"
    if row[5]:
        return None, "deactivated"
    status = row[6] or STUDY_OPEN
    return ReaderRef(reader_id=row[0], study_id=row[1], study=row[2], name=row[3],
                     study_status=status), status


def reader_status(db_path: str | pathlib.Path, token: str | None) -> tuple[ReaderRef | None, str]:
    """(reader or None, status) for a token: status `open` (may answer), `closed` or
    `archived` (the study takes no answers: show the closed page; the reader is returned),
    `deactivated` or `unknown` (no reader: the link does not work)."""
    return _lookup(db_path, token)


def list_readers(db_path: str | pathlib.Path, study: str) -> list[ReaderRef]:
    """The study's readers in invitation order."""
    with reading(db_path) as db:
        srow = study_row(db, study)
        rows = db.execute("SELECT id, name FROM readers WHERE study_id = ? ORDER BY ordinal",
                          [srow["id"]]).fetchall()
    return [ReaderRef(reader_id=r[0], study_id=srow["id"], study=srow["name"], name=r[1],
                      study_status=srow.get("status") or STUDY_OPEN) for r in rows]


@dataclasses.dataclass(frozen=True)
class ReaderInfo:
    reader: str
    link: str            # active | deactivated (a token is never stored or shown)
    link_issued_at: str | None
    invited_at: str
    consented_at: str | None
    profile: dict
    completed: int       # completed reads
    total: int
    profile_completed_at: str | None = None  # when the reader submitted the profile form


def reader_table(db_path: str | pathlib.Path, study: str) -> list[ReaderInfo]:
    """The study's readers with link status, consent, profile and progress (no tokens:
    only their hashes are stored; reissue a link to give a reader a new one)."""
    with reading(db_path) as db:
        srow = study_row(db, study)
        rows = db.execute(
            "SELECT r.name, r.deactivated_at, r.token_issued_at, r.created_at, r.consented_at, "
            "r.profile, (SELECT count(*) FROM assignments a WHERE a.reader_id = r.id "
            "            AND a.completed_at IS NOT NULL), "
            "(SELECT count(*) FROM assignments a WHERE a.reader_id = r.id), "
            "r.profile_completed_at "
            "FROM readers r WHERE r.study_id = ? ORDER BY r.ordinal", [srow["id"]]).fetchall()
    return [ReaderInfo(reader=n, link="deactivated" if d else "active", link_issued_at=t,
                       invited_at=c, consented_at=cons, profile=json.loads(p or "{}"),
                       completed=done, total=total, profile_completed_at=pdone)
            for n, d, t, c, cons, p, done, total, pdone in rows]


def reader_info(db_path: str | pathlib.Path, reader_id: int) -> ReaderInfo:
    """One reader's `ReaderInfo` (for the reader page: has this reader consented yet,
    what is in their profile)."""
    with reading(db_path) as db:
        row = db.execute("SELECT s.name, r.name FROM readers r JOIN studies s "
                         "ON s.id = r.study_id WHERE r.id = ?", [reader_id]).fetchone()
    if row is None:
        raise ReaderError("unknown reader")
    return next(r for r in reader_table(db_path, row[0]) if r.reader == row[1])


def set_reader_active(db_path: str | pathlib.Path, study: str, reader: str, active: bool, *,
                      actor: str = "cli") -> None:
    """Deactivate a reader (their link stops working at once; their answers are kept and
    exported) or reactivate them (the same link works again)."""
    name = _check_reader_name(reader)

    def tx(db) -> None:
        srow = study_row(db, study)
        row = db.execute("SELECT id FROM readers WHERE study_id = ? AND name = ?",
                         [srow["id"], name]).fetchone()
        if row is None:
            raise ReaderError(f"no reader {name!r} in study {study!r}")
        db.execute("UPDATE readers SET deactivated_at = ? WHERE id = ?",
                   [None if active else utc_now(), row[0]])
        log_action(db, actor, "reactivate_reader" if active else "deactivate_reader",
                   srow["id"], reader=name)

    write(db_path, tx)


@dataclasses.dataclass(frozen=True)
class Coverage:
    n_units: int            # main cases (pairs, for the pair task)
    min_reads: int          # fewest finished main reads of any case (every task answered)
    max_reads: int
    target: int | None      # readers_per_case K, if set
    readers_needed: int     # more readers to invite so every case reaches K (0 if reached)
    min_assigned: int = 0   # fewest main reads of any case assigned to invited readers
    max_assigned: int = 0


def coverage(db_path: str | pathlib.Path, study: str) -> Coverage:
    """How often each main case has been read (every task answered) and how often it will
    be once the invited readers finish (their assignments); readers_needed counts from the
    assignments, since an invited reader's cases are already fixed."""
    with reading(db_path) as db:
        srow = study_row(db, study)
        options = StudyOptions.from_dict(json.loads(srow["options"]))
        reads = _unit_reads(db, srow["id"])
        done = _unit_reads_done(db, srow["id"], len(options.tasks))
        keys = [k for (k,) in db.execute(
            "SELECT case_key FROM cases WHERE study_id = ? AND role = 'main'", [srow["id"]])]
        if "pair" in options.tasks:
            meta = db.execute("SELECT case_key, source, modality, group_name FROM cases "
                              "WHERE study_id = ? AND role = 'main'", [srow["id"]]).fetchall()
            pairs, _ = make_pairs([tuple(m) for m in meta], order_secret(db, srow["id"]))
            keys = [r for r, _ in pairs]
    counts = [reads.get(k, 0) for k in keys] or [0]
    finished = [done.get(k, 0) for k in keys] or [0]
    k = options.readers_per_case
    needed = 0
    if k and min(counts) < k:
        per_reader = options.cases_per_reader or len(keys)
        deficit = sum(max(0, k - c) for c in counts)
        needed = math.ceil(deficit / max(1, min(per_reader, len(keys))))
    return Coverage(n_units=len(keys), min_reads=min(finished), max_reads=max(finished),
                    target=k, readers_needed=needed, min_assigned=min(counts),
                    max_assigned=max(counts))


def _unit_reads_done(db, study_id: int, n_tasks: int) -> dict:
    """Finished main reads (all `n_tasks` tasks answered) per case key (or pair unit)."""
    reads: dict = {}
    for key, pkey in db.execute(
            "SELECT c.case_key, p.case_key FROM assignments a JOIN readers r ON r.id = a.reader_id "
            "JOIN cases c ON c.id = a.case_id LEFT JOIN cases p ON p.id = a.pair_case_id "
            "WHERE r.study_id = ? AND a.kind = 'main' AND "
            "(SELECT count(DISTINCT x.task) FROM responses x WHERE x.assignment_id = a.id) >= ?",
            [study_id, n_tasks]):
        reads[key] = reads.get(key, 0) + 1
        if pkey is not None:
            reads[pkey] = reads.get(pkey, 0) + 1
    return reads
