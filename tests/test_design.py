"""studies.design: scales, options, per-reader order, training, repeats, attention checks."""
import collections
import subprocess
import sys

import pytest

from studies.design import (
    TASKS, StudyOptions, reader_order, select_training, stable_seed, task_order, turing_call,
)
from studies.errors import StudyError

CASES = [f"c{i:03d}" for i in range(40)]


def test_turing_scale_maps_to_call_and_rating():
    t = TASKS["turing"]
    assert t.values == (1, 2, 3, 4, 5, 6)
    assert [turing_call(v) for v in t.values] == ["real"] * 3 + ["synthetic"] * 3
    assert t.label(1) == "definitely real" and t.label(6) == "definitely synthetic"
    assert t.parse("probably synthetic") == 5 and t.parse("2") == 2 and t.parse(4) == 4
    assert t.answer_text(5) == "synthetic" and t.answer_text(3) == "real"
    for bad in (0, 7, "maybe", True, None, 2.0):
        with pytest.raises(StudyError):
            t.parse(bad)


def test_likert_tasks():
    assert TASKS["alignment"].values == TASKS["quality"].values == (1, 2, 3, 4, 5)
    assert TASKS["alignment"].shows_prompt and not TASKS["quality"].shows_prompt
    assert not TASKS["turing"].shows_prompt
    assert TASKS["quality"].answer_text(4) == "4"


def test_options_validation():
    assert StudyOptions(tasks=["turing", "quality"]).validated().tasks == ("turing", "quality")
    for bad in (dict(tasks=()), dict(tasks=("tuning",)), dict(tasks=("turing", "turing")),
                dict(training_cases=-1), dict(repeat_fraction=1.5), dict(attention_checks=-2)):
        with pytest.raises(StudyError):
            StudyOptions(**bad).validated()
    opts = StudyOptions(tasks=("turing", "alignment"), training_cases=3, seed=9)
    assert StudyOptions.from_dict(opts.to_dict()) == opts


def test_stable_seed_is_not_pythons_salted_hash():
    code = "from studies.design import stable_seed; print(stable_seed(1, 'reader', 'alice'))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(s), "PATH": ""}, check=True,
                           cwd=str(__import__("pathlib").Path(__file__).parents[1])).stdout
            for s in (1, 2)}
    assert outs == {f"{stable_seed(1, 'reader', 'alice')}\n"}


def test_order_is_reproducible_and_reader_specific():
    opts = StudyOptions(seed=5)
    a1 = reader_order(5, "alice", CASES, opts)
    a2 = reader_order(5, "alice", CASES, opts)
    b = reader_order(5, "bob", CASES, opts)
    other_study = reader_order(6, "alice", CASES, opts)
    ids = lambda slots: [s.case_id for s in slots]  # noqa: E731
    assert ids(a1) == ids(a2)
    assert ids(a1) != ids(b) and ids(a1) != ids(other_study)
    assert sorted(ids(a1)) == sorted(CASES)  # a permutation: every case exactly once
    assert ids(a1) != CASES  # actually shuffled
    assert all(s.kind == "main" and s.tasks == ("turing",) for s in a1)


def test_training_first_then_main_without_training_cases():
    training = ["t1", "t2", "t3"]
    slots = reader_order(1, "r", CASES, StudyOptions(training_cases=3), training_ids=training)
    assert [s.kind for s in slots[:3]] == ["training"] * 3
    assert sorted(s.case_id for s in slots[:3]) == training
    assert not any(s.case_id in training for s in slots[3:])


def test_select_training_is_balanced_and_seeded():
    cases = [(f"r{i}", "real") for i in range(10)] + [(f"s{i}", "synthetic") for i in range(10)]
    chosen = select_training(cases, 4, seed=3)
    assert len(chosen) == len(set(chosen)) == 4
    assert sum(c.startswith("r") for c in chosen) == 2
    assert chosen == select_training(cases, 4, seed=3)
    assert chosen != select_training(cases, 4, seed=4)


def test_repeats_come_later_and_are_flagged():
    opts = StudyOptions(repeat_fraction=0.2)
    slots = reader_order(2, "r", CASES, opts)
    repeats = [i for i, s in enumerate(slots) if s.kind == "repeat"]
    assert len(repeats) == 8  # 20 % of 40
    first_seen = {}
    for i, s in enumerate(slots):
        if s.kind == "main":
            first_seen[s.case_id] = i
    for i in repeats:
        cid = slots[i].case_id
        # a quarter of the main block (10 reads) lies between the first read and the repeat
        assert i - first_seen[cid] > 10
    assert len({slots[i].case_id for i in repeats}) == 8
    assert sum(s.kind == "main" for s in slots) == 40


def test_attention_checks_spread_and_instructed():
    opts = StudyOptions(attention_checks=4, repeat_fraction=0.1, tasks=("turing", "quality"))
    slots = reader_order(3, "r", CASES, opts, training_ids=["t1", "t2"])
    checks = [i for i, s in enumerate(slots) if s.kind == "attention"]
    assert len(checks) == 4
    assert all(slots[i].tasks == ("attention",) and slots[i].scale_task == "turing"
               and slots[i].expected in TASKS["turing"].values for i in checks)
    # shown with training images (already revealed), never before training ends
    assert {slots[i].case_id for i in checks} <= {"t1", "t2"}
    assert min(checks) >= 2
    # spread: one per quarter of the session body
    body = len(slots) - 2
    quarters = collections.Counter(min(3, (i - 2) * 4 // body) for i in checks)
    assert sorted(quarters) == [0, 1, 2, 3]


def test_counterbalanced_task_order_rotates_across_readers():
    tasks = ("turing", "alignment", "quality")
    orders = [task_order(tasks, i, True) for i in range(6)]
    assert orders[0] == tasks and orders[1] == ("alignment", "quality", "turing")
    assert orders[3] == orders[0]
    for pos in range(3):  # each task in each position equally often over 3 readers
        assert sorted(o[pos] for o in orders[:3]) == sorted(tasks)
    assert task_order(tasks, 1, False) == tasks
    slots = reader_order(1, "r", CASES, StudyOptions(tasks=tasks, counterbalance=True), reader_index=1)
    assert slots[0].tasks == orders[1]
