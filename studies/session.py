"""The reader flow: what to show next, going back, and recording answers.

A little over 600 lines: the three share one rule (which questions of a read are asked and
final) and the queries that apply it.

All state lives in SQLite, so a refresh, crash or restart resumes at the same place:
`next_case` is the first assignment (in the reader's stored order) whose tasks are not all
answered. Each call opens its own connection (safe from any thread or process).

Responses are append-only (the database refuses UPDATE/DELETE on them): changing an answer
adds a row and analysis uses the latest. `submit` is idempotent on the client-supplied
`client_id`: a retry or double click returns the first acknowledgement, never a second row.
A question takes one answer per read (and per reopening, `go_back`): a second answer under
another client_id is refused (`AlreadyAnswered`), so the acknowledged answer is the one
that counts.
Each answer may carry the reader's comment and "non-diagnostic image" flag for the case.

Going back (`go_back`, unless the study forbids it: `lifecycle.set_allow_back`): the
reader's last completed read is reopened — it becomes the current read again with a fresh
random view id (its old image URL stops working), and its re-answers are new rows, so the
latest wins as for any change of answer. When that is allowed is `studies.back_rule`. From
a later question of the read on screen, Back returns to that read's earlier question
instead (same view id).

No answer after the text: the answers to a read's questions asked before the first one that
shows the case's text (the turing question first of all) are final once that text has been
shown (`final_tasks`): Back never reopens them (a reopened read asks only the questions
from the text on) and `submit` refuses them — else a reader could read the wording and then
change the real/synthetic call. A training read skips the questions that show the text
unless the study's prompt audit found the texts indistinguishable (`asked_tasks`): its
truth is told next, and text beside truth would teach the wording of each source.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import pathlib

from studies import washout
from studies.back_rule import (
    BACK_FORBIDDEN, CannotGoBack, back_refusal_given, question_back_refusal,
)
from studies.design import ATTENTION, attention_task
from studies.errors import NotAuthorised, SessionError, StudyError
from studies.imaging import stimuli
from studies.records import log_action
from studies.stats.columns import TASKS, Task
from studies.storage import writer_process
from studies.storage.connections import reading
from studies.storage.group_commit import write
from studies.storage.schema import utc_now, utc_text

MAX_CLIENT_ID = 200
MAX_COMMENT = 1000  # characters of a reader's comment on a case
MAX_DURATION_MS = 7 * 24 * 3600 * 1000


@dataclasses.dataclass
class CaseView:
    """What the reader UI shows for one slot. Carries no truth, no file name, no source."""
    assignment_id: int
    position: int            # 1-based place in the reader's session
    total: int
    stimulus_id: str         # opaque per-read id; fetch pixels with stimulus_png
    tasks: list[dict]        # question dicts in asking order, each with "answered": bool
    prompt: str | None       # only when one of the tasks shows it (see question "shows_prompt")
    training: bool           # training slots get feedback in the Ack
    study: str
    # Pair (2AFC) task: the right-hand image's own per-read id (the left one is
    # stimulus_id); None for single-image tasks. Served like stimulus_id (stimulus_png).
    pair_stimulus_id: str | None = None
    # The case's modality (the viewer offers contrast presets for it), or "" for every case
    # of a study where some case has none or some modality has one source only
    # (`modality_hint_allowed`): then it would tell real from synthetic (e.g. generated
    # images imported without a modality column).
    modality: str = ""
    # Server side only (never sent to a browser): the stored file's opaque id, the same for
    # every reader and read of the case, so the page can check the file is there (and the
    # right-hand image's, for a pair).
    stored_id: str = dataclasses.field(default="", repr=False)
    pair_stored_id: str | None = dataclasses.field(default=None, repr=False)
    can_go_back: bool = False  # `go_back` would reopen the previous read (or question) now
    back_to_question: bool = False  # Back returns to this read's previous question
    reopened: bool = False     # the reader went back to this read (go_back)
    earlier: dict = dataclasses.field(default_factory=dict)  # reopened: task -> last rating
    comment: str = ""          # the read's latest comment and flag (to show them again)
    non_diagnostic: bool = False
    # questions of the read not asked (a training read's questions that show the text,
    # `asked_tasks`), so that the instructions can still list every question of the study
    skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def pending(self) -> list[dict]:
        return [t for t in self.tasks if not t["answered"]]


@dataclasses.dataclass
class Ack:
    response_id: int
    duplicate: bool           # True when client_id had already been recorded
    assignment_complete: bool
    feedback: dict | None     # training slots only: the truth and whether the call was right


def _task_for(name: str, expected_json: str | None) -> Task:
    if name == ATTENTION:
        exp = json.loads(expected_json)
        return attention_task(exp["scale"], exp["value"])
    return TASKS[name]


def _current_read(db, columns: str, joins: str, reader_id: int):
    """`SELECT columns FROM assignments a joins` for the reader's current read: a reopened
    one (go_back) first, else the first open slot. One statement of two indexed lookups
    (the second runs only when the first finds nothing), not one ORDER BY over an
    expression (which sorted every open slot of the reader on each call); the reopened
    read is found through the partial index of migration 6, named because the planner
    would rather scan every open slot through the (reader, completed_at) index."""
    head = f"SELECT {columns} FROM assignments a "
    return db.execute(
        "SELECT * FROM (" + head + "INDEXED BY assignments_reopened " + joins
        + "WHERE a.reader_id = :r AND a.reopened_after IS NOT NULL "
        "AND a.completed_at IS NULL LIMIT 1) UNION ALL SELECT * FROM (" + head + joins
        + "WHERE a.reader_id = :r AND a.completed_at IS NULL ORDER BY a.position LIMIT 1) "
        "LIMIT 1", {"r": reader_id}).fetchone()


# A training read's prompt-audit verdict (the stored audit report's "prompts" entry): its
# questions that show the case's text are asked only when it is "ok" (`asked_tasks`).
_PROMPT_VERDICT = ("CASE WHEN a.kind = 'training' AND json_valid(s.audit_report) "
                   "THEN json_extract(s.audit_report, '$.prompts.verdict') END")


def _shows_prompt(task: str) -> bool:
    return task in TASKS and TASKS[task].shows_prompt


def asked_tasks(tasks, kind: str, prompt_verdict: str | None) -> list[str]:
    """The questions a read asks, in order. A training read skips those that show the
    case's text unless the study's prompt audit found real and synthetic texts
    indistinguishable (verdict "ok"): its truth is told next, and text beside truth would
    teach readers the wording of each source. (When only such questions are asked, they
    stay: then no real/synthetic judgement is asked at all.)"""
    tasks = list(tasks)
    if kind == "training" and prompt_verdict != "ok":
        kept = [t for t in tasks if not _shows_prompt(t)]
        return kept or tasks
    return tasks


def _asked_in_open_read(tasks, kind: str, prompt_verdict: str | None,
                        answered_ever) -> list[str]:
    """`asked_tasks` of a read not yet complete: when every question it asks is answered
    (the verdict turned from "ok" while the read was on screen), the skipped ones are
    asked too, so the read can be completed rather than stuck."""
    asked = asked_tasks(tasks, kind, prompt_verdict)
    if len(asked) < len(tasks) and set(asked) <= set(answered_ever):
        return list(tasks)
    return asked


def final_tasks(asked, answered_ever) -> set[str]:
    """The questions of a read whose answers are final: those asked before the first
    question that shows the case's text, once that text has been shown (all of them were
    answered, so the next question, with the text, was served). An answer given after
    seeing the text could use its wording instead of the pixels."""
    asked = list(asked)
    first = next((i for i, t in enumerate(asked) if _shows_prompt(t)), 0)
    before = set(asked[:first])
    return before if before and before <= set(answered_ever) else set()


def _read_progress(asked, answers, since: int) -> tuple[set, set, int]:
    """(questions answered, final questions, index of the question now asked) of a read
    from its (response id, task, ...) answers; `since`: its reopened_after (0: none)."""
    final = final_tasks(asked, {a[1] for a in answers})
    answered = {a[1] for a in answers if a[0] > since} | final
    return answered, final, next((i for i, n in enumerate(asked) if n not in answered), 0)


# The columns `next_case` reads with the current read, in one statement: every SQLite call
# gives up Python's interpreter lock, and under many readers each costs a wait to get it
# back, so the count, the answers and the previous read come as subqueries.
_CASE_COLUMNS = (
    "a.id, a.position, a.tasks, a.kind, a.expected, a.view_id, c.prompt, "
    "s.name, c.stimulus_id, a.min_delay_s, a.pair_view_id, p.stimulus_id, "
    # the modality, and what the study-wide rule for sending it is cached under (see
    # _modality_hint): no per-case lookup, whose cost could depend on the source
    "c.modality, json_array(s.id, s.created_at, (SELECT max(id) FROM cases)), "
    "a.reopened_after, s.allow_back, "
    # positions are 1..n (readers.invite): the last one is the count, from the index
    "(SELECT max(position) FROM assignments WHERE reader_id = a.reader_id), "
    "(SELECT json_group_array(json_array(id, task, rating, comment, non_diagnostic)) "
    " FROM (SELECT * FROM responses WHERE assignment_id = a.id ORDER BY id)), "
    # the previous (last completed) read, for the back rule: kind and wash-out delay
    "(SELECT json_array(kind, min_delay_s) FROM assignments WHERE reader_id = a.reader_id "
    " AND completed_at IS NOT NULL ORDER BY completed_at DESC, position DESC LIMIT 1), "
    + _PROMPT_VERDICT)
_CASE_JOINS = ("JOIN cases c ON c.id = a.case_id JOIN studies s ON s.id = c.study_id "
               "LEFT JOIN cases p ON p.id = a.pair_case_id ")


# study key (id, creation time, highest case id of the database) -> whether the modality
# may be sent; cases are never changed or deleted, so a new case changes the key
_MODALITY_HINT: dict[tuple[str, str], bool] = {}


def modality_hint_allowed(db, study_id: int) -> bool:
    """Whether a study's cases may carry their modality to the reader's page (the viewer's
    contrast presets): only when every case of the study (training included) has a
    modality and every modality has both real and synthetic images. Otherwise a case
    without the hint, or with one only one source has, would name its source — e.g.
    generated images imported without a modality column next to real ones with it."""
    bad = db.execute(
        "SELECT count(*), (SELECT count(*) FROM cases WHERE study_id = :s) FROM "
        "(SELECT lower(trim(coalesce(modality, ''))) AS m, count(DISTINCT source) AS n "
        " FROM cases WHERE study_id = :s GROUP BY m) WHERE m = '' OR n < 2",
        {"s": study_id}).fetchone()
    return bad[0] == 0 and bad[1] > 0


def _modality_hint(db_path, key_json: str) -> bool:
    """`modality_hint_allowed`, computed once per study and set of cases: the same work
    for every case, so the time of `next_case` says nothing about the source."""
    key = (str(db_path), key_json)
    allowed = _MODALITY_HINT.get(key)
    if allowed is None:
        with reading(db_path) as db:
            allowed = modality_hint_allowed(db, json.loads(key_json)[0])
        if len(_MODALITY_HINT) > 1000:
            _MODALITY_HINT.clear()
        _MODALITY_HINT[key] = allowed
    return allowed


def next_case(db_path: str | pathlib.Path, reader_id: int) -> CaseView | None:
    """The reader's current read — a reopened one (`go_back`) first, else the first slot
    with an unanswered task — or None when they are done."""
    # One statement: no read transaction needed unless the wash-out rule asks for more.
    with reading(db_path, snapshot=False) as db:
        row = _current_read(db, _CASE_COLUMNS, _CASE_JOINS, reader_id)
        if row is None:
            return None
        if row[9] and row[14] is None:  # a delayed repeat, not a reopened read: read the
            db.conn.execute("BEGIN")  # current read again in the snapshot the rule reads
            row = _current_read(db, _CASE_COLUMNS, _CASE_JOINS, reader_id)
            if row is None:  # finished in between
                return None
        if row[9] and row[14] is None:
            # A repeat read with a wash-out delay (--repeat-after): serve the first read that
            # is due (studies.washout); when none is, the reader is told when to come back.
            due = washout.next_available(db, reader_id)
            if due.assignment_id is None:
                raise NotYetAvailable(due.wait_until)
            row = db.execute(f"SELECT {_CASE_COLUMNS} FROM assignments a {_CASE_JOINS}"
                             "WHERE a.id = ?", [due.assignment_id]).fetchone()
    (aid, position, tasks_json, kind, expected, view_id, prompt, study, stored, delay,
     pair_view_id, pair_stored, modality, hint_key, reopened_after, allow_back, total,
     answers_json, previous, verdict) = row
    if modality and not _modality_hint(db_path, hint_key):
        modality = ""
    answers = sorted(json.loads(answers_json))  # by response id: the latest last
    names = json.loads(tasks_json)
    asked = _asked_in_open_read(names, kind, verdict, {task for _, task, *_ in answers})
    since = reopened_after or 0
    answered, final, current = _read_progress(asked, answers, since)
    earlier = {task: rating for rid, task, rating, *_ in answers if rid <= since}
    if current > 0:  # Back returns to this read's previous question
        refusal = question_back_refusal(allow_back, kind, asked[current - 1] in final)
    else:
        refusal = back_refusal_given(allow_back, reopened_after is not None,
                                      json.loads(previous) if previous else None, delay)
    questions = []
    for name in asked:
        q = _task_for(name, expected).question_dict()
        q["answered"] = name in answered
        questions.append(q)
    shows_prompt = any(q["shows_prompt"] for q in questions)
    last = answers[-1] if answers else None
    return CaseView(
        assignment_id=aid, position=position, total=total, stimulus_id=view_id,
        tasks=questions, prompt=prompt if shows_prompt else None,
        training=kind == "training", study=study, stored_id=stored,
        pair_stimulus_id=pair_view_id, pair_stored_id=pair_stored, modality=modality or "",
        can_go_back=refusal is None, back_to_question=current > 0,
        reopened=reopened_after is not None,
        earlier=earlier if reopened_after is not None else {},
        comment=last[3] if last else "", non_diagnostic=bool(last[4]) if last else False,
        skipped=[n for n in names if n not in asked],
    )


# --------------------------------------------------------------------------- going back
ANSWER_FINAL = ("this answer is final: it was given before the case's text was shown, and "
                "cannot be changed")


def _previous_read(db, reader_id: int):
    """(id, kind, min_delay_s) of the reader's last completed read, or None."""
    return db.execute("SELECT id, kind, min_delay_s FROM assignments WHERE reader_id = ? "
                      "AND completed_at IS NOT NULL ORDER BY completed_at DESC, position DESC "
                      "LIMIT 1", [reader_id]).fetchone()


