"""A grid's report: sync its runs, then write its tables (Markdown, CSV, LaTeX), per-seed values,
figures and one HTML page into the results folder, and print the table."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import pandas as pd

from ablations import blocks, cost, figures, provenance, spec, stats, terminal
from ablations.figures import caption
from ablations.collect import (METRICS, close_parent, fewer_gpus, histories, log_table_values, per_seed, runs_frame,
                               sync_grid)
from ablations.griddir import GridDir
from ablations.summary import (MECHANISM_METRICS, TABLE_METRICS, conclusions, family_note, load_reference,
                               missing_seeds,
                               mechanism_rows, mechanism_table, shown, summarize, table)
from pretrain.run.checkpoint import atomic_write
from pretrain.run.errors import UserError
from pretrain.run import rundir
from pretrain.run.tracking import StoreError, log_files, mlflow_client

log = logging.getLogger(__name__)
SOURCE_FILE = "source.json"  # which grid a results folder holds
ARTIFACT_SUFFIXES = (".md", ".csv", ".tex", ".html", ".png", ".pdf", ".json")  # what a grid's parent run carries


def table_axes(grid: spec.Grid) -> list[str]:
    """The axes a grid's tables show: its table rows, then every other axis its cells set."""
    return list(dict.fromkeys([*grid.table_rows, *(a for c in grid.cells for a in c.values)]))


STATISTICS = (
    "Values: mean ± sample sd over seeds (n). Δ: the row minus the baseline row; seeds pair (seed k gives "
    "every cell the same initial weights, data order and augmentation draws), so rows are compared on "
    "per-seed differences (paired t-test); rows whose seeds do not pair (released checkpoints) by Welch's "
    "t-test. The rows of a column form two families: the methods (the grid's cells) and the reference rows "
    "(random init, released checkpoints), which are not hypotheses about methods. Within a family of m "
    "tested rows, Bonferroni: p is multiplied by m and each Δ interval is the t interval at level "
    "1 - 0.05/m, so the family's intervals are simultaneous 95% intervals and one excludes 0 exactly where "
    f"the verdict is a difference. Verdicts need at least {stats.MIN_N} seeds and adjusted p < {stats.ALPHA}; "
    "bold marks the best row only where it is significantly better than the baseline. The rows' own, "
    "unadjusted 95% intervals are in table.csv (M_diff_low_unadj, M_diff_high_unadj). Seeds for 0.5 pt: "
    "seeds per row the row's test would need for 80% power to detect a 0.5-point difference at the observed "
    "spread and the family's level 0.05/m."
)
Table = tuple[str, pd.DataFrame, str]  # heading, table, the note under it


SHORT_BUDGET = 1000  # steps: below this a grid's note says its probes may not rank the methods


def mix_start_step(grid: spec.Grid) -> int:
    """The training step where the base preset's mixing starts (``mochi.mix_start`` epochs in), which
    the curves mark; 0 where it mixes from the first step."""
    cfg = grid.base_config()
    return cfg.mochi.mix_start * cost.steps_per_epoch(cfg)


def budget_note(grid: spec.Grid) -> str:
    """What every row was trained with, and the chance levels the proxy task is read against: the
    sentence each form of the tables puts under its title."""
    cfg = grid.base_config()
    images = cost.images_per_epoch(cfg)
    steps = cfg.optim.epochs * cost.steps_per_epoch(cfg)
    ks = sorted({grid.cfg(c, 0, Path("unused")).moco.K for c in grid.cells} or {cfg.moco.K})
    chance = ", ".join(f"{100 / (k + 1):.2g}% at K = {k}" for k in ks)
    text = (f"Budget: each cell pretrains a {cfg.model.arch} at {cfg.data.image_size} px for {cfg.optim.epochs} "
            f"epoch(s) of {images:,} images at batch {cfg.optim.batch_size} ({steps:,} steps)"
            + ("; the random-init row probes the untrained backbone each seed's cells start from, the same way"
               if any(r.kind == "random-init" for r in grid.references) else "") + ". "
            f"Chance levels: proxy-task accuracy 100/(K+1) ({chance}), its InfoNCE loss ln(K+1) "
            f"({', '.join(f'{math.log(k + 1):.2f}' for k in ks)}).")
    if steps < SHORT_BUDGET:
        text += (f" {steps:,} steps are far from convergence: the probes may not rank the methods, and an untrained "
                 f"backbone can score higher; the mechanism (how hard the task and the negatives are) shows first.")
    return text


# Characters pdflatex's default encodings lack, as math: the tables' Δ, ±, ...
LATEX_MATH = {"Δ": r"$\Delta$", "±": r"$\pm$", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$", "−": "-",
              "–": "--", "—": "---", "…": r"\ldots{}", "τ": r"$\tau$", "β": r"$\beta$"}


