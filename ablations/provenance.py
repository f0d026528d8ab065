"""Where a table comes from: the code's commit, the date, the machine and the package versions.

Recorded beside every table (``results/NAME/source.json``, key ``provenance``) and named in the
table's notes (table.md, report.html). Versions are read from the installed packages' metadata, so
recording them imports none of them.
"""

from __future__ import annotations

import datetime
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

from pretrain.run.tracking import git_commit
from pretrain.run.version import __version__

REPO = Path(__file__).resolve().parent.parent
# What the numbers depend on: the training stack, the store, the statistics and the launcher.
PACKAGES = ("torch", "torchvision", "numpy", "mlflow", "pandas", "scipy", "matplotlib", "submitit")


def uncommitted_changes(repo: Path = REPO) -> bool | None:
    """Whether tracked files of the checkout differ from its commit (None outside a git checkout)."""
    try:
        r = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(r.stdout.strip()) if r.returncode == 0 else None


def versions() -> dict[str, str | None]:
    """{package: installed version, or None where it is not installed}."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def record() -> dict:
    """The provenance of what is written now: commit, date, host, machine, Python and packages."""
    commit = git_commit()  # the commit a run's MLflow tag carries too
    known = commit != "unknown"
    return {"mochi_bench": __version__, "commit": commit if known else None,
            "uncommitted_changes": uncommitted_changes() if known else None,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": socket.gethostname(), "machine": platform.platform(), "python": platform.python_version(),
            "packages": versions()}


def line(p: dict) -> str:
    """One line of a record, for a table's notes."""
    code = f"commit {p['commit'][:10]}" if p["commit"] else f"MoCHi-Bench {p['mochi_bench']} (no git checkout)"
    if p["uncommitted_changes"]:
        code += " with uncommitted changes"
    packages = ", ".join(f"{k} {v}" for k, v in p["packages"].items() if v)
    return f"made with {code} on {p['host']} ({p['machine']}, Python {p['python']}), {p['date']}; {packages}"
