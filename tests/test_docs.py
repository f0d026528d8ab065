"""The docs hold together: every relative link in README.md, docs/*.md and the package READMEs points at
a file that exists and, with a #anchor, at a heading that exists there (GitHub's anchors); and
mkdocs.yml's nav lists every docs page. Links that start with / are from the repository root, as
GitHub reads them (mkdocs leaves them alone). ``mkdocs build --strict`` in .ci/run checks the site.
"""

import os
import tomllib
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

LINK = re.compile(r"(?<!!)\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files(root: Path) -> list[Path]:
    """The Markdown this project keeps as documentation: README.md, docs/*.md, */README.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *sorted(root.glob("*/README.md"))]


def prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the text outside fenced code blocks, inline code spans blanked."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: links read as their text, code and emphasis marks dropped,
    lowercase, every character but letters, digits, spaces, '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading anchor of a Markdown text; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
    return out


def broken_links(root: Path, files: list[Path]) -> list[str]:
    """'FILE:LINE: LINK: why' for each relative link of ``files`` whose file or anchor does not exist."""
    problems = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        for n, line in prose(text):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
                    continue
                path, _, anchor = target.partition("#")
                dest = f if not path else root / path.lstrip("/") if path.startswith("/") else f.parent / path
                dest = Path(os.path.normpath(dest))
                where = f"{f.relative_to(root)}:{n}: {target}"
                if not dest.exists():
                    problems.append(f"{where}: no such file")
                elif anchor and (dest.is_dir() or dest.suffix != ".md"):
                    problems.append(f"{where}: an anchor into a file that is not Markdown")
                elif anchor and anchor not in anchors(dest.read_text(encoding="utf-8")):
                    problems.append(f"{where}: no heading with that anchor in {dest.relative_to(root)}")
    return problems


def nav_pages(nav) -> list[str]:
    """The page paths a mkdocs nav lists, nested sections included."""
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [p for item in nav for p in nav_pages(item)]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in nav_pages(v)]
    return []


@pytest.mark.parametrize("heading,expected", [
    ("Ablation grids: `python ablations/grid.py`", "ablation-grids-python-ablationsgridpy"),
    ("Pretraining: `python -m pretrain`", "pretraining-python--m-pretrain"),
    ("Demo: what it measures, and why its recipe differs from ImageNet's",
     "demo-what-it-measures-and-why-its-recipe-differs-from-imagenets"),
    ("The detectron2 path: `python transfer/train_d2.py`", "the-detectron2-path-python-transfertrain_d2py"),
    ("Reading the tables: statistics over seeds", "reading-the-tables-statistics-over-seeds"),
    ("MoCo v2 + **MoCHi**", "moco-v2--mochi"),
])
def test_slug_is_githubs(heading, expected):
    assert slug(heading) == expected


def test_repeated_headings_get_numbered_anchors():
    text = "# Tests\n\n## Run\n\n```\n# not a heading\n```\n\n## Run\n"
    assert anchors(text) == {"tests", "run", "run-1"}


def test_a_broken_file_or_anchor_is_named(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "README.md").write_text("# pkg\n\n## Its rules\n")
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## A section: `x`\n")
    (tmp_path / "README.md").write_text(
        "# Top\n\n"
        "[ok](docs/page.md#a-section-x) [ok](pkg/README.md#its-rules) [ok](#top) [web](https://example.org)\n"
        "[gone](docs/nope.md) [bad anchor](docs/page.md#a-section)\n"
        "`[in code](docs/nope.md)`\n\n"
        "```\n[in a block](docs/nope.md)\n```\n")
    (tmp_path / "docs" / "index.md").write_text("[root-relative](/pkg/README.md#its-rules) [up](../README.md#gone)\n")
    assert broken_links(tmp_path, doc_files(tmp_path)) == [
        "README.md:4: docs/nope.md: no such file",
        "README.md:4: docs/page.md#a-section: no heading with that anchor in docs/page.md",
        "docs/index.md:1: ../README.md#gone: no heading with that anchor in README.md",
    ]


def test_every_link_of_the_docs_resolves():
    assert broken_links(REPO, doc_files(REPO)) == []


def test_mkdocs_nav_lists_every_docs_page():
    cfg = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert cfg["docs_dir"] == "docs"
    listed = nav_pages(cfg["nav"])
    pages = sorted(p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md"))
    assert sorted(listed) == pages, "mkdocs.yml's nav and docs/*.md disagree"
    assert len(listed) == len(set(listed)), "a page listed twice in mkdocs.yml's nav"


def test_the_readme_stays_a_map():
    # The manuals live in docs/; the README is the quick start and the map (issue 22: about 10 KB).
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) < 12_000
    assert "make demo" in readme and "make test" in readme
    linked = {m.split("#")[0] for _, line in prose(readme) for m in LINK.findall(line)}
    assert {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")} <= linked, "a docs page the README does not link"


OLD_SPELLING = re.compile(r"python3? (-m (pretrain|transfer|ablations|slurm)\b|(ablations|transfer|slurm)/\w+\.py)")


def test_the_docs_name_commands_as_installed_and_where_they_live():
    """Commands are spelled as the console scripts (``mochi-grid``). Of the old forms (``python
    ablations/grid.py``, ``python -m pretrain.lincls``, ...) only the one the project's design names
    appears, once, in the README; its table of commands names each command's home as pyproject.toml
    does."""
    found = []
    for f in doc_files(REPO):
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            designed = f == REPO / "README.md" and line.startswith("`python ablations/grid.py`")
            if OLD_SPELLING.search(line) and not designed:
                found.append(f"{f.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    table = {cells[1].strip(" `"): cells[2].strip(" `") for line in (REPO / "README.md").read_text().splitlines()
             if line.startswith("| `mochi-") for cells in [line.split("|")]}
    assert table == {name: target.partition(":")[0].replace(".", "/") + ".py" for name, target in scripts.items()}


def documented_commands() -> list[tuple[str, list[str]]]:
    """("FILE:LINE", argv) of every command line the docs show: the lines of their code blocks that
    start with a console script (continued lines joined, comments dropped), and the README table's
    examples."""
    import shlex

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    found = []
    for f in doc_files(REPO):
        lines = f.read_text(encoding="utf-8").splitlines()
        fenced, n = False, 0
        while n < len(lines):
            line, where = lines[n], f"{f.relative_to(REPO)}:{n + 1}"
            n += 1
            if FENCE.match(line.lstrip()):
                fenced = not fenced
                continue
            if not fenced and line.startswith("| `mochi-"):
                line = line.split("|")[3].strip().strip("`")
            elif not fenced or line.split()[:1] and line.split()[0] not in scripts:
                continue
            while line.rstrip().endswith("\\") and n < len(lines):
                line, n = line.rstrip()[:-1] + " " + lines[n].strip(), n + 1
            argv = shlex.split(line, comments=True)
            if argv and argv[0] in scripts:
                found.append((where, argv))
    return found


def test_every_command_line_the_docs_show_parses_and_the_dry_runs_run(tmp_path, monkeypatch):
    """Each documented command line is accepted by its command's parser as written (a renamed or
    removed flag fails here, naming the page and line); those that need no cluster, dataset or run
    (dry runs, --show-config, --help, --version) run, and end with 0."""
    import subprocess
    import sys

    monkeypatch.setenv("HOME", str(tmp_path))
    commands = documented_commands()
    assert len(commands) > 40
    # The walkthrough's profile, as its reader saves it: ~/mine.yaml (HOME is a fresh folder here)
    walk = (REPO / "docs" / "walkthrough.md").read_text()
    (tmp_path / "mine.yaml").write_text(walk.split("```yaml\n", 1)[1].split("```", 1)[0])
    commands = [(w, [os.path.expanduser(a) if a.startswith("~/") else a for a in argv]) for w, argv in commands]
    code = """
