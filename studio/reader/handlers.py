"""What the reader does: open the page, agree and start, answer, continue after training
feedback, go back — each a plain function returning the `Screen` to show (`studio.reader.page`
lays the screens out).

Who the reader is comes from their personal link (`/?token=...`). Gradio forwards the
page's query string with every event (`/gradio_api/queue/join?token=...`), so *every*
handler re-authorises from the token through `studies.readers.reader_for_token` — nothing
sent by the browser is trusted, and the only per-tab state (`OnScreen`, a `gr.State`,
which lives on the server and never reaches the browser) says which case and question is
on screen and when it appeared. Where the reader is in the study always comes from the
database (`studies.session.next_case`), so refresh, tab close and server restart resume at
the first unanswered question.

Blinding: the image is an `<img>` pointing at the app's own stimulus route
(`STIMULUS_ROUTE`, served by `studio.web.app`): `stimulus/<view id>?token=<token>`, where the
view id is the read's random id (`studies.readers`: one per read, so a repeat or an
attention check gets a new one and two readers never share one) and the route answers
only with the reader's own token and only while that read is unanswered. It returns the
stored, normalised, metadata-free PNG bytes as they are (no re-encoding, no cache file).
Gradio's file routes serve nothing on the reader side. Every value sent to the browser is
built from a `CaseView`, which carries no source, generator or file name; the prompt
is shown, as plain text, only while a question that needs it is on screen.

Faults: a missing or unreadable stimulus file shows "This image is unavailable; the
study team has been notified" with a Try again button (the reader waits at that case: it
is not skipped, so every reader still reads every case in their order), and is logged for
the admin's progress view (`studies.serving.record_fault`). Any other storage fault
(database locked, swapped or on a read-only file system) shows a message in words too,
never Gradio's bare "Error".

Time on case is measured on the server: from the moment the case (or the next question of
the same case) is served to the moment the answer arrives — it includes the image's
download time (a few ms on a LAN). The browser's own figure (from when the image was on
screen) replaces it only when it is plausible: see `answer_duration_ms`.

Before the first case: the instructions, the consent text until agreed, and — when the
study asks for it — the reader's profile form (`page.profile_form_html`); Start sends the
form's values (`profile.js`) and `start` stores them, or keeps the reader on that screen
with the reason when a field is missing (nothing recorded). The key hints of that screen
sit beside its text (`texts.INTRO_KEYS` / `texts.INTRO_TOUCH`), so touch screens get tap
wording.

Going back (`go_back`; button "Back" and key B, shown only when `studies.session` allows
it: the study permits it and the previous read is a main or repeat read on this side of a
wash-out): the previous case is shown again under a fresh view id with the reader's earlier
answer selected; the re-answer is a new row and wins. From a later question of a case, Back
returns to that case's earlier question instead. Answers given before a case's text was
shown are final once it is (`session.final_tasks`; `texts.TEXT_RULE` tells the reader), so
Back never reaches them after that. A comment and a "non-diagnostic image" flag go with each
answer (inputs of the submit event), shown again for the same read; they are plain values
in a Textbox and a Checkbox, never rendered as Markdown/HTML.

The handlers (`open_page`, `start`, `submit_answer`, `continue_after_feedback`, `go_back`) are
plain functions of (db_path, token, state, ...) returning a `Screen`, so they are tested
without a browser; `studio.reader.page.build_reader_blocks` wires them to components.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import sqlite3
import time
import urllib.parse

from studies import back_rule, lifecycle, monitoring, profiles, readers, serving, session
from studies.errors import (
    DatabaseNotFound, NotAStudyDatabase, NotAuthorised, ReaderError, SessionError, StudyError,
)
from studies.storage import writer_process
from studies.storage.schema import utc_now
from studio.format.plain_text import plain_markdown
from studio.reader.texts import intro_text

log = logging.getLogger(__name__)

INVALID_LINK = "This link is not valid."
STIMULUS_ROUTE = "stimulus"   # GET /stimulus/<view id>?token=<token> (studio.web.app)
MIN_CLIENT_MS = 50            # a browser figure below this is not a real viewing time
UNAVAILABLE_IMAGE = ("This image is unavailable; the study team has been notified. Your "
                     "answers so far are saved. Press Try again in a few minutes: the study "
                     "continues at this image once it is back.")
UNEXPECTED = ("Something went wrong on the server{what}. Your earlier answers are safe. "
              "Press Try again; if this keeps happening, tell the study team (the details "
              "are in the server's log).")
STORAGE_FAULT = ("The study's storage cannot be reached right now, so nothing could be "
                 "loaded or saved{what}. Your earlier answers are safe. Press Try again in a "
                 "minute; if this keeps happening, tell the study team (the problem is in "
                 "the server's log).")

STUDY_CLOSED = ("This study is closed and takes no more answers. Thank you for taking part — "
                "you can close this tab.")
WASHOUT = ("Thank you — the rest of your cases are repeat reads that open after a wash-out "
           "period: {when}. Come back then with the same link.")


@dataclasses.dataclass
class OnScreen:
    """What this tab shows (server-side gr.State). Used only to time the answer and to
    refuse an answer for a question that is no longer the reader's current one."""
    reader_id: int
    assignment_id: int
    task: str
    shown_at: str          # ISO UTC wall clock, recorded with the response
    shown_mono: float      # monotonic clock for the duration
    client_id: str         # idempotency key of this question's answer (double Enter)
    feedback: list = dataclasses.field(default_factory=list)  # training: earlier answers'


