"""A grid's results: every run folder synced into MLflow, then tables and plots built from MLflow.

The run folders are the source of truth (``metrics.jsonl``, ``summary.json``, ``lincls.json``);
``sync_grid`` adds to the MLflow store whatever a job could not log there (a locked or
unreachable store), so the tables, built from ``mlflow.search_runs``, see every cell and seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pretrain.checkpoint import atomic_write
from pretrain.errors import UserError
from pretrain.tracking import TRACKING_FILE, retry_locked, sync

log = logging.getLogger(__name__)
# metric column -> (MLflow stage, MLflow metric, label in tables, factor to percent)
METRICS = {
    "linear_top1": ("lincls", "top1_best", "linear top-1", 1.0),
    "knn_top1": ("pretrain", "knn_top1", "kNN top-1", 1.0),
    "voc_AP50": ("transfer-voc", "AP50", "VOC AP50", 1.0),
    "voc_AP": ("transfer-voc", "AP", "VOC AP", 1.0),
    "voc_AP75": ("transfer-voc", "AP75", "VOC AP75", 1.0),
    "coco_box_AP": ("transfer-coco", "box_AP", "COCO box AP", 1.0),
    "coco_mask_AP": ("transfer-coco", "mask_AP", "COCO mask AP", 1.0),
    "proxy_acc": ("pretrain", "acc_moco", "proxy-task acc.", 100.0),
    "alignment": ("pretrain", "alignment", "alignment", 1.0),
    "uniformity": ("pretrain", "uniformity", "uniformity", 1.0),
}
# Shown in the tables (where present); the others feed the figures.
TABLE_METRICS = ["linear_top1", "knn_top1", "voc_AP50", "voc_AP", "voc_AP75", "coco_box_AP", "coco_mask_AP",
                 "proxy_acc"]
REFERENCE_FILE = Path(__file__).resolve().parent.parent / "results" / "reference.yaml"
BASELINE = {"N": "0", "s": "0", "s_prime": "0"}


def sync_grid(grid_dir: Path, uri: str) -> int:
    """Sync every run folder of the grid (pretraining and probes) into the store; returns runs synced."""
    n = 0
    for meta in sorted(Path(grid_dir).glob(f"cells/*/seed*/**/{TRACKING_FILE}")):
        try:
            sync(meta.parent, uri)
            n += 1
        except Exception as e:  # noqa: BLE001 - a store that is down: the next report retries
            log.warning("could not sync %s into MLflow (%s)", meta.parent, e)
    return n


def close_parent(grid_dir: Path, uri: str) -> None:
    """Mark the grid's parent run FINISHED once every cell has its final result."""
    from mlflow.tracking import MlflowClient

    parent = Path(grid_dir) / "mlflow_parent_run_id"
    try:
        if parent.is_file():
            retry_locked(MlflowClient(uri).set_terminated, parent.read_text().strip(), "FINISHED")
    except Exception as e:  # noqa: BLE001
        log.warning("could not close the grid's MLflow run (%s)", e)


