"""The reader's page: instructions, one stimulus at a time, the question(s), progress,
training feedback, a finish screen.

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
built here from a `CaseView`, which carries no source, generator or file name; the prompt
is shown, as plain text, only while a question that needs it is on screen.

Faults: a missing or unreadable stimulus file shows "This image is unavailable; the
study team has been notified" with a Try again button (the reader waits at that case: it
is not skipped, so every reader still reads every case in their order), and is logged for
the admin's progress view (`studies.session.record_fault`). Any other storage fault
(database locked, swapped or on a read-only file system) shows a message in words too,
never Gradio's bare "Error".

Time on case is measured on the server: from the moment the case (or the next question of
the same case) is served to the moment the answer arrives — it includes the image's
download time (a few ms on a LAN). The browser's own figure (from when the image was on
screen) replaces it only when it is plausible: see `answer_duration_ms`.

Before the first case: the instructions, the consent text until agreed, and — when the
study asks for it — the reader's profile form (`profile_form_html`); Start sends the form's
values (`PROFILE_JS`) and `start` stores them, or keeps the reader on that screen with the
reason when a field is missing (nothing recorded). The key hints of that screen sit beside
its text (`INTRO_KEYS` / `INTRO_TOUCH`), so touch screens get tap wording.

Going back (`go_back`; button "Back" and key B, shown only when `studies.session` allows
it: the study permits it and the previous read is a main or repeat read on this side of a
wash-out): the previous case is shown again under a fresh view id with the reader's earlier
answer selected; the re-answer is a new row and wins. From a later question of a case, Back
returns to that case's earlier question instead. Answers given before a case's text was
shown are final once it is (`session.final_tasks`; `TEXT_RULE` tells the reader), so Back
never reaches them after that. A comment and a "non-diagnostic
image" flag go with each answer (inputs of the submit event), shown again for the same
read; they are plain values in a Textbox and a Checkbox, never rendered as Markdown/HTML.

The handlers (`open_page`, `start`, `submit_answer`, `continue_after_feedback`, `go_back`) are
plain functions of (db_path, token, state, ...) returning a `Screen`, so they are tested
without a browser; `build_reader_blocks` wires them to components.
"""
from __future__ import annotations

import dataclasses
import html
import logging
import pathlib
import secrets
import sqlite3
import time
import urllib.parse

import gradio as gr

from studies import lifecycle, readers, session

from studies.storage import writer_process
from studies.storage.database import utc_now
from studies.design import TASKS
from studies.errors import (
    DatabaseNotFound, NotAStudyDatabase, NotAuthorised, ReaderError, SessionError, StudyError,
)
from studio.format.plain_text import plain_markdown, study_markdown

log = logging.getLogger(__name__)

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

KEYBOARD_JS = (pathlib.Path(__file__).with_name("keyboard.js")).read_text(encoding="utf-8")
# Zoom/pan/window-level/invert/full screen on the served image, help overlay, touch mode,
# and the "not saved" banner when the connection drops (see the file's header).
VIEWER_JS = (pathlib.Path(__file__).with_name("viewer.js")).read_text(encoding="utf-8")
# Gradio scopes the app's `css=` to elements inside its container, so the page padding of
# the container's own `.main` (32 px a side, a sixth of a phone's width) is set here.
PAGE_CSS = """@media (max-width: 640px) {
  .gradio-container > .main { padding-left: 6px !important; padding-right: 6px !important; }
}
/* A pair (2AFC) uses the whole window width: the two images are width-bound. */
@media (min-width: 900px) {
  .gradio-container:has(#stimulus .pair-view),
  .gradio-container:has(#stimulus .pair-view) .main,
  .gradio-container:has(#stimulus .pair-view) .contain,
  .gradio-container:has(#stimulus .pair-view) .fillable { max-width: 100% !important; }
}"""
# "Saving…" once an answer has waited about a second for the server (SHOWN_MS_JS starts
# the timer, SAVED_JS stops it when the event has come back, whatever its outcome).
SAVING_JS = """(() => {
  let timer = null;
  function show() {
    let el = document.getElementById('saving');
    if (!el) {
      el = document.createElement('div');
      el.id = 'saving'; el.setAttribute('role', 'status'); el.textContent = 'Saving…';
      document.body.appendChild(el);
    }
    el.hidden = false;
  }
  window.__medisynSaving = {
    start() { clearTimeout(timer); timer = setTimeout(show, 1000); },
    stop() {
      clearTimeout(timer); timer = null;
      const el = document.getElementById('saving');
      if (el) el.hidden = true;
    },
  };
})();"""
SAVING_CSS = """#saving { position: fixed; left: 50%; bottom: 1rem; transform: translateX(-50%);
  z-index: 1000; padding: 0.5rem 1.25rem; border-radius: 0.5rem; background: #1f2937;
  color: #fff; font-family: var(--font, sans-serif); font-size: 1rem;
  box-shadow: 0 2px 8px rgba(0,0,0,0.3); }
#saving[hidden] { display: none; }"""
SAVED_JS = "() => { if (window.__medisynSaving) window.__medisynSaving.stop(); }"
HEAD = (f"<script>{KEYBOARD_JS}</script><script>{VIEWER_JS}</script><script>{SAVING_JS}"
        f"</script><style>{PAGE_CSS}\n{SAVING_CSS}</style>")

