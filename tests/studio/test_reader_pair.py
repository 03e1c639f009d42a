"""The paired (2AFC) task on the reader page, without a browser: the
handlers show both images of a read, each under its own per-read URL that works only with
the reader's own token and only until the pair is answered; the stored answer is the side
(`columns.pair_call`); a CLI-created pair study can be completed; an event still sends
one `gr.update`. The browser side is in test_reader_pair_browser.py."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from studio_fixtures import leak_needles, make_loud_study, serve_studio, write_loud_manifest
from reader_fixtures import queue_event, screen_text

from studies import monitoring, readers, serving, session

from studies.imaging import stimuli
from studies.storage.connections import open_db, stimuli_dir
from studies.design import StudyOptions
from studies.stats.columns import TASKS, pair_call
from studies.export import long_table
from studio.admin import readers_tab
from studio.web import auth
from studio.reader import handlers as reader_handlers
from studio.reader import page as reader_page
from studio.reader import texts as reader_texts
from study_fixtures import acknowledge_fixture_leak


def _images_of(db, reader_id):
    """{assignment id: (view id, left source, left file, pair view id, right source,
    right file)} of a reader's reads, from the database (never sent to a browser)."""
    with open_db(db) as conn:
        rows = conn.execute(
            "SELECT a.id, a.view_id, c.source, c.stimulus_id, a.pair_view_id, p.source, "
            "p.stimulus_id FROM assignments a JOIN cases c ON c.id = a.case_id "
            "JOIN cases p ON p.id = a.pair_case_id WHERE a.reader_id = ?", [reader_id])
        return {r[0]: r[1:] for r in rows}


def _ids(screen):
    return [u.split("/")[1].split("?")[0] for u in (screen.image_url, screen.pair_image_url)]


def test_pair_study_answered_end_to_end_through_the_handlers(tmp_path):
    db, rows, tokens = make_loud_study(tmp_path, "duo", n_cases=8, tasks=("pair",))
    token = tokens["dr-a"]
    needles = [n.lower() for n in leak_needles(rows) + [r["prompt"] for r in rows]]

    intro = reader_handlers.open_page(db, token)
    assert intro.kind == "intro" and "**4** pairs of images" in intro.intro
    # The arrow keys are explained in the intro's keyboard hint (shown only where there is
    # a keyboard; touch screens get INTRO_TOUCH), not in the text itself.
    assert intro.pair and "← / →" in reader_texts.PAIR_KEYS_INTRO
    assert "← / →" not in intro.intro and "Enter" not in intro.intro
    screen = reader_handlers.start(db, token)
    reader_id = screen.state.reader_id
    reads = _images_of(db, reader_id)
    ratings = [1, 6, 3, 4]  # both sides, strong and weak
    answered = []
    while screen.kind == "case":
        assert screen.pair and screen.new_image and screen.question == TASKS["pair"].question
        assert [v for _, v in screen.choices] == [1, 2, 3, 4, 5, 6]
        text = screen_text(screen).lower()
        assert not [n for n in needles if n in text]
        # Left is the read's own image, right its pair's, each under its own random id.
        view_id, lsrc, lfile, pview, rsrc, rfile = reads[screen.state.assignment_id]
        assert _ids(screen) == [view_id, pview] and view_id != pview
        assert {lsrc, rsrc} == {"real", "synthetic"}
        assert screen.image_url.endswith(f"?token={token}")
        assert screen.pair_image_url.endswith(f"?token={token}")
        # Both are served as the stored bytes, and only while the pair is on screen.
        for vid, stored in ((view_id, lfile), (pview, rfile)):
            got = serving.stimulus_png(db, reader_id, vid, current_only=True)
            assert got == (stimuli_dir(db) / f"{stored}.png").read_bytes()
        rating = ratings[len(answered)]
        answered.append((screen.state.assignment_id, rating, lsrc))
        screen = reader_handlers.submit_answer(db, token, screen.state, rating)
        for vid in (view_id, pview):
            with pytest.raises(session.NotAuthorised):
                serving.stimulus_png(db, reader_id, vid, current_only=True)
    assert screen.kind == "finished" and len(answered) == 4
    # Each stored answer is the side the rating calls synthetic; truth is the real side.
    df = long_table(db, "duo").sort_values("answered_at")
    assert df["rating"].tolist() == ratings
    assert df["response"].tolist() == [pair_call(r) for r in ratings]
    assert df["response"].tolist() == ["left", "right", "left", "right"]
    truth = ["left" if lsrc == "synthetic" else "right" for _, _, lsrc in answered]
    assert df["truth"].tolist() == truth
    assert reader_handlers.open_page(db, token).kind == "finished"


