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
# What each figure of report.html shows, under it (the curves' titles are theirs).
CAPTIONS = {
    "linear_top1": "Linear top-1 per row: bars from 0, 95% CI over seeds; dots are seeds, a thin line joins one "
                   "seed across rows (the rows are paired by seed).",
    "alignment_uniformity": "Alignment against uniformity of held-out embeddings at the end of training "
                            "(lower is better on both; 95% CI over seeds).",
    "heatmap_N_s": "Linear top-1 over N x s; the colour scale spans at least the widest 95% interval of its cells, "
                   "so differences within noise stay one colour.",
    "accuracy_vs_K": "Linear top-1 against the memory size K (95% CI over seeds).",
    **{stem: title.format(N="N") for stem, _, title in CURVES.values()},
}


def caption(stem: str) -> str:
    """What the figure ``stem`` shows, in a sentence."""
    return CAPTIONS.get(stem, stem.replace("_", " "))


def _bounds(metric: str) -> tuple[float, float]:
    """The values a quantity can take: percentages [0, 100], cosines [-1, 1], else unbounded."""
    if metric in PERCENT or (metric in METRICS and METRICS[metric].points):
        return 0.0, 100.0
    if "cos" in metric:
        return -1.0, 1.0
    return -np.inf, np.inf


def _wrap(label: str, width: int = 22) -> str:
    """A row's name on a few short lines, for a tick."""
    import textwrap

    return "\n".join(textwrap.wrap(label, width)) or label