# Runs in the browser before the submit event: passes the answer through and adds the
# milliseconds since keyboard.js saw the current question (or its image) appear.
SHOWN_MS_JS = """(st, ans, ms, note, nd) => {
  if (window.__medisynSaving) window.__medisynSaving.start();
  return [st, ans, (typeof window.__medisynShownAt === 'number')
    ? Math.round(performance.now() - window.__medisynShownAt) : null, note, nd]; }"""

# Element ids the keyboard script and the browser tests rely on.
IDS = {"answer": "answer", "submit": "submit", "continue": "continue", "start": "start",
       "image": "stimulus", "progress": "progress", "question": "question",
       "prompt": "prompt", "feedback": "feedback", "finished": "finished",
       "login": "login", "intro": "intro", "message": "message", "unavailable": "unavailable",
       "retry": "retry", "case": "case", "screen": "screen", "reader": "reader",
       "profile": "profile",
       "back": "back", "back_finished": "back-finished", "back_waiting": "back-waiting",
       "back_state": "back-state",
       "remarks": "remarks", "comment": "comment", "non_diagnostic": "non-diagnostic"}
SCREENS = ("login", "intro", "case", "feedback", "finished", "unavailable")
ANSWER_CONCURRENCY = 32  # answers being saved at once (their own queue: see the submit event)


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
    profile: "readers.ProfileForm | None" = None  # intro: the profile form to fill in
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


# The pair (2AFC) keys, in keyboard.js: an arrow moves the answer one step along the scale
# towards its side, so one press is "possibly", two "probably", three "definitely".
PAIR_KEYS_INTRO = ("**Keyboard:** **← / →** pick the side you think is synthetic: the first "
                   "press says *possibly*, press the same arrow again for *probably*, again "
                   "for *definitely* (the other arrow steps back); digits 1–6 choose an "
                   "answer directly, **Enter** submits, **?** lists the image viewer's keys.")


# The reader's side of `studies.session.final_tasks`: what Back can still change.
TEXT_RULE = ("Answers you give about an image before its text appears are final once the "
             "text is shown: **Back** then returns only to questions asked with the text, "
             "never to the earlier ones.")
TRAINING_TEXT = "Training cases ask only about the image: their text is not shown."


def intro_text(view: session.CaseView, instructions: str = "", consent: str = "",
               title: str = "") -> str:
    """The instruction screen, from the questions this study asks. It counts images (the
    screens the reader will see, as the progress bar does: `view.total`), not items
    (image x question): with two questions per image, 10 images are 20 answers. Headed by
    the study team's reader-facing `title`, else a neutral one: the study's internal name
    may describe its design (sources, generators), so readers never see it."""
    # every question of the study, also those a training read skips (view.skipped)
    questions = view.tasks + [TASKS[t].question_dict() for t in view.skipped if t in TASKS]
    n_q = len(questions)
    per = ("one question" if n_q == 1 else f"{n_q} questions") + " about each"
    pair = view.pair_stimulus_id is not None
    what = ("pairs of images, two side by side (one real, one synthetic)," if pair
            else "images, one at a time,")
    lines = [f"### {plain_markdown(title or lifecycle.READER_TITLE_DEFAULT)}", "",
             f"You will see **{view.total}** {what} and answer {per}. Answer "
             "from the image alone; there is no time limit, but go with your first impression.",
             ""]
    for q in questions:
        # No key wording here: the same text shows on touch screens (the key hints are
        # INTRO_KEYS, shown only where there is a keyboard).
        lines.append(f"- **{q['question']}** — "
                     + ", ".join(s["label"] for s in q["scale"]))
        if q.get("shows_prompt"):
            lines.append("  (the text the image should match is shown with this question)")
    texts = [i for i, q in enumerate(questions) if q.get("shows_prompt")]
    if texts and texts[0] > 0:
        lines += ["", TEXT_RULE]
    if view.skipped:
        lines += ["", TRAINING_TEXT]
    lines += ["",
              "Training cases, if any, come first: after each you are told the right answer. "
              "Every answer is saved at once — you can close the tab and come back with the "
              "same link to continue where you stopped."]
    if instructions.strip():  # the study team's text: its emphasis and lists, no links
        lines[2:2] = ["**Instructions from the study team**", "", study_markdown(instructions), ""]
    if consent.strip():
        lines += ["", "**Consent**", "", study_markdown(consent), "",
                  "Tick **I agree** below and press **Start** to begin; **I do not agree** "
                  "records that you declined and shows no image."]
    return "\n".join(lines)


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
            session.check_stimulus(db_path, view)  # both images of a pair
        except session.StimulusUnavailable as exc:
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


def report_fault(db_path, reader_id: int, exc: session.StimulusUnavailable) -> None:
    """Log a missing/unreadable stimulus for the server log and the admin's progress view."""
    log.error("reader %s: %s", reader_id, exc)
    try:
        session.record_fault(db_path, reader_id, exc.stimulus_id, exc.reason)
    except (sqlite3.Error, OSError, StudyError):  # the log line above still says it
        log.exception("could not record the stimulus fault in the database")


