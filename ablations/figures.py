"""The paper's figures from a grid's MLflow runs (matplotlib, PNG + PDF).

Curves over training average the seeds of a cell (line) and shade +- one std; scatter and bar
points carry std error bars. Every function returns the files it wrote (none when the grid lacks
the metrics or axes a figure needs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablations.collect import METRICS
from ablations.summary import baseline_row

CURVES = {
    # metric: (file stem, y label, title)
    "acc_moco": ("proxy_task_difficulty", "proxy-task top-1 (%)",
                 "Proxy-task difficulty: share of queries whose positive beats every queue negative"),
    "false_neg_share": ("class_oracle_false_negatives", "false negatives among the N hardest (%)",
                        "Class oracle: share of each query's hardest negatives with its own label"),
    "neg_top1_cos": ("hardness_top1", "cosine of the hardest queue negative",
                     "Hardness of the top negative (mean over queries)"),
    "neg_topN_cos": ("hardness_topN", "mean cosine of the N hardest queue negatives",
                     "Hardness of the N hardest negatives (mean over queries)"),
}
PERCENT = {"acc_moco", "false_neg_share"}


def _plt():
    """pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> list[Path]:
    """Write ``path`` as PNG and PDF; return both."""
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    fig.savefig(path.with_suffix(".pdf"))
    _plt().close(fig)
    return [path.with_suffix(".png"), path.with_suffix(".pdf")]


def histories(client, runs: pd.DataFrame, metrics) -> pd.DataFrame:
    """Long table (cell, seed, metric, step, value) of the pretraining runs' metric histories."""
    rows = []
    pre = runs[runs["tags.stage"] == "pretrain"]
    for _, r in pre.iterrows():
        for m in metrics:
            if f"metrics.{m}" not in r or pd.isna(r[f"metrics.{m}"]):
                continue
            for point in client.get_metric_history(r["run_id"], m):
                rows.append((r["tags.cell"], int(r["tags.seed"]), m, point.step, point.value))
    return pd.DataFrame(rows, columns=["cell", "seed", "metric", "step", "value"])


