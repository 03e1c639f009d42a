"""The words of the reader's instruction screen and key hints, apart from the page layout so
that the handlers (which build the intro) and the page share them."""
from __future__ import annotations

from studies import lifecycle, session
from studies.design import TASKS
from studio.format.plain_text import plain_markdown, study_markdown

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


KEYS_HINT = "Keys: digits choose · Enter submits · ? image viewer keys"
PAIR_KEYS_HINT = ("Keys: ← / → pick the side you think is synthetic (press again: surer) · "
                  "digits choose · Enter submits · ? image viewer keys")

# Key hints of the intro, apart from its text so that touch screens show tap wording
# instead (CSS: .intro-keys / .intro-touch under `pointer: coarse`).
INTRO_KEYS = ("**Keyboard:** digits choose an answer (1 = the first one listed), **Enter** "
              "submits, **?** lists the image viewer's keys.")
INTRO_TOUCH = ("**Touch:** tap an answer, then **Submit**. Pinch to zoom the image, drag to "
               "move it.")