def runs_frame(uri: str, grid_id: str, experiment: str) -> pd.DataFrame:
    """The grid's child runs from MLflow, one row per run, in ``mlflow.search_runs``'s column layout
    (``run_id``, ``status``, ``tags.*``, ``params.*``, ``metrics.*``).

    Through a client bound to ``uri``: ``mlflow.set_tracking_uri`` would also set
    MLFLOW_TRACKING_URI for every process this one starts later (a grid's jobs, tests' runs).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = retry_locked(client.get_experiment_by_name, experiment)
    if exp is None:
        return pd.DataFrame()
    rows, token = [], None
    while True:
        page = retry_locked(client.search_runs, [exp.experiment_id], f"tags.grid_id = '{grid_id}'",
                            max_results=1000, page_token=token)
        for r in page:
            rows.append({"run_id": r.info.run_id, "status": r.info.status,
                         **{f"tags.{k}": v for k, v in r.data.tags.items()},
                         **{f"params.{k}": v for k, v in r.data.params.items()},
                         **{f"metrics.{k}": v for k, v in r.data.metrics.items()}})
        token = page.token
        if not token:
            break
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df[df.get("tags.stage", pd.Series(dtype=str)).isin({v[0] for v in METRICS.values()})]


def per_seed(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per cell x seed: the axis values and each metric of ``METRICS`` (NaN where absent).

    A transfer stage logs one run per fine-tuning trial; a seed's value is the mean of its trials.
    """
    rows: dict[tuple[str, str], dict] = {}
    for _, r in runs.iterrows():
        key = (r["tags.cell"], r["tags.seed"])
        row = rows.setdefault(key, {"cell": key[0], "seed": int(key[1]),
                                    **{a: r.get(f"tags.axis.{a}") for a in axes}})
        for col, (stage, metric, _, scale) in METRICS.items():
            value = r.get(f"metrics.{metric}")
            if r["tags.stage"] == stage and value is not None and pd.notna(value):
                row.setdefault(col, []).append(float(value) * scale)
    df = pd.DataFrame([{k: float(np.mean(v)) if isinstance(v, list) else v for k, v in row.items()}
                       for row in rows.values()])
    for col in METRICS:
        if col not in df:
            df[col] = float("nan")
    return df


def summarize(seeds: pd.DataFrame, order: list[str], axes: list[str]) -> pd.DataFrame:
    """Mean, std (ddof 1; NaN for one seed) and seed count of each metric per cell, in grid order."""
    agg = seeds.groupby("cell").agg(
        **{f"{m}_{f}": (m, f) for m in METRICS for f in ("mean", "std")}, n=("seed", "nunique")
    )
    first = seeds.drop_duplicates("cell").set_index("cell")[axes]
    out = first.join(agg).reindex([c for c in order if c in agg.index])
    return out.reset_index()


def baseline_row(summary: pd.DataFrame) -> pd.Series | None:
    mask = pd.Series(True, index=summary.index)
    for a, v in BASELINE.items():
        if a not in summary:
            return None
        mask &= summary[a].astype(str) == v
    return summary[mask].iloc[0] if mask.any() else None


def fmt(mean: float, std: float, n: int, best: bool = False) -> str:
    if pd.isna(mean):
        return ""
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if pd.notna(std) else "") + f" (n={n})"
    return f"**{text}**" if best else text


def load_reference() -> list[dict]:
    """Sourced reference numbers from ``results/reference.yaml``."""
    return yaml_reference(REFERENCE_FILE)


def yaml_reference(path: Path) -> list[dict]:
    """Reference entries of a YAML file; an entry without a source is an error."""
    import yaml

    if not Path(path).is_file():
        return []
    entries = yaml.safe_load(Path(path).read_text()) or []
    for e in entries:
        if not e.get("source") or "value" not in e or e.get("metric") not in METRICS:
            raise UserError(f"{path}: every reference needs preset, cell, a known metric, value and source: {e}")
    return entries


def reference_for(entries: list[dict], preset: str, values: dict, metric: str) -> dict | None:
    for e in entries:
        if e["preset"] == preset and e["metric"] == metric and \
                all(str(values.get(a)) == str(v) for a, v in e["cell"].items()):
            return e
    return None


def table(summary: pd.DataFrame, axes: list[str], reference: list[dict] | None = None,
          preset: str = "") -> pd.DataFrame:
    """The printable table: axis columns, 'mean ± std (n)' per metric, best marked, delta to the MoCo row,
    and, where ``reference`` has a sourced value for the row, the reference and our difference to it."""
    shown = [m for m in TABLE_METRICS if summary[f"{m}_mean"].notna().any()]
    base = baseline_row(summary)
    t = summary[axes].copy()
    for m in shown:
        col = summary[f"{m}_mean"]
        best = col.max()
        mark = m != "proxy_acc"  # a harder proxy task is the point of MoCHi, not a score
        t[METRICS[m][2]] = [fmt(mu, sd, n, mark and mu == best and col.notna().sum() > 1)
                            for mu, sd, n in zip(col, summary[f"{m}_std"], summary["n"])]
        if base is not None and pd.notna(base[f"{m}_mean"]):
            t[f"Δ {METRICS[m][2]} vs MoCo"] = [
                "baseline" if cell == base["cell"] else f"{mu - base[f'{m}_mean']:+.2f}" if pd.notna(mu) else ""
                for cell, mu in zip(summary["cell"], col)
            ]
        refs = [reference_for(reference or [], preset, dict(row[axes]), m) for _, row in summary.iterrows()]
        if any(refs):
            t[f"{METRICS[m][2]} (reference)"] = [
                "" if r is None else f"{r['value']:.2f}" + (f" ± {r['std']:.2f}" if r.get("std") is not None else "")
                for r in refs]
            t[f"Δ {METRICS[m][2]} vs reference"] = [
                "" if r is None or pd.isna(mu) else f"{mu - r['value']:+.2f}" for r, mu in zip(refs, col)]
    return t


