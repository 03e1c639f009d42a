"""The long table's vocabulary, once: the questions (tasks) with their scales, and the columns
of the long and iMRMC tables.

The study flow fills these (`studies.design`, `studies.export`); the statistics read them.
Pure data and a few pure functions, so `studies.stats` needs nothing else of the project.
"""
from __future__ import annotations

import dataclasses
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
        """What goes in responses.answer: the binary call for turing, the side called
        synthetic for pair, else the value."""
        if self.name == "turing":
            return turing_call(value)
        if self.name == "pair":
            return pair_call(value)
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
# Paired two-alternative forced choice: a real and a synthetic image side by side (the
# left one is the assignment's case, the right one its pair_case). The side gives the
# call, the word the confidence, as on the turing scale: 1-3 "left is synthetic".
PAIR = Task(
    "pair",
    "Which image is synthetic?",
    (
        (1, "definitely left"), (2, "probably left"), (3, "possibly left"),
        (4, "possibly right"), (5, "probably right"), (6, "definitely right"),
    ),
    shows_prompt=False,
    help="One of the two images is synthetic: the side gives your call, the word your "
         "confidence.",
)
TASKS: dict[str, Task] = {t.name: t for t in (TURING, ALIGNMENT, QUALITY, PAIR)}


def turing_call(rating: int) -> str:
    """Binary call of a 6-point turing rating: 1-3 real, 4-6 synthetic."""
    return "real" if rating <= 3 else "synthetic"


def pair_call(rating: int) -> str:
    """Side called synthetic by a 6-point pair rating: 1-3 left, 4-6 right."""
    return "left" if rating <= 3 else "right"


LONG_COLUMNS = ["study", "reader", "case", "task", "source", "generator", "modality", "prompt",
                "truth", "response", "rating", "duration_ms", "answered_at", "training",
                "repeat", "group", "duration_flagged", "pair_case", "specialty",
                "years_experience", "comment", "non_diagnostic"]
IMRMC_COLUMNS = ["readerID", "caseID", "modalityID", "score"]
