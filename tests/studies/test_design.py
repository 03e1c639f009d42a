"""studies.design: scales, options, per-reader order, training, repeats, attention checks."""
import collections
import subprocess
import sys

import pytest

from studies.design import (
    TASKS, StudyOptions, new_order_secret, reader_order, seeded_order_secret, select_training,
    task_order,
)
from studies.errors import StudyError
from studies.stats.columns import turing_call
from paths import ROOT

CASES = [f"c{i:03d}" for i in range(40)]
S1, S2, S3, S5, S6 = (seeded_order_secret(k) for k in (1, 2, 3, 5, 6))


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


def test_order_is_not_pythons_salted_hash():
    code = ("from studies.design import reader_order, seeded_order_secret, StudyOptions; "
            "print([s.case_id for s in reader_order(seeded_order_secret(1), 'alice', "
            "[f'c{i}' for i in range(30)], StudyOptions())])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": str(s), "PATH": ""}, check=True,
                           cwd=str(ROOT)).stdout
            for s in (1, 2)}
    assert len(outs) == 1


def test_order_is_reproducible_and_reader_specific():
    opts = StudyOptions(seed=5)
    a1 = reader_order(S5, "alice", CASES, opts)
    a2 = reader_order(S5, "alice", CASES, opts)
    b = reader_order(S5, "bob", CASES, opts)
    other_study = reader_order(S6, "alice", CASES, opts)
    ids = lambda slots: [s.case_id for s in slots]  # noqa: E731
    assert ids(a1) == ids(a2)
    assert ids(a1) != ids(b) and ids(a1) != ids(other_study)
    assert sorted(ids(a1)) == sorted(CASES)  # a permutation: every case exactly once
    assert ids(a1) != CASES  # actually shuffled
    assert all(s.kind == "main" and s.tasks == ("turing",) for s in a1)


def test_order_ignores_the_order_cases_are_given_in():
    """The input order (manifest rows, folder names, database ids) carries truth in real
    studies (real rows first); the order must not depend on it at all."""
    opts = StudyOptions(repeat_fraction=0.2, attention_checks=3)
    a = reader_order(S1, "alice", CASES, opts)
    b = reader_order(S1, "alice", list(reversed(CASES)), opts)
    assert a == b


def test_order_secret_is_random_and_at_least_128_bits():
    secrets_seen = {new_order_secret() for _ in range(20)}
    assert len(secrets_seen) == 20 and all(len(s) >= 16 for s in secrets_seen)
    with pytest.raises(ValueError):
        reader_order(42, "alice", CASES, StudyOptions())  # a seed is not a secret
    with pytest.raises(ValueError):
        reader_order(b"short", "alice", CASES, StudyOptions())


def test_training_first_then_main_without_training_cases():
    training = ["t1", "t2", "t3"]
    slots = reader_order(S1, "r", CASES, StudyOptions(training_cases=3), training_ids=training)
    assert [s.kind for s in slots[:3]] == ["training"] * 3
    assert sorted(s.case_id for s in slots[:3]) == training
    assert not any(s.case_id in training for s in slots[3:])


def test_select_training_is_balanced_and_keyed():
    cases = [(f"r{i}", "real") for i in range(10)] + [(f"s{i}", "synthetic") for i in range(10)]
    chosen = select_training(cases, 4, S3)
    assert len(chosen) == len(set(chosen)) == 4
    assert sum(c.startswith("r") for c in chosen) == 2
    assert chosen == select_training(cases, 4, S3)
    assert chosen == select_training(list(reversed(cases)), 4, S3)
    assert {frozenset(select_training(cases, 4, new_order_secret())) for _ in range(10)} != {frozenset(chosen)}


def test_repeats_come_later_and_are_flagged():
    opts = StudyOptions(repeat_fraction=0.2)
    slots = reader_order(S2, "r", CASES, opts)
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
    slots = reader_order(S3, "r", CASES, opts, training_ids=["t1", "t2"])
    checks = [i for i, s in enumerate(slots) if s.kind == "attention"]
    assert len(checks) == 4
    assert all(slots[i].tasks == ("attention",) and slots[i].scale_task == "turing"
               and slots[i].expected in TASKS["turing"].values for i in checks)
    # shown with main images, never with a training image (its truth was just revealed),
    # and never before training ends
    assert {slots[i].case_id for i in checks} <= set(CASES)
    assert min(checks) >= 2
    # spread: one per quarter of the session body
    body = len(slots) - 2
    quarters = collections.Counter(min(3, (i - 2) * 4 // body) for i in checks)
    assert sorted(quarters) == [0, 1, 2, 3]


def test_attention_checks_never_use_training_images():
    """An attention check never shows a training image (its answer was just revealed), even
    with many readers, many checks and few main cases."""
    training = [f"t{i}" for i in range(6)]
    main = CASES[:3]  # fewer main cases than checks: main images are reused, not training
    opts = StudyOptions(attention_checks=5, training_cases=6)
    for reader in range(50):
        slots = reader_order(S1, f"r{reader}", main, opts, training_ids=training)
        checks = [s.case_id for s in slots if s.kind == "attention"]
        assert len(checks) == 5 and set(checks) <= set(main)
        assert [s.case_id for s in slots if s.kind == "training"] and \
            all(s.kind == "training" for s in slots[:6])


def test_counterbalancing_never_asks_for_the_prompt_before_the_turing_call():
    """With --counterbalance turing stays first for every reader (no prompt is seen before the
    real/synthetic call); only the other tasks rotate."""
    tasks = ("turing", "alignment", "quality")
    opts = StudyOptions(tasks=tasks, counterbalance=True).validated()
    orders = [task_order(tasks, i, True) for i in range(6)]
    assert all(o[0] == "turing" for o in orders)
    assert orders[0] == tasks and orders[1] == ("turing", "quality", "alignment")
    assert orders[2] == orders[0]
    for pos in (1, 2):  # each rotated task in each later position equally often
        assert sorted(o[pos] for o in orders[:2]) == ["alignment", "quality"]
    assert task_order(tasks, 1, False) == tasks
    assert task_order(("alignment", "turing"), 0, False) == ("turing", "alignment")
    for i in range(4):
        slots = reader_order(S1, f"r{i}", CASES, opts, reader_index=i)
        assert all(s.tasks[0] == "turing" for s in slots)
        assert slots[0].tasks == orders[i]
    # without turing, every task may rotate
    assert task_order(("alignment", "quality"), 1, True) == ("quality", "alignment")


def test_counterbalancing_with_nothing_to_rotate_is_refused():
    with pytest.raises(StudyError, match="nothing to rotate"):
        StudyOptions(tasks=("turing", "alignment"), counterbalance=True).validated()
    with pytest.raises(StudyError, match="nothing to rotate"):
        StudyOptions(tasks=("turing",), counterbalance=True).validated()
    assert StudyOptions(tasks=("alignment", "quality"), counterbalance=True).validated()