@dataclasses.dataclass
class Screen:
    kind: str                       # login | intro | case | feedback | finished | unavailable
    message: str = ""
    intro: str = ""
    position: int = 0
    total: int = 0
    image_url: str | None = None     # relative stimulus URL; None: keep the image shown
    new_image: bool = False
    question: str = ""
    question_help: str = ""
    choices: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    prompt: str | None = None
    feedback: str = ""
    training: bool = False
    state: OnScreen | None = None
    pair_image_url: str | None = None  # pair (2AFC): the right-hand image (image_url: left)
    pair: bool = False                 # a pair question (or a pair study's intro): keys hint
    profile: "profiles.ProfileForm | None" = None  # intro: the profile form to fill in
    presets: str = ""                  # the viewer's contrast presets (preset_family)
    can_go_back: bool = False       # the Back button shows (session.go_back would work)
    selected: int | None = None     # answer pre-selected: the earlier one of a reopened read
    comment: str = ""               # the read's comment and flag as last sent (or typed)
    non_diagnostic: bool = False
    consent: bool = False           # intro: consent pending (the I agree / I do not agree controls)
    agreed: bool = False            # intro: the I agree box stays ticked (e.g. a profile error)


def _token(token: str | None) -> str | None:
    if not token:
        return None
    token = token.strip()
    return token or None


def _reader(db_path, token):
    try:
        ref = readers.reader_for_token(db_path, _token(token))
    except (DatabaseNotFound, NotAStudyDatabase):  # a storage fault, not a bad link
        raise  # (storage_safe says so in words)
    except StudyError:
        return None
    if ref is not None and not ref.study_open:
        raise session.StudyClosed(f"study is {ref.study_status}")  # storage_safe: closed page
    return ref


def _on_case(db_path, token, *, invalid: str = INVALID_LINK, done=None):
    """(reader, the case they are at, None), or a screen to show instead: the login form
    with `invalid` for a link that names no reader, `done` (default: the finish screen) when
    every case is answered."""
    reader = _reader(db_path, token)
    if reader is None:
        return None, None, _login(invalid)
    view = session.next_case(db_path, reader.reader_id)
    if view is None:
        return reader, None, (done or _finished_for)(db_path, reader)
    return reader, view, None


def _login(message: str = "") -> Screen:
    return Screen("login", message=message or
                  "Open the personal link you were sent, or paste your access code here.")


def _finished(total: int) -> Screen:
    return Screen("finished", position=total, total=total,
                  message=f"All {total} cases are answered. Thank you — you can close this tab.")


def _finished_for(db_path, reader) -> Screen:
    screen = _finished(_total(db_path, reader))
    screen.can_go_back = session.back_refused(db_path, reader.reader_id) is None
    return screen


def _choices(question: dict) -> list[tuple[str, int]]:
    # The key digit in front of each label is drawn by CSS (a counter), so touch screens,
    # which have no digit keys, show the label alone.
    return [(s["label"], int(s["value"])) for s in question["scale"]]


def stimulus_url(view_id: str, token: str) -> str:
    """Relative URL of a read's image (relative, so it works under a path prefix too)."""
    return (f"{STIMULUS_ROUTE}/{urllib.parse.quote(view_id, safe='')}"
            f"?token={urllib.parse.quote(token, safe='')}")