import json, sys, tomllib
from importlib import import_module
from pretrain.run import cli
scripts = tomllib.loads(open("pyproject.toml").read())["project"]["scripts"]
class Parsed(Exception):
    pass
real, depth = cli.ArgumentParser.parse_known_args, [0]
def parse_known_args(self, *a, **kw):
    depth[0] += 1
    try:
        out = real(self, *a, **kw)
    finally:
        depth[0] -= 1
    if depth[0] == 0:
        raise Parsed()
    return out
cli.ArgumentParser.parse_known_args = parse_known_args
bad = []
COMMANDS = json.loads(sys.stdin.read())
# those that need no cluster, no dataset and no run: dry runs, the resolved config, help, version
RUNNABLE = [(w, a) for w, a in COMMANDS if {"--dry-run", "--show-config", "--help", "--version"} & set(a)]
for where, argv in COMMANDS:
    module, _, function = scripts[argv[0]].partition(":")
    main = getattr(import_module(module), "main")
    try:
        main(argv[1:])
        bad.append(f"{where}: {' '.join(argv)}: ran without parsing")
    except Parsed:
        pass
    except SystemExit as e:  # --help and --version stop the parse with 0
        if e.code != 0:
                bad.append(f"{where}: {' '.join(argv)}: exit {e.code}")
cli.ArgumentParser.parse_known_args = real
for where, argv in RUNNABLE:
    module, _, function = scripts[argv[0]].partition(":")
    try:
        code = getattr(import_module(module), "main")(argv[1:])
    except SystemExit as e:
        code = e.code
    except Exception as e:
        code = f"{type(e).__name__}: {e}"
    if code not in (0, None):
        bad.append(f"{where}: {' '.join(argv)}: {code}")
print(json.dumps(bad))
"""
    import json

    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, input=json.dumps(commands), capture_output=True,
                       text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    bad = json.loads(r.stdout.strip().splitlines()[-1])
    assert not bad, "\n".join(bad) + "\n" + r.stderr
