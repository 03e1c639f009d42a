"""Study design: the questions (tasks), the study options and each reader's case order.

Everything here is pure: `reader_order` turns (study seed, reader name, cases, options)
into the reader's list of slots; `readers.invite` stores that list once as assignment rows,
so resume never depends on recomputing it.

Decisions (documented in docs/studies.md):
- Training cases are a held-aside subset of the study's cases (chosen once at creation,
  balanced across real/synthetic), shown first to every reader with feedback; they are
  never part of the analysed set.
- Repeats re-show a fraction of the reader's main cases later in the same session, at
  least a quarter of the main block after the first read, flagged `repeat`.
- Attention checks are instructed-response items ("please select «probably real» for
  this image") shown with a training image (or a main image if there is no training
  set), spread evenly over the session; they are not analysed as reads.
- Counterbalancing rotates the within-case task order across readers in invitation
  order (a cyclic Latin square), so each task appears in each position equally often.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Hashable, Sequence
from typing import Any

from studies.errors import StudyError


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    question: str
    scale: tuple[tuple[int, str], ...]  # (value, label), lowest value first
    shows_prompt: bool
    help: str = ""

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(v for v, _ in self.scale)

    def label(self, value: int) -> str:
        return dict(self.scale)[value]

    def parse(self, answer: Any) -> int:
        """The scale value for an answer given as its value (int or digit string) or label."""
        if isinstance(answer, bool):
            raise StudyError(f"answer {answer!r} is not on the {self.name} scale")
        if isinstance(answer, int) and answer in self.values:
            return answer
        if isinstance(answer, str):
            text = answer.strip().lower()
            if text.isdigit() and int(text) in self.values:
                return int(text)
            for value, label in self.scale:
                if text == label.lower():
                    return value
        raise StudyError(f"answer {answer!r} is not on the {self.name} scale {list(self.values)}")

    def answer_text(self, value: int) -> str:
        """What goes in responses.answer: the binary call for turing, else the value."""
        if self.name == "turing":
            return turing_call(value)
        return str(value)

    def question_dict(self) -> dict:
        return {
            "task": self.name,
            "question": self.question,
            "help": self.help,
            "scale": [{"value": v, "label": lab} for v, lab in self.scale],
            "shows_prompt": self.shows_prompt,
        }


TURING = Task(
    "turing",
    "Is this image real or synthetic?",
    (
        (1, "definitely real"), (2, "probably real"), (3, "possibly real"),
        (4, "possibly synthetic"), (5, "probably synthetic"), (6, "definitely synthetic"),
    ),
    shows_prompt=False,
    help="Choose one: the side gives your call, the word your confidence.",
)
ALIGNMENT = Task(
    "alignment",
    "How well does the image match the text?",
    ((1, "not at all"), (2, "slightly"), (3, "moderately"), (4, "well"), (5, "perfectly")),
    shows_prompt=True,
)
QUALITY = Task(
    "quality",
    "How realistic does this image look?",
    (
        (1, "not realistic"), (2, "slightly realistic"), (3, "moderately realistic"),
        (4, "very realistic"), (5, "indistinguishable from a clinical image"),
    ),
    shows_prompt=False,
)
TASKS: dict[str, Task] = {t.name: t for t in (TURING, ALIGNMENT, QUALITY)}
ATTENTION = "attention"  # the pseudo-task of attention-check slots
SLOT_KINDS = ("training", "main", "repeat", "attention")


def turing_call(rating: int) -> str:
    """Binary call of a 6-point turing rating: 1-3 real, 4-6 synthetic."""
    return "real" if rating <= 3 else "synthetic"


def attention_task(scale_task: str, expected: int) -> Task:
    """The instructed-response question of an attention check."""
    base = TASKS[scale_task]
    return Task(
        ATTENTION,
        f"Attention check: please select «{base.label(expected)}» for this image.",
        base.scale,
        shows_prompt=False,
    )


@dataclasses.dataclass(frozen=True)
class StudyOptions:
    tasks: tuple[str, ...] = ("turing",)
    training_cases: int = 0
    repeat_fraction: float = 0.0
    attention_checks: int = 0
    counterbalance: bool = False
    seed: int | None = None  # None: chosen at random when the study is created

    def validated(self) -> "StudyOptions":
        tasks = tuple(self.tasks)
        if not tasks:
            raise StudyError("a study needs at least one task")
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise StudyError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
        if len(set(tasks)) != len(tasks):
            raise StudyError("each task may be listed only once")
        if not isinstance(self.training_cases, int) or self.training_cases < 0:
            raise StudyError("training cases must be a whole number >= 0")
        if not 0.0 <= float(self.repeat_fraction) <= 1.0:
            raise StudyError("repeat fraction must be between 0 and 1")
        if not isinstance(self.attention_checks, int) or self.attention_checks < 0:
            raise StudyError("attention checks must be a whole number >= 0")
        if self.seed is not None and not isinstance(self.seed, int):
            raise StudyError("seed must be an integer")
        return dataclasses.replace(self, tasks=tasks, repeat_fraction=float(self.repeat_fraction))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, d: dict) -> "StudyOptions":
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in fields}
        if "tasks" in kw:
            kw["tasks"] = tuple(kw["tasks"])
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Slot:
    kind: str                    # training | main | repeat | attention
    case_id: Hashable
    tasks: tuple[str, ...]       # asked in this order; ("attention",) for a check
    expected: int | None = None  # attention checks: the value the reader was told to pick
    scale_task: str | None = None  # attention checks: whose scale is shown


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from the parts, identical across runs and Python versions
    (unlike hash(), which is salted per process)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def task_order(tasks: Sequence[str], reader_index: int, counterbalance: bool) -> tuple[str, ...]:
    """Within-case task order: as given, or rotated by the reader's ordinal (Latin square)."""
    tasks = tuple(tasks)
    if not counterbalance or len(tasks) < 2:
        return tasks
    k = reader_index % len(tasks)
    return tasks[k:] + tasks[:k]