def _unavailable(view: session.CaseView, message: str) -> Screen:
    return Screen("unavailable", message=message, position=view.position, total=view.total)


def _case_screen(db_path, reader, view: session.CaseView, *, with_image: bool,
                 message: str = "", token: str = "") -> Screen:
    pending = view.pending
    q = pending[0]
    image_url = pair_url = None
    if with_image:
        try:
            serving.check_stimulus(db_path, view)  # both images of a pair
        except serving.StimulusUnavailable as exc:
            report_fault(db_path, reader.reader_id, exc)
            return _unavailable(view, UNAVAILABLE_IMAGE)
        image_url = stimulus_url(view.stimulus_id, token)
        if view.pair_stimulus_id:  # pair (2AFC): left = the read's image, right = its pair's
            pair_url = stimulus_url(view.pair_stimulus_id, token)
    asked = len(view.tasks) - len(pending) + 1
    question = q["question"]
    if len(view.tasks) > 1:
        question = f"{question}  \n*Question {asked} of {len(view.tasks)} for this image*"
    state = OnScreen(reader.reader_id, view.assignment_id, q["task"], utc_now(),
                     time.monotonic(), secrets.token_urlsafe(12))
    return Screen("case", message=message, position=view.position, total=view.total,
                  image_url=image_url, new_image=with_image, question=question,
                  question_help=q.get("help", ""), choices=_choices(q),
                  prompt=view.prompt if q.get("shows_prompt") else None,
                  training=view.training, state=state, pair_image_url=pair_url,
                  pair=view.pair_stimulus_id is not None,
                  presets=preset_family(view.modality), can_go_back=view.can_go_back,
                  selected=view.earlier.get(q["task"]), comment=view.comment,
                  non_diagnostic=view.non_diagnostic)


def report_fault(db_path, reader_id: int, exc: serving.StimulusUnavailable) -> None:
    """Log a missing/unreadable stimulus for the server log and the admin's progress view."""
    log.error("reader %s: %s", reader_id, exc)
    try:
        serving.record_fault(db_path, reader_id, exc.stimulus_id, exc.reason)
    except (sqlite3.Error, OSError, StudyError):  # the log line above still says it
        log.exception("could not record the stimulus fault in the database")


def open_page(db_path, token: str | None) -> Screen:
    """Page load: the login form, the instructions (nothing answered yet), the current
    case (resume), or the finish screen."""
    reader, view, other = _on_case(db_path, token, invalid="" if not token else (
        "This link is not valid. Check it, or ask the study organiser for a new one."))
    if other is not None:
        return other
    consent = profiles.consent_pending(db_path, reader.reader_id)
    form = profiles.profile_form(db_path, reader.reader_id)
    if consent or form or (view.position == 1 and not view.reopened
                           and not any(t["answered"] for t in view.tasks)):
        # The study's own instructions, and its consent text until the reader agrees
        # (Start records the agreement) and its profile form until it is filled in: shown
        # before any case, also on a resumed session when either was added later.
        return _intro_screen(db_path, reader, view, consent, form)
    return _case_screen(db_path, reader, view, with_image=True, token=_token(token),
                        message="Welcome back: continuing where you stopped.")


def _intro_screen(db_path, reader, view, consent: str, form, message: str = "") -> Screen:
    texts = lifecycle.study_texts(db_path, reader.study)
    intro = intro_text(view, texts.instructions, consent, texts.reader_title)
    if message and form is None:  # with a form, the form shows the message itself
        intro += f"\n\n**{plain_markdown(message)}**"
    return Screen("intro", intro=intro, total=view.total, profile=form, message=message,
                  pair=view.pair_stimulus_id is not None, consent=bool(consent))


def profile_values(profile_json, form: profiles.ProfileForm) -> dict:
    """The form's fields from what the browser sent (a JSON object, see profile.js); other
    keys, non-text values and anything that is not such an object are dropped, so a
    forged request can only fill in this reader's own form, and is checked like any other
    (`profiles.update_profile`)."""
    import json

    if not isinstance(profile_json, str) or len(profile_json) > 50_000:
        return {}
    try:
        sent = json.loads(profile_json)
    except ValueError:
        return {}
    if not isinstance(sent, dict):
        return {}
    return {f: sent[f] for f in form.fields if isinstance(sent.get(f), (str, int))}


def _total(db_path, reader) -> int:
    for p in monitoring.progress(db_path, reader.study):
        if p.reader_id == reader.reader_id:
            return p.total
    return 0


