"""The reader's handlers as plain Python (`studio.reader.handlers`): the flow, resume,
stale tabs, timing, training feedback, faults in words, and what each event sends."""
from __future__ import annotations

import json
import pathlib

import pytest

from reader_fixtures import answer_all, queue_event, repeat_study, screen_text
from studio_fixtures import leak_needles, make_loud_study, serve_studio

from studies import readers, serving, session

from studies.imaging import stimuli
from studies.storage.connections import stimuli_dir
from studies.export import long_table
from studio.admin import settings_tab
from studio.reader import handlers as reader_handlers
from studio.reader import page as reader_page


def test_reader_flow_blinded_pixels_and_finish(tmp_path):
    db, rows, tokens = make_loud_study(tmp_path)
    token = tokens["dr-a"]
    needles = leak_needles(rows) + [r["prompt"] for r in rows]  # turing: no prompt shown

    first = reader_handlers.open_page(db, token)
    assert first.kind == "intro" and "10" in first.intro
    screen = reader_handlers.start(db, token)
    seen = []
    while screen.kind == "case":
        assert (screen.position, screen.total) == (len(seen) + 1, 10)
        assert [v for _, v in screen.choices] == [1, 2, 3, 4, 5, 6]
        assert screen.prompt is None
        text = screen_text(screen)
        assert not [n for n in needles if n.lower() in text.lower()]
        # The image is the read's own URL (its random view id, the reader's token) ...
        view = session.next_case(db, screen.state.reader_id)
        assert screen.new_image and screen.image_url == (
            f"{reader_handlers.STIMULUS_ROUTE}/{view.stimulus_id}?token={token}")
        # ... whose bytes are exactly the stored normalised stimulus.
        stored = serving.stimulus_png(db, screen.state.reader_id, view.stimulus_id,
                                      current_only=True)
        assert stimuli.decode_png(stored).shape == (96, 96, 3)
        seen.append(view.assignment_id)
        screen = reader_handlers.submit_answer(db, token, screen.state, 5)
    assert screen.kind == "finished" and "10" in screen.message
    assert len(set(seen)) == 10
    df = long_table(db, "ten")
    assert len(df) == 10 and set(df["rating"]) == {5}
    assert (df["duration_ms"] >= 0).all()
    # Back on the page later: still finished, nothing asked again.
    assert reader_handlers.open_page(db, token).kind == "finished"


def test_resume_after_refresh_and_restart_starts_at_first_unanswered(tmp_path):
    db, _, tokens = make_loud_study(tmp_path)
    token = tokens["dr-a"]
    screen = reader_handlers.start(db, token)
    for _ in range(3):
        screen = reader_handlers.submit_answer(db, token, screen.state, 1)
    assert screen.position == 4
    # A refresh (or a server restart) loses gr.State: the page comes back from the DB.
    again = reader_handlers.open_page(db, token)
    assert again.kind == "case" and again.position == 4 and "Welcome back" in again.message
    assert again.state.assignment_id == screen.state.assignment_id
    assert len(long_table(db, "ten")) == 3


def test_stale_or_foreign_state_records_nothing(tmp_path):
    db, _, tokens = make_loud_study(tmp_path, readers=("dr-a", "dr-b"))
    a, b = tokens["dr-a"], tokens["dr-b"]
    sa = reader_handlers.start(db, a)
    after = reader_handlers.submit_answer(db, a, sa.state, 3)
    # The same submission again (double Enter after the page moved on): nothing recorded.
    again = reader_handlers.submit_answer(db, a, sa.state, 3)
    assert again.kind == "case" and again.position == 2 and "out of date" in again.message
    # Reader B replaying reader A's state with B's token: refused, nothing for either.
    sb = reader_handlers.start(db, b)
    forged = reader_handlers.submit_answer(db, b, after.state, 6)
    assert forged.position == 1 and forged.state.reader_id == sb.state.reader_id
    # No state at all (server restarted under an open tab): re-shown, nothing recorded.
    assert reader_handlers.submit_answer(db, a, None, 2).position == 2
    df = long_table(db, "ten")
    assert list(df["reader"]) == ["dr-a"] and list(df["rating"]) == [3]


