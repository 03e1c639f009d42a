"""Wash-out delays: when a repeat read may be served (`--repeat-after 7d`).

With a wash-out delay (`StudyOptions.repeat_after_s`) the repeat reads are placed after
all main reads and each carries `min_delay_s`: it becomes available only that long after
the reader completed the first (main) read of the same case (for the pair task: the same
pair). Until then the reader is told when to come back; earlier reads never wait.

`pick_next` is the pure rule; `next_available` applies it to a reader's stored
assignments. The reader page's `session.next_case` serves the assignment it returns.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Hashable

from sqlite_utils import Database


@dataclasses.dataclass(frozen=True)
class PendingRead:
    assignment_id: int
    case_id: Hashable
    pair_case_id: Hashable | None = None
    min_delay_s: int | None = None


@dataclasses.dataclass(frozen=True)
class Availability:
    assignment_id: int | None        # serve this one next; None: nothing available now
    wait_until: _dt.datetime | None  # when nothing is available: when the next one will be
    finished: bool = False           # nothing left at all


def parse_time(value: str | _dt.datetime) -> _dt.datetime:
    if isinstance(value, _dt.datetime):
        t = value
    else:
        t = _dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def pick_next(pending: Sequence[PendingRead],
              first_reads: Mapping[tuple[Hashable, Hashable | None], str | _dt.datetime],
              now: _dt.datetime) -> Availability:
    """The first pending read (in session order) that may be served at `now`.

    `pending`: the reader's incomplete reads in position order. `first_reads`: completion
    time of each completed main read by (case_id, pair_case_id). A read without a delay is
    always available; a delayed one once `min_delay_s` has passed since its first read
    (never before that first read is complete)."""
    if not pending:
        return Availability(None, None, finished=True)
    now = parse_time(now)
    earliest: _dt.datetime | None = None
    for read in pending:
        if not read.min_delay_s:
            return Availability(read.assignment_id, None)
        first = first_reads.get((read.case_id, read.pair_case_id))
        if first is None:
            continue  # its first read is still pending; it comes earlier in the session
        ready = parse_time(first) + _dt.timedelta(seconds=read.min_delay_s)
        if now >= ready:
            return Availability(read.assignment_id, None)
        earliest = ready if earliest is None or ready < earliest else earliest
    return Availability(None, earliest)


def next_available(db: Database, reader_id: int, now: _dt.datetime | None = None) -> Availability:
    """`pick_next` over the reader's stored assignments (open connection `db`)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    pending = [PendingRead(a, c, p, d) for a, c, p, d in db.execute(
        "SELECT id, case_id, pair_case_id, min_delay_s FROM assignments "
        "WHERE reader_id = ? AND completed_at IS NULL ORDER BY position", [reader_id])]
    first = {(c, p): t for c, p, t in db.execute(
        "SELECT case_id, pair_case_id, min(completed_at) FROM assignments "
        "WHERE reader_id = ? AND kind = 'main' AND completed_at IS NOT NULL "
        "GROUP BY case_id, pair_case_id", [reader_id])}
    return pick_next(pending, first, now)