def _back_refusal_db(db, reader_id: int, allow_back, reopened_pending: bool,
                     current_delay) -> str | None:
    if not allow_back:  # the common forbidden case costs no query
        return BACK_FORBIDDEN
    prev = _previous_read(db, reader_id)
    return back_refusal_given(True, reopened_pending, prev[1:] if prev else None,
                               current_delay)


def back_refused(db_path: str | pathlib.Path, reader_id: int) -> str | None:
    """Why `go_back` would be refused for this reader now (None: allowed). For screens
    without a current read (finished, waiting for the wash-out); `CaseView.can_go_back`
    says the same for a read on screen."""
    with reading(db_path) as db:
        return _back_refusal_now(db, reader_id)


def _back_refusal_now(db, reader_id: int) -> str | None:
    return _back_now(db, reader_id)[0]


def _back_now(db, reader_id: int) -> tuple[str | None, int | None]:
    """(why Back is refused now or None, the id of the read on screen when Back returns to
    its previous question, else None: Back reopens the previous read)."""
    allow = db.execute("SELECT s.allow_back FROM readers r JOIN studies s ON s.id = r.study_id "
                       "WHERE r.id = ?", [reader_id]).fetchone()
    if allow is None:
        raise NotAuthorised("no such reader")
    current = _current_read(db, "a.reopened_after, a.min_delay_s, a.id", "", reader_id)
    reopened = current is not None and current[0] is not None
    delayed = False
    served = current[2] if current is not None else None
    if current is not None and current[1] and not reopened:
        # in the wash-out block: it matters only once a delayed repeat is actually served
        served = washout.next_available(db, reader_id).assignment_id
        delayed = served is not None
    if served is not None:
        row = db.execute(
            "SELECT a.tasks, a.kind, a.reopened_after, " + _PROMPT_VERDICT + ", "
            "(SELECT json_group_array(json_array(id, task)) FROM responses "
            " WHERE assignment_id = a.id) FROM assignments a JOIN cases c ON c.id = a.case_id "
            "JOIN studies s ON s.id = c.study_id WHERE a.id = ?", [served]).fetchone()
        answers = json.loads(row[4])
        asked = _asked_in_open_read(json.loads(row[0]), row[1], row[3],
                                    {task for _, task in answers})
        _, final, at = _read_progress(asked, answers, row[2] or 0)
        if at > 0:
            return question_back_refusal(allow[0], row[1], asked[at - 1] in final), served
    return _back_refusal_db(db, reader_id, allow[0], reopened, delayed), None