def _pair_repeat_study(tmp):
    from studies.ingest import create_study

    db = tmp / "studio.db"
    manifest, rows = write_loud_manifest(tmp / "data", 8)
    create_study(db, "duo", manifest=manifest, size=64,
                 options=StudyOptions(tasks=("pair",), repeat_fraction=0.5))
    acknowledge_fixture_leak(db, "duo")
    return db, rows, {r: readers.invite(db, "duo", r) for r in ("dr-a", "dr-b")}


@pytest.fixture(scope="module")
def served_pairs(tmp_path_factory):
    db, rows, tokens = _pair_repeat_study(tmp_path_factory.mktemp("served-pairs"))
    with serve_studio(db) as (url, _):
        yield url, db, rows, tokens


def test_both_pair_urls_per_read_own_token_only_until_answered(served_pairs):
    """The right-hand image obeys the left-hand one's rules: its own URL per read (a
    repeat gets new ones), never another reader's, only with the own token, dead once the
    pair is answered; the stored bytes unchanged."""
    import httpx

    url, db, _, tokens = served_pairs
    a, b = tokens["dr-a"], tokens["dr-b"]
    s_b = reader_handlers.start(db, b)
    ids_b = _ids(s_b)
    seen_a, dead = [], []
    with httpx.Client(base_url=url, timeout=20) as c:
        s = reader_handlers.start(db, a)
        reads = _images_of(db, s.state.reader_id)
        while s.kind == "case":
            ids = _ids(s)
            _, _, lfile, _, _, rfile = reads[s.state.assignment_id]
            for u, stored in ((s.image_url, lfile), (s.pair_image_url, rfile)):
                r = c.get(f"/{u}")
                assert r.status_code == 200 and r.headers["content-type"] == "image/png"
                assert r.headers["cache-control"] == "no-store"
                assert r.content == (stimuli_dir(db) / f"{stored}.png").read_bytes()
            for vid in ids:  # no token, an empty or a cut one, reader B's: 404
                for bad in ("", "?token=", f"?token={b}", f"?token={a[:-2]}"):
                    assert c.get(f"/stimulus/{vid}{bad}").status_code == 404, bad
            for vid in ids_b:  # reader B's current pair, left and right, with A's token
                assert c.get(f"/stimulus/{vid}?token={a}").status_code == 404
            for vid in dead:  # every image of an answered pair is gone
                assert c.get(f"/stimulus/{vid}?token={a}").status_code == 404
            seen_a.append((s.state.assignment_id, ids))
            s = reader_handlers.submit_answer(db, a, s.state, 2)
            dead += ids
        # B's pair still works with B's token (A answering changed nothing for B).
        assert all(c.get(f"/stimulus/{vid}?token={b}").status_code == 200 for vid in ids_b)
    assert s.kind == "finished"
    with open_db(db) as conn:
        kinds = [k for (k,) in conn.execute(
            "SELECT a.kind FROM assignments a JOIN readers r ON r.id = a.reader_id "
            "WHERE r.name = 'dr-a' ORDER BY a.position")]
        pair_of = {aid: tuple(sorted((c_, p))) for aid, c_, p in conn.execute(
            "SELECT id, case_id, pair_case_id FROM assignments")}
    assert "repeat" in kinds and len(seen_a) == len(kinds)
    all_ids = [v for _, ids in seen_a for v in ids]
    assert len(set(all_ids)) == len(all_ids)  # a repeated pair has new ids, left and right
    by_pair = {}
    for aid, ids in seen_a:
        by_pair.setdefault(pair_of[aid], []).append(ids)
    assert any(len(v) == 2 for v in by_pair.values())
    assert not set(all_ids) & set(ids_b)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", v) for v in all_ids)