def linear_top1_bars(summary: pd.DataFrame, title: str, out_dir: Path, metric: str = "linear_top1") -> list[Path]:
    """Bar chart of a metric per cell with std error bars over seeds, the baseline row grey and dashed."""
    if summary[f"{metric}_mean"].isna().all():
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(summary) + 1.5), 3.6))
    means, stds = summary[f"{metric}_mean"], summary[f"{metric}_std"].fillna(0.0)
    base = baseline_row(summary)
    colors = ["tab:gray" if base is not None and c == base["cell"] else "tab:blue" for c in summary["cell"]]
    ax.bar(range(len(summary)), means, yerr=stds, color=colors, capsize=4)
    ax.set_xticks(range(len(summary)), [c.replace("_", "\n") for c in summary["cell"]], fontsize=8)
    ax.set_ylabel(f"{METRICS[metric].label} (%)")
    lo = (means - stds).min()
    ax.set_ylim(max(0.0, lo - 2.0), min(100.0, (means + stds).max() + 1.0))
    if base is not None:
        ax.axhline(base[f"{metric}_mean"], color="tab:gray", lw=1, ls="--", label="MoCo v2 baseline (s = s' = 0)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("cell: MoCHi (N, s, s'); grey: MoCo baseline. Error bars: std over seeds")
    return _save(fig, out_dir / metric)


def curves(hist: pd.DataFrame, order: list[str], plain: set[str], out_dir: Path) -> list[Path]:
    """The training-curve figures of ``CURVES``: one line per cell (mean over seeds, +- std band),
    dashed for the plain-MoCo cells in ``plain``."""
    plt = _plt()
    files: list[Path] = []
    for metric, (stem, ylabel, title) in CURVES.items():
        h = hist[hist["metric"] == metric]
        if h.empty:
            continue
        # Runs from before replayed points were skipped may hold a step twice: keep the last.
        h = h.drop_duplicates(["cell", "seed", "step"], keep="last")
        scale = 100.0 if metric in PERCENT else 1.0
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for cell in [c for c in order if c in set(h["cell"])]:
            g = h[h["cell"] == cell].groupby("step")["value"].agg(["mean", "std"]).sort_index() * scale
            style = "--" if cell in plain else "-"
            ax.plot(g.index, g["mean"], style, label=cell, lw=1.4)
            ax.fill_between(g.index, g["mean"] - g["std"].fillna(0), g["mean"] + g["std"].fillna(0), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, title="cell (dashed: MoCo)", title_fontsize=7)
        files += _save(fig, out_dir / stem)
    return files


def alignment_uniformity(seeds: pd.DataFrame, out_dir: Path) -> list[Path]:
    """End-of-training alignment against uniformity per cell, std error bars over seeds."""
    if seeds[["alignment", "uniformity"]].isna().all().any():
        return []
    plt = _plt()
    g = seeds.groupby("cell", sort=False)[["alignment", "uniformity"]].agg(["mean", "std"])
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for cell, r in g.iterrows():
        ax.errorbar(r[("uniformity", "mean")], r[("alignment", "mean")], xerr=r[("uniformity", "std")],
                    yerr=r[("alignment", "std")], fmt="o", capsize=3, label=cell)
    ax.set_xlabel("uniformity  log E exp(-2 |z - z'|^2)  (lower is more uniform)")
    ax.set_ylabel("alignment  E |z1 - z2|^2  (lower is better aligned)")
    ax.set_title("Alignment vs uniformity of held-out embeddings (end of training)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir / "alignment_uniformity")


def heatmap_N_s(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Linear top-1 over N x s, one panel per s' (needs >= 2 values of N and of s)."""
    need = {"N", "s", "s_prime"}
    if not need <= set(summary) or summary["linear_top1_mean"].isna().all():
        return []
    d = summary.dropna(subset=["linear_top1_mean"])
    d = d[~d["plain_moco"].astype(bool)]
    if d["N"].nunique() < 2 or d["s"].nunique() < 2:
        return []
    plt = _plt()
    panels = sorted(d["s_prime"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.4), squeeze=False)
    lo, hi = d["linear_top1_mean"].min(), d["linear_top1_mean"].max()
    for ax, sp in zip(axes[0], panels):
        p = d[d["s_prime"] == sp].pivot_table(index="N", columns="s", values="linear_top1_mean")
        im = ax.imshow(p.values, cmap="viridis", vmin=lo, vmax=hi, origin="lower", aspect="auto")
        ax.set_xticks(range(p.shape[1]), [str(int(c)) for c in p.columns])
        ax.set_yticks(range(p.shape[0]), [str(int(i)) for i in p.index])
        for (i, j), v in np.ndenumerate(p.values):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="white", fontsize=8)
        ax.set_xlabel("s (pair mixes)")
        ax.set_ylabel("N (hard negatives)")
        ax.set_title(f"s' = {int(sp)}", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), label="linear top-1 (%)")
    fig.suptitle("Linear top-1 over N x s (mean over seeds)", fontsize=9)
    fig.savefig((out_dir / "heatmap_N_s").with_suffix(".png"), dpi=120, bbox_inches="tight")
    fig.savefig((out_dir / "heatmap_N_s").with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return [(out_dir / "heatmap_N_s").with_suffix(".png"), (out_dir / "heatmap_N_s").with_suffix(".pdf")]


def accuracy_vs_K(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Linear top-1 against the memory size K, one line per (N, s, s') (needs >= 2 values of K)."""
    if "K" not in summary or summary["linear_top1_mean"].isna().all():
        return []
    d = summary.dropna(subset=["linear_top1_mean"])
    if d["K"].nunique() < 2:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for name, g in d.groupby("method", sort=False):
        g = g.sort_values("K")
        ax.errorbar(g["K"], g["linear_top1_mean"], yerr=g["linear_top1_std"].fillna(0), marker="o", capsize=3,
                    label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory size K (queue length)")
    ax.set_ylabel("linear top-1 (%)")
    ax.set_title("Accuracy vs memory size (error bars: std over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir / "accuracy_vs_K")
