"""Study design: the questions (tasks), the study options and each reader's case order.

Everything here is pure: `reader_order` turns (study order secret, reader name, cases,
options) into the reader's list of slots; `readers.invite` stores that list once as
assignment rows, so resume never depends on recomputing it.

Decisions (documented in docs/studies.md):
- Training cases are a held-aside subset of the study's cases (chosen once at creation,
  balanced across real/synthetic), shown first to every reader with feedback; they are
  never part of the analysed set.
- Repeats re-show a fraction of the reader's main cases later in the same session, at
  least a quarter of the main block after the first read, flagged `repeat`.
- Attention checks are instructed-response items ("please select «probably real» for
  this image") shown with a main image (never a training image: its truth was just
  revealed, so a check on it would be a second look at a labelled image), spread evenly
  over the session; they are not analysed as reads.
- Order: every random choice comes from HMAC-SHA256 keyed with the study's order secret
  (`new_order_secret`: 256 bits from `secrets`, stored, never shown). A reader who knows
  the code, the study's public options and their own name cannot predict it. Cases are
  ordered by a keyed pseudo-random sort key per case, so manifest order, folder names and
  database ids carry no information. `--seed` derives the secret from the seed
  (`seeded_order_secret`), for reproducible tests only: a known seed breaks blinding.
- Counterbalancing never moves the turing question: within a case it is always asked
  first, so no prompt (alignment shows it) is ever seen before the real/synthetic call.
  The *other* tasks rotate across readers in invitation order (a cyclic Latin square over
  positions 2..k). With turing and a single other task there is nothing to rotate and
  the option is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
import secrets
from collections.abc import Hashable, Sequence

from studies.errors import StudyError
from studies.stats.columns import TASKS, Task  # the questions live with the table they fill


ATTENTION = "attention"  # the pseudo-task of attention-check slots
SLOT_KINDS = ("training", "main", "repeat", "attention")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | int | None) -> int:
    """Seconds in a wash-out delay such as `7d`, `36h`, `90m`, `45s`, `2w` or a plain
    number of seconds; 0 for None/empty. StudyError for anything else."""
    if text is None or text == "":
        return 0
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        t = str(text).strip().lower()
        unit = _DURATION_UNITS.get(t[-1:]) if t and not t[-1:].isdigit() else 1
        number = t[:-1] if t and not t[-1:].isdigit() else t
        if unit is None or not number.isdigit():
            raise StudyError(f"delay {text!r} is not a duration like 7d, 36h, 90m or 45s")
        value = int(number) * unit
    if value < 0 or value > 366 * 86400:
        raise StudyError("delay must be between 0 and 366 days")
    return value


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
    # Per-reader case subsets (incomplete design): each reader reads this many main cases
    # (pairs, for the pair task), real and synthetic in the pool's proportions (so a case's
    # expected reads do not depend on its source), the least-read cases first;
    # None = every reader reads every case (fully crossed).
    cases_per_reader: int | None = None
    # Target coverage K: how many readers should read each case (reported by
    # readers.coverage together with the readers still needed); None = no target.
    readers_per_case: int | None = None
    # Wash-out: repeat reads come after all main reads and only once this many seconds
    # have passed since the first read of the same case (0: within the same session).
    repeat_after_s: int = 0
    # None (the default): the order secret is random. An int derives it from the seed, so the
    # study is reproducible -- and predictable by anyone who knows the seed (testing only).
    seed: int | None = None

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
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise StudyError("seed must be an integer")
        for field in ("cases_per_reader", "readers_per_case"):
            v = getattr(self, field)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise StudyError(f"{field.replace('_', ' ')} must be a whole number >= 1")
        if (not isinstance(self.repeat_after_s, int) or isinstance(self.repeat_after_s, bool)
                or self.repeat_after_s < 0):
            raise StudyError("repeat-after delay must be a whole number of seconds >= 0")
        if self.repeat_after_s and not self.repeat_fraction:
            raise StudyError("a repeat-after delay needs repeats (set a repeat fraction > 0)")
        if "pair" in tasks:
            if len(tasks) > 1:
                raise StudyError("the pair task shows two images and cannot be combined with "
                                 "single-image tasks; create a separate study")
            if self.training_cases or self.attention_checks:
                raise StudyError("training cases and attention checks are not available for "
                                 "the pair task yet")
        if self.counterbalance and len(rotated_tasks(tasks)) < 2:
            raise StudyError(
                "counterbalancing has nothing to rotate: the turing question is always asked "
                "first (a prompt must never be seen before the real/synthetic call), so it "
                "needs at least two other tasks (e.g. turing,alignment,quality)")
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
    pair_case_id: Hashable | None = None  # pair task: the right-hand image (case_id: left)
    min_delay_s: int | None = None  # wash-out repeats: delay after the first read


ORDER_SECRET_BYTES = 32  # 256 bits; the only input of the order a reader does not know


def new_order_secret() -> bytes:
    """A study's order secret: 256 random bits from the OS CSPRNG."""
    return secrets.token_bytes(ORDER_SECRET_BYTES)


