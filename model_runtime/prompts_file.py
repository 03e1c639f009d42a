"""A generate job's input: a ``prompts.csv`` (columns and rules in ``model_runtime.batch_job``) ->
validated rows -> one task per image, seeded by (row, k) alone -> the fixed chunks every engine runs."""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib

from model_runtime.errors import ModelRuntimeError

CSV_COLUMNS = ("prompt", "modality", "negative_prompt", "n", "seed", "case_id", "group")
ROW_SEED_STRIDE = 10_000


class PromptsFileError(ModelRuntimeError, ValueError):
    """A malformed prompts.csv; the message names the line and column."""


@dataclasses.dataclass(frozen=True)
class PromptRow:
    row: int                 # 0-based data row
    where: str               # "prompts.csv line 3" for messages
    prompt: str
    modality: str = ""
    negative_prompt: str = ""
    n: int = 1
    seed: int | None = None
    case_id: str = ""
    group: str = ""


@dataclasses.dataclass(frozen=True)
class ImageTask:
    row: int
    k: int
    prompt: str
    negative_prompt: str
    seed: int
    modality: str
    case_id: str
    group: str

    @property
    def rel_path(self) -> str:
        return f"images/r{self.row:05d}_{self.k:03d}.png"

    @property
    def dicom_path(self) -> str:
        return self.rel_path[:-len(".png")] + ".dcm"


def read_prompts_csv(path: str | os.PathLike, *, default_n: int = 1, default_modality: str = "",
                     default_negative: str = "") -> list[PromptRow]:
    """Validated rows of a prompts CSV (see module docstring); PromptsFileError names the line."""
    path = pathlib.Path(path)
    name = path.name
    if not path.is_file():
        raise PromptsFileError(f"prompts file not found: {path}")
    rows: list[PromptRow] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip().lower() for h in next(reader)]
            except StopIteration:
                raise PromptsFileError(f"{name}: the file is empty") from None
            if "prompt" not in header:
                raise PromptsFileError(f"{name}: no 'prompt' column (columns: {', '.join(CSV_COLUMNS)})")
            unknown = [h for h in header if h not in CSV_COLUMNS]
            if unknown:
                raise PromptsFileError(f"{name}: unknown column {unknown[0]!r} (allowed: {', '.join(CSV_COLUMNS)})")
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                raise PromptsFileError(f"{name}: column {dupes[0]!r} appears twice")
            for values in reader:
                if not any(v.strip() for v in values):
                    continue
                where = f"{name} line {reader.line_num}"
                if len(values) != len(header):
                    raise PromptsFileError(f"{where}: expected {len(header)} fields, found {len(values)}")
                rec = dict(zip(header, (v.strip() for v in values)))
                rows.append(_prompt_row(rec, len(rows), where, default_n, default_modality, default_negative))
    except UnicodeDecodeError:
        raise PromptsFileError(f"{name}: not a UTF-8 text file") from None
    except csv.Error as exc:
        raise PromptsFileError(f"{name}: malformed CSV ({exc})") from None
    if not rows:
        raise PromptsFileError(f"{name}: no prompts")
    return rows


def _whole(value: str, where: str, column: str, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise PromptsFileError(f"{where}, column {column!r}: {value!r} is not a whole number") from None
    if not lo <= n <= hi:
        raise PromptsFileError(f"{where}, column {column!r}: {n} is out of range {lo}..{hi}")
    return n


def _prompt_row(rec: dict, index: int, where: str, default_n: int, default_modality: str,
                default_negative: str) -> PromptRow:
    if not rec.get("prompt"):
        raise PromptsFileError(f"{where}, column 'prompt': empty prompt")
    n = _whole(rec["n"], where, "n", 1, ROW_SEED_STRIDE) if rec.get("n") else default_n
    seed = _whole(rec["seed"], where, "seed", 0, 2**62) if rec.get("seed") else None
    return PromptRow(row=index, where=where, prompt=rec["prompt"], modality=rec.get("modality") or default_modality,
                     negative_prompt=rec.get("negative_prompt") or default_negative, n=n, seed=seed,
                     case_id=rec.get("case_id", ""), group=rec.get("group", ""))


def plan_tasks(rows: list[PromptRow], *, seed: int = 0) -> list[ImageTask]:
    """One task per image; seeds from (row, k) only."""
    tasks = []
    for r in rows:
        base = r.seed if r.seed is not None else seed + ROW_SEED_STRIDE * r.row
        for k in range(r.n):
            case_id = r.case_id if (r.n == 1 or not r.case_id) else f"{r.case_id}_{k}"
            tasks.append(ImageTask(row=r.row, k=k, prompt=r.prompt, negative_prompt=r.negative_prompt,
                                   seed=base + k, modality=r.modality, case_id=case_id, group=r.group))
    return tasks


def plan_chunks(tasks: list[ImageTask], batch_size: int) -> list[list[ImageTask]]:
    """Consecutive tasks in groups of ``batch_size``, split where negative-prompt presence changes."""
    chunks: list[list[ImageTask]] = []
    for task in tasks:
        last = chunks[-1] if chunks else None
        if (last is not None and len(last) < batch_size
                and bool(last[0].negative_prompt.strip()) == bool(task.negative_prompt.strip())):
            last.append(task)
        else:
            chunks.append([task])
    return chunks
