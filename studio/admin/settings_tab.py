"""The Study settings tab: status (close, reopen, archive), the texts readers see (title,
instructions, consent, profile form) and whether they may go back."""
from __future__ import annotations

from studies.errors import StudyError
from studies.stats.numbers import fmt_time
from studio.admin.studies_tab import study_status


def study_settings(db_path, study: str) -> tuple[str, str, str, str, bool]:
    """(status line, instructions, consent, profile fields, ask profile) for the admin's
    form."""
    from studies.lifecycle import study_texts

    t = study_texts(db_path, study)
    status = study_status(db_path, study, t.status)
    return (f"Status: **{status}**" + (f" since {fmt_time(t.status_at)}"
                                        if t.status_at and status != "draft" else
                                        " — no reader invited yet; inviting the first reader "
                                        "opens it" if status == "draft" else ""),
            t.instructions, t.consent, ", ".join(t.profile_fields), t.ask_profile)


def reader_title_setting(db_path, study: str) -> str:
    """The title readers of `study` see ("" : the neutral default)."""
    from studies.lifecycle import study_texts

    return study_texts(db_path, study).reader_title


def back_setting(db_path, study: str) -> bool:
    """Whether readers of `study` may go back to the previous case."""
    from studies.lifecycle import study_texts

    return study_texts(db_path, study).allow_back


def save_back_setting(db_path, study: str, allowed: bool, *, actor: str = "admin") -> str:
    """Allow or forbid going back (studies.lifecycle.set_allow_back); a line saying so."""
    from studies.lifecycle import set_allow_back

    if not study:
        raise StudyError("choose a study first")
    set_allow_back(db_path, study, bool(allowed), actor=actor)
    return ("Readers **may go back** to the previous case and change their answer."
            if allowed else "Readers **cannot go back** to the previous case.")
