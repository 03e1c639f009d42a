"""The map stays true: every relative link in the README and docs/ resolves (anchors
included), the README stays a front door, its layout table names exactly the folders
that exist, and code comments point at nothing a reader of the repository cannot open."""
import ast
import fnmatch
import io
import pathlib
import re
import subprocess
import tokenize

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES_WITH_SUBPACKAGES = ("studies", "studio")

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> str:
    """The text without fenced blocks and code spans: a link shown as code is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    return LINK.findall(prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_link_extraction_skips_code_and_finds_images_and_anchors():
    text = "see [a](docs/a.md#x-y) and ![pic](img/p.png)\n`[not](a.md)`\n```\n[no](b.md)\n```\n"
    assert links(text) == ["docs/a.md#x-y", "img/p.png"]
    assert slug("Admin credentials (`studio/web/auth.py`)") == "admin-credentials-studiowebauthpy"
    assert slug("Novelty / memorisation — `medisyn eval novelty`") == "novelty--memorisation--medisyn-eval-novelty"
    assert slug("5. Threat model: who can learn what") == "5-threat-model-who-can-learn-what"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for target in links(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading with that anchor")
    assert broken == [], "\n".join(broken)


def test_docs_index_lists_every_document():
    index = {t.partition("#")[0] for t in links((ROOT / "docs" / "README.md").read_text(encoding="utf-8"))}
    documents = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert sorted(documents - index) == []


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 200, f"README has {len(lines)} lines; reference material belongs in docs/"


def ignored_names() -> list[str]:
    patterns = []
    for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            patterns.append(line.strip("/"))
    return patterns


def top_level_folders() -> set[str]:
    """Folders holding files under version control; outside a git checkout, the folders
    .gitignore does not exclude (so outputs of a local run, such as data/, do not count)."""
    try:
        run = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        tracked = run.stdout.splitlines() if run.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        tracked = []
    if tracked:
        return {f.split("/", 1)[0] + "/" for f in tracked
                if "/" in f and not f.startswith(".") and (ROOT / f.split("/", 1)[0]).is_dir()}
    ignored = ignored_names()
    return {p.name + "/" for p in ROOT.iterdir()
            if p.is_dir() and not p.name.startswith(".")
            and not any(fnmatch.fnmatch(p.name, pat) for pat in ignored)}


def folders_that_exist() -> set[str]:
    top = top_level_folders()
    subs = {f"{pkg}/{p.name}/" for pkg in PACKAGES_WITH_SUBPACKAGES
            for p in (ROOT / pkg).iterdir() if (p / "__init__.py").is_file()}
    return top | subs


def layout_table() -> set[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return {m.group(1) for line in rows if (m := re.match(r"\|\s*`([^`]+/)`\s*\|", line))}


def test_readme_layout_table_matches_the_tree():
    named, there = layout_table(), folders_that_exist()
    assert "studies/imaging/" in there and "studio/cli/" in there   # the parser sees the tree
    assert {"missing from the table": sorted(there - named),
            "named but not there": sorted(named - there)} == {"missing from the table": [],
                                                              "named but not there": []}


# A reference to this project's tracker (the word issue or a hash sign before a number) or to
# a document outside the repository means nothing to someone reading a clone. Upstream trackers named with their
# project ("diffusers #1606") can be looked up, so they are allowed.
UPSTREAM = re.compile(r"\b(?:[\w.-]+/)?(?:diffusers|transformers|accelerate|peft|torch|pytorch|gradio|"
                      r"pydicom|nibabel|numpy|scipy|statsmodels|pandas|ray|playwright|fastapi|"
                      r"starlette|uvicorn|click|pillow)\s*#\d+(?:\s*[,/]\s*#\d+)*", re.I)
TRACKER = re.compile(r"\bissues?\s*#?\d+|(?<![\w&/#])#\d+\b", re.I)
OUTSIDE = re.compile(r"DEVELOPERS\.md|\.\./shared|/work/shared|HELPERS\.md|GUIDE\.md|LAYOUT\d*\.md")
CODE_FOLDERS = ("studies", "studio", "model_runtime", "evaluation", "tests", "benchmarks", "scripts")


def comments_and_docstrings(path: pathlib.Path):
    source = path.read_text(encoding="utf-8")
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc is not None:
                yield node.body[0].lineno, doc


def stale_references(text: str) -> list[str]:
    text = UPSTREAM.sub("", text)
    return [m.group(0) for m in TRACKER.finditer(text)] + [m.group(0) for m in OUTSIDE.finditer(text)]


def test_reference_finder():
    assert stale_references("# see issue 12 item 3") == ["issue 12"]
    assert stale_references("fixed in #12, per DEVELOPERS.md") == ["#12", "DEVELOPERS.md"]
    assert stale_references("diffusers #1606/#5749: shared schedulers") == []
    assert stale_references("colour #fff; 3 issues remain; C# 12") == []


def test_no_comment_cites_the_tracker_or_a_document_outside_the_repository():
    offenders = []
    for folder in CODE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, text in comments_and_docstrings(path):
                offenders += [f"{path.relative_to(ROOT)}:{line}: {ref}" for ref in stale_references(text)]
    assert offenders == [], "\n".join(offenders)


DOC_TRACKER = re.compile(r"\bissues?\s*#?\d+|\bGUIDE(?:\s*§|\.md)", re.I)


def test_no_document_cites_the_tracker_or_a_document_outside_the_repository():
    offenders = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            refs = [m.group(0) for m in DOC_TRACKER.finditer(line)] + [m.group(0) for m in OUTSIDE.finditer(line)]
            offenders += [f"{doc.relative_to(ROOT)}:{n}: {ref}" for ref in refs]
    assert offenders == [], "\n".join(offenders)
