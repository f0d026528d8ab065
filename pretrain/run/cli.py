"""Shared command-line plumbing: one-line errors with exit code 2, logging set-up."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .errors import UserError
from .rank import global_rank
from .version import __version__


class ArgumentParser(argparse.ArgumentParser):
    """argparse for one of the console scripts (``prog``: its name, ``mochi-grid``), with ``--version``;
    reports a bad flag on one line (no usage dump) and exits with 2."""

    def __init__(self, prog: str, **kwargs):
        super().__init__(prog=prog, **kwargs)
        self.add_argument("--version", action="version", version=f"%(prog)s {__version__} (MoCHi-Bench)",
                          help="print the version and exit")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_tags(items: list[str]) -> dict[str, str]:
    """``--tag KEY=VALUE`` flags as a dict; UserError for one without ``=``."""
    tags = {}
    for t in items:
        k, eq, v = t.partition("=")
        if not eq or not k:
            raise UserError(f"--tag {t!r} is not of the form KEY=VALUE")
        tags[k] = v
    return tags


def setup_logging() -> None:
    """INFO on rank 0, warnings elsewhere; quiet third-party loggers."""
    logging.basicConfig(
        level=logging.INFO if global_rank() == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def execute(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Call ``main``; a UserError becomes one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