def open_page(db_path, token: str | None) -> Screen:
    """Page load: the login form, the instructions (nothing answered yet), the current
    case (resume), or the finish screen."""
    reader = _reader(db_path, token)
    if reader is None:
        return _login("" if not token else "This link is not valid. Check it, or ask the "
                      "study organiser for a new one.")
    view = session.next_case(db_path, reader.reader_id)
    if view is None:
        return _finished_for(db_path, reader)
    consent = readers.consent_pending(db_path, reader.reader_id)
    form = readers.profile_form(db_path, reader.reader_id)
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


def profile_values(profile_json, form: readers.ProfileForm) -> dict:
    """The form's fields from what the browser sent (a JSON object, see PROFILE_JS); other
    keys, non-text values and anything that is not such an object are dropped, so a
    forged request can only fill in this reader's own form, and is checked like any other
    (`readers.update_profile`)."""
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
    for p in session.progress(db_path, reader.study):
        if p.reader_id == reader.reader_id:
            return p.total
    return 0


CONSENT_NEEDED = "To start, tick “I agree” under the consent text, or press “I do not agree”."
CONSENT_DECLINED = ("You did not agree: that is recorded, nothing else, and no image is shown. "
                    "You can close this page. If you change your mind, tick “I agree” and "
                    "press Start.")


def decline_consent(db_path, token: str | None) -> Screen:
    """'I do not agree' under the consent text: recorded, and the intro stays."""
    reader = _reader(db_path, token)
    if reader is None:
        return _login("This link is not valid.")
    view = session.next_case(db_path, reader.reader_id)
    if view is None:
        return _finished_for(db_path, reader)
    consent = readers.consent_pending(db_path, reader.reader_id)
    if consent:
        readers.record_consent_declined(db_path, reader.reader_id)
    return _intro_screen(db_path, reader, view, consent,
                         readers.profile_form(db_path, reader.reader_id),
                         message=CONSENT_DECLINED if consent else "")


def start(db_path, token: str | None, profile_json: str | None = None, *,
          agreed: bool | None = None) -> Screen:
    """'Start' on the instruction screen (or any time the current case must be shown).
    When the study asks for the reader's profile and it is not filled in yet, `profile_json`
    (the form's values) must fill in every field: otherwise the intro comes back with the
    reason and the typed values, and nothing (neither profile nor consent) is recorded.
    `agreed`: the page's "I agree" box; False while consent is pending brings the intro
    back and records nothing (None: Start itself counts as agreeing)."""
    reader = _reader(db_path, token)
    if reader is None:
        return _login("This link is not valid.")
    view = session.next_case(db_path, reader.reader_id)
    if view is None:
        return _finished_for(db_path, reader)
    form = readers.profile_form(db_path, reader.reader_id)
    if agreed is False and readers.consent_pending(db_path, reader.reader_id):
        typed = form if form is None else dataclasses.replace(
            form, values={k: str(v) for k, v in profile_values(profile_json, form).items()})
        return _intro_screen(db_path, reader, view,
                             readers.consent_pending(db_path, reader.reader_id), typed,
                             message=CONSENT_NEEDED)
    if form is not None:
        values = profile_values(profile_json, form)
        try:
            readers.update_profile(db_path, reader.reader_id, values, complete=True,
                                   actor="reader")
        except ReaderError as exc:
            typed = dataclasses.replace(form, values={k: str(v) for k, v in values.items()})
            return _intro_screen(db_path, reader, view,
                                 readers.consent_pending(db_path, reader.reader_id), typed,
                                 message=_reader_words(str(exc)))
    if readers.consent_pending(db_path, reader.reader_id):
        readers.record_consent(db_path, reader.reader_id)  # Start under the consent text
    return _case_screen(db_path, reader, view, with_image=True, token=_token(token))


def _reader_words(message: str) -> str:
    """A profile check's message for the reader (the field labels, not the column names)."""
    import re

    message = re.sub(r"profile field '(\w+)'", lambda m: readers.profile_label(m.group(1)),
                     message)
    message = message.replace("years_experience", readers.profile_label("years_experience"))
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
    reader = _reader(db_path, token)
    if reader is None:
        return _login("This link is not valid.")
    view = session.next_case(db_path, reader.reader_id)
    if view is None:  # all answered already (e.g. in another tab): this answer is not stored
        return _finished_elsewhere(db_path, reader)
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
        return _login("This link is not valid.")
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
        return _login("This link is not valid.")
    try:  # what Back does from here: the previous question of this case, or the previous case
        before = session.next_case(db_path, reader.reader_id)
    except SessionError:
        before = None
    try:
        view = session.go_back(db_path, reader.reader_id)
    except NotAuthorised:
        return _login("This link is not valid.")
    except session.CannotGoBack as exc:
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


# ----------------------------------------------------------------------------- Gradio
KEYS_HINT = "Keys: digits choose · Enter submits · ? image viewer keys"
PAIR_KEYS_HINT = ("Keys: ← / → pick the side you think is synthetic (press again: surer) · "
                  "digits choose · Enter submits · ? image viewer keys")
