"""What the study team watches: each reader's progress and the stimulus faults readers met."""
from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics

from studies.records import study_row
from studies.serving import FAULT_ACTION
from studies.storage.connections import reading


@dataclasses.dataclass
class ReaderProgress:
    reader_id: int
    reader: str
    completed: int            # slots with every task answered (training included)
    total: int
    training_completed: int
    training_total: int
    attention_total: int
    attention_answered: int
    attention_passed: int
    last_answered_at: str | None
    median_duration_ms: float | None

    @property
    def finished(self) -> bool:
        return self.completed == self.total



@dataclasses.dataclass
class Fault:
    stimulus_id: str
    case: str | None
    reason: str
    readers: int          # distinct readers who met it
    count: int
    first_at: str
    last_at: str


def faults(db_path: str | pathlib.Path, study: str) -> list[Fault]:
    """Stimulus faults readers met in `study`, one entry per stimulus, latest first."""
    with reading(db_path) as db:
        srow = study_row(db, study)
        rows = db.execute("SELECT at, actor, detail FROM audit_log WHERE study_id = ? "
                          "AND action = ? ORDER BY id", [srow["id"], FAULT_ACTION]).fetchall()
        keys = dict(db.execute("SELECT stimulus_id, case_key FROM cases WHERE study_id = ?",
                               [srow["id"]]).fetchall())
    out: dict[str, Fault] = {}
    who: dict[str, set] = {}
    for at, actor, detail in rows:
        d = json.loads(detail or "{}")
        sid = str(d.get("stimulus", "?"))
        f = out.get(sid) or Fault(sid, keys.get(sid), "", 0, 0, at, at)
        f.reason, f.count, f.last_at = str(d.get("reason", "")), f.count + 1, at
        who.setdefault(sid, set()).add(actor)
        f.readers = len(who[sid])
        out[sid] = f
    return sorted(out.values(), key=lambda f: f.last_at, reverse=True)


def progress(db_path: str | pathlib.Path, study: str) -> list[ReaderProgress]:
    """Per-reader progress for the admin view, in invitation order."""
    with reading(db_path) as db:
        srow = study_row(db, study)
        readers = db.execute("SELECT id, name FROM readers WHERE study_id = ? ORDER BY ordinal",
                             [srow["id"]]).fetchall()
        out = []
        for rid, name in readers:
            counts = db.execute(
                "SELECT count(*), sum(completed_at IS NOT NULL), sum(kind = 'training'), "
                "sum(kind = 'training' AND completed_at IS NOT NULL), sum(kind = 'attention') "
                "FROM assignments WHERE reader_id = ?", [rid]).fetchone()
            attention = db.execute(
                # latest answer per attention slot vs the value the reader was told to pick
                "SELECT a.expected, (SELECT r.rating FROM responses r WHERE r.assignment_id = a.id "
                " ORDER BY r.id DESC LIMIT 1) FROM assignments a "
                "WHERE a.reader_id = ? AND a.kind = 'attention'", [rid]).fetchall()
            answered = [(json.loads(e)["value"], v) for e, v in attention if v is not None]
            durations = [r[0] for r in db.execute(
                "SELECT duration_ms FROM responses WHERE reader_id = ?", [rid])]
            last = db.execute("SELECT max(answered_at) FROM responses WHERE reader_id = ?",
                              [rid]).fetchone()[0]
            out.append(ReaderProgress(
                reader_id=rid, reader=name, completed=counts[1] or 0, total=counts[0],
                training_completed=counts[3] or 0, training_total=counts[2] or 0,
                attention_total=counts[4] or 0, attention_answered=len(answered),
                attention_passed=sum(e == v for e, v in answered), last_answered_at=last,
                median_duration_ms=statistics.median(durations) if durations else None,
            ))
    return out