CONSENT_NEEDED = "To start, tick “I agree” under the consent text, or press “I do not agree”."
CONSENT_DECLINED = ("You did not agree: that is recorded, nothing else, and no image is shown. "
                    "You can close this page. If you change your mind, tick “I agree” and "
                    "press Start.")


def decline_consent(db_path, token: str | None) -> Screen:
    """'I do not agree' under the consent text: recorded, and the intro stays."""
    reader, view, other = _on_case(db_path, token)
    if other is not None:
        return other
    consent = profiles.consent_pending(db_path, reader.reader_id)
    if consent:
        profiles.record_consent_declined(db_path, reader.reader_id)
    return _intro_screen(db_path, reader, view, consent,
                         profiles.profile_form(db_path, reader.reader_id),
                         message=CONSENT_DECLINED if consent else "")


def start(db_path, token: str | None, profile_json: str | None = None, *,
          agreed: bool | None = None) -> Screen:
    """'Start' on the instruction screen (or any time the current case must be shown).
    When the study asks for the reader's profile and it is not filled in yet, `profile_json`
    (the form's values) must fill in every field: otherwise the intro comes back with the
    reason and the typed values, and nothing (neither profile nor consent) is recorded.
    `agreed`: the page's "I agree" box; False while consent is pending brings the intro
    back and records nothing (None: Start itself counts as agreeing)."""
    reader, view, other = _on_case(db_path, token)
    if other is not None:
        return other
    form = profiles.profile_form(db_path, reader.reader_id)
    if agreed is False and profiles.consent_pending(db_path, reader.reader_id):
        typed = form if form is None else dataclasses.replace(
            form, values={k: str(v) for k, v in profile_values(profile_json, form).items()})
        return _intro_screen(db_path, reader, view,
                             profiles.consent_pending(db_path, reader.reader_id), typed,
                             message=CONSENT_NEEDED)
    if form is not None:
        values = profile_values(profile_json, form)
        try:
            profiles.update_profile(db_path, reader.reader_id, values, complete=True,
                                   actor="reader")
        except ReaderError as exc:
            typed = dataclasses.replace(form, values={k: str(v) for k, v in values.items()})
            return _intro_screen(db_path, reader, view,
                                 profiles.consent_pending(db_path, reader.reader_id), typed,
                                 message=_reader_words(str(exc)))
    if profiles.consent_pending(db_path, reader.reader_id):
        profiles.record_consent(db_path, reader.reader_id)  # Start under the consent text
    return _case_screen(db_path, reader, view, with_image=True, token=_token(token))


def _reader_words(message: str) -> str:
    """A profile check's message for the reader (the field labels, not the column names)."""
    import re

    message = re.sub(r"profile field '(\w+)'", lambda m: profiles.profile_label(m.group(1)),
                     message)
    message = message.replace("years_experience", profiles.profile_label("years_experience"))
    return message.rstrip(".") + "."


def answer_duration_ms(server_ms: int, client_ms) -> tuple[int, bool, bool]:
    """(time on case, whether the browser's figure was used, whether it is flagged).

    The server's clock starts when it sends the screen, so it also counts the queue and the
    image download; the browser times from the moment the image (or the next question on
    it) was on screen. The browser's figure is used only when it is a number between
    MIN_CLIENT_MS and the server's: a client can shorten the time to when it really showed
    the image, never lengthen it or make it up. A figure below MIN_CLIENT_MS (no one looks
    at an image and answers in under 50 ms; 0 is a script or a broken clock) is replaced by
    the server's and flagged. The result is at least 1 ms: a stored 0 means nothing."""
    server_ms = max(1, int(server_ms))
    try:
        value = float(client_ms)
    except (TypeError, ValueError):
        return server_ms, False, False
    if value != value or value < 0 or value > server_ms:  # NaN, negative, longer than possible
        return server_ms, False, False
    if value < MIN_CLIENT_MS:
        return server_ms, False, True
    return int(round(value)), True, False