def go_back(db_path: str | pathlib.Path, reader_id: int) -> CaseView:
    """Reopen the reader's previous (last completed) read and return it as the current
    read: a fresh random view id (and pair view id), its tasks unanswered again; earlier
    answers stay (append-only) and the re-answers supersede them. CannotGoBack when
    `back_refusal` says no; StudyClosed / NotAuthorised as for `submit`."""
    def tx(db) -> None:
        status = db.execute("SELECT s.status, r.deactivated_at, r.name, s.id FROM readers r "
                            "JOIN studies s ON s.id = r.study_id WHERE r.id = ?",
                            [reader_id]).fetchone()
        if status is None or status[1]:
            raise NotAuthorised("this reader's link is not valid")
        if (status[0] or "open") != "open":
            raise StudyClosed(f"this study is {status[0]} and takes no more answers")
        refusal, question_of = _back_now(db, reader_id)
        if refusal is not None:
            raise CannotGoBack(refusal)
        if question_of is not None:
            # Back within the read on screen: its answers so far are asked again (the
            # final ones excepted), under the same view id (the read stays open).
            db.execute("UPDATE assignments SET reopened_after = (SELECT max(id) FROM "
                       "responses WHERE assignment_id = :a) WHERE id = :a", {"a": question_of})
            log_action(db, f"reader:{status[2]}", "go_back", status[3],
                       assignment=question_of, question=True)
            return
        aid = _previous_read(db, reader_id)[0]
        last = db.execute("SELECT max(id) FROM responses WHERE assignment_id = ?",
                          [aid]).fetchone()[0]
        db.execute("UPDATE assignments SET completed_at = NULL, reopened_after = ?, view_id = ?, "
                   "pair_view_id = CASE WHEN pair_view_id IS NULL THEN NULL ELSE ? END "
                   "WHERE id = ?",
                   [last or 0, stimuli.new_stimulus_id(), stimuli.new_stimulus_id(), aid])
        log_action(db, f"reader:{status[2]}", "go_back", status[3], assignment=aid)

    write(db_path, tx)
    view = next_case(db_path, reader_id)
    assert view is not None  # the reopened read is served first
    return view


