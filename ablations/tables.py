"""``mochi-tables``: rebuild a grid's tables, figures and HTML report from MLflow.

    mochi-tables                          # every grid under runs/grids/
    mochi-tables runs/grids/in100-table1  # one grid
    mochi-tables runs/grids/demo --rows N,s --cols s_prime --metric linear_top1

The grid runs this itself when it finishes; use it after ``--status`` shows every cell done, after
adding seeds, or for a pivot of any swept axes (rows and columns chosen here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ablations import collect, report, spec
from ablations.summary import fmt
from pretrain.run import rundir
from pretrain.run.checkpoint import atomic_write
from pretrain.run.cli import ArgumentParser, execute, setup_logging
from pretrain.run.errors import UserError
from pretrain.run.tracking import default_uri


def separating(seeds: pd.DataFrame, rows: list[str], cols: list[str], axes: list[str]) -> list[str]:
    """The grid's axes, beyond ``rows`` and ``cols``, on which cells that those alone would put in one
    table cell differ (MoCo v2 and HCL both at N = s = s' = 0 differ in method, tau_plus, beta): a
    pivot adds them to its rows, so that two settings never share a cell."""
    key = rows + cols
    d = seeds[seeds["kind"] == "cell"]
    if d.empty or not key:
        return []
    groups = d.groupby(key, dropna=False)
    return [a for a in axes if a not in key and (groups[a].nunique(dropna=False) > 1).any()]


def pivot(seeds: pd.DataFrame, rows: list[str], cols: list[str], metric: str) -> pd.DataFrame:
    """'mean ± sd (n=k)' of ``metric`` over seeds, rows x columns chosen among the grid's axes, each
    sorted by its typed values (0, 32, 128, not "0", "128", "32"). UserError where two cells would
    share a table cell (``separating`` names the axes to add)."""
    d = seeds[seeds["kind"] == "cell"].dropna(subset=[metric])
    if d.empty:
        raise UserError(f"no run of this grid has {metric}")
    shared = [sorted(set(g)) for _, g in d.groupby(rows + cols, dropna=False)["cell"] if g.nunique() > 1]
    if shared:
        raise UserError(f"rows {rows} and columns {cols} put cells of different settings in one table cell "
                        f"({', '.join(shared[0])}); add the axes they differ in")
    g = d.groupby(rows + cols, dropna=False)[metric].agg(["mean", "std", "count"]).reset_index()
    g = g.sort_values(rows + cols, kind="stable")
    g["cell"] = [fmt(m, s, int(n)) for m, s, n in zip(g["mean"], g["std"], g["count"])]
    if not cols:
        header = f"{collect.METRICS[metric].label} (mean ± sd)"
        return g[rows + ["cell"]].rename(columns={"cell": header}).reset_index(drop=True)
    return g.pivot_table(index=rows, columns=cols, values="cell", aggfunc="first", fill_value="").sort_index()


def grid_dirs(paths: list[str]) -> list[Path]:
    """The grid folders named, or every one under runs/grids/; UserError for a folder without grid.json."""
    if paths:
        out = [Path(p) for p in paths]
        for p in out:
            if not (p / rundir.GRID_FILE).is_file():
                raise UserError(f"{p} is not a grid folder (no {rundir.GRID_FILE})")
        return out
    found = sorted(p.parent for p in rundir.GRIDS.glob(f"*/{rundir.GRID_FILE}"))
    if not found:
        raise UserError(f"no grids under {rundir.GRIDS}/; run mochi-grid first or name a grid folder")
    return found


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="mochi-tables", description=__doc__.split("\n\n")[0])
    p.add_argument("grids", nargs="*", help="grid folders (default: every runs/grids/*)")
    p.add_argument("--tracking-uri", help="MLflow store (default: the one the grid used)")
    p.add_argument("--results", help="output folder (default: results/NAME)")
    p.add_argument("--rows", help="pivot: comma list of axes for the rows")
    p.add_argument("--cols", default="", help="pivot: comma list of axes for the columns")
    p.add_argument("--metric", default="linear_top1", help=f"pivot metric: {', '.join(collect.METRICS)}")
    p.add_argument("--baseline", metavar="CELL", help="the cell every row is compared with (default: the grid's)")
    args = p.parse_args(argv)
    if args.metric not in collect.METRICS:
        raise UserError(f"--metric {args.metric!r}: choose one of {', '.join(collect.METRICS)}")
    dirs = grid_dirs(args.grids)
    if args.results and len(dirs) > 1:
        raise UserError("--results needs exactly one grid folder")
    # Every grid and every argument is checked before anything is written.
    grids = [(d, checked(spec.read_grid_file(d / rundir.GRID_FILE)[0], args)) for d in dirs]
    setup_logging()
    code = 0
    for d, (grid, axes, rows, cols) in grids:
        uri = args.tracking_uri or _uri(d)
        out = Path(args.results or Path("results") / grid.name)
        print(f"== {grid.name} ({d})")
        code |= report.report(grid, d, uri, out, complete=False)
        if args.rows:
            runs = collect.runs_frame(uri, grid.grid_id, grid.experiment)
            seeds = collect.per_seed(runs, grid, axes)
            extra = separating(seeds, rows, cols, axes)
            if extra:
                print(f"rows split by {', '.join(extra)} as well: cells that --rows {','.join(rows)} --cols "
                      f"{','.join(cols)} alone would put in one table cell differ there")
            t = pivot(seeds, rows + extra, cols, args.metric)
            stem = f"pivot_{args.metric}_{'-'.join(rows)}" + (f"_by_{'-'.join(cols)}" if cols else "")
            flat = t.reset_index() if cols else t
            atomic_write(out / f"{stem}.md", flat.to_markdown(index=False, disable_numparse=True).encode())
            atomic_write(out / f"{stem}.csv", flat.to_csv(index=False).encode())
            atomic_write(out / f"{stem}.tex", (report.tabular(flat) + "\n").encode())
            print(f"\n{collect.METRICS[args.metric].label} (mean ± sd over seeds, n), rows {rows + extra}, "
                  f"columns {cols}:\n{t.to_string()}")
            print(f"wrote {out}/{stem}.md, .csv, .tex")
    return code


def checked(grid: spec.Grid, args) -> tuple[spec.Grid, list[str], list[str], list[str]]:
    """(grid with its --baseline, its axes, the --rows and --cols axes); UserError for a baseline or an
    axis the grid does not have."""
    if args.baseline:
        if args.baseline not in {c.id for c in grid.cells}:
            raise UserError(f"--baseline {args.baseline!r} is not a cell of grid {grid.name} "
                            f"({', '.join(c.id for c in grid.cells)})")
        grid.baseline = args.baseline
    axes = list(dict.fromkeys(a for c in grid.cells for a in c.values))

    def names(text: str) -> list[str]:
        chosen = [spec.axis(a.strip()).name for a in text.split(",") if a.strip()]
        bad = [a for a in chosen if a not in axes]
        if bad:
            raise UserError(f"--rows/--cols: {bad[0]!r} is not an axis of grid {grid.name} ({', '.join(axes)})")
        return chosen

    return grid, axes, names(args.rows or ""), names(args.cols)


def _uri(grid_dir: Path) -> str:
    """The store the grid logged to (as its first run folder was opened with), else the default
    beside runs/grids."""
    src = grid_dir.resolve()
    folders = rundir.grid_tracked_folders(src)
    return json.loads((folders[0] / rundir.TRACKING_FILE).read_text())["uri"] if folders else default_uri(src.parent)


def entry() -> None:
    """Console-script entry point (``mochi-tables``)."""
    execute(main)


if __name__ == "__main__":
    entry()
