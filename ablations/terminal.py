"""What a grid's commands print, fitted to the terminal's width (``COLUMNS``, else 120): the tables
as ``blocks`` (one per metric, short headers, a legend under each), messages wrapped (``say``).

A table still wider than the terminal (long reference names) is printed row by row, one
``column: value`` per line.
"""

from __future__ import annotations

import shutil
import textwrap

import pandas as pd

from ablations.blocks import MECHANISM_TITLE, Block, marked

DEFAULT_WIDTH = 120


def width() -> int:
    """The terminal's width: ``COLUMNS`` where set (as ``shutil`` reads it), else the terminal's, else 120."""
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns


def wrap(text: str, cols: int, first: str = "", rest: str = "") -> list[str]:
    """``text`` wrapped to ``cols`` characters, ``first`` before its first line and ``rest`` before the others."""
    return textwrap.wrap(text, cols, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False) or [first]


def render(t: pd.DataFrame, cols: int) -> list[str]:
    """The table's lines, left-aligned; row by row (``column: value``) where it is wider than ``cols``."""
    cells = t.astype(str)
    widths = {c: max(len(str(c)), *(len(v) for v in cells[c])) for c in cells.columns}
    lines = ["  ".join(str(c).ljust(widths[c]) for c in cells.columns).rstrip()]
    lines += ["  ".join(v.ljust(widths[c]) for c, v in zip(cells.columns, row)).rstrip()
              for row in cells.itertuples(index=False)]
    if max(map(len, lines)) <= cols:
        return lines
    out = []
    for row in cells.itertuples(index=False):
        out += wrap(row[0], cols)
        for c, v in zip(cells.columns[1:], row[1:]):
            if v:
                out += wrap(f"{c}: {v}", cols, "    ", "      ")
    return out


def tables(blocks: list[Block], cols: int | None = None) -> list[str]:
    """The blocks as text: each heading, its rows and its legend; the mechanism's under one title."""
    cols = cols or width()
    out: list[str] = []
    for b in blocks:
        if b.first_of_mechanism:
            out += wrap(MECHANISM_TITLE, cols) + [""]
        out += wrap(b.heading, cols) + render(marked(b, lambda mean: f"{mean} *"), cols)
        out += [line for text in b.legend for line in wrap(text, cols, "  ", "    ")] + [""]
    return out


def paragraphs(items: list[str], cols: int | None = None, bullet: str = "- ") -> list[str]:
    """Sentences as wrapped bullets."""
    cols = cols or width()
    return [line for text in items for line in wrap(text, cols, bullet, " " * len(bullet))]


def say(text: str, flush: bool = False) -> None:
    """Print a message wrapped to the terminal: each of its lines keeps its indentation, and the
    lines it wraps into are indented two spaces more. Errors are printed as they are, to stderr: one
    line, whole, as scripts and the tests match them."""
    cols = width()
    out = []
    for line in str(text).splitlines() or [""]:
        lead = line[: len(line) - len(line.lstrip())]
        out += wrap(line.strip(), cols, lead, lead + "  ") if len(line) > cols else [line]
    print("\n".join(out), flush=flush)