def _iso(value: str | _dt.datetime | None) -> str | None:
    if value is None:
        return None
    try:
        return utc_text(washout.parse_time(value))
    except ValueError:
        raise SessionError(f"shown_at {value!r} is not an ISO-8601 timestamp") from None


def _feedback(kind: str, task: str, value: int, source: str) -> dict | None:
    if kind != "training":
        return None
    if task == "turing":
        call = TASKS["turing"].answer_text(value)
        correct = call == source
        return {"truth": source, "correct": correct,
                "message": f"This image is {source}. You answered {call}: "
                           f"{'correct' if correct else 'incorrect'}."}
    return {"truth": source, "correct": None, "message": f"This image is {source}."}


def _read_feedback(db, assignment_id: int, kind: str, task: str, value: int,
                   source: str) -> dict | None:
    """`_feedback` for an answer to a training read, graded on the reader's real/synthetic
    call: for a later question of the read it is the call stored in the database, so the
    verdict survives a page reload between the two questions (the page's own memory of
    the earlier answer is gone then). Training reads only: they alone show the truth."""
    if kind == "training" and task != "turing":
        call = db.execute("SELECT rating FROM responses WHERE assignment_id = ? AND "
                          "task = 'turing' ORDER BY id DESC LIMIT 1",
                          [assignment_id]).fetchone()
        if call is not None:
            return _feedback(kind, "turing", call[0], source)
    return _feedback(kind, task, value, source)


