"""Every command is a console script (pyproject.toml [project.scripts]) whose home is one module that
is a command only, named after it at the top of its package; ``python ablations/grid.py``, the
spelling the project's design names, still runs; every ``--help`` parses without torch."""

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
# The names the manual uses, and where each command lives.
HOMES = {
    "mochi-pretrain": "pretrain.__main__:entry",
    "mochi-knn": "pretrain.knn:entry",
    "mochi-lincls": "pretrain.lincls:entry",
    "mochi-grid": "ablations.grid:entry",
    "mochi-tables": "ablations.tables:entry",
    "mochi-transfer": "transfer.__main__:entry",
    "mochi-transfer-d2": "transfer.transfer_d2:entry",
    "mochi-bench": "pretrain.bench:entry",
    "mochi-bench-data": "pretrain.bench_data:entry",
    "mochi-jpegs": "pretrain.jpegs:entry",
    "mochi-pipeline": "pretrain.pipeline:entry",
    "mochi-convert": "transfer.convert:entry",
    "mochi-submit-transfer": "slurm.submit_transfer:entry",
}
# The old spellings the project's design names (the others are gone: docs/commands.md's table).
OLD = {"ablations/grid.py": [sys.executable, "ablations/grid.py"]}


def help_of(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """``COMMAND --help`` for each command, all at once (each import takes seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([*argv, "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=min(6, len(commands))) as pool:
        return dict(zip(commands, pool.map(run, commands.values())))


def failures(results: dict[str, subprocess.CompletedProcess]) -> list[str]:
    """'name: exit code, stderr' of each result that did not print a usage and exit 0."""
    return [f"{name}: exit {r.returncode}\n{r.stderr}" for name, r in results.items()
            if r.returncode != 0 or "usage:" not in r.stdout]


def test_every_command_is_a_console_script_in_its_home():
    assert SCRIPTS == HOMES


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_console_script_names_a_function_that_prints_its_help(name, monkeypatch, capsys):
    module, _, function = SCRIPTS[name].partition(":")
    entry = getattr(import_module(module), function)
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as stop:
        entry()
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out


def test_only_the_commands_are_commands():
    """A command's entry point lives in its home, nowhere else, and no module imports a command's
    home. Parsers are built in the homes, and beside the settings of the stages a grid runs
    (``pretrain.eval.probe``, ``transfer.stages``): a grid's ``--lincls`` and ``--transfer`` take
    those command lines."""
    homes = {target.partition(":")[0] for target in SCRIPTS.values()}
    settings = {"pretrain.eval.probe", "transfer.stages", "pretrain.run.cli"}
    found = []
    for package in ("pretrain", "ablations", "transfer", "slurm"):
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            tree = ast.parse(path.read_text())
            names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            builds = "ArgumentParser(" in path.read_text()
            if module not in homes and ("entry" in names or (builds and module not in settings)):
                found.append(f"{module} defines a command line")
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    base = module.split(".")[: -node.level or None] if path.name != "__init__.py" or not node.level \
                        else module.split(".")[: 1 - node.level or None]
                    origin = ".".join([*base, node.module] if node.level and node.module else
                                      base if node.level else [node.module])
                    targets = [origin, *(f"{origin}.{a.name}" for a in node.names)]
                    hit = sorted(set(targets) & (homes - {module}))
                    if hit:
                        found.append(f"{module} imports the command {hit[0]}")
    assert not found, found


def test_every_old_spelling_still_runs():
    found = failures(help_of(OLD))
    assert not found, "\n".join(found)


def test_the_installed_console_scripts_run():
    """The scripts ``pip install -e .`` put beside this interpreter (skipped for those not installed yet)."""
    bin_dir = str(Path(sys.executable).parent)
    installed = {name: [path] for name in SCRIPTS if (path := shutil.which(name, path=bin_dir))}
    found = failures(help_of(installed)) if installed else []
    assert not found, "\n".join(found)
    missing = sorted(set(SCRIPTS) - set(installed))
    if missing:
        pytest.skip(f"not installed in {bin_dir} (run pip install -e . again): {', '.join(missing)}")


def test_every_command_parses_without_torch():
    """Every command's home (its ``--help``, its refusals of bad input, a grid's dry run, status and
    tables) loads without torch, torchvision or MLflow: importing those costs seconds per command."""
    homes = sorted({target.partition(":")[0] for target in SCRIPTS.values()})
    code = (f"import sys, {', '.join(homes)}\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def parser_of(name: str, monkeypatch, capsys):
    """The parser ``NAME --help`` builds (caught as it parses), and the help it printed."""
    from pretrain.run import cli

    made = []
    real = cli.ArgumentParser.parse_known_args  # what parse_args and parse_intermixed_args call

    def parse_known_args(self, *a, **kw):
        made.append(self)
        return real(self, *a, **kw)

    monkeypatch.setattr(cli.ArgumentParser, "parse_known_args", parse_known_args)
    module, _, function = SCRIPTS[name].partition(":")
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    with pytest.raises(SystemExit) as stop:
        getattr(import_module(module), function)()
    assert stop.value.code == 0
    return made[0], capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_command_is_named_as_installed_and_explains_every_option(name, monkeypatch, capsys):
    """``--help`` names the console script (not ``python -m ...``), and every option and argument
    says what it is; ``--version`` answers."""
    import argparse

    parser, out = parser_of(name, monkeypatch, capsys)
    assert out.startswith(f"usage: {name} "), out.splitlines()[0]
    parsers = [parser, *(sub for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                         for sub in a.choices.values())]
    silent = [f"{p.prog} {a.option_strings[0] if a.option_strings else a.dest}" for p in parsers for a in p._actions
              if not isinstance(a, argparse._SubParsersAction) and (a.help is None or not a.help.strip())]
    assert not silent, f"options without help: {silent}"
    assert any(isinstance(a, argparse._VersionAction) for a in parser._actions)


def test_the_commands_that_submit_jobs_take_one_cluster_flag(monkeypatch, capsys):
    """mochi-grid and mochi-submit-transfer declare --cluster and --profile in one place: same
    choices, same default cluster, a profile default each names."""
    flags = {}
    for name in ("mochi-grid", "mochi-submit-transfer"):
        parser, _ = parser_of(name, monkeypatch, capsys)
        actions = {a.dest: a for a in parser._actions}
        flags[name] = (actions["cluster"].choices, actions["cluster"].default, actions["profile"].default)
        assert "(default: " in actions["profile"].help
    assert flags["mochi-grid"] == flags["mochi-submit-transfer"] == (("auto", "slurm", "local", "debug"), "auto", None)
