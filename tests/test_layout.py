"""The package boundaries of DEVELOPERS.md: studies and model_runtime never import
studio or each other; studies imports neither gradio nor torch."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "studies": {"studio", "model_runtime", "gradio", "torch", "diffusers", "transformers"},
    "model_runtime": {"studio", "studies", "gradio", "sqlite_utils", "sqlite3"},
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