def _same_answer(task: str, expected, stored: str, answer) -> bool:
    try:
        obj = _task_for(task, expected)
        return obj.answer_text(obj.parse(answer)) == stored
    except StudyError:
        return False


def submit(
    db_path: str | pathlib.Path,
    reader_id: int,
    assignment_id: int,
    task: str,
    answer: int | str,
    duration_ms: int,
    client_id: str,
    *,
    shown_at: str | _dt.datetime | None = None,
    duration_flagged: bool = False,
    comment: str | None = "",
    non_diagnostic: bool = False,
) -> Ack:
    """Record one answer. Idempotent on `client_id`; append-only (a changed answer is a new
    row with a new client_id). Raises NotAuthorised for another reader's assignment and
    SessionError for an unknown task or an answer off the scale. `duration_flagged` marks a
    duration that replaced an implausible browser figure (exported as `duration_flagged`).
    `comment` (plain text, at most MAX_COMMENT characters) and `non_diagnostic` are the
    reader's remarks on the case, stored with the answer (see `clean_comment`)."""
    if not isinstance(client_id, str) or not client_id or len(client_id) > MAX_CLIENT_ID:
        raise SessionError(f"client_id must be a non-empty string of at most {MAX_CLIENT_ID} chars")
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int):
        if isinstance(duration_ms, float) and duration_ms.is_integer():
            duration_ms = int(duration_ms)
        else:
            raise SessionError("duration_ms must be a whole number of milliseconds")
    if not 0 <= duration_ms <= MAX_DURATION_MS:
        raise SessionError(f"duration_ms {duration_ms} is out of range")
    shown = _iso(shown_at)
    comment = clean_comment(comment)
    if not isinstance(non_diagnostic, bool | int) or non_diagnostic not in (0, 1):
        raise SessionError("non_diagnostic must be true or false")
    flag = int(bool(non_diagnostic))

    return writer_process.call(
        db_path, _record_answer, reader_id, assignment_id, task, answer, duration_ms,
        client_id, shown, duration_flagged, comment, flag,
        idempotent=True)  # a retry under the same client_id returns the first Ack


