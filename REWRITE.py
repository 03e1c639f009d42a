"""Rewrite imports of names that moved between `studies` modules.

Run at a repository root (idempotent: a second run changes nothing):

    python REWRITE.py [--check] [--only DIR ...] [--skip DIR ...]

It walks studio/, studies/, tests/, benchmarks/, scripts/ (.py) and docs/ plus the top-level
*.md files and rewrites, for every name in MOVES, by name (never by line number):
- `from OLD import a, b as c` (one line, `\\`-continued or parenthesised over several lines):
  each moved name goes to a `from NEW import ...` line of its own module, same indentation;
- `from PARENT import LEAF [as A]`, `import OLD as A` and `import OLD`, with attribute uses
  `A.name` and `setattr(A, "name", ...)` (monkeypatch) rewritten to the new module, whose
  import is added right after the old one (the old one goes once nothing else uses it);
- dotted paths `OLD.name` anywhere (mock/monkeypatch target strings, comments, docs prose),
  and a bare `OLD` module path of a module that no longer exists to its package;
- in docs (.md), a code span that starts with the old module's short name (`` `leaf.name` ``).
`--check` only lists the files it would change (exit 1 if any). A use it cannot rewrite
(a removed module used as an object, or a name not in MOVES) is printed as `WARNING`.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import sys

# old module -> {old name: (new module, new name)}
MOVES: dict[str, dict[str, tuple[str, str]]] = {}


def _add(old: str, new: str, names: str, renames: dict[str, str] | None = None) -> None:
    for name in names.split():
        MOVES.setdefault(old, {})[name] = (new, name)
    for a, b in (renames or {}).items():
        MOVES.setdefault(old, {})[a] = (new, b)


_DB = "studies.storage.database"
_add(_DB, "studies.storage.schema",
     "SCHEMA_VERSION MIGRATIONS utc_now _migration_1 _migration_2 _migration_3 _migration_5 "
     "_migration_6 _migration_8 _migration_9 _migration_10",
     {"_current_version": "current_version"})
_add(_DB, "studies.storage.connections",
     "BUSY_TIMEOUT_MS WRITE_ATTEMPTS WRITE_DEADLINE_S RETRY_SLEEP_S stimuli_dir "
     "check_database_file open_db retry_busy transaction open_readonly reading "
     "release_readers READ_POOL_SIZE _not_sqlite _migrate _refuse_foreign _ensure_wal "
     "_open_readonly _connect_readonly _connect_ro _ReadPool _read_pool _forget_pages",
     {"_begin_immediate": "begin_immediate", "_cannot_open_for_writing": "cannot_open_for_writing",
      "_is_busy": "is_busy"})
_add(_DB, "studies.storage.group_commit",
     "MAX_BATCH MAX_KEPT_WRITERS CHECKPOINT_EVERY JOURNAL_SIZE_LIMIT write commit_together "
     "write_if_writable release_writers checkpoint_truncate _Job _WriteQueue _in_write _queues "
     "_kept _queues_mutex _queue_for _drop_writer _writer_db _wal_bytes _checkpoint_if_due "
     "_checkpoint _commit_batch _run_batch")
_add(_DB, "studies.records", "study_row order_secret log_action _SECRET_COLUMNS")
_add("studies.session", "studies.serving",
     "StimulusUnavailable stimulus_png current_stimulus_png check_stimulus FAULT_ACTION "
     "record_fault _PNG_SIGNATURE _READ_IMAGES _STORED_OF_VIEW _VIEW_MATCH _stimulus_of_read",
     {"_MAX_ID": "MAX_ID"})
_add("studies.session", "studies.monitoring", "ReaderProgress progress Fault faults")
_add("studies.session", "studies.back_rule",
     "CannotGoBack BACK_FORBIDDEN BACK_NOTHING BACK_ONE_STEP BACK_TRAINING BACK_ATTENTION "
     "BACK_WASHOUT BACK_FINAL BACK_TRAINING_QUESTION back_refusal",
     {"_question_back_refusal": "question_back_refusal", "_back_refusal_given": "back_refusal_given"})
_add("studies.readers", "studies.profiles",
     "PROFILE_FIELDS PROFILE_LABELS MAX_PROFILE_VALUE _HIDDEN_CHARS check_profile "
     "study_profile_fields consent_pending record_consent record_consent_declined "
     "profile_label ProfileForm profile_form update_profile")

_add("studies.stats.report", "studies.stats.charts",
     "forest_figure confusion_figure roc_figure likert_figure agreement_figure FIGURE_TITLES "
     "figure_title pair_forest_figure figures")
_add("studies.stats.analysis", "studies.stats.values", "", {"_natural_key": "natural_key", "_as_bool": "as_bool"})
_add("studies.stats.remarks", "studies.stats.values", "", {"_natural_key": "natural_key", "_flag": "as_bool"})

# Modules that no longer exist (every name of theirs is in MOVES).
REMOVED = {_DB}
# Files that became packages whose __init__ keeps the public names (paths in prose only).
PATHS = {"studies/audit.py": "studies/audit/"}

PY_DIRS = ("studio", "studies", "tests", "benchmarks", "scripts")
DOC_DIRS = ("docs",)

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
WARNINGS: list[str] = []


def _split(mod: str) -> tuple[str, str]:
    parent, _, leaf = mod.rpartition(".")
    return parent, leaf


def _parse_names(body: str) -> list[tuple[str, str | None]]:
    body = re.sub(r"#[^\n]*", "", body).replace("\\\n", " ").strip()
    if body.startswith("("):
        body = body[1:body.rindex(")")]
    out = []
    for part in body.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(rf"({_NAME})(?:\s+as\s+({_NAME}))?", part)
        if not m:
            raise ValueError(f"cannot parse import part {part!r}")
        out.append((m.group(1), m.group(2)))
    return out


def _fmt(indent: str, mod: str, names: list[str], comment: str = "") -> str:
    if comment.strip():
        comment = "  " + comment.strip()
    line = f"{indent}from {mod} import {', '.join(names)}{comment}"
    if len(line) <= 100 or len(names) == 1:
        return line
    inner = indent + "    "
    rows, cur = [], inner
    for n in names:
        piece = n + ", "
        if len(cur) + len(piece) > 96 and cur.strip():
            rows.append(cur.rstrip())
            cur = inner
        cur += piece
    rows.append(cur.rstrip())
    return f"{indent}from {mod} import ({comment}\n" + "\n".join(rows) + f"\n{indent})"


# `from X import ...`: single line (maybe `\`-continued) or parenthesised.
def _from_import_re(mod: str) -> re.Pattern:
    return re.compile(
        rf"^(?P<indent>[ \t]*)from[ \t]+{re.escape(mod)}[ \t]+import[ \t]+"
        r"(?P<body>\([^)]*\)|(?:[^\n#]*\\\n)*[^\n#]*)(?P<comment>[ \t]*#[^\n]*)?$",
        re.M)


def _rename_in_file(text: str, old: str, new: str, start: int) -> str:
    """Whole-word rename of a private name imported under its old name (after `start`)."""
    return text[:start] + re.sub(rf"(?<![\w.]){re.escape(old)}\b", new, text[start:])


def rewrite_from_imports(text: str, old_mod: str, moves: dict) -> str:
    pat = _from_import_re(old_mod)
    pos = 0
    while True:
        m = pat.search(text, pos)
        if not m:
            return text
        indent, comment = m.group("indent"), (m.group("comment") or "")
        names = _parse_names(m.group("body"))
        if not any(n in moves for n, _ in names):
            pos = m.end()
            continue
        keep: list[str] = []
        groups: dict[str, list[str]] = {}
        renames: list[tuple[str, str]] = []
        for name, alias in names:
            if name in moves:
                new_mod, new_name = moves[name]
                if alias:
                    item = f"{new_name} as {alias}"
                elif new_name != name and name.startswith("_"):
                    item = new_name
                    renames.append((name, new_name))
                elif new_name != name:
                    item = f"{new_name} as {name}"
                else:
                    item = name
                groups.setdefault(new_mod, []).append(item)
            else:
                if old_mod in REMOVED:
                    WARNINGS.append(f"{name!r} imported from removed {old_mod} is not in MOVES")
                keep.append(f"{name} as {alias}" if alias else name)
        lines = []
        if keep:
            lines.append(_fmt(indent, old_mod, keep, comment))
        noqa = comment if "noqa" in comment else ""
        for new_mod, items in groups.items():
            lines.append(_fmt(indent, new_mod, items, noqa if lines else comment))
        repl = "\n".join(lines)
        text = text[:m.start()] + repl + text[m.end():]
        end = m.start() + len(repl)
        for a, b in renames:
            text = _rename_in_file(text, a, b, end)
        pos = end


def _scope_end(text: str, indent: str, start: int) -> int:
    """End of the block an import at `indent` sits in: the file for a module-level import,
    else the first later line indented less (a function's local import)."""
    if not indent:
        return len(text)
    for m in re.finditer(r"^([ \t]*)\S", text[start:], re.M):
        if len(m.group(1)) < len(indent):
            return start + m.start()
    return len(text)


def _attr_uses(text: str, alias: str, start: int, end: int) -> set[str]:
    part = text[start:end]
    return set(re.findall(rf"(?<![\w.]){re.escape(alias)}\.({_NAME})", part)) | set(
        re.findall(rf"\(\s*{re.escape(alias)}\s*,\s*[\"']({_NAME})[\"']", part))


def _bare_use(text: str, alias: str, start: int, end: int) -> bool:
    return re.search(rf"(?<![\w.\"']){re.escape(alias)}\b(?![.\"'])", text[start:end]) is not None


def _rewrite_attrs(text: str, alias: str, moves: dict, start: int,
                   end: int) -> tuple[str, set[str]]:
    """Rewrite `alias.name` / `(alias, "name"` in text[start:end]; return the new modules used."""
    used: set[str] = set()
    head, tail, rest = text[:start], text[start:end], text[end:]

    def attr(m: re.Match) -> str:
        name = m.group(1)
        if name not in moves:
            return m.group(0)
        new_mod, new_name = moves[name]
        used.add(new_mod)
        return f"{_split(new_mod)[1]}.{new_name}"

    def patch(m: re.Match) -> str:
        name = m.group(3)
        if name not in moves:
            return m.group(0)
        new_mod, new_name = moves[name]
        used.add(new_mod)
        return f"({m.group(1)}{_split(new_mod)[1]}, {m.group(2)}{new_name}{m.group(2)}"

    tail = re.sub(rf"(?<![\w.]){re.escape(alias)}\.({_NAME})\b", attr, tail)
    tail = re.sub(rf"\((\s*){re.escape(alias)}\s*,\s*([\"'])({_NAME})\2", patch, tail)
    return head + tail + rest, used


def _module_import_lines(indent: str, mods: set[str], comment: str) -> list[str]:
    by_parent: dict[str, list[str]] = {}
    for mod in sorted(mods):
        parent, leaf = _split(mod)
        by_parent.setdefault(parent, []).append(leaf)
    return [_fmt(indent, parent, leaves, comment) for parent, leaves in by_parent.items()]


def rewrite_module_imports(text: str, old_mod: str, moves: dict) -> str:
    parent, leaf = _split(old_mod)
    removed = old_mod in REMOVED
    # `from PARENT import LEAF [as A], ...`, last first: a function's local import claims
    # the uses in its block before a module-level one claims the rest.
    for m in reversed(list(_from_import_re(parent).finditer(text))):
        names = _parse_names(m.group("body"))
        hit = [(n, a) for n, a in names if n == leaf]
        if not hit:
            continue
        alias = hit[0][1] or leaf
        indent, comment = m.group("indent"), (m.group("comment") or "")
        end = _scope_end(text, indent, m.end())
        text, used = _rewrite_attrs(text, alias, moves, m.end(), end)
        end = _scope_end(text, indent, m.end())
        still = _attr_uses(text, alias, m.end(), end)
        bare = _bare_use(text, alias, m.end(), end)
        if removed and still:
            WARNINGS.append(f"{alias} ({old_mod}) still used for {sorted(still)}")
        drop = removed or (not still and not bare and bool(used))
        kept = [f"{n} as {a}" if a else n for n, a in names if not (n == leaf and drop)]
        used -= {f"{parent}.{n}" for n, a in names if a is None}
        if kept:  # a sibling module joins the line that stays
            same = {m for m in used if _split(m)[0] == parent}
            kept = sorted(kept + [_split(m)[1] for m in same], key=str.lower)
            used -= same
        lines = [_fmt(indent, parent, kept, comment)] if kept else []
        noqa = comment if "noqa" in comment else ""
        lines += _module_import_lines(indent, used, noqa if lines else comment)
        text = text[:m.start()] + "\n".join(lines) + text[m.end():]
    # `import OLD as A`
    pat = re.compile(rf"^(?P<indent>[ \t]*)import[ \t]+{re.escape(old_mod)}[ \t]+as[ \t]+"
                     rf"(?P<alias>{_NAME})(?P<comment>[ \t]*#[^\n]*)?$", re.M)
    for m in reversed(list(pat.finditer(text))):
        alias, indent, comment = m.group("alias"), m.group("indent"), m.group("comment") or ""
        end = _scope_end(text, indent, m.end())
        text, used = _rewrite_attrs(text, alias, moves, m.end(), end)
        end = _scope_end(text, indent, m.end())
        still = _attr_uses(text, alias, m.end(), end)
        bare = _bare_use(text, alias, m.end(), end)
        if removed and still:
            WARNINGS.append(f"{alias} ({old_mod}) still used for {sorted(still)}")
        keep = not removed and (still or bare or not used)
        lines = [m.group(0)] if keep else []
        lines += _module_import_lines(indent, used, comment if not lines else "")
        text = text[:m.start()] + "\n".join(lines) + text[m.end():]
    # `import OLD` (uses are dotted, rewritten by rewrite_dotted)
    pat = re.compile(rf"^(?P<indent>[ \t]*)import[ \t]+{re.escape(old_mod)}(?P<comment>[ \t]*#[^\n]*)?$",
                     re.M)
    for m in reversed(list(pat.finditer(text))):
        used = {moves[n][0] for n in re.findall(rf"{re.escape(old_mod)}\.({_NAME})", text)
                if n in moves}
        lines = [] if removed else [m.group(0)]
        lines += [f"{m.group('indent')}import {mod}" for mod in sorted(used)]
        text = text[:m.start()] + "\n".join(lines) + text[m.end():]
    return text


def rewrite_dotted(text: str, old_mod: str, moves: dict, *, path_only: bool = False) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name in moves:
            new_mod, new_name = moves[name]
            return f"{new_mod}.{new_name}"
        return m.group(0)

    text = re.sub(rf"(?<![\w.]){re.escape(old_mod)}\.({_NAME})\b", sub, text)
    if old_mod in REMOVED:
        # A bare mention of a module that no longer exists: its package.
        text = re.sub(rf"(?<![\w.]){re.escape(old_mod)}\b(?!\.\w)", _split(old_mod)[0], text)
        text = text.replace(old_mod.replace(".", "/") + ".py", _split(old_mod)[0].replace(".", "/") + "/")
    return text


def rewrite_py(text: str) -> str:
    for old_mod, moves in MOVES.items():
        text = rewrite_from_imports(text, old_mod, moves)
        text = rewrite_module_imports(text, old_mod, moves)
        text = rewrite_dotted(text, old_mod, moves)
    return text


def _short_in_code(text: str, old_mod: str, moves: dict) -> str:
    """`leaf.name` at the start of a code span (docs prose) for a moved name."""
    leaf = _split(old_mod)[1]

    def sub(m: re.Match) -> str:
        new_mod, new_name = moves[m.group(1)]
        return f"`{_split(new_mod)[1]}.{new_name}"

    names = "|".join(sorted(map(re.escape, moves), key=len, reverse=True))
    return re.sub(rf"`{re.escape(leaf)}\.({names})\b", sub, text)


def rewrite_doc(text: str) -> str:
    for old_mod, moves in MOVES.items():
        text = rewrite_dotted(text, old_mod, moves)
        text = _short_in_code(text, old_mod, moves)
    for old, new in PATHS.items():
        text = re.sub(rf"(?<![\w/]){re.escape(old)}", new, text)
    return text


def files(root: pathlib.Path, only: list[str], skip: list[str]):
    dirs = only or list(PY_DIRS + DOC_DIRS)
    for d in dirs:
        if d in skip:
            continue
        base = root / d
        if not base.exists():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.suffix in (".py", ".md") and ".venv" not in p.parts \
                    and p.name != "REWRITE.py":
                yield p
    if not only:
        yield from sorted(root.glob("*.md"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--only", nargs="*", default=[])
    ap.add_argument("--skip", nargs="*", default=[])
    ap.add_argument("--root", default=".")
    args = ap.parse_args(argv)
    root = pathlib.Path(args.root)
    changed = []
    for p in files(root, args.only, args.skip):
        text = p.read_text(encoding="utf-8")
        new = rewrite_py(text) if p.suffix == ".py" else rewrite_doc(text)
        if new != text:
            changed.append(p)
            if not args.check:
                p.write_text(new, encoding="utf-8")
    for p in changed:
        print(("would rewrite " if args.check else "rewrote ") + str(p.relative_to(root)))
    for w in dict.fromkeys(WARNINGS):
        print("WARNING", w, file=sys.stderr)
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