def submit_answer(db_path, token: str | None, state: OnScreen | None, answer,
                  client_ms=None, comment: str | None = "", non_diagnostic=False) -> Screen:
    """Record the answer to the question on screen, then show what comes next: the next
    question on the same image, training feedback, the next case, or the finish screen.
    `client_ms` is the browser's time since it displayed the question (see answer_duration_ms);
    `comment` and `non_diagnostic` are the reader's remarks on the case, stored with it."""
    non_diagnostic = bool(non_diagnostic)
    # all answered already (e.g. in another tab): this answer is not stored
    reader, view, other = _on_case(db_path, token, done=_finished_elsewhere)
    if other is not None:
        return other
    current = view.pending[0]["task"]
    if (state is None or state.reader_id != reader.reader_id
            or state.assignment_id != view.assignment_id or state.task != current):
        # Stale tab (server restart, a second tab answered it, a double submit that already
        # moved on): record nothing, show the reader's real current question.
        return _case_screen(db_path, reader, view, with_image=True, token=_token(token),
                            message="This page was out of date; here is your current case.")
    if answer is None or answer == "":
        screen = _case_screen(db_path, reader, view, with_image=False,
                              message="Choose an answer first.")
        screen.state = state  # keep timing from the original showing
        screen.comment, screen.non_diagnostic = comment or "", non_diagnostic  # as typed
        return screen
    server_ms = int(round((time.monotonic() - state.shown_mono) * 1000))
    duration, from_browser, flagged = answer_duration_ms(server_ms, client_ms)
    try:
        # With the browser's figure, shown_at is derived from it (answered_at − duration).
        ack = session.submit(db_path, reader.reader_id, state.assignment_id, state.task,
                             answer, duration, state.client_id,
                             shown_at=None if from_browser else state.shown_at,
                             duration_flagged=flagged, comment=comment,
                             non_diagnostic=non_diagnostic)
    except NotAuthorised:
        return _login(INVALID_LINK)
    except session.AlreadyAnswered:
        # Answered already from another tab, or before a reload: that answer stands.
        nxt = session.next_case(db_path, reader.reader_id)
        if nxt is None:
            return _finished_elsewhere(db_path, reader)
        return _case_screen(db_path, reader, nxt, with_image=True, token=_token(token),
                            message=ANSWERED_ELSEWHERE)
    except SessionError as exc:
        screen = _case_screen(db_path, reader, view, with_image=False, message=str(exc))
        screen.state = state
        screen.comment, screen.non_diagnostic = comment or "", non_diagnostic
        return screen
    feedback = state.feedback + ([ack.feedback] if ack.feedback else [])
    nxt = session.next_case(db_path, reader.reader_id)
    if not ack.assignment_complete:
        if nxt is not None and nxt.assignment_id == state.assignment_id:
            screen = _case_screen(db_path, reader, nxt, with_image=False)
            screen.state.feedback = feedback
            return screen
    if feedback and ack.assignment_complete:
        return Screen("feedback", position=view.position, total=view.total,
                      feedback=_feedback_text(feedback), training=True)
    if nxt is None:
        return _finished_for(db_path, reader)
    return _case_screen(db_path, reader, nxt, with_image=True, token=_token(token))


OUT_OF_DATE_FINISHED = ("This page was out of date: that question had already been answered, "
                        "and that answer is kept.")
ANSWERED_ELSEWHERE = ("That question had already been answered (in another tab, or before "
                      "the page was reloaded), and that answer is kept. Here is your "
                      "current case.")


def _finished_elsewhere(db_path, reader) -> Screen:
    """The finish screen for an answer that was not stored because its question had been
    answered already (the reader must not take it for this answer's acknowledgement)."""
    screen = _finished_for(db_path, reader)
    screen.message = f"{OUT_OF_DATE_FINISHED} {screen.message}"
    return screen


def _feedback_text(feedback: list[dict]) -> str:
    """One message for a training case: the verdict on the real/synthetic call when there
    was one (it names the truth), else the truth alone."""
    graded = [f for f in feedback if f.get("correct") is not None]
    f = graded[0] if graded else feedback[0]
    # plain words: emoji need a colour font that kiosk and headless browsers may lack
    verdict = {True: "Correct.", False: "Not quite.", None: ""}[f.get("correct")]
    return f"**Training case.** {verdict} {f.get('message', '')}".replace("  ", " ").strip()


def continue_after_feedback(db_path, token: str | None) -> Screen:
    return start(db_path, token)


BACK_DONE = ("You are back at the previous case; your earlier answer is selected. Change it "
             "if you wish and submit: the new answer replaces the earlier one.")
BACK_DONE_QUESTION = "You are back at the previous question (your earlier answer is selected)."