def _record_answer(db, reader_id: int, assignment_id: int, task: str, answer, duration_ms: int,
                   client_id: str, shown: str | None, duration_flagged: bool, comment: str,
                   flag: int) -> Ack:
    """`submit`'s write transaction (its arguments already checked): module level, so the
    writer process can be sent it by name (`studies.storage.writer_process`)."""
    prior = db.execute(
        "SELECT r.id, r.reader_id, r.task, r.rating, a.kind, c.source, a.completed_at, "
        "r.assignment_id, r.answer, a.expected, r.comment, r.non_diagnostic "
        "FROM responses r JOIN assignments a ON a.id = r.assignment_id "
        "JOIN cases c ON c.id = r.case_id WHERE r.client_id = ?", [client_id]).fetchone()
    if prior is not None:
        if prior[1] != reader_id:
            raise SessionError("client_id already used")
        # A retry repeats the same answer to the same question; anything else under a used
        # id would be acknowledged but never stored, so refuse it loudly.
        if (prior[7] != assignment_id or prior[2] != task
                or not _same_answer(task, prior[9], prior[8], answer)
                or (prior[10], prior[11]) != (comment, flag)):
            raise SessionError("client_id already used for a different answer")
        return Ack(response_id=prior[0], duplicate=True,
                   assignment_complete=prior[6] is not None,
                   feedback=_read_feedback(db, prior[7], prior[4], prior[2], prior[3],
                                           prior[5]))
    # Checked inside the write transaction, so a close or a deactivation that commits
    # first is never overtaken by an answer (a retry of an acknowledged answer, above,
    # still gets its acknowledgement). One statement for the reader, study and slot.
    row = db.execute(
        "SELECT s.status, r.deactivated_at, a.id, a.case_id, a.tasks, a.n_tasks, a.kind, "
        "a.expected, c.source, a.completed_at, a.reopened_after FROM readers r "
        "JOIN studies s ON s.id = r.study_id "
        "LEFT JOIN assignments a ON a.id = ? AND a.reader_id = r.id "
        "LEFT JOIN cases c ON c.id = a.case_id WHERE r.id = ?",
        [assignment_id, reader_id]).fetchone()
    if row is not None and row[1]:
        raise NotAuthorised("this reader's link has been deactivated")
    if row is not None and (row[0] or "open") != "open":
        raise StudyClosed(f"this study is {row[0]} and takes no more answers")
    if row is None or row[2] is None:
        raise NotAuthorised("no such assignment for this reader")
    _, _, _, case_id, tasks_json, n_tasks, kind, expected, source, completed_at, reopened_after = row
    if task not in json.loads(tasks_json):
        raise SessionError(f"task {task!r} is not asked for this case")
    # One current answer per read and task: a second answer under another client_id (a
    # second tab, or the same question answered again after a reload while the first was
    # still on its way) is refused here, in the transaction that would store it, so
    # whichever arrives first is the one kept and acknowledged. Changing an answer takes
    # going back (a new round: the read's reopened_after).
    read_round = reopened_after or 0
    asked, final = _asked_and_final(db, assignment_id, json.loads(tasks_json), kind,
                                    completed_at is None)
    if task not in asked:
        raise SessionError(f"task {task!r} is not asked for this case")
    if db.execute("SELECT 1 FROM responses WHERE assignment_id = ? AND task = ? AND id > ? "
                  "LIMIT 1", [assignment_id, task, read_round]).fetchone() is not None:
        raise AlreadyAnswered(ANSWER_FINAL if task in final
                              else "this question has already been answered")
    if task in final:
        raise SessionError(ANSWER_FINAL)
    task_obj = _task_for(task, expected)
    try:
        value = task_obj.parse(answer)
    except StudyError as exc:
        raise SessionError(str(exc)) from None
    answered_at = utc_now()
    if shown is None:
        at = washout.parse_time(answered_at)
        shown_at_ = _iso(at - _dt.timedelta(milliseconds=duration_ms))
    else:
        shown_at_ = shown
    cur = db.execute(
        "INSERT INTO responses (client_id, reader_id, assignment_id, case_id, task, answer, "
        "rating, duration_ms, shown_at, answered_at, duration_flagged, comment, "
        "non_diagnostic, read_round) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [client_id, reader_id, assignment_id, case_id, task, task_obj.answer_text(value),
         value, duration_ms, shown_at_, answered_at, int(bool(duration_flagged)), comment,
         flag, read_round])
    complete = completed_at is not None
    if not complete:
        # Complete once every task is answered (a reopened read, go_back: re-answered).
        if not final and len(asked) == n_tasks:
            complete = db.execute(
                "UPDATE assignments SET completed_at = ? WHERE id = ? AND (SELECT count("
                "DISTINCT task) FROM responses WHERE assignment_id = ? AND id > ?) >= n_tasks",
                [answered_at, assignment_id, assignment_id, reopened_after or 0]).rowcount == 1
        else:  # final answers count (they are not asked again), skipped questions do not
            complete = db.execute(
                "UPDATE assignments SET completed_at = ? WHERE id = ? AND (SELECT count("
                "DISTINCT task) FROM responses WHERE assignment_id = ? AND (id > ? OR task IN "
                "(SELECT value FROM json_each(?))) AND task IN (SELECT value FROM "
                "json_each(?))) >= ?",
                [answered_at, assignment_id, assignment_id, reopened_after or 0,
                 json.dumps(sorted(final)), json.dumps(asked), len(asked)]).rowcount == 1
    return Ack(response_id=cur.lastrowid, duplicate=False, assignment_complete=complete,
               feedback=_read_feedback(db, assignment_id, kind, task, value, source))