def test_no_answer_and_bad_tokens(tmp_path):
    db, _, tokens = make_loud_study(tmp_path)
    s = reader_handlers.start(db, tokens["dr-a"])
    s2 = reader_handlers.submit_answer(db, tokens["dr-a"], s.state, None)
    assert s2.kind == "case" and "Choose an answer" in s2.message and s2.position == 1
    assert s2.state.shown_mono == s.state.shown_mono  # timing keeps running
    assert len(long_table(db, "ten")) == 0
    tok = tokens["dr-a"]
    near = tok[:-1] + ("B" if tok[-1] == "A" else "A")  # one character off
    for bad in (None, "", "x" * 43, near, "y" * 5000):
        assert reader_handlers.open_page(db, bad).kind == "login"
        assert reader_handlers.start(db, bad).kind == "login"
        assert reader_handlers.submit_answer(db, bad, s.state, 3).kind == "login"
    assert len(long_table(db, "ten")) == 0


def test_duration_is_measured_from_when_the_case_was_served(tmp_path, monkeypatch):
    db, _, tokens = make_loud_study(tmp_path)
    clock = [1000.0]
    monkeypatch.setattr(reader_handlers.time, "monotonic", lambda: clock[0])
    s = reader_handlers.start(db, tokens["dr-a"])
    clock[0] += 2.5
    reader_handlers.submit_answer(db, tokens["dr-a"], s.state, 4)
    df = long_table(db, "ten")
    assert df["duration_ms"].tolist() == [2500]


def test_duration_uses_the_browsers_display_time_only_when_shorter(tmp_path, monkeypatch):
    """The browser times from when the image was on screen; it may shorten the server's
    figure (queue + download), never lengthen it or replace it with junk."""
    db, _, tokens = make_loud_study(tmp_path)
    token = tokens["dr-a"]
    clock = [1000.0]
    monkeypatch.setattr(reader_handlers.time, "monotonic", lambda: clock[0])
    for client_ms in (1800, 99_999, -5, float("nan"), "junk", None, 0, 49.4, 50):
        s = reader_handlers.start(db, token)
        clock[0] += 2.5
        reader_handlers.submit_answer(db, token, s.state, 4, client_ms)
    df = long_table(db, "ten")
    assert df["duration_ms"].tolist() == [1800, 2500, 2500, 2500, 2500, 2500, 2500, 2500, 50]
    # A browser figure under 50 ms (0 included) is replaced by the server's and flagged.
    assert df["duration_flagged"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0]
    # shown_at follows the figure used: 1.8 s before the answer, not the server's send time
    from studies.storage.connections import open_db
    conn = open_db(db)
    try:
        first = conn.execute("SELECT shown_at, answered_at FROM responses ORDER BY id LIMIT 1").fetchone()
    finally:
        conn.close()
    import datetime as dt
    shown, answered = (dt.datetime.fromisoformat(v.replace("Z", "+00:00")) for v in first)
    assert (answered - shown).total_seconds() == pytest.approx(1.8, abs=0.01)


def test_two_tasks_prompt_only_with_alignment_and_training_feedback(tmp_path):
    db, rows, tokens = make_loud_study(tmp_path, tasks=("turing", "alignment"),
                                       training_cases=2)
    token = tokens["dr-a"]
    prompts = {r["prompt"] for r in rows}
    from studies.storage.connections import open_db

    with open_db(db) as conn:  # the prompt audit did not clear the texts
        conn.execute("UPDATE studies SET audit_report = json_set(coalesce(audit_report, "
                     "'{}'), '$.prompts', json('{\"verdict\": \"leak\"}'))")
        conn.conn.commit()
    s = reader_handlers.start(db, token)
    assert s.training and s.prompt is None and len(s.choices) == 6
    s = reader_handlers.submit_answer(db, token, s.state, 1)
    # No prompt audit cleared the texts: a training case asks nothing that shows its text
    # (its truth comes next), so the feedback follows the real/synthetic answer.
    assert s.kind == "feedback" and s.prompt is None
    assert not any(p in s.feedback for p in prompts)
    with open_db(db) as conn:  # the prompt audit found the texts indistinguishable
        conn.execute("UPDATE studies SET audit_report = json_set(coalesce(audit_report, "
                     "'{}'), '$.prompts', json('{\"verdict\": \"ok\"}'))")
        conn.conn.commit()
    s = reader_handlers.continue_after_feedback(db, token)
    assert s.kind == "case" and s.training and s.position == 2
    s = reader_handlers.submit_answer(db, token, s.state, 1)
    # Same image, second question: the prompt appears, the image is not re-sent.
    assert s.kind == "case" and s.position == 2 and not s.new_image and s.image_url is None
    assert s.prompt in prompts and len(s.choices) == 5
    s = reader_handlers.submit_answer(db, token, s.state, 3)
    assert s.kind == "feedback" and "Training case" in s.feedback
    assert ("real" in s.feedback) or ("synthetic" in s.feedback)
    assert "correct" in s.feedback.lower() or "not quite" in s.feedback.lower()
    s = reader_handlers.continue_after_feedback(db, token)
    assert s.kind == "case" and s.position == 3 and s.new_image
    final = answer_all(db, token)
    assert final.kind == "finished"
    df = long_table(db, "ten")
    # 10 cases, 2 of them training: the first asked only the real/synthetic question
    assert set(df["task"]) == {"turing", "alignment"} and len(df) == 2 * 10 - 1