def seeded_order_secret(seed: int) -> bytes:
    """The order secret of a study created with an explicit seed (reproducible, and so
    predictable by anyone who knows the seed: for tests and demonstrations only)."""
    return hashlib.sha256(f"medisyn-study-order-seed\x1f{int(seed)}".encode("utf-8")).digest()


def _prf(key: bytes, *parts: object) -> bytes:
    """HMAC-SHA256 of the parts under `key`: unpredictable without the key, stable across
    runs and Python versions (unlike hash(), which is salted per process)."""
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("order secret must be at least 128 bits of bytes")
    text = "\x1f".join(str(p) for p in parts)
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _keyed_rng(key: bytes, *parts: object) -> random.Random:
    """A Mersenne Twister seeded with 256 keyed bits (for layout choices; case order itself
    comes from keyed sort keys, `_keyed_sorted`)."""
    return random.Random(int.from_bytes(_prf(key, *parts), "big"))


def _keyed_sorted(key: bytes, label: str, ids: Sequence[Hashable]) -> list[Hashable]:
    """`ids` in the order of a keyed pseudo-random sort key per id: a uniformly random
    permutation for anyone without the key, whatever order `ids` came in."""
    return sorted(ids, key=lambda cid: (_prf(key, label, cid), str(cid)))


def rotated_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """The tasks counterbalancing may move: all of them, except turing, which stays first."""
    return tuple(t for t in tasks if t != "turing")


def task_order(tasks: Sequence[str], reader_index: int, counterbalance: bool) -> tuple[str, ...]:
    """Within-case task order. Turing (if asked) always comes first, so no prompt is seen
    before the real/synthetic call; with counterbalancing the other tasks rotate with the
    reader's ordinal (cyclic Latin square over the remaining positions)."""
    tasks = tuple(tasks)
    first = ("turing",) if "turing" in tasks else ()
    rest = rotated_tasks(tasks)
    if counterbalance and len(rest) >= 2:
        k = reader_index % len(rest)
        rest = rest[k:] + rest[:k]
    return first + rest


def select_training(cases: Sequence[tuple[Hashable, str]], n: int, secret: bytes) -> list[Hashable]:
    """Hold aside `n` training cases from (case_id, source) pairs, alternating real and
    synthetic so the training set shows both classes; the choice is keyed by the study's
    order secret."""
    if n == 0:
        return []
    by_source: dict[str, list[Hashable]] = {}
    for cid, source in cases:
        by_source.setdefault(source, []).append(cid)
    pools = [_keyed_sorted(secret, f"training:{s}", by_source[s]) for s in sorted(by_source)]
    _keyed_rng(secret, "training-pools").shuffle(pools)
    chosen: list[Hashable] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(pool.pop())
    return chosen


def make_pairs(cases: Sequence[tuple[Hashable, str, str, str]], secret: bytes
               ) -> tuple[list[tuple[Hashable, Hashable]], list[Hashable]]:
    """Pairs for the 2AFC task from (case_id, source, modality, group) tuples:
    (real_id, synthetic_id) matched on modality and, where given, on group (the manifest's
    `group` column; e.g. the prompt or patient a synthetic image was made for). Within a
    stratum reals and synthetics are matched in keyed-random order, so pairing carries no
    information; every reader reads the same pairs. Returns (pairs, unpaired case ids)."""
    strata: dict[tuple[str, str], dict[str, list[Hashable]]] = {}
    for cid, source, modality, group in cases:
        strata.setdefault(((modality or "").strip().lower(), (group or "").strip()),
                          {}).setdefault(source, []).append(cid)
    pairs: list[tuple[Hashable, Hashable]] = []
    unpaired: list[Hashable] = []
    for stratum in sorted(strata):
        real = _keyed_sorted(secret, f"pair-real:{stratum}", strata[stratum].get("real", []))
        syn = _keyed_sorted(secret, f"pair-syn:{stratum}", strata[stratum].get("synthetic", []))
        n = min(len(real), len(syn))
        pairs += list(zip(real[:n], syn[:n]))
        unpaired += real[n:] + syn[n:]
    return pairs, unpaired


def pair_unit(real_id: Hashable, synthetic_id: Hashable) -> str:
    """The id under which a pair is ordered and counted (both case ids)."""
    return f"{real_id}\x1f{synthetic_id}"