# One screen at a time, from the marker that render() sends (screen_html). A column is
# hidden unless the marker names it, so before the first event nothing shows, as before.
# The feedback screen is the case column with the verdict and Continue instead of the
# question, the scale and Submit. (No commas inside :is()/:has(): Gradio's CSS scoper
# splits selector lists on every comma.)
SCREEN_CSS = """
#screen { display: none !important; }
#reader:not(:has(#screen [data-screen="login"])) #login,
#reader:not(:has(#screen [data-screen="intro"])) #intro,
#reader:not(:has(#screen [data-screen="case"])):not(:has(#screen [data-screen="feedback"])) #case,
#reader:not(:has(#screen [data-screen="finished"])) #finished,
#reader:not(:has(#screen [data-screen="unavailable"])) #unavailable,
#reader:not(:has(#screen [data-screen="feedback"])) #feedback,
#reader:not(:has(#screen [data-screen="feedback"])) #continue,
#reader:has(#screen [data-screen="feedback"]) #question,
#reader:has(#screen [data-screen="feedback"]) #answer,
#reader:has(#screen [data-screen="feedback"]) #submit,
#reader:has(#screen [data-screen="feedback"]) #prompt,
#reader:has(#screen [data-screen="feedback"]) #remarks,
#reader:not(:has(#back-state [data-back])) .back-btn,
#back-state,
#prompt:not(:has(.prompt-text)) { display: none !important; }
#profile:not(:has(.profile-form)) { display: none !important; }
#reader:not(:has(#screen [data-consent])) #consent-agree,
#reader:not(:has(#screen [data-consent])) #consent-decline { display: none !important; }
"""
READER_CSS = SCREEN_CSS + """
#stimulus { background: #000; height: 78vh; display: flex; align-items: center;
            justify-content: center; position: relative; overflow: hidden !important;
            contain: paint;  /* a zoomed image never spills over the answer column */
            touch-action: none; user-select: none; -webkit-user-select: none; }
#stimulus img { max-width: 100%; max-height: 78vh; width: 100%; height: 100%;
                object-fit: contain; background: #000; display: block;
                transform-origin: center center; cursor: grab; }
#stimulus .html-container, #stimulus .html-container > div { width: 100%; height: 100%; }
#stimulus.zoomed img { cursor: move; }
#stimulus:fullscreen { height: 100vh; }
#stimulus:fullscreen img { max-height: 100vh; }
#stimulus .stimulus-fault { color: #f9fafb; padding: 1rem; font-size: 1.05rem; }
/* Pair (2AFC): two viewer panes side by side in the box, each zoomed and panned alone; the
   side word under each image (above a zoomed image, which stays inside its own pane). */
#stimulus .pair-view { display: flex; gap: 6px; width: 100%; height: 100%; }
#stimulus .viewer-pane { flex: 1 1 0; min-width: 0; position: relative; overflow: hidden;
                         contain: paint; display: flex; flex-direction: column; }
#stimulus .viewer-pane img { flex: 1 1 0; min-height: 0; height: auto; max-height: none; }
#stimulus .viewer-pane.zoomed img { cursor: move; }
#stimulus .side-label { flex: none; position: relative; z-index: 4; background: #000;
                        color: #e5e7eb; text-align: center; font-size: 1rem; padding: 2px 0; }
/* The (square) images are width-bound side by side: a box as tall as they are, and a
   wider image column, so they are shown larger and the scale stays beside them. */
#stimulus:has(.pair-view) { height: auto; aspect-ratio: 20 / 11; max-height: 78vh; }
#stimulus:has(.pair-view) .html-container { padding: 4px !important; }
#stimulus:fullscreen:has(.pair-view) { height: 100vh; max-height: 100vh; aspect-ratio: auto; }
#reader:has(#stimulus .pair-view) .column:has(> #stimulus) { flex-grow: 8 !important; }
#reader:has(#stimulus .pair-view) .column:has(#answer):not(:has(#stimulus)) { flex-grow: 2 !important; }
#stimulus .viewer-tools { position: absolute; top: 6px; right: 6px; display: flex; gap: 4px;
                          opacity: 0.55; z-index: 5; }
#stimulus .viewer-tools:hover { opacity: 0.85; }
#stimulus .viewer-tools .tools-toggle { display: none; }
#stimulus .viewer-tools button { min-width: 32px; min-height: 32px; padding: 0 6px;
                                 border: 1px solid #4b5563; border-radius: 6px;
                                 background: #111827; color: #f9fafb; font-size: 0.9rem; }
#stimulus .viewer-toast { position: absolute; bottom: 8px; left: 8px; color: #f9fafb;
                          font-size: 0.9rem; pointer-events: none; z-index: 5; }
#viewer-help { position: fixed; inset: 0; background: rgba(0,0,0,0.55); z-index: 1000;
               display: flex; align-items: center; justify-content: center; }
#viewer-help[hidden] { display: none; }
#viewer-help .card { background: #fff; color: #111827; border-radius: 10px; padding: 1rem 1.5rem;
                     max-width: 32rem; max-height: 90vh; overflow: auto; }
#viewer-help dl { display: grid; grid-template-columns: auto 1fr; gap: 0.3rem 1rem; }
#viewer-help dt { font-weight: 600; white-space: nowrap; }
#viewer-help dd { margin: 0; }
#viewer-help button, #connection-lost button { min-height: 44px; padding: 0 1rem; }
#connection-lost { position: fixed; left: 0; right: 0; top: 0; z-index: 1001;
                   background: #b91c1c; color: #fff; padding: 0.75rem 1rem; font-size: 1.05rem; }
#progress .bar { height: 10px; background: #e5e7eb; border-radius: 5px; overflow: hidden; }
#progress .bar > div { height: 100%; background: #2563eb; }
#progress .label { font-size: 0.95rem; margin-bottom: 4px; color: #374151; }
#answer .wrap { flex-direction: column; align-items: stretch; counter-reset: opt; }
#answer label { font-size: 1.05rem; width: 100%; min-height: 44px; counter-increment: opt; }
/* The key digit of each option (keyboard.js: digit n picks option n); none on touch. */
#answer label > span::before { content: counter(opt) "\\00a0\\00a0"; font-weight: 600; }
#submit, #continue, #start { font-size: 1.1rem; min-height: 3rem; }
#back, #back-finished, #back-waiting { font-size: 1.05rem; min-height: 3rem; }
#remarks { gap: 4px; }
#remarks label { font-size: 0.95rem; }
#prompt { border-left: 4px solid #2563eb; padding-left: 0.75rem; }
#prompt .prompt-text { white-space: pre-wrap; }
.keys-hint { color: #6b7280; font-size: 0.9rem; }
.touch-hint { display: none; color: #6b7280; font-size: 0.9rem; }
.intro-touch { display: none; }
#profile .profile-form { display: grid; gap: 0.6rem; max-width: 32rem; }
#profile h3 { margin: 0.5rem 0 0; }
#profile label { display: grid; gap: 0.2rem; font-weight: 600; }
#profile input { min-height: 44px; padding: 0 0.6rem; font-size: 1rem; font-weight: 400;
                 border: 1px solid #9ca3af; border-radius: 6px; }
#profile .profile-error { color: #b91c1c; font-weight: 600; margin: 0; }
/* Touch screens (no keys): touch wording, 44 px targets. Gradio scopes this stylesheet to
   its container, so a media query, not a class on <html>, switches the mode. */
@media (pointer: coarse) {
  .keys-hint { display: none; }
  .touch-hint { display: block; }
  .intro-keys { display: none; }
  .intro-touch { display: block; }
  #answer label > span::before { content: none; }
  #stimulus .viewer-tools { opacity: 0.85; }
  #stimulus .viewer-tools { gap: 2px; left: 4px; right: 4px; justify-content: flex-end; }
  #stimulus .viewer-tools button { min-width: 38px; min-height: 44px; padding: 0 2px;
                                   font-size: 0.8rem; }
}
footer { display: none !important; }
/* Phones: image and the whole answer scale and Submit on one screen, no scrolling. */
@media (max-width: 640px) {
  .gradio-container, .gradio-container > .main, .gradio-container .wrap.contain {
    padding-left: 4px !important; padding-right: 4px !important; }
  .gradio-container { padding-top: 4px !important; }
  #stimulus { height: 42vh; }
  #stimulus img { max-height: 42vh; }
  #stimulus:has(.pair-view) { aspect-ratio: 20 / 16; max-height: 46vh; }
  #progress .label { font-size: 0.85rem; margin-bottom: 2px; }
  #question h3 { font-size: 1rem; margin: 0; }
  /* column-major: the real half of the scale on the left, the synthetic half on the right */
  #answer .wrap { display: grid; grid-template-columns: 1fr 1fr; grid-auto-flow: column;
                  grid-template-rows: repeat(3, auto); gap: 4px; }
  /* a 5-point scale (alignment, quality) has no halves: one column, in scale order, and a
     smaller image so that Submit still fits */
  #answer:not(:has(label:nth-of-type(6))) .wrap { grid-template-columns: 1fr;
                  grid-auto-flow: row; grid-template-rows: none; gap: 3px; }
  #reader:has(#answer label:nth-of-type(5)):not(:has(#answer label:nth-of-type(6))) #stimulus {
    height: 26vh; }
  #reader:has(#answer label:nth-of-type(5)):not(:has(#answer label:nth-of-type(6))) #stimulus img {
    max-height: 26vh; }
  #case .column, #case .form, #case .row { gap: 6px !important; }
  #message p { margin: 0; font-size: 0.85rem; }
  #progress .bar { height: 6px; }
  #question p { margin: 0; font-size: 0.8rem; }
  #answer label { padding: 2px 8px; }
  #prompt { padding-top: 0; padding-bottom: 0; }
  #prompt .prompt-text { font-size: 0.9rem; }
  /* The viewer's tools fold into one button: eight over a phone's image hide its top. */
  #stimulus .viewer-tools .tools-toggle { display: inline-block; }
  #stimulus .viewer-tools:not(.open) button:not(.tools-toggle) { display: none; }
  #stimulus .viewer-tools.open { flex-wrap: wrap; background: rgba(17,24,39,0.85);
                                 border-radius: 8px; padding: 2px; }
}
/* Small phones (360×640): smaller images, so that the scale and Submit still fit. */
@media (max-width: 640px) and (max-height: 720px) {
  #stimulus { height: 32vh; }
  #stimulus img { max-height: 32vh; }
  #reader:has(#answer label:nth-of-type(5)):not(:has(#answer label:nth-of-type(6))) #stimulus {
    height: 18vh; }
  #reader:has(#answer label:nth-of-type(5)):not(:has(#answer label:nth-of-type(6))) #stimulus img {
    max-height: 18vh; }
  #question h3 { font-size: 0.95rem; }
  #answer label { font-size: 0.95rem; padding: 4px 8px; }
  #answer > span, #answer .block-title, #answer [data-testid="block-info"] { display: none; }
  #submit, #continue, #start, #back { min-height: 48px; }
}
"""