def test_reader_blocks_config_is_blind_and_every_event_private(tmp_path):
    db, rows, _ = make_loud_study(tmp_path)
    blocks = reader_page.build_reader_blocks(db)
    config = json.dumps(blocks.get_config_file(), default=str)
    for needle in leak_needles(rows) + [str(stimuli_dir(db)), str(db)]:
        assert needle not in config
    deps = blocks.get_config_file()["dependencies"]
    assert deps and all(d["api_visibility"] == "private" for d in deps)
    # The stimulus is our own <img> (gr.HTML), not gr.Image: nothing goes through Gradio's
    # file cache.
    image = next(c for c in blocks.get_config_file()["components"]
                 if c.get("props", {}).get("elem_id") == "stimulus")
    assert image["type"] == "html"
    assert not [c for c in blocks.get_config_file()["components"] if c["type"] == "image"]

def test_intro_counts_images_not_items(tmp_path):
    """The intro's number is the images the reader will see (the progress bar's N: repeats
    and attention checks included, each one image), not image x question."""
    db, tokens = repeat_study(tmp_path / "rep")
    intro = reader_handlers.open_page(db, tokens["dr-a"])
    total = reader_handlers.start(db, tokens["dr-a"]).total
    assert total > 8  # 8 cases + repeats + an attention check
    assert f"You will see **{total}** images" in intro.intro and "one question about each" in intro.intro
    db2, _, tokens2 = make_loud_study(tmp_path / "two", n_cases=4, tasks=("turing", "alignment"))
    intro2 = reader_handlers.open_page(db2, tokens2["dr-a"]).intro
    assert "You will see **4** images" in intro2 and "2 questions about each" in intro2
    assert "**8**" not in intro2


def test_unexpected_error_is_words_too(tmp_path, monkeypatch):
    db, _, tokens = make_loud_study(tmp_path)

    def broken(*a, **k):
        raise KeyError("bug")
    monkeypatch.setattr(session, "next_case", broken)
    screen = reader_handlers.storage_safe(reader_handlers.start)(db, tokens["dr-a"])
    assert screen.kind == "unavailable" and "went wrong" in screen.message
    assert "Try again" in screen.message and "Error" not in screen.message


@pytest.mark.parametrize("fault", ["locked", "read-only", "swapped", "missing folder",
                                   "missing database"])