def _latex_text(text: str) -> str:
    """Plain text for a LaTeX document: its special characters escaped, Δ and ± as math."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
               ">": r"\textgreater{}", **LATEX_MATH}
    return "".join(special.get(ch, ch) for ch in str(text))


def tabular(t: pd.DataFrame, bold: set[tuple[int, int]] = frozenset()) -> str:
    """A table as a booktabs tabular, every header and cell through ``_latex_text``; the cells at the
    (row, column) positions in ``bold`` set bold."""
    def cell(i: int, j: int, v) -> str:
        text = _latex_text("" if v is None or (isinstance(v, float) and pd.isna(v)) else v)
        return rf"\textbf{{{text}}}" if (i, j) in bold else text

    lines = [r"\begin{tabular}{" + "l" * len(t.columns) + "}", r"\toprule",
             " & ".join(_latex_text(c) for c in t.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(i, j, v) for j, v in enumerate(row)) + r" \\"
              for i, row in enumerate(t.itertuples(index=False))]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])


def latex(title: str, lead: str, tables: list[blocks.Block], notes: list[str]) -> str:
    """table.tex: a document pdflatex compiles as shipped (article, booktabs, landscape), the tables
    in their compact form (``blocks``: one per metric, short headers, a legend under each; the best
    mean bold), then the notes. Each tabular can be copied into a paper as it is."""
    doc = [r"\documentclass[10pt]{article}", r"\usepackage[T1]{fontenc}", r"\usepackage[utf8]{inputenc}",
           r"\usepackage{booktabs}", r"\usepackage[landscape,margin=1.5cm]{geometry}", r"\begin{document}",
           rf"\section*{{{_latex_text(title)}}}", _latex_text(lead) + r"\par"]
    for b in tables:
        if b.first_of_mechanism:
            doc.append(rf"\subsection*{{{_latex_text(blocks.MECHANISM_TITLE)}}}")
        bold = {(i, b.table.columns.get_loc(blocks.MEAN)) for i in b.best}
        doc += [rf"\subsubsection*{{{_latex_text(b.heading)}}}", tabular(b.table, bold) + r"\par\smallskip",
                r"{\footnotesize " + " ".join(_latex_text(line) + "." for line in b.legend) + r"\par}"]
    doc += [r"\subsection*{Notes}", r"\begin{itemize}"] + [rf"\item {_latex_text(n)}" for n in notes]
    doc += [r"\end{itemize}", r"\end{document}", ""]
    return "\n".join(doc)


def _cells_html(t: pd.DataFrame) -> str:
    """A table as HTML, with Markdown bold turned into <b>."""
    import html

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in t.columns)
    rows = []
    for _, r in t.iterrows():
        cells = []
        for v in r:
            text = html.escape(str(v))
            cells.append(f"<td><b>{text.strip('*')}</b></td>" if text.startswith("**") else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def html_report(title: str, tables: list[Table], conclusions: list[str], figures: list[Path],
                notes: list[str], path: Path, lead: str = "") -> None:
    """One self-contained page: the tables with their notes, what they let one conclude, and every
    figure (PNG files beside it)."""
    import html

    body = "".join(f"<h2>{html.escape(h)}</h2>{_cells_html(t)}"
                   + (f"<p><small>{html.escape(note)}</small></p>" if note else "") for h, t, note in tables)
    words = "".join(f"<li>{html.escape(c)}</li>" for c in conclusions)
    imgs = "\n".join(f'<figure><img src="{f.name}" alt="{html.escape(caption(f.stem))}"><figcaption>'
                     f'{html.escape(caption(f.stem))} <small>({f.name})</small></figcaption></figure>'
                     for f in figures if f.suffix == ".png")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:100%}} figure{{margin:1.5em 0}}</style>
</head><body><h1>{html.escape(title)}</h1>{f"<p>{html.escape(lead)}</p>" if lead else ""}{body}
<h2>What these runs show</h2><ul>{words}</ul>
<h2>Notes</h2><ul>{"".join(f"<li>{html.escape(n)}</li>" for n in notes)}</ul>{imgs}</body></html>"""
    atomic_write(path, page.encode())