def screen_html(kind: str, *, consent: bool = False) -> str:
    """The marker SCREEN_CSS reads to show one screen (a fixed word, nothing else; on the
    intro, `data-consent` while consent is pending shows the agree/decline controls)."""
    if kind not in SCREENS:
        raise ValueError(f"unknown screen {kind!r}")
    mark = " data-consent" if consent and kind == "intro" else ""
    return f'<span data-screen="{kind}"{mark}></span>'


def back_marker(can_go_back: bool) -> str:
    """The marker SCREEN_CSS reads to show the Back buttons (a fixed word, nothing else)."""
    return '<span data-back="1"></span>' if can_go_back else ""


def progress_html(position: int, total: int, training: bool = False) -> str:
    done = max(0, position - 1)
    pct = 0 if not total else round(100 * done / total)
    tag = " · training" if training else ""
    return (f'<div class="label">Case {position} of {total}{tag}</div>'
            f'<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="{total}" '
            f'aria-valuenow="{done}"><div style="width:{pct}%"></div></div>')


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


def stimulus_html(url: str, presets: str = "", alt: str = "Case image") -> str:
    """The `<img>` of a read. No-referrer: the page URL (with the token) is never sent on.
    `data-presets` names the viewer's contrast presets for the modality (preset_family)."""
    attr = f' data-presets="{html.escape(presets, quote=True)}"' if presets else ""
    return (f'<img src="{html.escape(url, quote=True)}" alt="{html.escape(alt, quote=True)}"'
            f'{attr} referrerpolicy="no-referrer" draggable="false">')


