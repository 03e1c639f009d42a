"""docs/runtime.md's API block names real things with their real signatures: every imported
name exists, and each signature written out (a call at the start of a line, `.method(...)`
under its class, `name(...)` in a module's comment) has the code's parameter names, kinds
and literal defaults."""
import ast
import importlib
import inspect
import pathlib
import re

import pytest
from paths import ROOT

DOC = ROOT / "docs" / "runtime.md"


def _api_block() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("## API for the studio")
    return text[start:].split("```python\n", 1)[1].split("```", 1)[0]


def _statements(block: str) -> list[str]:
    """Lines joined until their brackets balance."""
    out, current = [], ""
    for line in block.splitlines():
        current = f"{current} {line.strip()}" if current else line
        if current.count("(") <= current.count(")"):
            out.append(current)
            current = ""
    return out


def _lookup(module: str, name: str):
    """`from module import name`: an attribute, or a submodule."""
    try:
        return getattr(importlib.import_module(module), name)
    except AttributeError:
        try:
            return importlib.import_module(f"{module}.{name}")
        except ImportError:
            return None


def _documented():
    """(where, object, parameters text) for every written-out signature; plus imported names."""
    names: dict[str, object] = {}
    imports, signatures = [], []
    last_class = None
    for stmt in _statements(_api_block()):
        code, _, comment = stmt.partition("#")
        m = re.match(r"from (\S+) import (.+)", code.strip())
        if m:
            for name in (n.strip() for n in m.group(2).split(",")):
                imports.append((m.group(1), name))
                names[name] = _lookup(m.group(1), name)
                if inspect.ismodule(names[name]) and comment.strip():
                    for call in re.finditer(r"\b(\w+)\(([^()]*)\)", comment):
                        signatures.append((f"{name}.{call.group(1)}", getattr(names[name], call.group(1), None),
                                           call.group(2), "partial"))
            continue
        m = re.match(r"(\s*)\.?(\w+)\((.*)\)", code.rstrip(" ;"))
        if not m:
            continue
        indent, name, params = m.group(1), m.group(2), m.group(3)
        params = params.rsplit(")", 1)[0] if ") ->" in code else params
        if code.lstrip().startswith("."):
            signatures.append((f"{last_class.__name__}.{name}", getattr(last_class, name, None), params, "full"))
        else:
            obj = names.get(name)
            signatures.append((name, obj, params, "full"))
            last_class = obj if inspect.isclass(obj) else last_class
    return imports, signatures


IMPORTS, SIGNATURES = _documented()


def test_the_block_documents_something():
    assert len(IMPORTS) >= 15 and sum(kind == "full" for *_, kind in SIGNATURES) >= 7


@pytest.mark.parametrize("module, name", IMPORTS)
def test_every_imported_name_exists(module, name):
    assert _lookup(module, name) is not None, f"{module}.{name}"


def _parse(params: str) -> list[tuple[str, str, object]]:
    """(name, kind, default) of a written parameter list; default is inspect.Parameter.empty when absent."""
    fn = ast.parse(f"def f({params}): pass").body[0].args
    out = []
    positional = fn.posonlyargs + fn.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(fn.defaults)) + list(fn.defaults)
    for a, d in zip(positional, defaults):
        out.append((a.arg, "positional", d))
    if fn.vararg:
        out.append((fn.vararg.arg, "var_positional", inspect.Parameter.empty))
    for a, d in zip(fn.kwonlyargs, fn.kw_defaults):
        out.append((a.arg, "keyword_only", d if d is not None else inspect.Parameter.empty))
    if fn.kwarg:
        out.append((fn.kwarg.arg, "var_keyword", inspect.Parameter.empty))
    return out


_KINDS = {inspect.Parameter.POSITIONAL_ONLY: "positional", inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
          inspect.Parameter.VAR_POSITIONAL: "var_positional", inspect.Parameter.KEYWORD_ONLY: "keyword_only",
          inspect.Parameter.VAR_KEYWORD: "var_keyword"}


@pytest.mark.parametrize("where, obj, params, kind", SIGNATURES, ids=[s[0] for s in SIGNATURES])
def test_documented_signature_matches_the_code(where, obj, params, kind):
    assert obj is not None, f"{where} does not exist"
    if "..." in params:
        return  # an elided list names only what exists, checked by the lookup above
    actual = [p for p in inspect.signature(obj).parameters.values() if p.name != "self"]
    by_name = {p.name: p for p in actual}
    written = _parse(params)
    if kind == "full":
        assert [n for n, *_ in written] == [p.name for p in actual], where
    for name, wkind, default in written:
        assert name in by_name, f"{where}: no parameter {name!r}"
        p = by_name[name]
        if kind == "full":
            assert wkind == _KINDS[p.kind], f"{where}: {name} is {p.kind}"
        if default is not inspect.Parameter.empty and isinstance(default, ast.Constant) \
                and p.default is not inspect.Parameter.empty and isinstance(p.default, (int, float, str, bool)):
            assert default.value == p.default, f"{where}: {name} defaults to {p.default!r}"
        if kind == "full":
            assert (default is inspect.Parameter.empty) == (p.default is inspect.Parameter.empty), \
                f"{where}: {name} {'has no' if default is inspect.Parameter.empty else 'has a'} default in the docs"