def select_training(cases: Sequence[tuple[Hashable, str]], n: int, seed: int) -> list[Hashable]:
    """Hold aside `n` training cases from (case_id, source) pairs, alternating real and
    synthetic so the training set shows both classes."""
    if n == 0:
        return []
    rng = random.Random(stable_seed(seed, "training"))
    by_source: dict[str, list[Hashable]] = {}
    for cid, source in cases:
        by_source.setdefault(source, []).append(cid)
    pools = [by_source[s][:] for s in sorted(by_source)]
    for pool in pools:
        rng.shuffle(pool)
    rng.shuffle(pools)
    chosen: list[Hashable] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    return chosen


def reader_order(
    study_seed: int,
    reader_name: str,
    case_ids: Sequence[Hashable],
    options: StudyOptions,
    *,
    training_ids: Sequence[Hashable] = (),
    reader_index: int = 0,
) -> list[Slot]:
    """The reader's full session: training slots, then main reads with repeats and
    attention checks interleaved. Deterministic in (study_seed, reader_name, inputs)."""
    rng = random.Random(stable_seed(study_seed, "reader", reader_name))
    tasks = task_order(options.tasks, reader_index, options.counterbalance)

    training = list(training_ids)
    rng.shuffle(training)
    slots = [Slot("training", cid, tasks) for cid in training]

    main = list(case_ids)
    rng.shuffle(main)
    body: list[Slot] = [Slot("main", cid, tasks) for cid in main]
    body = _insert_repeats(body, options.repeat_fraction, rng)
    body = _insert_attention(body, options.attention_checks, training or main, tasks[0], rng)
    return slots + body


def _insert_repeats(main: list[Slot], fraction: float, rng: random.Random) -> list[Slot]:
    n = len(main)
    if fraction <= 0 or n < 2:
        return main
    k = min(n, max(1, round(fraction * n)))
    gap = max(1, n // 4)  # at least a quarter of the main block between the two reads
    eligible = [p for p in range(n) if p + gap <= n]
    chosen = rng.sample(eligible, min(k, len(eligible)))
    rest = [p for p in range(n) if p not in set(chosen)]
    chosen += rng.sample(rest, k - len(chosen))
    after: dict[int, list[Slot]] = {}
    for p in chosen:
        t = rng.randint(min(p + gap, n), n)  # shown after main item t-1, so t > p
        after.setdefault(t, []).append(dataclasses.replace(main[p], kind="repeat"))
    out: list[Slot] = []
    for i, slot in enumerate(main, start=1):
        out.append(slot)
        out.extend(after.get(i, []))
    return out


def _insert_attention(body: list[Slot], count: int, pool: Sequence[Hashable],
                      scale_task: str, rng: random.Random) -> list[Slot]:
    if count <= 0 or not pool:
        return body
    picks: list[Hashable] = []
    while len(picks) < count:  # without replacement until the pool is used up
        picks += rng.sample(list(pool), min(len(pool), count - len(picks)))
    values = TASKS[scale_task].values
    checks = [Slot("attention", cid, (ATTENTION,), rng.choice(values), scale_task) for cid in picks]
    # One check at a random point inside each of `count` equal segments of the body.
    m = len(body)
    positions = []
    for j in range(count):
        lo, hi = (j * m) // count, ((j + 1) * m) // count
        positions.append(rng.randint(max(lo, 1) if m else 0, max(hi, max(lo, 1) if m else 0)))
    out = list(body)
    for pos, check in sorted(zip(positions, checks), key=lambda pc: pc[0], reverse=True):
        out.insert(min(pos, len(out)), check)
    return out