def plot(summary: pd.DataFrame, metric: str, title: str, path_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(summary) + 1.5), 3.6))
    means, stds = summary[f"{metric}_mean"], summary[f"{metric}_std"].fillna(0.0)
    base = baseline_row(summary)
    colors = ["tab:gray" if base is not None and c == base["cell"] else "tab:blue" for c in summary["cell"]]
    ax.bar(range(len(summary)), means, yerr=stds, color=colors, capsize=4)
    ax.set_xticks(range(len(summary)), [c.replace("_", "\n") for c in summary["cell"]], fontsize=8)
    ax.set_ylabel(f"{METRICS[metric][2]} (%)")
    lo = (means - stds).min()
    ax.set_ylim(max(0.0, lo - 2.0), min(100.0, (means + stds).max() + 1.0))
    if base is not None:
        ax.axhline(base[f"{metric}_mean"], color="tab:gray", lw=1, ls="--", label="MoCo baseline (N = s = s' = 0)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("cell: MoCHi (N, s, s'); grey: MoCo baseline. Error bars: std over seeds")
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)
    fig.savefig(path_png.with_suffix(".pdf"))
    plt.close(fig)


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


def report(grid, grid_dir: Path, uri: str, results_dir: Path, complete: bool = True) -> int:
    """Sync (and close the grid's parent run if ``complete``), then write the tables
    (``table.{md,csv,tex}``, ``per_seed.csv``), the figures (PNG + PDF) and ``report.html`` into
    ``results_dir``; print the table."""
    from mlflow.tracking import MlflowClient

    from ablations import figures

    results_dir = Path(results_dir)
    source = results_dir / "source.json"
    if source.is_file() and json.loads(source.read_text()).get("grid_id") != grid.grid_id:
        raise UserError(f"{results_dir} holds results of another grid; pass --results elsewhere")
    reference = load_reference()
    sync_grid(grid_dir, uri)
    if complete:
        close_parent(grid_dir, uri)
    experiment = f"grid-{grid.name}"
    axes = list(dict.fromkeys([*grid.table_rows, *(a for c in grid.cells for a in c.values)]))
    try:
        runs = runs_frame(uri, grid.grid_id, experiment)
    except Exception as e:  # noqa: BLE001
        log.warning("cannot read MLflow store %s (%s); no tables written", uri, e)
        return 1
    if runs.empty:
        print("no finished runs in MLflow yet; no tables written")
        return 0
    seeds = per_seed(runs, axes)
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

    figs: list[Path] = []
    if summary["linear_top1_mean"].notna().any():
        plot(summary, "linear_top1", title, results_dir / "linear_top1.png")
        figs += [results_dir / "linear_top1.png", results_dir / "linear_top1.pdf"]
    hist = figures.histories(MlflowClient(uri), runs, list(figures.CURVES))
    figs += figures.curves(hist, order, results_dir)
    figs += figures.alignment_uniformity(seeds, results_dir)
    figs += figures.heatmap_N_s(summary, results_dir)
    figs += figures.accuracy_vs_K(summary, results_dir)
    notes = [f"mean ± sample std over seeds (n = seeds); best value per accuracy column in bold; "
             f"Δ columns: difference to the MoCo row (N = s = s' = 0)",
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
