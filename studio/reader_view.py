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

Blinding: the image is handed to Gradio as a numpy array decoded from the stored,
normalised stimulus PNG (never a file path: Gradio would serve it under its basename), so
Gradio writes a fresh, metadata-free lossless PNG named `image.png` into its cache under a
seeded content hash. Every value sent to the browser is built here from a `CaseView`,
which carries no source, generator or file name; the prompt is shown only while a
question that needs it is on screen.

Time on case is measured on the server: from the moment the case (or the next question of
the same case) is served to the moment the answer arrives — it includes the image's
download time (a few ms on a LAN) and never trusts a client clock.

The handlers (`open_page`, `start`, `submit_answer`, `continue_after_feedback`) are
plain functions of (db_path, token, state, ...) returning a `Screen`, so they are tested
without a browser; `build_reader_blocks` wires them to components.
"""
from __future__ import annotations

import dataclasses
import html
import pathlib
import secrets
import time

import gradio as gr
import numpy as np

from studies import readers, session, stimuli
from studies.database import utc_now
from studies.errors import NotAuthorised, SessionError, StudyError

KEYBOARD_JS = (pathlib.Path(__file__).with_name("keyboard.js")).read_text(encoding="utf-8")

# Runs in the browser before the submit event: passes the answer through and adds the
# milliseconds since keyboard.js saw the current question (or its image) appear.
SHOWN_MS_JS = """(st, ans, ms) => [st, ans, (typeof window.__medisynShownAt === 'number')
    ? Math.round(performance.now() - window.__medisynShownAt) : null]"""

# Element ids the keyboard script and the browser tests rely on.
IDS = {"answer": "answer", "submit": "submit", "continue": "continue", "start": "start",
       "image": "stimulus", "progress": "progress", "question": "question",
       "prompt": "prompt", "feedback": "feedback", "finished": "finished",
       "login": "login", "intro": "intro", "message": "message"}


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
    kind: str                       # login | intro | case | feedback | finished
    message: str = ""
    intro: str = ""
    position: int = 0
    total: int = 0
    image: np.ndarray | None = None  # None on a case screen: keep the image shown
    new_image: bool = False
    question: str = ""
    question_help: str = ""
    choices: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    prompt: str | None = None
    feedback: str = ""
    training: bool = False
    state: OnScreen | None = None


def _token(token: str | None) -> str | None:
    if not token:
        return None
    token = token.strip()
    return token or None


def _reader(db_path, token):
    try:
        return readers.reader_for_token(db_path, _token(token))
    except StudyError:
        return None


def _login(message: str = "") -> Screen:
    return Screen("login", message=message or
                  "Open the personal link you were sent, or paste your access code here.")


def _finished(total: int) -> Screen:
    return Screen("finished", position=total, total=total,
                  message=f"All {total} cases are answered. Thank you — you can close this tab.")


def _choices(question: dict) -> list[tuple[str, int]]:
    return [(f"{i}  {s['label']}", int(s["value"]))
            for i, s in enumerate(question["scale"], start=1)]


def intro_text(view: session.CaseView) -> str:
    """The instruction screen, from the questions this study asks."""
    lines = [f"### {html.escape(view.study)}", "",
             f"You will see **{view.total}** images, one at a time. Answer each question "
             "from the image alone; there is no time limit, but go with your first impression.",
             ""]
    for q in view.tasks:
        keys = f"1–{len(q['scale'])}"
        lines.append(f"- **{q['question']}** — keys {keys}: "
                     + ", ".join(s["label"] for s in q["scale"]))
        if q.get("shows_prompt"):
            lines.append("  (the text the image should match is shown with this question)")
    lines += ["",
              "**Keyboard:** digits choose an answer, **Enter** submits.",
              "",
              "Training cases, if any, come first: after each you are told the right answer. "
              "Every answer is saved at once — you can close the tab and come back with the "
              "same link to continue where you stopped."]
    return "\n".join(lines)


def _case_screen(db_path, reader, view: session.CaseView, *, with_image: bool,
                 message: str = "") -> Screen:
    pending = view.pending
    q = pending[0]
    image = None
    if with_image:
        png = session.stimulus_png(db_path, reader.reader_id, view.stimulus_id)
        image = stimuli.decode_png(png)  # pixels only: Gradio re-encodes a fresh PNG
    asked = len(view.tasks) - len(pending) + 1
    question = q["question"]
    if len(view.tasks) > 1:
        question = f"{question}  \n*Question {asked} of {len(view.tasks)} for this image*"
    state = OnScreen(reader.reader_id, view.assignment_id, q["task"], utc_now(),
                     time.monotonic(), secrets.token_urlsafe(12))
    return Screen("case", message=message, position=view.position, total=view.total,
                  image=image, new_image=with_image, question=question,
                  question_help=q.get("help", ""), choices=_choices(q),
                  prompt=view.prompt if q.get("shows_prompt") else None,
                  training=view.training, state=state)


def open_page(db_path, token: str | None) -> Screen:
    """Page load: the login form, the instructions (nothing answered yet), the current
    case (resume), or the finish screen."""
    reader = _reader(db_path, token)
    if reader is None:
        return _login("" if not token else "This link is not valid. Check it, or ask the "
                      "study organiser for a new one.")
    view = session.next_case(db_path, reader.reader_id)
    if view is None:
        return _finished(_total(db_path, reader))
    if view.position == 1 and not any(t["answered"] for t in view.tasks):
        return Screen("intro", intro=intro_text(view), total=view.total)
    return _case_screen(db_path, reader, view, with_image=True,
                        message="Welcome back: continuing where you stopped.")


def _total(db_path, reader) -> int:
    for p in session.progress(db_path, reader.study):
        if p.reader_id == reader.reader_id:
            return p.total
    return 0


def start(db_path, token: str | None) -> Screen:
    """'Start' on the instruction screen (or any time the current case must be shown)."""
    reader = _reader(db_path, token)
    if reader is None:
        return _login("This link is not valid.")
    view = session.next_case(db_path, reader.reader_id)
    if view is None:
        return _finished(_total(db_path, reader))
    return _case_screen(db_path, reader, view, with_image=True)


def answer_duration_ms(server_ms: int, client_ms) -> tuple[int, bool]:
    """(time on case, whether the browser's figure was used).

    The server's clock starts when it sends the screen, so it also counts the queue and the
    image download; the browser times from the moment the image (or the next question on
    it) was on screen. The browser's figure is used only when it is a number between 0 and
    the server's: a client can shorten the time to when it really showed the image, never
    lengthen it or make it up."""
    try:
        value = float(client_ms)
    except (TypeError, ValueError):
        return server_ms, False
    if value != value or not 0 <= value <= server_ms:  # NaN, negative or longer than possible
        return server_ms, False
    return int(round(value)), True


def submit_answer(db_path, token: str | None, state: OnScreen | None, answer,
                  client_ms=None) -> Screen:
    """Record the answer to the question on screen, then show what comes next: the next
    question on the same image, training feedback, the next case, or the finish screen.
    `client_ms` is the browser's time since it displayed the question (see answer_duration_ms)."""
    reader = _reader(db_path, token)
    if reader is None:
        return _login("This link is not valid.")
    view = session.next_case(db_path, reader.reader_id)
    if view is None:
        return _finished(_total(db_path, reader))
    current = view.pending[0]["task"]
    if (state is None or state.reader_id != reader.reader_id
            or state.assignment_id != view.assignment_id or state.task != current):
        # Stale tab (server restart, a second tab answered it, a double submit that already
        # moved on): record nothing, show the reader's real current question.
        return _case_screen(db_path, reader, view, with_image=True,
                            message="This page was out of date; here is your current case.")
    if answer is None or answer == "":
        screen = _case_screen(db_path, reader, view, with_image=False,
                              message=f"Choose an answer first (keys 1–{len(view.pending[0]['scale'])}).")
        screen.state = state  # keep timing from the original showing
        return screen
    server_ms = max(0, int(round((time.monotonic() - state.shown_mono) * 1000)))
    duration, from_browser = answer_duration_ms(server_ms, client_ms)
    try:
        # With the browser's figure, shown_at is derived from it (answered_at − duration).
        ack = session.submit(db_path, reader.reader_id, state.assignment_id, state.task,
                             answer, duration, state.client_id,
                             shown_at=None if from_browser else state.shown_at)
    except NotAuthorised:
        return _login("This link is not valid.")
    except SessionError as exc:
        screen = _case_screen(db_path, reader, view, with_image=False, message=str(exc))
        screen.state = state
        return screen
    feedback = state.feedback + ([ack.feedback] if ack.feedback else [])
    if not ack.assignment_complete:
        nxt = session.next_case(db_path, reader.reader_id)
        if nxt is not None and nxt.assignment_id == state.assignment_id:
            screen = _case_screen(db_path, reader, nxt, with_image=False)
            screen.state.feedback = feedback
            return screen
    if feedback and ack.assignment_complete:
        return Screen("feedback", position=view.position, total=view.total,
                      feedback=_feedback_text(feedback), training=True)
    return start(db_path, token)


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


# ----------------------------------------------------------------------------- Gradio
READER_CSS = """
#stimulus img { object-fit: contain; background: #000; }
#stimulus { background: #000; }
#stimulus .icon-button-wrapper { display: none !important; }
#stimulus button { pointer-events: none; cursor: default; }
#progress .bar { height: 10px; background: #e5e7eb; border-radius: 5px; overflow: hidden; }
#progress .bar > div { height: 100%; background: #2563eb; }
#progress .label { font-size: 0.95rem; margin-bottom: 4px; color: #374151; }
#answer .wrap { flex-direction: column; align-items: stretch; }
#answer label { font-size: 1.05rem; width: 100%; }
#submit, #continue, #start { font-size: 1.1rem; min-height: 3rem; }
#prompt { border-left: 4px solid #2563eb; padding-left: 0.75rem; }
.keys-hint { color: #6b7280; font-size: 0.9rem; }
footer { display: none !important; }
"""


def progress_html(position: int, total: int, training: bool = False) -> str:
    done = max(0, position - 1)
    pct = 0 if not total else round(100 * done / total)
    tag = " · training" if training else ""
    return (f'<div class="label">Case {position} of {total}{tag}</div>'
            f'<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="{total}" '
            f'aria-valuenow="{done}"><div style="width:{pct}%"></div></div>')


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
        with gr.Column(visible=False, elem_id=IDS["login"]) as login_col:
            gr.Markdown("## Reader study")
            login_msg = gr.Markdown()
            code = gr.Textbox(label="Access code or link", type="password", max_length=400)
            open_btn = gr.Button("Open", variant="primary")
        with gr.Column(visible=False, elem_id=IDS["intro"]) as intro_col:
            intro_md = gr.Markdown()
            start_btn = gr.Button("Start  (Enter)", variant="primary", elem_id=IDS["start"])
        with gr.Column(visible=False) as case_col:
            progress = gr.HTML(elem_id=IDS["progress"])
            message = gr.Markdown(elem_id=IDS["message"])
            with gr.Row(equal_height=False):
                with gr.Column(scale=3, min_width=360):
                    image = gr.Image(format="png", type="numpy", buttons=[],
                                     interactive=False, show_label=False, container=False,
                                     height="78vh", elem_id=IDS["image"])
                with gr.Column(scale=2, min_width=300):
                    prompt = gr.Markdown(visible=False, elem_id=IDS["prompt"])
                    question = gr.Markdown(elem_id=IDS["question"])
                    answer = gr.Radio(choices=[], label="Your answer", elem_id=IDS["answer"])
                    submit = gr.Button("Submit  (Enter)", variant="primary",
                                       elem_id=IDS["submit"])
                    # Filled by SHOWN_MS_JS on submit: the browser's time on this question.
                    client_ms = gr.Number(visible=False)
                    feedback = gr.Markdown(visible=False, elem_id=IDS["feedback"])
                    cont = gr.Button("Continue  (Enter)", variant="primary", visible=False,
                                     elem_id=IDS["continue"])
                    keys_hint = gr.Markdown("Keys: digits choose · Enter submits",
                                            elem_classes=["keys-hint"])
        with gr.Column(visible=False, elem_id=IDS["finished"]) as done_col:
            gr.Markdown("## Finished")
            done_md = gr.Markdown()

        outputs = [login_col, intro_col, case_col, done_col, login_msg, intro_md, progress,
                   message, image, prompt, question, answer, submit, feedback, cont, done_md,
                   keys_hint, state]

        def render(s: Screen):
            case_like = s.kind in ("case", "feedback")
            is_case = s.kind == "case"
            return [
                gr.update(visible=s.kind == "login"),
                gr.update(visible=s.kind == "intro"),
                gr.update(visible=case_like),
                gr.update(visible=s.kind == "finished"),
                s.message if s.kind == "login" else gr.update(),
                s.intro if s.kind == "intro" else gr.update(),
                progress_html(s.position, s.total, s.training) if case_like else gr.update(),
                s.message if case_like else gr.update(),
                s.image if s.new_image else gr.update(),
                gr.update(value=f"**Text:** {html.escape(s.prompt)}" if s.prompt else "",
                          visible=bool(s.prompt) and is_case),
                gr.update(value=f"### {s.question}" if is_case else "", visible=is_case),
                gr.update(choices=s.choices, value=None, visible=is_case) if is_case
                else gr.update(visible=False),
                gr.update(visible=is_case),
                gr.update(value=s.feedback, visible=s.kind == "feedback"),
                gr.update(visible=s.kind == "feedback"),
                s.message if s.kind == "finished" else gr.update(),
                "Keys: Enter continues" if s.kind == "feedback"
                else "Keys: digits choose · Enter submits",
                s.state,
            ]

        def on_load(request: gr.Request):
            return render(open_page(db_path, token_of(request)))

        def on_start(request: gr.Request):
            return render(start(db_path, token_of(request)))

        def on_submit(st, ans, ms, request: gr.Request):
            return render(submit_answer(db_path, token_of(request), st, ans, ms))

        def on_continue(request: gr.Request):
            return render(continue_after_feedback(db_path, token_of(request)))

        # Every event is private (not in the API page, not callable by gradio_client) and
        # authorised inside from the token; trigger_mode="once" drops repeat clicks while
        # one is running (double Enter), and the client_id makes a retry idempotent anyway.
        common = dict(api_visibility="private", concurrency_id="reader", trigger_mode="once",
                      show_progress="hidden")
        demo.load(on_load, None, outputs, **common)
        start_btn.click(on_start, None, outputs, **common)
        submit.click(on_submit, [state, answer, client_ms], outputs, js=SHOWN_MS_JS, **common)
        cont.click(on_continue, None, outputs, **common)
        # The access-code form only navigates (client-side): the token then arrives like a link.
        open_btn.click(None, [code], None, api_visibility="private", js="""(code) => {
            code = (code || '').trim();
            const m = code.match(/[?&]token=([^&#\\s]+)/);
            const t = m ? decodeURIComponent(m[1]) : code;
            if (t) { window.location.search = '?token=' + encodeURIComponent(t); }
        }""")
    return demo
