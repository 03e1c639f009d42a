"""The layout is the dependency graph: import-linter's contracts (pyproject.toml) hold, no
two modules import each other (directly or round a loop), no module reaches into another's
`_private` names, and studio holds no SQL and writes no CSV (those belong to the library it
wraps). See docs/architecture.md."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "studies": {"studio", "model_runtime", "gradio", "torch", "diffusers", "transformers"},
    "model_runtime": {"studio", "gradio", "sqlite_utils", "sqlite3"},
    "evaluation": {"studio", "gradio", "sqlite_utils", "sqlite3", "model_runtime"},
}


def imported_roots(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_boundaries(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    bad = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package])
        for f in files
        if imported_roots(f) & FORBIDDEN[package]
    }
    assert bad == {}


def test_cli_help_lists_groups():
    from click.testing import CliRunner

    from studio.cli import cli

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = set(result.output.split("Commands:")[1].split())
    assert {"study", "model", "generate", "studio", "demo", "eval"} <= listed
    study_help = CliRunner().invoke(cli, ["study", "--help"]).output.split("Commands:")[1].split()
    assert {"create", "add", "audit", "invite", "progress", "export", "analyze", "power"} <= set(study_help)


def test_console_script_is_declared():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["medisyn"] == "studio.cli:main"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert len(commands) == 2
    start, test = commands
    assert "studio" in start and "test" in test
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))]
    assert ci == [test]


def test_nothing_reads_a_shared_folder_beside_the_repository():
    """A clone anywhere passes its own tests: no code or test reaches outside the repository
    for data (the oracles the statistics tests use live in tests/data/oracles)."""
    offenders = []
    for f in sorted(ROOT.rglob("*")):
        rel = f.relative_to(ROOT)
        if rel.parts[0] in {".git", ".venv"} or f.suffix not in {".py", ".sh", ".toml"}:
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        if "../shared" in text or '"shared" / "oracles"' in text or "parents[2]" in text:
            offenders.append(str(rel))
    offenders = [o for o in offenders if o != "tests/test_layout.py"]
    assert offenders == []
    oracles = ROOT / "tests" / "data" / "oracles"
    csvs = sorted(p.name for p in oracles.glob("*.csv"))
    assert csvs and all(name in (oracles / "README.md").read_text(encoding="utf-8") for name in csvs)


PACKAGES = ("studio", "studies", "model_runtime", "evaluation")


def test_import_contracts_hold():
    """`lint-imports` (import-linter) on pyproject.toml's contracts; its report on failure."""
    import subprocess
    import sys

    exe = pathlib.Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, pathlib.Path]:
    return {_module_name(f): f for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: pathlib.Path, modules: dict) -> set[str]:
    """Project modules `path` imports anywhere in its body (lazy imports count: a loop broken
    by a function-level import is still a loop)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in modules:
                out.add(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        visit(v) if v not in index else None
    return out


def test_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules():
    modules = _project_modules()
    graph = {}
    for name, path in modules.items():
        # a package's __init__ importing its own children is how a package states its API
        graph[name] = {m for m in _imports(path, modules)
                       if m != name and not m.startswith(name + ".")}
    assert _cycles(graph) == []


def test_no_module_uses_another_modules_private_names():
    modules = _project_modules()
    bad = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in modules and node.module != name:
                bad += [f"{name}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []


SQL = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "CREATE TABLE", "PRAGMA ")


def test_studio_holds_no_sql_and_writes_no_csv():
    """The studio and the CLI call the same library function, so the SQL and the CSV
    writers live in the library; studio only presents."""
    bad = []
    for path in sorted((ROOT / "studio").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.upper()
                if any(text.lstrip().startswith(k) for k in SQL) and (" FROM " in text or "INTO" in text or "SET" in text or "PRAGMA" in text):
                    bad.append(f"{rel}:{node.lineno} SQL")
            elif isinstance(node, ast.Attribute) and node.attr in {"to_csv", "writer", "DictWriter", "execute", "executemany"}:
                bad.append(f"{rel}:{node.lineno} .{node.attr}")
    assert bad == []