def pair_html(left_url: str, right_url: str, presets: str = "") -> str:
    """A pair (2AFC) read: two viewer panes side by side in the one image box (one output,
    so an answer still costs one gr.update). Left and right are the assignment's, drawn per
    reader and pair from the study's secret (`studies.design.reader_order`); the markup of
    the two panes differs only in the side word and the read's random URL."""
    panes = []
    for side, url in (("left", left_url), ("right", right_url)):
        img = stimulus_html(url, presets, alt=f"{side.title()} image")
        panes.append(f'<div class="viewer-pane" data-side="{side}">{img}'
                     f'<div class="side-label">{side.title()}</div></div>')
    return f'<div class="pair-view">{"".join(panes)}</div>'


def prompt_html(prompt: str) -> str:
    """The prompt as plain text: HTML-escaped inside a gr.HTML (which renders no Markdown),
    so `![x](http://host/track.png)` or `<img src=...>` is shown as typed, never fetched."""
    return f'<div class="prompt-text"><b>Text:</b> {html.escape(prompt, quote=True)}</div>'


# ------------------------------------------------------------ the reader's profile form
# Key hints of the intro, apart from its text so that touch screens show tap wording
# instead (CSS: .intro-keys / .intro-touch under `pointer: coarse`).
INTRO_KEYS = ("**Keyboard:** digits choose an answer (1 = the first one listed), **Enter** "
              "submits, **?** lists the image viewer's keys.")
INTRO_TOUCH = ("**Touch:** tap an answer, then **Submit**. Pinch to zoom the image, drag to "
               "move it.")
# Runs in the browser before Start: the profile form's values as one JSON object (an empty
# object when the intro has no form). The server keeps only the form's own fields.
PROFILE_JS = """(p, agreed) => { const v = {};
  document.querySelectorAll('#profile [data-field]').forEach(
      (el) => { v[el.dataset.field] = el.value; });
  return [JSON.stringify(v), agreed]; }"""


def profile_form_html(form: readers.ProfileForm, message: str = "") -> str:
    """The profile form (every value and label HTML-escaped; inputs, not a <form>, so Enter
    never navigates). Values stored at invitation are pre-filled for the reader to check."""
    rows = []
    for field, label in zip(form.fields, form.labels):
        value = html.escape(str(form.values.get(field, "")), quote=True)
        kind = ('type="number" inputmode="numeric" min="0" max="70" step="1"'
                if field == "years_experience" else
                f'type="text" maxlength="{readers.MAX_PROFILE_VALUE}"')
        rows.append(f'<label><span>{html.escape(label)}</span>'
                    f'<input {kind} data-field="{html.escape(field, quote=True)}" '
                    f'value="{value}" required autocomplete="off"></label>')
    alert = (f'<p class="profile-error" role="alert">{html.escape(message)}</p>'
             if message else "")
    return ('<div class="profile-form"><h3>About you</h3>'
            '<p>Please fill in every field; your answers are exported with your readings.</p>'
            + alert + "".join(rows) + "</div>")

STUDY_CLOSED = ("This study is closed and takes no more answers. Thank you for taking part — "
                "you can close this tab.")
WASHOUT = ("Thank you — the rest of your cases are repeat reads that open after a wash-out "
           "period: {when}. Come back then with the same link.")


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