def choose_subset(units: Sequence[tuple[Hashable, str]], reads: dict[Hashable, int], n: int,
                  secret: bytes, reader_name: str) -> list[Hashable]:
    """A reader's subset of `n` units (cases, or pairs) from (unit_id, source) tuples, in
    the pool's proportions of the sources (pairs are one class), taking the least-read
    units first (`reads`: reads so far, by unit), ties broken by a keyed random order.

    Each source's share (`source_quotas`) keeps the reads per unit equal across sources,
    so the expected number of reads of a case does not depend on whether it is real: a
    fixed half-and-half split of an unbalanced pool would read the smaller source's cases
    more often, and readers comparing their subsets would learn the truth from overlap.
    Invited one after another, R readers with n units each out of M read every unit
    floor(R*n/M) or ceil(R*n/M) times, whatever its source."""
    by_source: dict[str, list[Hashable]] = {}
    for uid, source in units:
        by_source.setdefault(source, []).append(uid)
    key = _prf(secret, "subset", reader_name)
    pools = []
    for source in sorted(by_source):
        keyed = _keyed_sorted(key, f"subset:{source}", by_source[source])
        # stable sort: least-read first, the keyed order among equals
        pools.append((source, sorted(keyed, key=lambda u: reads.get(u, 0))))
    _keyed_rng(key, "subset-pools").shuffle(pools)  # which source wins a tie
    quotas = source_quotas({s: len(p) for s, p in pools},
                           {s: sum(reads.get(u, 0) for u in p) for s, p in pools}, n,
                           [s for s, _ in pools])
    chosen: list[Hashable] = []
    for source, pool in pools:
        chosen += pool[:quotas[source]]
    return chosen


def source_quotas(sizes: dict[str, int], reads: dict[str, int], n: int,
                  tie_order: Sequence[str] = ()) -> dict[str, int]:
    """How many of a reader's `n` units come from each source: one at a time to the
    source whose units would then have the fewest reads per unit ((reads so far + taken +
    1) / size; ties in `tie_order`), never more than a source has. From equal reads this
    is the pool's proportions; over many readers it keeps reads per unit equal across
    sources whatever the rounding."""
    order = list(tie_order) or sorted(sizes)
    taken = {s: 0 for s in order}
    for _ in range(min(n, sum(sizes.values()))):
        open_ = [s for s in order if taken[s] < sizes[s]]
        best = min(open_, key=lambda s: ((reads.get(s, 0) + taken[s] + 1) / sizes[s],
                                         order.index(s)))
        taken[best] += 1
    return taken


def reader_order(
    order_secret: bytes,
    reader_name: str,
    case_ids: Sequence[Hashable],
    options: StudyOptions,
    *,
    training_ids: Sequence[Hashable] = (),
    reader_index: int = 0,
    pairs: Sequence[tuple[Hashable, Hashable]] = (),
) -> list[Slot]:
    """The reader's full session: training slots, then main reads with repeats and
    attention checks interleaved. Deterministic in (order_secret, reader_name, inputs),
    unpredictable without the secret; the order in which `case_ids` are given is ignored.

    Pair task: give `pairs` ((real_id, synthetic_id) tuples, e.g. from `make_pairs`)
    instead of `case_ids`; each main slot then shows both, the side of the synthetic image
    drawn per reader and pair from the order secret (Slot.case_id left, pair_case_id right).
    """
    key = _prf(order_secret, "reader", reader_name)
    rng = _keyed_rng(key, "layout")
    tasks = task_order(options.tasks, reader_index, options.counterbalance)

    training = _keyed_sorted(key, "training", training_ids)
    slots = [Slot("training", cid, tasks) for cid in training]

    if pairs:
        by_unit = {pair_unit(r, s_): (r, s_) for r, s_ in pairs}
        body = []
        for unit in _keyed_sorted(key, "main", list(by_unit)):
            real, syn = by_unit[unit]
            synthetic_left = _prf(key, "side", unit)[0] & 1
            left, right = (syn, real) if synthetic_left else (real, syn)
            body.append(Slot("main", left, tasks, pair_case_id=right))
        main = []
    else:
        main = _keyed_sorted(key, "main", case_ids)
        body = [Slot("main", cid, tasks) for cid in main]
    body = _insert_repeats(body, options.repeat_fraction, rng, options.repeat_after_s)
    # Attention checks use main images only: a training image's truth was just revealed.
    if main:
        body = _insert_attention(body, options.attention_checks, main, tasks[0], rng)
    return slots + body


def _insert_repeats(main: list[Slot], fraction: float, rng: random.Random,
                    delay_s: int = 0) -> list[Slot]:
    n = len(main)
    if fraction <= 0 or n < 2:
        return main
    k = min(n, max(1, round(fraction * n)))
    if delay_s:
        # Wash-out: all repeats after the main block, each available only `delay_s` after
        # the first read of its case (washout.next_available enforces it when serving).
        picks = rng.sample(range(n), k)
        return main + [dataclasses.replace(main[p], kind="repeat", min_delay_s=delay_s)
                       for p in picks]
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