def test_a_missing_right_hand_image_is_reported_and_the_reader_waits(tmp_path):
    db, _, tokens = make_loud_study(tmp_path, "duo", n_cases=8, tasks=("pair",))
    token = tokens["dr-a"]
    first = reader_handlers.start(db, token)
    view = session.next_case(db, first.state.reader_id)
    path = stimuli_dir(db) / f"{view.pair_stored_id}.png"
    kept = path.read_bytes()
    path.unlink()
    screen = reader_handlers.start(db, token)
    assert screen.kind == "unavailable" and screen.message == reader_handlers.UNAVAILABLE_IMAGE
    assert screen.pair_image_url is None and screen.image_url is None
    assert [f.stimulus_id for f in monitoring.faults(db, "duo")] == [view.pair_stored_id]
    assert view.pair_stored_id in readers_tab.faults_markdown(db, "duo")
    path.write_bytes(kept)
    back = reader_handlers.start(db, token)
    assert back.kind == "case" and back.state.assignment_id == first.state.assignment_id


def test_a_pair_event_sends_plain_values_and_one_update(tmp_path):
    """Through the Gradio queue: the pair screen (both images, pair keys hint) is plain
    values with the answer scale as the only `gr.update`."""
    import httpx

    db, _, tokens = make_loud_study(tmp_path, "duo", n_cases=8, tasks=("pair",))
    token = tokens["dr-a"]
    with serve_studio(db) as (url, ids), httpx.Client(base_url=url, timeout=30) as c:
        queue_event(c, ids["on_load"], [], token, "s1")
        first = queue_event(c, ids["on_start"], [], token, "s1")
        nxt = queue_event(c, ids["on_submit"], [None, 5, None, "", False], token, "s1")
    for out in (first, nxt):
        updates = [o for o in out if isinstance(o, dict) and o.get("__type__") == "update"]
        assert len(updates) == 1 and "choices" in updates[0], out
        html = next(o for o in out if isinstance(o, str) and "pair-view" in o)
        assert len(re.findall(r'<img src="stimulus/[A-Za-z0-9_-]{22}\?token=', html)) == 2
        assert html.index('data-side="left"') < html.index('data-side="right"')
        assert reader_texts.PAIR_KEYS_HINT in out
    assert screen_text(first) != screen_text(nxt)
    assert long_table(db, "duo")["rating"].tolist() == [5]


def test_pair_markup_differs_only_in_side_and_url():
    html = reader_page.pair_html("stimulus/AAA?token=t", "stimulus/BBB?token=t")
    assert html.startswith('<div class="pair-view">') and html.endswith("</div>")
    left, right = html[len('<div class="pair-view">'):-len("</div>")].split("</div></div>")[:2]
    norm = [p.replace("AAA", "X").replace("BBB", "X").replace("Left", "S").replace("left", "s")
            .replace("Right", "S").replace("right", "s") for p in (left, right)]
    assert norm[0] == norm[1] and "AAA" in left and "BBB" in right
    assert 'referrerpolicy="no-referrer"' in left and 'referrerpolicy="no-referrer"' in right


def test_cli_created_pair_study_can_be_completed_by_a_reader(tmp_path):
    from studio.cli import cli

    manifest, _ = write_loud_manifest(tmp_path / "data", 8)
    db = tmp_path / "s.db"
    r = CliRunner().invoke(cli, ["study", "create", "--db", str(db), "--name", "duo",
                                 "--manifest", str(manifest), "--size", "64", "--tasks", "pair"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["study", "invite", "--db", str(db), "--study", "duo",
                                 "--reader", "dr-a", "--acknowledge-leak"])
    assert r.exit_code == 0, r.output
    token = re.search(r"token=([A-Za-z0-9_-]+)", r.output).group(1)
    screen = reader_handlers.start(db, token)
    n = 0
    while screen.kind == "case":
        assert screen.pair and screen.pair_image_url
        screen = reader_handlers.submit_answer(db, token, screen.state, 4)
        n += 1
    assert screen.kind == "finished" and n == 4
    assert set(long_table(db, "duo")["response"]) == {"right"}