def test_storage_faults_give_a_message_in_words(tmp_path, monkeypatch, fault):
    import errno
    import sqlite3

    db, _, tokens = make_loud_study(tmp_path)
    token = tokens["dr-a"]
    s = reader_handlers.start(db, token)
    if fault == "locked":
        def locked(*a, **k):
            raise sqlite3.OperationalError("database is locked")
        monkeypatch.setattr(session, "submit", locked)
    elif fault == "read-only":
        def ro(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(session, "submit", ro)
    elif fault == "swapped":
        for suffix in ("-wal", "-shm"):
            pathlib.Path(f"{db}{suffix}").unlink(missing_ok=True)
        pathlib.Path(db).write_bytes(b"this is not a database" * 100)
    elif fault == "missing folder":
        import shutil
        shutil.rmtree(db.parent)
    else:
        for suffix in ("", "-wal", "-shm"):
            pathlib.Path(f"{db}{suffix}").unlink(missing_ok=True)
    for handler, args in ((reader_handlers.open_page, (db, token)),
                          (reader_handlers.start, (db, token)),
                          (reader_handlers.submit_answer, (db, token, s.state, 3)),
                          (reader_handlers.continue_after_feedback, (db, token))):
        screen = reader_handlers.storage_safe(handler, " (your last answer may not have been saved)")(*args)
        if fault in ("locked", "read-only") and handler is not reader_handlers.submit_answer:
            assert screen.kind in ("intro", "case")  # reading still works; only writes fail
            continue
        assert screen.kind == "unavailable", (fault, handler.__name__, screen)
        assert "storage cannot be reached" in screen.message and "Try again" in screen.message
        assert "Error" not in screen.message

def test_reader_events_are_cheap_for_gradio(tmp_path, monkeypatch):
    """An answer's result is plain values, not ~20 `gr.update` dicts (Gradio rebuilds a
    component per update), and Gradio's queue does not rebuild its pandas analytics
    summary after every event. Both made the think-time p95 miss its target."""
    import gradio.queueing
    import httpx

    summaries = []
    real = gradio.queueing.Queue._get_df
    monkeypatch.setattr(gradio.queueing.Queue, "_get_df",
                        staticmethod(lambda records: summaries.append(1) or real(records)))
    db, _, _ = make_loud_study(tmp_path)
    token = readers.invite(db, "ten", "cheap")
    with serve_studio(db) as (url, ids), httpx.Client(base_url=url, timeout=30) as c:
        queue_event(c, ids["on_load"], [], token, "s1")
        first = queue_event(c, ids["on_start_profile"], ["{}", False], token, "s1")  # Start
        nxt = queue_event(c, ids["on_submit"], [None, 2, None, "", False], token, "s1")
    for out in (first, nxt):
        updates = [o for o in out if isinstance(o, dict) and o.get("__type__") == "update"]
        assert len(updates) == 1 and "choices" in updates[0], out  # only the answer scale
        assert '<span data-screen="case"></span>' in out and "stimulus/" in screen_text(out)
    assert screen_text(first) != screen_text(nxt)  # the next case, with its own image
    assert summaries == []


def test_back_event_sends_the_marker_earlier_answer_and_remarks_as_plain_values(tmp_path):
    """Through Gradio's queue: after an answer the Back marker is on; Back
    shows the previous case with the earlier answer selected (still the only update dict)
    and the comment and flag sent with it as plain values."""
    import httpx

    db, _, _ = make_loud_study(tmp_path)
    token = readers.invite(db, "ten", "backer")
    with serve_studio(db) as (url, ids), httpx.Client(base_url=url, timeout=30) as c:
        first = queue_event(c, ids["on_start"], [], token, "s1")
        nxt = queue_event(c, ids["on_submit"], [None, 2, None, "=SUM(A1)", True],
                           token, "s1")
        back = queue_event(c, ids["on_back"], [], token, "s1")
    assert '<span data-back="1"></span>' not in first  # nothing to go back to yet
    assert '<span data-back="1"></span>' in nxt and nxt[-2:] == ["", False]
    updates = [o for o in back if isinstance(o, dict) and o.get("__type__") == "update"]
    assert len(updates) == 1 and updates[0]["value"] == 2
    assert back[-3:] == ["", "=SUM(A1)", True]  # one step back only: no marker now
    assert "Case 1 of 10" in screen_text(back) and "stimulus/" in screen_text(back)
    # the image URL is the read's new view id, not the one shown the first time
    url = [o for o in first if isinstance(o, str) and "stimulus/" in o][0]
    assert url.split("stimulus/")[1].split("?")[0] not in screen_text(back)
    row = long_table(db, "ten").iloc[0]
    assert (row["comment"], row["non_diagnostic"]) == ("=SUM(A1)", 1)


def test_waiting_for_the_washout_offers_back_to_the_last_case(tmp_path):
    """Every first read answered, the repeats wait for the wash-out: the waiting screen
    offers going back to the last case (marker on), Back reopens it, and its re-answer
    leads to the waiting screen again — through Gradio's queue, as the page sends it."""
    import httpx

    from studies.design import StudyOptions
    from study_fixtures import make_study

    db, _ = make_study(tmp_path, "wash", options=StudyOptions(repeat_fraction=0.5,
                                                              repeat_after_s=3600))
    token = readers.invite(db, "wash", "waiter")
    waiting = '<span data-screen="unavailable"></span>'
    with serve_studio(db) as (url, ids), httpx.Client(base_url=url, timeout=30) as c:
        out = queue_event(c, ids["on_start"], [], token, "s1")
        for _ in range(50):
            if waiting in out:
                break
            assert '<span data-screen="case"></span>' in out, screen_text(out)
            out = queue_event(c, ids["on_submit"], [None, 2, None, "", False], token, "s1")
        assert waiting in out and "wash-out" in screen_text(out)
        assert '<span data-back="1"></span>' in out  # the Back button shows
        back = queue_event(c, ids["on_back"], [], token, "s1")
        assert '<span data-screen="case"></span>' in back
        assert reader_handlers.BACK_DONE.split(";")[0] in screen_text(back)
        again = queue_event(c, ids["on_submit"], [None, 5, None, "", False], token, "s1")
    # waiting again; the last case (the one just re-answered) may again be reopened, as
    # on the finish screen
    assert waiting in again and '<span data-back="1"></span>' in again
    df = long_table(db, "wash")
    assert (df.sort_values("answered_at")["rating"].iloc[-1]) == 5  # the re-answer counts


def test_reader_page_title_is_the_reader_title_never_the_internal_name(tmp_path):
    """Readers see the study team's reader-facing title (plain text, escaped), or a neutral
    "Reader study" when none is set: never the internal study name, which may describe
    the design."""
    from studies import lifecycle

    db, _, tokens = make_loud_study(tmp_path, "ct-sdxl-vs-real-siteB")
    token = tokens["dr-a"]
    first = reader_handlers.open_page(db, token)
    assert first.kind == "intro" and "Reader study" in first.intro
    assert "siteB" not in screen_text(first) and "sdxl" not in screen_text(first)

    lifecycle.set_texts(db, "ct-sdxl-vs-real-siteB", title="Chest CT  **reading** <b>study</b>")
    shown = reader_handlers.open_page(db, token)
    assert shown.intro.splitlines()[0] == r"### Chest CT \*\*reading\*\* \<b\>study\</b\>"
    assert "siteB" not in screen_text(shown) and "Reader study" not in shown.intro.splitlines()[0]
    # the admin's Study settings show and save the same title (the library call the CLI uses)
    assert settings_tab.reader_title_setting(db, "ct-sdxl-vs-real-siteB") == \
        "Chest CT **reading** <b>study</b>"


def test_training_feedback_after_a_reload_between_questions_grades_the_stored_call(tmp_path):
    """A reload between a training case's two questions loses the page's memory of the
    real/synthetic answer; the feedback still says whether that stored answer was right."""
    from studies.storage.connections import open_db

    db, rows, tokens = make_loud_study(tmp_path, tasks=("turing", "alignment"),
                                       training_cases=2)
    with open_db(db) as conn:  # the prompt audit cleared the texts: training asks both
        conn.execute("UPDATE studies SET audit_report = json_set(coalesce(audit_report, "
                     "'{}'), '$.prompts', json('{\"verdict\": \"ok\"}'))")
        conn.conn.commit()
    token = tokens["dr-a"]
    s = reader_handlers.start(db, token)
    assert s.training and len(s.choices) == 6
    s = reader_handlers.submit_answer(db, token, s.state, 1)  # definitely real
    assert s.kind == "case" and s.position == 1 and len(s.choices) == 5
    s = reader_handlers.open_page(db, token)  # the reload
    assert s.kind == "case" and s.position == 1 and len(s.choices) == 5 and not s.state.feedback
    s = reader_handlers.submit_answer(db, token, s.state, 3)
    assert s.kind == "feedback"
    truth = "real" if "This image is real." in s.feedback else "synthetic"
    assert f"This image is {truth}." in s.feedback and "You answered real" in s.feedback
    assert s.feedback.startswith("**Training case.** "
                                 + ("Correct." if truth == "real" else "Not quite."))
