"""A grid's report: sync its runs, then write its tables (Markdown, CSV, LaTeX), per-seed values,
figures and one HTML page into the results folder, and print the table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ablations import figures, spec
from ablations.collect import close_parent, per_seed, runs_frame, sync_grid
from ablations.summary import load_reference, summarize, table
from pretrain.run.checkpoint import atomic_write
from pretrain.run.errors import UserError

log = logging.getLogger(__name__)
SOURCE_FILE = "source.json"  # which grid a results folder holds


def table_axes(grid: spec.Grid) -> list[str]:
    """The axes a grid's tables show: its table rows, then every other axis its cells set."""
    return list(dict.fromkeys([*grid.table_rows, *(a for c in grid.cells for a in c.values)]))


def html_report(title: str, t: pd.DataFrame, figures: list[Path], notes: list[str], path: Path) -> None:
    """One self-contained page: the table and every figure (PNG files beside it)."""
    import html

    body = t.to_html(index=False, escape=True).replace("**", "")
    bold = {f"<td>{c.strip('*')}</td>" for c in t.astype(str).to_numpy().ravel() if c.startswith("**")}
    for cell in bold:
        body = body.replace(cell, cell.replace("<td>", "<td><b>").replace("</td>", "</b></td>"))
    imgs = "\n".join(f'<figure><img src="{f.name}" alt="{html.escape(f.stem)}"><figcaption>{html.escape(f.stem)}'
                     f'</figcaption></figure>' for f in figures if f.suffix == ".png")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:100%}} figure{{margin:1.5em 0}}</style>
</head><body><h1>{html.escape(title)}</h1>{body}
<ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>{imgs}</body></html>"""
    atomic_write(path, page.encode())


def report(grid: spec.Grid, grid_dir: Path, uri: str, results_dir: Path, complete: bool = True) -> int:
    """Sync (and close the grid's parent run if ``complete``), then write the tables
    (``table.{md,csv,tex}``, ``per_seed.csv``), the figures (PNG + PDF) and ``report.html`` into
    ``results_dir``; print the table."""
    from mlflow.tracking import MlflowClient

    results_dir = Path(results_dir)
    source = results_dir / SOURCE_FILE
    if source.is_file() and json.loads(source.read_text()).get("grid_id") != grid.grid_id:
        raise UserError(f"{results_dir} holds results of another grid; pass --results elsewhere")
    reference = load_reference()
    sync_grid(grid_dir, uri)
    if complete:
        close_parent(grid_dir, uri)
    experiment = grid.experiment
    axes = table_axes(grid)
    try:
        runs = runs_frame(uri, grid.grid_id, experiment)
    except Exception as e:  # noqa: BLE001
        log.warning("cannot read MLflow store %s (%s); no tables written", uri, e)
        return 1
    if runs.empty:
        print("no finished runs in MLflow yet; no tables written")
        return 0
    seeds = per_seed(runs, grid, axes)
    order = [c.id for c in grid.cells]
    summary = summarize(seeds, order, axes)
    t = table(summary, axes, reference, grid.preset)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(source, json.dumps({"grid_id": grid.grid_id, "grid_dir": str(Path(grid_dir).resolve()),
                                     "tracking_uri": uri}).encode())
    title = f"{grid.name}: {grid.paper}" if grid.paper else grid.name
    md = f"# {title}\n\n" + t.to_markdown(index=False, disable_numparse=True) + "\n"
    atomic_write(results_dir / "table.md", md.encode())
    atomic_write(results_dir / "table.csv", summary.to_csv(index=False).encode())
    atomic_write(results_dir / "per_seed.csv", seeds.to_csv(index=False).encode())
    atomic_write(results_dir / "table.tex", t.to_latex(index=False).replace("**", "").encode())

    figs = figures.linear_top1_bars(summary, title, results_dir)
    hist = figures.histories(MlflowClient(uri), runs, list(figures.CURVES))
    figs += figures.curves(hist, order, set(summary.loc[summary["plain_moco"].astype(bool), "cell"]), results_dir)
    figs += figures.alignment_uniformity(seeds, results_dir)
    figs += figures.heatmap_N_s(summary, results_dir)
    figs += figures.accuracy_vs_K(summary, results_dir)
    notes = ["mean ± sample std over seeds (n = seeds); best value per accuracy column in bold; "
             "Δ columns: difference to the first MoCo v2 row (no synthetic negatives: s = s' = 0)",
             f"grid {grid.grid_id}, {len(grid.cells)} cells x {grid.seeds} seeds, base preset {grid.base}; "
             f"runs in MLflow experiment {experiment} at {uri}"]
    notes += [f"reference {r['metric']} {r['value']}: {r['source']}" for r in reference if r["preset"] == grid.preset]
    html_report(title, t, figs, notes, results_dir / "report.html")
    print()
    print(t.to_string(index=False))
    print(f"\nwrote {results_dir}/: table.md, table.csv, table.tex, per_seed.csv, report.html"
          + "".join(f", {f.name}" for f in figs if f.suffix == ".png"))
    print(f"browse the runs: make ui (or mlflow ui --backend-store-uri {uri}), open http://127.0.0.1:5000, "
          f"experiment {experiment}" if uri.startswith("sqlite") else f"browse the runs at {uri}, "
          f"experiment {experiment}")
    return 0