def build_reader_blocks(db_path) -> gr.Blocks:
    """The reader app (mounted at `/`, no login: the token is the credential)."""
    db_path = str(db_path)

    def token_of(request: gr.Request | None) -> str | None:
        if request is None:  # API/example call: no reader
            return None
        return request.query_params.get("token")

    with gr.Blocks(title="MediSyn reader study", analytics_enabled=False,
                   delete_cache=(3600, 24 * 3600)) as demo:
        state = gr.State(None)
        # Which screen shows is decided by CSS from this marker (see SCREEN_CSS), not by
        # Gradio visibility updates: Gradio 6 rebuilds a component and its config for every
        # `gr.update(...)` output, which made an answer cost ~20 such rebuilds.
        with gr.Column(elem_id=IDS["reader"]):
            screen = gr.HTML("", elem_id=IDS["screen"], apply_default_css=False)
            with gr.Column(elem_id=IDS["login"]):
                gr.Markdown("## Reader study")
                login_msg = gr.Markdown()
                code = gr.Textbox(label="Access code or link", type="password", max_length=400)
                open_btn = gr.Button("Open", variant="primary")
            with gr.Column(elem_id=IDS["intro"]):
                intro_md = gr.Markdown()
                intro_keys = gr.Markdown(INTRO_KEYS, elem_classes=["intro-keys"])
                gr.Markdown(INTRO_TOUCH, elem_classes=["intro-touch"])
                # The reader's profile form (profile_form_html), when the study asks for it;
                # read by PROFILE_JS on Start.
                profile_form = gr.HTML("", elem_id=IDS["profile"], js_on_load=None)
                profile_in = gr.Textbox(visible=False)
                # Shown while consent is pending: agreeing and declining are both explicit.
                with gr.Row():
                    consent_agree = gr.Checkbox(label="I agree to the consent text above",
                                                elem_id="consent-agree")
                    decline_btn = gr.Button("I do not agree", elem_id="consent-decline",
                                            scale=0, min_width=160)
                start_btn = gr.Button("Start", variant="primary", elem_id=IDS["start"])
            with gr.Column(elem_id=IDS["case"]):
                progress = gr.HTML(elem_id=IDS["progress"])
                message = gr.Markdown(elem_id=IDS["message"])
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=360):
                        # Our own <img> (see stimulus_html), not gr.Image: Gradio would
                        # re-encode the pixels into its shared content-hash cache per send.
                        image = gr.HTML("", elem_id=IDS["image"], js_on_load=None,
                                        apply_default_css=False)
                    with gr.Column(scale=2, min_width=300):
                        prompt = gr.HTML("", elem_id=IDS["prompt"], js_on_load=None)
                        question = gr.Markdown(elem_id=IDS["question"])
                        answer = gr.Radio(choices=[], label="Your answer", elem_id=IDS["answer"])
                        with gr.Row(elem_classes=["submit-row"]):
                            submit = gr.Button("Submit", variant="primary", elem_id=IDS["submit"],
                                               scale=3)
                            # Shown by CSS when the marker in back_state says going back works.
                            back = gr.Button("Back", elem_id=IDS["back"], scale=1, min_width=80,
                                             elem_classes=["back-btn"])
                        # The reader's remarks on the case, sent with the answer (plain text).
                        with gr.Column(elem_id=IDS["remarks"]):
                            non_diag = gr.Checkbox(label="Non-diagnostic image",
                                                   elem_id=IDS["non_diagnostic"])
                            comment = gr.Textbox(label="Comment (optional)", lines=1,
                                                 max_lines=3, max_length=session.MAX_COMMENT,
                                                 elem_id=IDS["comment"], container=False,
                                                 placeholder="Comment (optional)")
                        # Filled by SHOWN_MS_JS on submit: the browser's time on this question.
                        client_ms = gr.Number(visible=False)
                        feedback = gr.Markdown(elem_id=IDS["feedback"])
                        cont = gr.Button("Continue", variant="primary", elem_id=IDS["continue"])
                        keys_hint = gr.Markdown(KEYS_HINT, elem_classes=["keys-hint"])
                        gr.Markdown("Tap an answer, then Submit. Pinch to zoom.",
                                    elem_classes=["touch-hint"])
            with gr.Column(elem_id=IDS["finished"]):
                gr.Markdown("## Finished")
                done_md = gr.Markdown()
                back_done = gr.Button("Back to the last case", elem_id=IDS["back_finished"],
                                      elem_classes=["back-btn"])
            back_state = gr.HTML("", elem_id=IDS["back_state"], apply_default_css=False)
            with gr.Column(elem_id=IDS["unavailable"]):
                gr.Markdown("## Please wait")
                fault_md = gr.Markdown()
                retry_btn = gr.Button("Try again", variant="primary", elem_id=IDS["retry"])
                # while repeats wait for the wash-out (shown by CSS, as on the finish screen)
                back_wait = gr.Button("Back to the last case", elem_id=IDS["back_waiting"],
                                      elem_classes=["back-btn"])

        outputs = [screen, login_msg, intro_md, progress, message, image, prompt, question,
                   answer, feedback, done_md, keys_hint, fault_md, state, profile_form,
                   intro_keys, consent_agree, back_state, comment, non_diag]

        def render(s: Screen) -> list:
            """The outputs for a screen: plain values (cheap for Gradio) except the answer
            scale's new choices and an image kept on screen (`gr.skip()`)."""
            case_like = s.kind in ("case", "feedback")
            is_case = s.kind == "case"
            if s.kind == "feedback" or (is_case and not s.new_image):
                img = gr.skip()  # the same image stays (next question, training feedback)
            elif is_case and s.image_url and s.pair_image_url:
                img = pair_html(s.image_url, s.pair_image_url, s.presets)
            else:
                img = stimulus_html(s.image_url, s.presets) if is_case and s.image_url else ""
            return [
                screen_html(s.kind, consent=s.consent),
                s.message if s.kind == "login" else "",
                s.intro if s.kind == "intro" else "",
                progress_html(s.position, s.total, s.training) if case_like else "",
                s.message if case_like else "",
                img,
                prompt_html(s.prompt) if s.prompt and is_case else "",
                f"### {s.question}" if is_case else "",
                gr.update(choices=s.choices, value=s.selected) if is_case else None,
                s.feedback if s.kind == "feedback" else "",
                s.message if s.kind == "finished" else "",
                ("Keys: Enter continues" if s.kind == "feedback"
                 else PAIR_KEYS_HINT if is_case and s.pair else KEYS_HINT),
                s.message if s.kind == "unavailable" else "",
                s.state,
                profile_form_html(s.profile, s.message) if s.kind == "intro" and s.profile
                else "",
                PAIR_KEYS_INTRO if s.pair else INTRO_KEYS,  # keyboards only (CSS)
                bool(s.agreed) if s.kind == "intro" else False,  # the I agree box
                # going back: a marker for SCREEN_CSS; the remarks as plain values
                back_marker(s.can_go_back and s.kind in ("case", "finished", "unavailable")),
                s.comment if is_case else "",
                bool(s.non_diagnostic) if is_case else False,
            ]

        safe_open, safe_start = storage_safe(open_page), storage_safe(start)
        safe_submit = storage_safe(submit_answer, " (your last answer may not have been saved)")
        safe_continue = storage_safe(continue_after_feedback)

        def on_load(request: gr.Request):
            return render(safe_open(db_path, token_of(request)))

        def on_start(request: gr.Request):
            return render(safe_start(db_path, token_of(request)))

        def on_start_profile(profile, agreed, request: gr.Request):  # Start under the intro
            s = safe_start(db_path, token_of(request), profile, agreed=bool(agreed))
            if s.kind == "intro":  # e.g. a profile error: the I agree box stays as it was
                s = dataclasses.replace(s, agreed=bool(agreed))
            return render(s)

        safe_decline = storage_safe(decline_consent)

        def on_decline(request: gr.Request):
            return render(safe_decline(db_path, token_of(request)))

        def on_submit(st, ans, ms, note, nd, request: gr.Request):
            return render(safe_submit(db_path, token_of(request), st, ans, ms, note, nd))

        safe_back = storage_safe(go_back)

        def on_back(request: gr.Request):
            return render(safe_back(db_path, token_of(request)))

        def on_continue(request: gr.Request):
            return render(safe_continue(db_path, token_of(request)))

        # Every event is private (not in the API page, not callable by gradio_client) and
        # authorised inside from the token; trigger_mode="once" drops repeat clicks while
        # one is running (double Enter), and the client_id makes a retry idempotent anyway.
        # postprocess=False: the values are built here and sent as they are (no per-output
        # hop to a worker thread for Gradio's pass-through postprocessing).
        common = dict(api_visibility="private", concurrency_id="reader", trigger_mode="once",
                      show_progress="hidden", postprocess=False)
        demo.load(on_load, None, outputs, **common)
        start_btn.click(on_start_profile, [profile_in, consent_agree], outputs, js=PROFILE_JS,
                        **common)
        decline_btn.click(on_decline, None, outputs, **common)
        # Answers have a queue of their own, so answers waiting on a stalled write never
        # hold the slots other readers' page loads need. preprocess=False: the answer is
        # checked against the scale by studies.session; Gradio's own check compares it with
        # the choices this server sent that page, and a page from before a restart would
        # get a bare "Error" instead of the out-of-date screen.
        answer_opts = {**common, "concurrency_id": "reader-answer",
                       "concurrency_limit": ANSWER_CONCURRENCY, "preprocess": False}
        submit.click(on_submit, [state, answer, client_ms, comment, non_diag], outputs,
                     js=SHOWN_MS_JS, **answer_opts).then(
            None, None, None, js=SAVED_JS, api_visibility="private")
        back.click(on_back, None, outputs, **common)
        back_done.click(on_back, None, outputs, **common)
        back_wait.click(on_back, None, outputs, **common)
        cont.click(on_continue, None, outputs, **common)
        retry_btn.click(on_start, None, outputs, **common)
        # The access-code form only navigates (client-side): the token then arrives like a link.
        open_btn.click(None, [code], None, api_visibility="private", js="""(code) => {
            code = (code || '').trim();
            const m = code.match(/[?&]token=([^&#\\s]+)/);
            const t = m ? decodeURIComponent(m[1]) : code;
            if (t) { window.location.search = '?token=' + encodeURIComponent(t); }
        }""")
    return demo
