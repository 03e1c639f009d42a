"""Rewrite imports of names that moved module, in every .py file under the current directory.

    python REWRITE.py            # rewrite in place, list what changed
    python REWRITE.py --check    # list what would change; exit status 1 if anything would

Idempotent: a second run changes nothing. `from OLD import a, b as c` statements (also
parenthesised, multi-line, or inside functions) lose the moved names, which get their own
`from NEW import ...` line at the same indentation; a trailing comment stays on the first line
written. Attribute uses such as `loading.file_sha256(...)` are listed, not rewritten.
"""
from __future__ import annotations

import ast
import pathlib
import re
import sys

# (old module, name) -> (new module, new name)
MOVED = {
    ("studio.cli.model", "decode_rgb"): ("studies.imaging", "decode_rgb"),
    ("model_runtime.finetune", "open_rgb"): ("studies.imaging", "decode_rgb"),
    ("model_runtime.finetune", "file_sha256"): ("model_runtime.provenance", "file_sha256"),
    ("model_runtime.finetune", "Example"): ("model_runtime.training_data", "Example"),
    ("model_runtime.finetune", "read_examples"): ("model_runtime.training_data", "read_examples"),
    ("model_runtime.finetune", "square"): ("model_runtime.training_data", "square"),
    ("model_runtime.finetune", "decode_all"): ("model_runtime.training_data", "decode_all"),
    ("model_runtime.loading", "file_sha256"): ("model_runtime.provenance", "file_sha256"),
    ("model_runtime.loading", "weights_hash"): ("model_runtime.provenance", "weights_hash"),
    ("model_runtime.loading", "denoiser_sha256"): ("model_runtime.provenance", "denoiser_sha256"),
    ("model_runtime.loading", "denoiser_weights_files"): ("model_runtime.provenance", "denoiser_weights_files"),
    ("model_runtime.loading", "HashingStopped"): ("model_runtime.provenance", "HashingStopped"),
    ("model_runtime.loading", "WEIGHT_SUFFIXES"): ("model_runtime.provenance", "WEIGHT_SUFFIXES"),
    ("model_runtime.loading", "_hash_in_background"): ("model_runtime.provenance", "hash_in_background"),
    ("studies.imaging.decode", "MAX_PIXELS"): ("studies.imaging", "MAX_PIXELS"),
    ("studies.imaging.decode", "TOTAL_PIXEL_FACTOR"): ("studies.imaging", "TOTAL_PIXEL_FACTOR"),
    ("studies.imaging.decode", "PERCENTILES"): ("studies.imaging", "PERCENTILES"),
    ("studies.imaging.decode", "REDUCING_GAP"): ("studies.imaging", "REDUCING_GAP"),
    ("studies.imaging.decode", "WINDOW_PRESETS"): ("studies.imaging", "WINDOW_PRESETS"),
    ("studies.imaging.decode", "DEFAULT_PRESET"): ("studies.imaging", "DEFAULT_PRESET"),
    ("studies.imaging.decode", "ImageError"): ("studies.imaging", "ImageError"),
    ("studies.imaging.decode", "DecodedImage"): ("studies.imaging", "DecodedImage"),
    ("studies.imaging.decode", "reduce_factor"): ("studies.imaging", "reduce_factor"),
    ("studies.imaging.decode", "BURNED_IN_MODALITIES"): ("studies.imaging", "BURNED_IN_MODALITIES"),
    ("studies.imaging.decode", "burned_in_reason"): ("studies.imaging", "burned_in_reason"),
    ("model_runtime.batch_job", "PromptsFileError"): ("model_runtime.prompts_file", "PromptsFileError"),
    ("model_runtime.batch_job", "PromptRow"): ("model_runtime.prompts_file", "PromptRow"),
    ("model_runtime.batch_job", "ImageTask"): ("model_runtime.prompts_file", "ImageTask"),
    ("model_runtime.batch_job", "read_prompts_csv"): ("model_runtime.prompts_file", "read_prompts_csv"),
    ("model_runtime.batch_job", "plan_tasks"): ("model_runtime.prompts_file", "plan_tasks"),
    ("model_runtime.batch_job", "plan_chunks"): ("model_runtime.prompts_file", "plan_chunks"),
    ("model_runtime.batch_job", "CSV_COLUMNS"): ("model_runtime.prompts_file", "CSV_COLUMNS"),
    ("model_runtime.batch_job", "ROW_SEED_STRIDE"): ("model_runtime.prompts_file", "ROW_SEED_STRIDE"),
    ("evaluation.images", "IMAGE_SUFFIXES"): ("studies.imaging", "IMAGE_SUFFIXES"),
}
SKIP_DIRS = {".git", ".venv", "venv", "node_modules", "__pycache__"}


def _alias(name: str, asname: str | None) -> str:
    return f"{name} as {asname}" if asname and asname != name else name


def _rewrite(text: str) -> tuple[str, list[str]]:
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits = []  # (first line index, last line index, replacement text)
    notes = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
            continue
        moved = [a for a in node.names if (node.module, a.name) in MOVED]
        if not moved:
            continue
        kept = [a for a in node.names if (node.module, a.name) not in MOVED]
        first, last = node.lineno - 1, node.end_lineno - 1
        indent = lines[first][:node.col_offset]
        tail = lines[last][node.end_col_offset:].rstrip("\n")
        comment = tail.strip() if tail.strip().startswith("#") else ""
        if lines[first][:node.col_offset].strip() or (tail.strip() and not comment):
            notes.append(f"line {node.lineno}: shares its line with other code; fix by hand")
            continue
        groups: dict[str, list[str]] = {}
        for a in moved:
            new_module, new_name = MOVED[(node.module, a.name)]
            groups.setdefault(new_module, []).append(_alias(new_name, a.asname or (a.name if new_name != a.name else None)))
        statements = []
        if kept:
            statements.append(f"from {node.module} import {', '.join(_alias(a.name, a.asname) for a in kept)}")
        statements += [f"from {module} import {', '.join(names)}" for module, names in groups.items()]
        if comment:
            statements[0] += f"  {comment}"
        edits.append((first, last, "".join(f"{indent}{s}\n" for s in statements)))
        notes.append(f"line {node.lineno}: " + "; ".join(s.strip() for s in statements))
    for first, last, replacement in sorted(edits, reverse=True):
        lines[first:last + 1] = [replacement]
    return "".join(lines), notes


def _attribute_uses(text: str) -> list[str]:
    found = []
    for (old, name) in MOVED:
        leaf = old.rsplit(".", 1)[-1]
        for m in re.finditer(rf"\b(?:{re.escape(old)}|{re.escape(leaf)})\.{re.escape(name)}\b", text):
            found.append(f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)} (attribute use, not rewritten: fine while the old module still imports the name, else fix by hand)")
    return found


def main(argv: list[str]) -> int:
    check = "--check" in argv
    changed = 0
    this = pathlib.Path(__file__).resolve()
    for path in sorted(pathlib.Path(".").rglob("*.py")):
        if SKIP_DIRS & set(path.parts) or path.resolve() == this:
            continue
        text = path.read_text(encoding="utf-8")
        try:
            new, notes = _rewrite(text)
        except SyntaxError:
            continue
        for note in notes + _attribute_uses(new):
            print(f"{path}: {note}")
        if new != text:
            changed += 1
            if not check:
                path.write_text(new, encoding="utf-8")
    print(f"{changed} file(s) {'would change' if check else 'rewritten'}")
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