def _asked_and_final(db, assignment_id: int, tasks: list[str], kind: str, open_: bool
                     ) -> tuple[list[str], set[str]]:
    """(`asked_tasks`, `final_tasks`) of a read as `submit` checks them: no query for a
    read without a question that shows the text (nothing is skipped or final there)."""
    if not any(_shows_prompt(t) for t in tasks):
        return tasks, set()
    verdict = None
    if kind == "training":
        verdict = db.execute(
            "SELECT " + _PROMPT_VERDICT + " FROM assignments a JOIN cases c ON c.id = a.case_id "
            "JOIN studies s ON s.id = c.study_id WHERE a.id = ?", [assignment_id]).fetchone()[0]
    ever = {t for (t,) in db.execute("SELECT DISTINCT task FROM responses "
                                     "WHERE assignment_id = ?", [assignment_id])}
    asked = (_asked_in_open_read(tasks, kind, verdict, ever) if open_
             else asked_tasks(tasks, kind, verdict))
    return asked, final_tasks(asked, ever)


def clean_comment(comment: str | None) -> str:
    """A reader's comment as stored: plain text, surrounding blanks stripped, Windows line
    ends made \\n, other control characters (e.g. Word's vertical tab for a line break)
    made spaces; SessionError if it is not text or longer than MAX_COMMENT characters."""
    if comment is None:
        return ""
    if not isinstance(comment, str):
        raise SessionError("comment must be text")
    text = comment.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(" " if (ord(c) < 32 and c not in "\n\t") or ord(c) == 127 else c
                   for c in text).strip()
    if len(text) > MAX_COMMENT:
        raise SessionError(f"the comment is {len(text)} characters; at most {MAX_COMMENT}")
    return text


class NotYetAvailable(SessionError):
    """Every read left is a repeat whose wash-out delay has not passed (`--repeat-after`):
    `wait_until` (UTC datetime) says when the next one opens."""

    def __init__(self, wait_until: _dt.datetime | None):
        when = wait_until.strftime("%Y-%m-%d %H:%M UTC") if wait_until else "later"
        super().__init__(f"your next case opens on {when}")
        self.wait_until = wait_until


class AlreadyAnswered(SessionError):
    """`submit` refused: the question was already answered in this read (under another
    client_id: a second tab, or an answer sent again after a reload). Nothing was stored;
    the reader's current state (`next_case`) says where they are."""


class StudyClosed(SessionError):
    """The study is closed or archived (studies.lifecycle): it takes no more answers."""