def go_back(db_path, token: str | None) -> Screen:
    """'Back' (button or key B): reopen the previous case (studies.session.go_back) and show
    it under a fresh view id. When that is refused (the study forbids it, a training case or
    check question, the wash-out, already one case back), the current screen with the reason."""
    reader = _reader(db_path, token)
    if reader is None:
        return _login(INVALID_LINK)
    try:  # what Back does from here: the previous question of this case, or the previous case
        before = session.next_case(db_path, reader.reader_id)
    except SessionError:
        before = None
    try:
        view = session.go_back(db_path, reader.reader_id)
    except NotAuthorised:
        return _login(INVALID_LINK)
    except back_rule.CannotGoBack as exc:
        view = session.next_case(db_path, reader.reader_id)
        if view is None:
            screen = _finished_for(db_path, reader)
            screen.message = f"{screen.message} (Going back is not possible: {exc}.)"
            return screen
        return _case_screen(db_path, reader, view, with_image=True, token=_token(token),
                            message=f"Going back is not possible: {exc}.")
    within = before is not None and before.back_to_question
    return _case_screen(db_path, reader, view, with_image=True, token=_token(token),
                        message=BACK_DONE_QUESTION if within else BACK_DONE)


# The viewer's contrast presets (viewer.js PRESETS) by modality: a family name for the
# modality words a study's manifest uses (DICOM codes and plain names), else generic.
PRESET_FAMILIES = {
    "xray": ("CR", "DX", "MG", "XR", "X-RAY", "XRAY", "CXR", "CHEST X-RAY", "RADIOGRAPH",
             "RADIOGRAPHY", "MAMMOGRAPHY", "MAMMOGRAM"),
    "ct": ("CT", "COMPUTED TOMOGRAPHY"),
    "mri": ("MR", "MRI", "MAGNETIC RESONANCE"),
    "colour": ("FUNDUS", "FUNDOSCOPY", "FUNDUS PHOTOGRAPHY", "OP", "XC", "DERMOSCOPY",
               "DERMATOLOGY", "ENDOSCOPY", "ES", "COLONOSCOPY", "HISTOPATHOLOGY", "HISTOLOGY",
               "PATHOLOGY", "MICROSCOPY", "SM", "GM", "WSI", "PHOTO", "CLINICAL PHOTOGRAPHY"),
    "ultrasound": ("US", "ULTRASOUND", "ECHOCARDIOGRAPHY"),
}
_FAMILY_OF = {word: family for family, words in PRESET_FAMILIES.items() for word in words}


def preset_family(modality: str) -> str:
    """The viewer's preset family for a case's modality ("" = generic presets). The session
    gives the modality only when both sources have it (CaseView.modality), so this attribute
    is the same for a real and a synthetic image of one modality."""
    return _FAMILY_OF.get(" ".join((modality or "").upper().replace("_", " ").split()), "")



def _may_go_back(db_path, token) -> bool:
    """Whether the reader of `token` could go back now (for the wash-out waiting screen);
    False on any doubt."""
    try:
        reader = _reader(db_path, token)
        return reader is not None and session.back_refused(db_path, reader.reader_id) is None
    except Exception:  # noqa: BLE001 - the screen shows without the button
        return False


def storage_safe(handler, what: str = ""):
    """Run a page handler; a storage fault (database locked, swapped for another file or
    unreadable, read-only file system, missing folder) becomes a screen in words instead of
    Gradio's bare "Error", and the traceback goes to the server log."""
    import functools

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except session.StudyClosed:
            return Screen("finished", message=STUDY_CLOSED)
        except session.NotYetAvailable as exc:
            screen = Screen("unavailable", message=WASHOUT.format(when=str(exc)))
            # the last first read may still be changed while the repeats wait
            screen.can_go_back = _may_go_back(*args[:2])
            return screen
        except writer_process.WriteTimeout as exc:  # a stalled writer: one line, no trace
            log.error("reader page: storage fault: %s", exc)
            return Screen("unavailable", message=STORAGE_FAULT.format(what=what))
        except (sqlite3.Error, OSError, DatabaseNotFound, NotAStudyDatabase) as exc:
            log.exception("reader page: storage fault (%s)", type(exc).__name__)
            return Screen("unavailable", message=STORAGE_FAULT.format(what=what))
        except Exception:  # a bug: still words, not a bare "Error"; details in the log
            log.exception("reader page: unexpected error")
            return Screen("unavailable", message=UNEXPECTED.format(what=what))
    return wrapper
