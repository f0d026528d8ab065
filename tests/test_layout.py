"""The architecture as a rule: imports run one way only.

Between packages: ablations -> slurm -> transfer -> pretrain, and only slurm/ imports submitit. Inside
pretrain/: the method's math imports nothing else of the project; run plumbing imports only the
method (the config holds its value types); input pipelines import run; evaluation imports input,
method and run; train.py imports those; tools also import train.py; the commands at the top of
pretrain/ import anything of pretrain. Every import statement counts, also one inside a function.
"""

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

ORDER = ["ablations", "slurm", "transfer", "pretrain"]
# pretrain's parts -> the parts each may import (itself included)
INSIDE = {
    "method": {"method"},
    "run": {"run", "method"},
    "input": {"input", "run"},
    "eval": {"eval", "input", "method", "run"},
    "train": {"eval", "input", "method", "run"},
    "tools": {"tools", "train", "eval", "input", "method", "run"},
}


def module_of(path: Path) -> str:
    """``pretrain/run/config.py`` -> ``pretrain.run.config``."""
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # "from pretrain import lincls" imports the module pretrain.lincls
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return out


def part(name: str) -> str | None:
    """Which part of pretrain a module is: method, run, input, eval, tools, train, or None (a command)."""
    bits = name.split(".")
    if len(bits) >= 2 and bits[1] in INSIDE:
        return bits[1]
    return None


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``module`` against the direction, as 'line: what -> what (why)'."""
    top = module.split(".")[0]
    found = []
    for line, target in imports(module, source, is_package):
        ttop = target.split(".")[0]
        if ttop == "submitit" and top != "slurm":
            found.append(f"{line}: {module} -> submitit (only slurm/ submits)")
        if ttop in ORDER and ttop != top and ORDER.index(ttop) < ORDER.index(top):
            found.append(f"{line}: {module} -> {target} (runs against {' -> '.join(ORDER)})")
        if top == "pretrain" and ttop == "pretrain":
            mine, theirs = part(module), part(target)
            if mine is not None and theirs not in INSIDE[mine]:
                found.append(f"{line}: {module} -> {target} (pretrain.{mine} may import only "
                             f"{', '.join(sorted(INSIDE[mine]))})")
    return found


def project_files() -> list[Path]:
    return sorted(p.relative_to(REPO) for top in ORDER for p in (REPO / top).rglob("*.py"))


def test_every_import_runs_one_way():
    found = []
    for rel in project_files():
        found += [f"{rel}:{v}" for v in violations(module_of(rel), (REPO / rel).read_text(),
                                                     rel.name == "__init__.py")]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module, source, needle", [
    ("pretrain.method.mochi", "from ..run import config", "pretrain.method may import only method"),
    ("pretrain.method.moco", "def f():\n    from pretrain.eval import knn", "pretrain.method may import only"),
    ("pretrain.run.config", "from pretrain.train import train", "pretrain.run may import only"),
    ("pretrain.input.data", "from pretrain.eval.backbone import features", "pretrain.input may import only"),
    ("transfer.convert", "from slurm import launcher", "runs against"),
    ("pretrain.train", "import ablations.spec", "runs against"),
    ("transfer.finetune", "import submitit", "only slurm/ submits"),
])
def test_the_rule_catches_an_import_against_the_direction(module, source, needle):
    assert any(needle in v for v in violations(module, source))


def test_the_rule_lets_the_right_direction_through():
    assert violations("ablations.grid", "from slurm import launcher\nfrom pretrain.run import rundir") == []
    assert violations("pretrain.tools.bench", "from ..train import step\nfrom ..method.mochi import Mixing") == []
    assert violations("pretrain.lincls", "from .eval.lincls import run") == []
    assert violations("slurm.jobs", "import submitit\nfrom transfer import finetune") == []


def module_graph() -> dict[str, set[str]]:
    """{project module: the project modules it imports}, every import statement counted (also one
    inside a function); ``from pkg import name`` is the module pkg.name where that is a module."""
    modules = {module_of(rel) for rel in project_files()}
    graph = {}
    for rel in project_files():
        name = module_of(rel)
        edges = set()
        for _, target in imports(name, (REPO / rel).read_text(), rel.name == "__init__.py"):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_module_imports_itself_through_others():
    """No import cycles, function-level imports included: a cycle means two modules are one room."""
    assert cycles(module_graph()) == []


def test_the_cycle_rule_finds_a_cycle_through_a_function_level_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
