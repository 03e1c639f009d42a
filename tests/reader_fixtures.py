"""Helpers for the reader's handler and route tests: what a screen sends, answering a whole
study, one Gradio event as the browser sends it, a study with repeats."""
from __future__ import annotations

import dataclasses
import json

from studio.reader import handlers as reader_handlers


def screen_text(obj) -> str:
    """Everything a Screen would send to the browser, as text."""
    if dataclasses.is_dataclass(obj):
        obj = {k: v for k, v in dataclasses.asdict(obj).items() if k != "state"}
    return json.dumps(obj, default=str)


def answer_all(db, token, rating=2, likert=4, max_steps=200):
    screen = reader_handlers.start(db, token)
    steps = 0
    while screen.kind != "finished":
        steps += 1
        assert steps < max_steps
        if screen.kind == "feedback":
            screen = reader_handlers.continue_after_feedback(db, token)
            continue
        assert screen.kind == "case", screen
        value = rating if len(screen.choices) == 6 else likert
        screen = reader_handlers.submit_answer(db, token, screen.state, value)
    return screen


def queue_message(client, fn_index: int, data: list, token: str, session: str) -> dict:
    """One event as the browser sends it (join, then read the event stream): the completed
    message, whether or not the event succeeded."""
    import json

    r = client.post(f"/gradio_api/queue/join?token={token}", json={
        "data": data, "event_data": None, "fn_index": fn_index, "trigger_id": None,
        "session_hash": session})
    r.raise_for_status()
    event_id = r.json()["event_id"]
    with client.stream("GET", f"/gradio_api/queue/data?session_hash={session}") as s:
        for line in s.iter_lines():
            msg = json.loads(line[5:]) if line.startswith("data:") else {}
            if msg.get("event_id") == event_id and msg.get("msg") == "process_completed":
                return msg
    raise AssertionError("no result")


def queue_event(client, fn_index: int, data: list, token: str, session: str) -> list:
    """The output of one successful event (`queue_message`)."""
    msg = queue_message(client, fn_index, data, token, session)
    assert msg.get("success"), msg
    return msg["output"]["data"]


def repeat_study(tmp):
    """A study with repeats and an attention check, two readers: (db, {reader: token})."""
    from studio_fixtures import write_loud_manifest as loud

    from studies import readers as readers_mod
    from studies.design import StudyOptions
    from studies.ingest import create_study

    db = tmp / "studio.db"
    manifest, _ = loud(tmp / "data", 8)
    create_study(db, "rep", manifest=manifest, size=64,
                 options=StudyOptions(repeat_fraction=0.5, attention_checks=1))
    readers_mod.acknowledge_leak(db, "rep", actor="test")
    return db, {r: readers_mod.invite(db, "rep", r) for r in ("dr-a", "dr-b")}
