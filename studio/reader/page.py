"""The reader's page: one Gradio column per screen (login, intro, case, feedback, finish,
unavailable), which `render` fills from a handler's `Screen` (`studio.reader.handlers`), and
the HTML of its pieces. Its styles (`screens.css`, `reader.css`, `page.css`) and scripts
(`keyboard.js`, `viewer.js`, `saving.js` and the event hooks `shown_ms.js`, `saved.js`,
`profile.js`, `access_code.js`) are files beside this module."""
from __future__ import annotations

import dataclasses
import html
import pathlib

import gradio as gr

from studies import profiles, session
from studio.reader.handlers import (
    Screen, continue_after_feedback, decline_consent, go_back, open_page, start, storage_safe,
    submit_answer,
)
from studio.reader.texts import INTRO_KEYS, INTRO_TOUCH, KEYS_HINT, PAIR_KEYS_HINT, PAIR_KEYS_INTRO


def _asset(name: str) -> str:
    return pathlib.Path(__file__).with_name(name).read_text(encoding="utf-8")


KEYBOARD_JS = _asset("keyboard.js")
# Zoom/pan/window-level/invert/full screen on the served image, help overlay, touch mode,
# and the "not saved" banner when the connection drops (see the file's header).
VIEWER_JS = _asset("viewer.js")
# "Saving…" once an answer has waited about a second for the server (SHOWN_MS_JS starts
# the timer, SAVED_JS stops it when the event has come back, whatever its outcome).
SAVING_JS = _asset("saving.js")
# Gradio scopes the app's `css=` to elements inside its container, so the page padding of
# the container's own `.main` (32 px a side, a sixth of a phone's width), the full-width
# pair view and the "Saving…" note are set in the page's head instead.
PAGE_CSS = _asset("page.css")
HEAD = (f"<script>{KEYBOARD_JS}</script><script>{VIEWER_JS}</script><script>{SAVING_JS}"
        f"</script><style>{PAGE_CSS}</style>")
# Runs in the browser before the submit event: passes the answer through and adds the
# milliseconds since keyboard.js saw the current question (or its image) appear.
SHOWN_MS_JS = _asset("shown_ms.js")
SAVED_JS = _asset("saved.js")
# Runs in the browser before Start: the profile form's values as one JSON object (an empty
# object when the intro has no form). The server keeps only the form's own fields.
PROFILE_JS = _asset("profile.js")
# The access-code form only navigates (client-side): the token then arrives like a link.
ACCESS_CODE_JS = _asset("access_code.js")
# One screen at a time, from the marker that render() sends (screen_html). A column is
# hidden unless the marker names it, so before the first event nothing shows. The feedback
# screen is the case column with the verdict and Continue instead of the question, the
# scale and Submit. (No commas inside :is()/:has(): Gradio's CSS scoper splits selector
# lists on every comma.)
SCREEN_CSS = _asset("screens.css")
READER_CSS = SCREEN_CSS + _asset("reader.css")

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



def profile_form_html(form: profiles.ProfileForm, message: str = "") -> str:
    """The profile form (every value and label HTML-escaped; inputs, not a <form>, so Enter
    never navigates). Values stored at invitation are pre-filled for the reader to check."""
    rows = []
    for field, label in zip(form.fields, form.labels):
        value = html.escape(str(form.values.get(field, "")), quote=True)
        kind = ('type="number" inputmode="numeric" min="0" max="70" step="1"'
                if field == "years_experience" else
                f'type="text" maxlength="{profiles.MAX_PROFILE_VALUE}"')
        rows.append(f'<label><span>{html.escape(label)}</span>'
                    f'<input {kind} data-field="{html.escape(field, quote=True)}" '
                    f'value="{value}" required autocomplete="off"></label>')
    alert = (f'<p class="profile-error" role="alert">{html.escape(message)}</p>'
             if message else "")
    return ('<div class="profile-form"><h3>About you</h3>'
            '<p>Please fill in every field; your answers are exported with your readings.</p>'
            + alert + "".join(rows) + "</div>")



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
        open_btn.click(None, [code], None, api_visibility="private", js=ACCESS_CODE_JS)
    return demo
