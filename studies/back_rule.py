"""When a reader may go back, and the words that say why not.

Going back (`session.go_back`, unless the study forbids it: `lifecycle.set_allow_back`)
reopens the reader's last completed read: one step only (not while a reopened read is
pending), and never into a training read (its feedback named the truth), an attention check
(a second try would defeat the check) or back across the wash-out boundary (from a delayed
repeat read to a first read). Within a read, Back returns to the read's previous question
unless that answer is final (`session.final_tasks`) or the read is a training read.
"""
from __future__ import annotations

from studies.errors import SessionError


class CannotGoBack(SessionError):
    """`go_back` refused: the study forbids it, there is no previous read, or the previous
    read may not be changed (see `back_refusal`); the message says which, in words."""


BACK_FORBIDDEN = "going back is not allowed in this study"
BACK_NOTHING = "there is no previous case to go back to"
BACK_ONE_STEP = "you are already back at the previous case (one case at a time)"
BACK_TRAINING = "the previous case was a training case, whose answer cannot be changed"
BACK_ATTENTION = "the previous screen was a check question, whose answer cannot be changed"
BACK_WASHOUT = ("the previous case belongs to your first reading session, which cannot be "
                "changed after the wash-out period")
BACK_FINAL = ("your answer to the previous question is final: it was given before this "
              "case's text was shown")
BACK_TRAINING_QUESTION = "this is a training case, whose answers cannot be changed"
def question_back_refusal(allow_back, kind: str, previous_final: bool) -> str | None:
    """Why Back from a later question of a read to its previous question is refused (None:
    allowed): the study forbids going back, a training read (its truth is told), or the
    previous answer is final (`final_tasks`)."""
    if not allow_back:
        return BACK_FORBIDDEN
    if kind == "training":
        return BACK_TRAINING_QUESTION
    if previous_final:
        return BACK_FINAL
    return None


def back_refusal(*, allowed: bool, reopened_pending: bool, previous_kind: str | None,
                 previous_delayed: bool, current_delayed: bool) -> str | None:
    """Why going back is refused (None: it is allowed). `previous_*`: the reader's last
    completed read (None: none), `current_delayed`: the read now served is a repeat with a
    wash-out delay."""
    if not allowed:
        return BACK_FORBIDDEN
    if reopened_pending:
        return BACK_ONE_STEP
    if previous_kind is None:
        return BACK_NOTHING
    if previous_kind == "training":
        return BACK_TRAINING
    if previous_kind == "attention":
        return BACK_ATTENTION
    if current_delayed and not previous_delayed:
        return BACK_WASHOUT
    return None


def back_refusal_given(allow_back, reopened_pending: bool, previous, current_delay) -> str | None:
    """`back_refusal` from stored values; `previous`: (kind, min_delay_s) of the last
    completed read, or None."""
    return back_refusal(allowed=bool(allow_back), reopened_pending=reopened_pending,
                        previous_kind=previous[0] if previous else None,
                        previous_delayed=bool(previous and previous[1]),
                        current_delayed=bool(current_delay) and not reopened_pending)
