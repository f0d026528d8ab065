"""A grid's results: every run folder synced into MLflow, then tables and plots built from MLflow.

The run folders are the source of truth (``metrics.jsonl``, ``summary.json``, ``lincls.json``);
``sync_grid`` adds to the MLflow store whatever a job could not log there (a locked or
unreachable store), so the tables, built from ``mlflow.search_runs``, see every cell and seed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from pretrain.checkpoint import atomic_write
from pretrain.errors import UserError
from pretrain.tracking import TRACKING_FILE, retry_locked, sync

log = logging.getLogger(__name__)
# metric column -> (MLflow stage, MLflow metric, label in tables, factor to percent)
METRICS = {
    "linear_top1": ("lincls", "top1_best", "linear top-1", 1.0),
    "knn_top1": ("pretrain", "knn_top1", "kNN top-1", 1.0),
    "proxy_acc": ("pretrain", "acc_moco", "proxy-task acc.", 100.0),
}
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
    """The grid's child runs from MLflow (``mlflow.search_runs``), one row per run."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.grid_id = '{grid_id}'",
                            output_format="pandas")
    if not isinstance(df, pd.DataFrame) or df.empty:
        return pd.DataFrame()
    return df[df.get("tags.stage", pd.Series(dtype=str)).isin(["pretrain", "lincls"])]


def per_seed(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per cell x seed: the axis values and each metric of ``METRICS`` (NaN where absent)."""
    rows: dict[tuple[str, str], dict] = {}
    for _, r in runs.iterrows():
        key = (r["tags.cell"], r["tags.seed"])
        row = rows.setdefault(key, {"cell": key[0], "seed": int(key[1]),
                                    **{a: r.get(f"tags.axis.{a}") for a in axes}})
        for col, (stage, metric, _, scale) in METRICS.items():
            value = r.get(f"metrics.{metric}")
            if r["tags.stage"] == stage and value is not None and pd.notna(value):
                row[col] = float(value) * scale
    df = pd.DataFrame(list(rows.values()))
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


def table(summary: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The printable table: axis columns, 'mean ± std (n)' per metric, best marked, delta to MoCo v2."""
    shown = [m for m in METRICS if summary[f"{m}_mean"].notna().any()]
    base = baseline_row(summary)
    t = summary[axes].copy()
    for m in shown:
        col = summary[f"{m}_mean"]
        best = col.max()
        t[METRICS[m][2]] = [fmt(mu, sd, n, mu == best and col.notna().sum() > 1)
                            for mu, sd, n in zip(col, summary[f"{m}_std"], summary["n"])]
        if base is not None and pd.notna(base[f"{m}_mean"]):
            t[f"Δ {METRICS[m][2]} vs MoCo v2"] = [
                "baseline" if cell == base["cell"] else f"{mu - base[f'{m}_mean']:+.2f}" if pd.notna(mu) else ""
                for cell, mu in zip(summary["cell"], col)
            ]
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
        ax.axhline(base[f"{metric}_mean"], color="tab:gray", lw=1, ls="--", label="MoCo v2")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("cell (MoCHi N-s-s'; grey: MoCo v2). Error bars: std over seeds")
    fig.tight_layout()
    fig.savefig(path_png, dpi=120)
    fig.savefig(path_png.with_suffix(".pdf"))
    plt.close(fig)


def report(grid, grid_dir: Path, uri: str, results_dir: Path, complete: bool = True) -> int:
    """Sync (and close the grid's parent run if ``complete``), then write ``table.{md,csv,tex}`` and ``linear_top1.{png,pdf}`` into ``results_dir``; print."""
    results_dir = Path(results_dir)
    source = results_dir / "source.json"
    if source.is_file() and json.loads(source.read_text()).get("grid_id") != grid.grid_id:
        raise UserError(f"{results_dir} holds results of another grid; pass --results elsewhere")
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
    summary = summarize(seeds, [c.id for c in grid.cells], axes)
    t = table(summary, axes)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(source, json.dumps({"grid_id": grid.grid_id, "grid_dir": str(Path(grid_dir).resolve()),
                                     "tracking_uri": uri}).encode())
    title = f"{grid.name}: {grid.paper}" if grid.paper else grid.name
    md = f"# {title}\n\n" + t.to_markdown(index=False, disable_numparse=True) + "\n"
    atomic_write(results_dir / "table.md", md.encode())
    atomic_write(results_dir / "table.csv", summary.to_csv(index=False).encode())
    atomic_write(results_dir / "per_seed.csv", seeds.to_csv(index=False).encode())
    atomic_write(results_dir / "table.tex", t.to_latex(index=False).replace("**", "").encode())
    figs = []
    if summary["linear_top1_mean"].notna().any():
        plot(summary, "linear_top1", title, results_dir / "linear_top1.png")
        figs.append(results_dir / "linear_top1.png")
    print()
    print(t.to_string(index=False))
    print(f"\nwrote {results_dir}/table.md, table.csv, table.tex" + "".join(f", {f.name}" for f in figs))
    print(f"browse the runs: mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000, "
          f"experiment {experiment})" if uri.startswith("sqlite") else f"browse the runs at {uri}, "
          f"experiment {experiment}")
    return 0