def _plt():
    """pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> list[Path]:
    """Write ``path`` as PNG and PDF (legends beside the plot included); return both."""
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    _plt().close(fig)
    return [path.with_suffix(".png"), path.with_suffix(".pdf")]


def _yerr(summary: pd.DataFrame, m: str) -> np.ndarray:
    """[2, rows] distances from the mean to the 95% interval's bounds, the bounds clipped to the
    values the quantity can take (a share never below 0 %); 0 where n < 2."""
    mean = summary[f"{m}_mean"].to_numpy(float)
    if f"{m}_low" not in summary:
        return np.zeros((2, len(mean)))
    lo, hi = _bounds(m)
    low = np.clip(summary[f"{m}_low"].to_numpy(float), lo, hi)
    high = np.clip(summary[f"{m}_high"].to_numpy(float), lo, hi)
    return np.vstack([mean - low, high - mean]).clip(min=0)


def score_bars(summary: pd.DataFrame, seeds: pd.DataFrame | None, title: str, out_dir: Path,
               metric: str = "linear_top1") -> list[Path]:
    """Bars of a score per row, from 0, with 95% CI error bars over seeds (clipped to [0, 100]) and
    every seed as a dot, one thin line joining a seed across the rows (the design pairs them); the
    baseline grey with a dashed line, reference rows hatched; rows named as the tables name them."""
    if f"{metric}_mean" not in summary or summary[f"{metric}_mean"].isna().all():
        return []
    plt = _plt()
    s = summary[summary[f"{metric}_mean"].notna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(s) + 1.5), 4.4))
    means, err = s[f"{metric}_mean"].to_numpy(float), np.nan_to_num(_yerr(s, metric))
    colors = ["tab:gray" if b else "tab:orange" if k != "cell" else "tab:blue" for b, k in zip(s["baseline"], s["kind"])]
    bars = ax.bar(range(len(s)), means, yerr=err, color=colors, alpha=0.55, capsize=4, zorder=1)
    for bar, kind in zip(bars, s["kind"]):
        if kind != "cell":
            bar.set_hatch("//")
    for x, mean in enumerate(means):
        ax.text(x, 1.0, f"{mean:.2f}", ha="center", va="bottom", fontsize=7, zorder=3)
    if seeds is not None and metric in seeds:
        where = {cell: x for x, cell in enumerate(s["cell"])}
        own = seeds[seeds["cell"].isin(where) & seeds[metric].notna()]
        for _, g in own.groupby("seed"):
            g = g.assign(x=g["cell"].map(where)).sort_values("x")
            ax.plot(g["x"], g[metric], color="black", lw=0.5, alpha=0.35, zorder=2)
            ax.scatter(g["x"], g[metric], s=10, color="black", zorder=4)
    names = [f"{_wrap(label)}\nn={int(n)}" for label, n in zip(s["setting"], s[f"{metric}_n"])]
    ax.set_xticks(range(len(s)), names, fontsize=7)
    ax.set_ylabel(f"{METRICS[metric].label} (%)")
    ax.set_ylim(0.0, 100.0)
    if s["baseline"].any():
        ax.axhline(s[s["baseline"]].iloc[0][f"{metric}_mean"], color="tab:gray", lw=1, ls="--", zorder=0)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("grey: the baseline (dashed line); hatched: measured, not pretrained here; error bars: 95% CI "
                  "over seeds; dots: seeds", fontsize=7)
    return _save(fig, out_dir / metric)


def curves(hist: pd.DataFrame, order: list[str], plain: set[str], out_dir: Path, analysis_N: int,
           labels: dict[str, str] | None = None, mix_start_step: int = 0) -> list[Path]:
    """The training-curve figures of ``CURVES``: one line per row (mean over seeds at each logged
    step, with its 95% CI band clipped to the values the quantity can take), dashed for the
    plain-MoCo rows in ``plain``, named by ``labels`` (as the tables name the rows), the legend
    beside the plot; a dotted line where mixing starts (``mix_start_step`` > 0); ``analysis_N``:
    the grid's one "N hardest" of the top-N statistics, named on their axes."""
    labels = labels or {}
    plt = _plt()
    files: list[Path] = []
    for metric, (stem, ylabel, title) in CURVES.items():
        h = hist[hist["metric"] == metric]
        if h.empty:
            continue
        scale = 100.0 if metric in PERCENT else 1.0
        fig, ax = plt.subplots(figsize=(9.0, 3.9))
        lo_b, hi_b = _bounds(metric)
        for cell in [c for c in order if c in set(h["cell"])]:
            g = h[h["cell"] == cell].groupby("step")["value"]
            ivs = [stats.mean_ci((v * scale).tolist()) for _, v in g]
            steps = list(g.groups)
            mean = np.array([iv.mean for iv in ivs])
            low = np.clip([iv.low if iv.n > 1 else iv.mean for iv in ivs], lo_b, hi_b)
            high = np.clip([iv.high if iv.n > 1 else iv.mean for iv in ivs], lo_b, hi_b)
            n = max(iv.n for iv in ivs)
            ax.plot(steps, mean, "--" if cell in plain else "-", label=f"{labels.get(cell, cell)} (n={n})", lw=1.4)
            ax.fill_between(steps, low, high, alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel.format(N=analysis_N))
        ax.set_title(title.format(N=analysis_N), fontsize=9)
        if mix_start_step > 0:
            ax.axvline(mix_start_step, color="black", lw=0.8, ls=":", label="mixing starts")
        ax.legend(fontsize=7, title=f"row (dashed: MoCo v2); {BAND}", title_fontsize=7, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        files += _save(fig, out_dir / stem)
    return files


def alignment_uniformity(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """End-of-training alignment against uniformity per row, 95% CI error bars over seeds."""
    if any(f"{m}_mean" not in summary or summary[f"{m}_mean"].isna().all() for m in ("alignment", "uniformity")):
        return []
    plt = _plt()
    s = summary[summary["alignment_mean"].notna()].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(8.0, 4.0))
    xerr, yerr = np.nan_to_num(_yerr(s, "uniformity")), np.nan_to_num(_yerr(s, "alignment"))
    for i, r in s.iterrows():
        ax.errorbar(r["uniformity_mean"], r["alignment_mean"], xerr=xerr[:, i:i + 1], yerr=yerr[:, i:i + 1], fmt="o",
                    capsize=3, label=f"{r['setting']} (n={int(r['alignment_n'])})")
    ax.set_xlabel("uniformity  log E exp(-2 |z - z'|^2)  (lower is more uniform)")
    ax.set_ylabel("alignment  E |z1 - z2|^2  (lower is better aligned)")
    ax.set_title("Alignment vs uniformity of held-out embeddings (end of training; 95% CI)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _save(fig, out_dir / "alignment_uniformity")


def _heatmap_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows an N x s heatmap can show: the grid's cells with a linear top-1, but those that make a
    kind beyond MoCHi's (another setting at the same N, s, s')."""
    d = summary[(summary["kind"] == "cell") & summary["linear_top1_mean"].notna()]
    return d[~d["other_kinds"].astype(bool)] if "other_kinds" in d else d


def heatmap_panels(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, linear top-1 means over N x s) per loss and s': each loss's MoCHi cells with that s',
    and the loss without mixing at N = s = 0 (MoCo v2 in InfoNCE's panels), so that no two
    settings share a cell: a cell that makes a kind beyond MoCHi's (SynCo's, the control) is in no
    panel. A panel needs >= 2 values of N and of s."""
    if not {"N", "s", "s_prime", "loss", "mixes"} <= set(summary) or "linear_top1_mean" not in summary:
        return []
    d = _heatmap_cells(summary)
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
    d = _heatmap_cells(summary)
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels) + 1.2, 3.8), squeeze=False,
                             layout="constrained")
    lo, hi = min(p.min().min() for _, p in panels), max(p.max().max() for _, p in panels)
    # The colour scale spans at least the widest 95% interval of the cells: a difference within noise
    # stays one colour instead of the scale's two ends.
    noise = float(np.nanmax((d["linear_top1_high"] - d["linear_top1_low"]).to_numpy(float), initial=0.0)) \
        if "linear_top1_low" in d else 0.0
    if hi - lo < noise:
        mid = (hi + lo) / 2
        lo, hi = mid - noise / 2, mid + noise / 2
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
    fig, ax = plt.subplots(figsize=(8.2, 3.8))
    for name, g in d.groupby("setting", sort=False):
        g = g.sort_values("K")
        ax.errorbar(g["K"], g["linear_top1_mean"], yerr=np.nan_to_num(_yerr(g, "linear_top1")), marker="o",
                    capsize=3, label=f"{name} (n={int(g['linear_top1_n'].min())})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("memory size K (queue length)")
    ax.set_ylabel("linear top-1 (%)")
    ax.set_title("Accuracy vs memory size (error bars: 95% CI over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return _save(fig, out_dir / "accuracy_vs_K")
