"""The paper's figures from a grid's runs (matplotlib, PNG + PDF).

Every error bar and band is a 95% t interval over seeds (``ablations.stats.mean_ci``), and every
figure says n. Curves over training average the seeds of a row per logged step. Each function
returns the files it wrote (none when the grid lacks the metrics or axes a figure needs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablations import stats
from ablations.collect import METRICS

CURVES = {
    # MLflow metric: (file stem, y label, title)
    "acc_moco": ("proxy_task_difficulty", "proxy-task top-1 over [positive, queue] (%)",
                 "Proxy-task difficulty: share of queries whose positive beats every queue negative"),
    "acc_all": ("proxy_task_with_synthetic", "proxy-task top-1 with the synthetic negatives (%)",
                "The task MoCHi trains on: the positive against the queue and the synthetic points"),
    "neg_top1_cos_all": ("hardness_seen", "cosine of the hardest negative the loss sees",
                         "Hardest negative, synthetic points included (mean over queries)"),
    "syn_top10_share": ("synthetic_share_top10", "synthetic points among the top-10 negatives (%)",
                        "Share of synthetic points among each query's 10 hardest negatives"),
    "false_neg_share": ("class_oracle_false_negatives", "false negatives among the N = {N} hardest (%)",
                        "Class oracle: share of each query's N = {N} hardest queue negatives with its own label"),
    "neg_top1_cos": ("hardness_top1", "cosine of the hardest queue negative",
                     "Hardness of the top queue negative (mean over queries)"),
    "neg_topN_cos": ("hardness_topN", "mean cosine of the N = {N} hardest queue negatives",
                     "Hardness of the N = {N} hardest queue negatives, the same N for every row (mean over queries)"),
}
PERCENT = {"acc_moco", "acc_all", "false_neg_share", "syn_top10_share"}
BAND = "bands: 95% CI over seeds"


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


def _yerr(summary: pd.DataFrame, m: str) -> np.ndarray:
    """[2, rows] distances from the mean to the 95% interval's bounds (0 where n < 2)."""
    mean = summary[f"{m}_mean"].to_numpy(float)
    return np.vstack([(mean - summary[f"{m}_low"].to_numpy(float)), (summary[f"{m}_high"].to_numpy(float) - mean)]
                     ).clip(min=0) if f"{m}_low" in summary else np.zeros((2, len(mean)))