def markdown(title: str, tables: list[Table], conclusions: list[str], notes: list[str], lead: str = "") -> str:
    """The report as Markdown: the lead (the budget), the tables, each with its note under it, the
    conclusions in words, the notes."""
    parts = [f"# {title}\n"] + ([f"{lead}\n"] if lead else [])
    for i, (heading, t, note) in enumerate(tables):
        if i:
            parts.append(f"## {heading}\n")
        parts.append(t.to_markdown(index=False, disable_numparse=True) + "\n")
        if note:
            parts.append(f"*{note}*\n")
    parts.append("## What these runs show\n")
    parts += [f"- {c}" for c in conclusions] + [""]
    parts.append("## Notes\n")
    parts += [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def report(grid: spec.Grid, grid_dir: Path, uri: str, results_dir: Path, complete: bool = True) -> int:
    """Sync (and close the grid's parent run if ``complete``), then write the tables
    (``table.{md,csv,tex}``, ``per_seed.csv``), the figures (PNG + PDF) and ``report.html`` into
    ``results_dir``; print the tables and the conclusions."""
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
        hist = histories(mlflow_client(uri), runs, sorted({*figures.CURVES, *(m.mlflow for m in METRICS.values()
                                                                            if m.late)})) if len(runs) else None
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001
        log.warning("cannot read MLflow store %s (%s); no tables written", uri, e)
        return 1
    if runs.empty:
        print("no finished runs in MLflow yet; no tables written")
        return 0
    seeds = per_seed(runs, grid, axes, hist)
    try:
        log_table_values(uri, runs, seeds)
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - the tables are written from the frame whatever the store does
        log.warning("could not put the tables' values on their MLflow runs (%s)", e)
    summary = summarize(seeds, grid, axes)
    title = f"{grid.name}: {grid.paper}" if grid.paper else grid.name
    lost = missing_seeds(seeds, grid.seeds, shown(summary, TABLE_METRICS))
    tables: list[Table] = [("Scores", table(summary, axes, reference, grid.preset, seeds=grid.seeds),
                            " ".join(filter(None, [family_note(summary, shown(summary, TABLE_METRICS)),
                                                   *(f"Missing: {line}." for line in lost)])))]
    mech = mechanism_table(summary, axes)
    if mech is not None:
        tables.append(("Mechanism: how hard the task and the negatives are (last quarter of training)", mech,
                       family_note(mechanism_rows(summary), shown(summary, MECHANISM_METRICS))))
    words = conclusions(summary)
    notes = [STATISTICS,
             f"grid {grid.grid_id}, {len(grid.cells)} cells + {len(grid.references)} reference rows x {grid.seeds} "
             f"seeds, base preset {grid.base}; runs in MLflow experiment {experiment} at {uri}"]
    notes += [f"reference {r['metric']} {r['value']}: {r['source']}" for r in reference if r["preset"] == grid.preset]
    warnings = [f"Transfer on fewer GPUs: {line}" for line in fewer_gpus(runs)]
    notes += warnings
    made = provenance.record()
    notes.append(provenance.line(made))

    results_dir.mkdir(parents=True, exist_ok=True)
    # The grid folder relative to the results folder: the two move together (a copied or shared project).
    atomic_write(source, json.dumps({"grid_id": grid.grid_id, "grid_dir": os.path.relpath(grid_dir, results_dir),
                                     "tracking_uri": uri, "provenance": made,
                                     "linear_probe": GridDir(grid_dir, grid, results_dir).probe_selections()}).encode())
    lead = budget_note(grid)
    atomic_write(results_dir / "table.md", markdown(title, tables, words, notes, lead).encode())
    atomic_write(results_dir / "table.csv", summary.to_csv(index=False).encode())
    atomic_write(results_dir / "per_seed.csv", seeds.to_csv(index=False).encode())
    compact = blocks.blocks(summary, axes, TABLE_METRICS, MECHANISM_METRICS, reference, grid.preset, grid.seeds)
    atomic_write(results_dir / "table.tex", latex(title, lead, compact, notes).encode())
    figs = figures.score_bars(summary, seeds, title, results_dir)
    figs += figures.curves(hist, grid.row_ids(), set(summary.loc[summary["plain_moco"].astype(bool), "cell"]),
                           results_dir, grid.analysis_N, dict(zip(summary["cell"], summary["setting"])),
                           mix_start_step(grid))
    figs += figures.alignment_uniformity(summary, results_dir)
    figs += figures.heatmap_N_s(summary, results_dir)
    figs += figures.accuracy_vs_K(summary, results_dir)
    html_report(title, tables, words, figs, notes, results_dir / "report.html", lead)
    attach(grid_dir, uri, results_dir)
    cols = terminal.width()
    lines = ["", *terminal.wrap(title, cols), *terminal.wrap(lead, cols), ""]
    lines += terminal.tables(compact, cols)
    lines += ["What these runs show:", *terminal.paragraphs(words, cols),
              *terminal.paragraphs(warnings, cols, "note: ")]
    lines += ["", *terminal.wrap(f"wrote {results_dir}/: table.md, table.csv, table.tex, per_seed.csv, report.html"
                                 + "".join(f", {f.name}" for f in figs if f.suffix == ".png"), cols, "", "  ")]
    lines += terminal.wrap(f"browse the runs: make ui (or mlflow ui --backend-store-uri {uri}), open "
                           f"http://127.0.0.1:5000, experiment {experiment}" if uri.startswith("sqlite") else
                           f"browse the runs at {uri}, experiment {experiment}", cols, "", "  ")
    print("\n".join(lines))
    return 0


def attach(grid_dir: Path, uri: str, results_dir: Path) -> None:
    """The tables, report and figures as artifacts of the grid's parent run (``results/`` in the UI),
    written again with each report; a store that refuses them costs a warning."""
    parent = Path(grid_dir) / rundir.PARENT_FILE
    if not parent.is_file():
        return
    files = [f for f in sorted(results_dir.iterdir()) if f.is_file() and f.suffix in ARTIFACT_SUFFIXES]
    try:
        client = mlflow_client(uri)
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - the files are in results_dir whatever the store does
        log.warning("could not attach the tables to the grid's MLflow run (%s)", e)
        return
    log_files(client, parent.read_text().strip(), files, "results")


def finish(gd: GridDir, uri: str) -> int:
    """Sync every run folder of a grid into MLflow, then write and print its tables and plots."""
    return report(gd.grid, gd.out, uri, gd.results_dir, gd.complete())