def score_bars(summary: pd.DataFrame, title: str, out_dir: Path, metric: str = "linear_top1") -> list[Path]:
    """Bars of a score per row with 95% CI error bars over seeds: the baseline grey with a dashed
    line, reference rows hatched; n per row under its name."""
    if f"{metric}_mean" not in summary or summary[f"{metric}_mean"].isna().all():
        return []
    plt = _plt()
    s = summary[summary[f"{metric}_mean"].notna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(s) + 1.5), 3.9))
    means, err = s[f"{metric}_mean"].to_numpy(float), np.nan_to_num(_yerr(s, metric))
    colors = ["tab:gray" if b else "tab:orange" if k != "cell" else "tab:blue" for b, k in zip(s["baseline"], s["kind"])]
    bars = ax.bar(range(len(s)), means, yerr=err, color=colors, capsize=4)
    for bar, kind in zip(bars, s["kind"]):
        if kind != "cell":
            bar.set_hatch("//")
    names = [f"{c.replace('_', chr(10))}\nn={int(n)}" for c, n in zip(s["cell"], s[f"{metric}_n"])]
    ax.set_xticks(range(len(s)), names, fontsize=7)
    ax.set_ylabel(f"{METRICS[metric].label} (%)")
    lo, hi = (means - err[0]).min(), (means + err[1]).max()
    ax.set_ylim(max(0.0, lo - 2.0), min(100.0, hi + 1.0))
    if s["baseline"].any():
        base = s[s["baseline"]].iloc[0]
        ax.axhline(base[f"{metric}_mean"], color="tab:gray", lw=1, ls="--", label=f"baseline: {base['setting']}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("rows (hatched: measured, not pretrained here); error bars: 95% CI over seeds", fontsize=8)
    return _save(fig, out_dir / metric)


def curves(hist: pd.DataFrame, order: list[str], plain: set[str], out_dir: Path, analysis_N: int) -> list[Path]:
    """The training-curve figures of ``CURVES``: one line per row (mean over seeds at each logged
    step, with its 95% CI band), dashed for the plain-MoCo rows in ``plain``; ``analysis_N``: the
    grid's one "N hardest" of the top-N statistics, named on their axes."""
    plt = _plt()
    files: list[Path] = []
    for metric, (stem, ylabel, title) in CURVES.items():
        h = hist[hist["metric"] == metric]
        if h.empty:
            continue
        scale = 100.0 if metric in PERCENT else 1.0
        fig, ax = plt.subplots(figsize=(6.6, 3.9))
        for cell in [c for c in order if c in set(h["cell"])]:
            g = h[h["cell"] == cell].groupby("step")["value"]
            ivs = [stats.mean_ci((v * scale).tolist()) for _, v in g]
            steps = list(g.groups)
            mean = np.array([iv.mean for iv in ivs])
            low = np.array([iv.low if iv.n > 1 else iv.mean for iv in ivs])
            high = np.array([iv.high if iv.n > 1 else iv.mean for iv in ivs])
            n = max(iv.n for iv in ivs)
            ax.plot(steps, mean, "--" if cell in plain else "-", label=f"{cell} (n={n})", lw=1.4)
            ax.fill_between(steps, low, high, alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel.format(N=analysis_N))
        ax.set_title(title.format(N=analysis_N), fontsize=9)
        ax.legend(fontsize=7, title=f"row (dashed: MoCo v2); {BAND}", title_fontsize=7, loc="best")
        files += _save(fig, out_dir / stem)
    return files


def alignment_uniformity(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """End-of-training alignment against uniformity per row, 95% CI error bars over seeds."""
    if any(f"{m}_mean" not in summary or summary[f"{m}_mean"].isna().all() for m in ("alignment", "uniformity")):
        return []
    plt = _plt()
    s = summary[summary["alignment_mean"].notna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    xerr, yerr = np.nan_to_num(_yerr(s, "uniformity")), np.nan_to_num(_yerr(s, "alignment"))
    for i, r in s.iterrows():
        ax.errorbar(r["uniformity_mean"], r["alignment_mean"], xerr=xerr[:, i:i + 1], yerr=yerr[:, i:i + 1], fmt="o",
                    capsize=3, label=f"{r['cell']} (n={int(r['alignment_n'])})")
    ax.set_xlabel("uniformity  log E exp(-2 |z - z'|^2)  (lower is more uniform)")
    ax.set_ylabel("alignment  E |z1 - z2|^2  (lower is better aligned)")
    ax.set_title("Alignment vs uniformity of held-out embeddings (end of training; 95% CI)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir / "alignment_uniformity")


def heatmap_panels(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, linear top-1 means over N x s) per loss and s': each loss's MoCHi cells with that s',
    and the loss without mixing at N = s = 0 (MoCo v2 in InfoNCE's panels), so that no two
    settings share a cell. A panel needs >= 2 values of N and of s."""
    if not {"N", "s", "s_prime", "loss", "mixes"} <= set(summary) or "linear_top1_mean" not in summary:
        return []
    d = summary[(summary["kind"] == "cell") & summary["linear_top1_mean"].notna()]
    panels = []
    for loss, g in d.groupby("loss", sort=False):
        mixes = g["mixes"].astype(bool)
        alone = g[~mixes].head(1).assign(N=0, s=0)  # a setting that synthesises nothing is the loss alone
        for sp in sorted(g.loc[mixes, "s_prime"].unique()):
            cells = pd.concat([alone, g[mixes & (g["s_prime"] == sp)]])
            p = cells.pivot_table(index="N", columns="s", values="linear_top1_mean")
            if p.shape[0] < 2 or p.shape[1] < 2:
                continue
            if loss == "InfoNCE":
                title = f"MoCHi, s' = {int(sp)}" + (" (MoCo v2 at N = s = 0)" if len(alone) else "")
            else:
                title = f"{loss} + MoCHi, s' = {int(sp)}" + (f" ({loss} alone at N = s = 0)" if len(alone) else "")
            panels.append((title, p))
    return panels


def heatmap_N_s(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Linear top-1 over N x s, one panel per loss and s' (``heatmap_panels``); means over seeds."""
    panels = heatmap_panels(summary)
    if not panels:
        return []
    d = summary[(summary["kind"] == "cell") & summary["linear_top1_mean"].notna()]
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.4), squeeze=False)
    lo, hi = min(p.min().min() for _, p in panels), max(p.max().max() for _, p in panels)
    for ax, (title, p) in zip(axes[0], panels):
        im = ax.imshow(p.values, cmap="viridis", vmin=lo, vmax=hi, origin="lower", aspect="auto")
        ax.set_xticks(range(p.shape[1]), [str(int(c)) for c in p.columns])
        ax.set_yticks(range(p.shape[0]), [str(int(i)) for i in p.index])
        for (i, j), v in np.ndenumerate(p.values):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="white", fontsize=8)
        ax.set_xlabel("s (pair mixes)")
        ax.set_ylabel("N (hard negatives)")
        ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), label="linear top-1 (%)")
    n = int(d["linear_top1_n"].min())
    fig.suptitle(f"Linear top-1 over N x s (mean over n >= {n} seeds; intervals in table.md)", fontsize=9)
    fig.savefig((out_dir / "heatmap_N_s").with_suffix(".png"), dpi=120, bbox_inches="tight")
    fig.savefig((out_dir / "heatmap_N_s").with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)
    return [(out_dir / "heatmap_N_s").with_suffix(".png"), (out_dir / "heatmap_N_s").with_suffix(".pdf")]


def accuracy_vs_K(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Linear top-1 against the memory size K, one line per method, 95% CI error bars over seeds
    (needs >= 2 values of K)."""
    if "K" not in summary or "linear_top1_mean" not in summary or summary["linear_top1_mean"].isna().all():
        return []
    d = summary[(summary["kind"] == "cell") & summary["linear_top1_mean"].notna()]
    if d["K"].nunique() < 2:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for name, g in d.groupby("setting", sort=False):
        g = g.sort_values("K")
        ax.errorbar(g["K"], g["linear_top1_mean"], yerr=np.nan_to_num(_yerr(g, "linear_top1")), marker="o",
                    capsize=3, label=f"{name} (n={int(g['linear_top1_n'].min())})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory size K (queue length)")
    ax.set_ylabel("linear top-1 (%)")
    ax.set_title("Accuracy vs memory size (error bars: 95% CI over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, out_dir / "accuracy_vs_K")
