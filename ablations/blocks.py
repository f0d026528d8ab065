"""A grid's tables in compact form, one block per metric: the rows with short headers (mean, n,
Δ with its simultaneous interval, p, verdict, ...) and the legend lines that say what each is. The
terminal prints them (``terminal``) and table.tex typesets them (``report.latex``); table.md,
table.csv and report.html keep every column under its full name.

The axis columns that the setting already spells (N, s, s_prime, the loss's own) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ablations.collect import METRICS
from ablations.summary import (CONTROL_NOTE, DETECT, best_rows, fmt_interval, has_comparison, has_control,
                               mechanism_rows, reference_for, shown)

SHORT_VERDICT = {"no detectable difference": "no difference", "n too small to test": "n too small"}
SHORT_TEST = {"paired t": "t", "Welch t": "W"}
MECHANISM_TITLE = "Mechanism: how hard the task and the negatives are, late in training"


MEAN = "mean ± sd"  # the column of a score's block whose best row each rendering marks its own way


@dataclass
class Block:
    """One metric's table: its heading, rows (text cells) and legend; ``best``: the positions of the
    rows whose mean is marked (the terminal appends " *", LaTeX sets it bold); ``first_of_mechanism``
    opens the mechanism's part."""

    heading: str
    table: pd.DataFrame
    legend: list[str]
    best: tuple[int, ...] = ()
    first_of_mechanism: bool = False


def spelled_axes(summary: pd.DataFrame, axes: list[str]) -> list[str]:
    """The axes worth a column: those whose value the row's setting does not already say (two rows with
    one setting and different values, as K in a memory grid)."""
    keep = []
    for a in axes:
        values = summary[["setting", a]].dropna()
        if len(values) and (values.groupby("setting")[a].nunique() > 1).any():
            keep.append(a)
    return keep


def axis_columns(rows: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The axis values of each row as text: '' where a row has none (reference rows), 0.1 not 0.100000."""
    return pd.DataFrame({a: ["" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v) for v in rows[a]]
                         for a in axes}, index=rows.index)


def _count(n: float, of: int | None) -> str:
    return "" if pd.isna(n) else f"{int(n)}" + (f"/{of}" if of is not None and int(n) < of else "")


def _p(p: float, test: str) -> str:
    if pd.isna(p) or not test:
        return ""
    return ("<0.001" if p < 0.001 else f"{p:.3f}") + f" {SHORT_TEST.get(test, test)}"


def score_block(summary: pd.DataFrame, m: str, axes: list[str], seeds: int | None, reference: list[dict | None],
                detect: float = DETECT) -> Block:
    """The block of one score (linear top-1, a transfer AP): its table, the legend lines under it and
    its best row."""
    best = best_rows(summary, m)
    t = axis_columns(summary, axes)
    t.insert(0, "row", summary["setting"])
    t[MEAN] = ["" if pd.isna(mu) else f"{mu:.2f}" + (f" ± {sd:.2f}" if pd.notna(sd) else "")
               for mu, sd in zip(summary[f"{m}_mean"], summary[f"{m}_std"])]
    t["n"] = [_count(n, seeds) for n in summary[f"{m}_n"]]
    legend = ["mean ± sd: over seeds; n: seeds with a value" + (f" of the {seeds} asked for" if seeds else "")]
    if has_comparison(summary, m):
        base = summary.loc[summary["baseline"], "setting"].iloc[0]
        t["Δ [95% CI]"] = ["baseline" if b else fmt_interval(d, lo, hi, signed=True)
                           for b, d, lo, hi in zip(summary["baseline"], summary[f"{m}_diff"],
                                                   summary[f"{m}_diff_low"], summary[f"{m}_diff_high"])]
        t["p"] = [_p(p, test) for p, test in zip(summary[f"{m}_p_adj"], summary[f"{m}_test"])]
        t["verdict"] = ["" if b else SHORT_VERDICT.get(v, v)
                        for b, v in zip(summary["baseline"], summary[f"{m}_verdict"])]
        legend.append(f"Δ: the row minus {base}, simultaneous 95% interval over the row's family; p: Bonferroni-"
                      f"adjusted, t paired t-test, W Welch's")
        if METRICS[m].points:
            t[f"seeds@{detect:g}"] = ["" if pd.isna(k) or k is None else str(int(k))
                                      for k in summary[f"{m}_seeds_needed"]]
            legend.append(f"seeds@{detect:g}: seeds per row for 80% power to detect a {detect:g}-point difference")
        if best:
            legend.append("*: the best row, significantly better than the baseline")
    if has_control(summary, m):
        t["Δ control [95% CI]"] = [fmt_interval(d, lo, hi, signed=True) for d, lo, hi in
                                   zip(summary[f"{m}_ctrl_diff"], summary[f"{m}_ctrl_low"], summary[f"{m}_ctrl_high"])]
        t["p ctl"] = [_p(p, test) for p, test in zip(summary[f"{m}_ctrl_p_adj"], summary[f"{m}_ctrl_test"])]
        legend.append(f"Δ control: {CONTROL_NOTE}; p ctl: Bonferroni-adjusted")
    if any(reference):
        t["paper"] = ["" if r is None else f"{r['value']:.2f}" for r in reference]
        t["Δ paper"] = ["" if r is None or pd.isna(mu) else f"{mu - r['value']:+.2f}"
                        for r, mu in zip(reference, summary[f"{m}_mean"])]
        legend.append("paper: the published value for the row (sources in table.md); Δ paper: ours minus it")
    heading = f"{METRICS[m].label} (%)" if METRICS[m].points else METRICS[m].label
    return Block(heading, t, legend, tuple(i for i, cell in enumerate(summary["cell"]) if cell in best))


def mechanism_block(summary: pd.DataFrame, m: str, axes: list[str], first: bool = False) -> Block:
    """The block of one mechanism quantity, over the pretrained rows (``first``: it opens the mechanism)."""
    rows = mechanism_rows(summary)
    t = axis_columns(rows, axes)
    t.insert(0, "row", rows["setting"])
    t["mean [95% CI]"] = [fmt_interval(mu, lo, hi) for mu, lo, hi in
                          zip(rows[f"{m}_mean"], rows[f"{m}_low"], rows[f"{m}_high"])]
    t["n"] = [_count(n, None) for n in rows[f"{m}_n"]]
    legend = ["mean [95% CI]: over seeds, the last quarter of training"]
    if has_comparison(rows, m):
        base = rows.loc[rows["baseline"], "setting"].iloc[0] if rows["baseline"].any() else "the baseline"
        t["Δ [95% CI]"] = ["baseline" if b else fmt_interval(d, lo, hi, signed=True)
                           for b, d, lo, hi in zip(rows["baseline"], rows[f"{m}_diff"], rows[f"{m}_diff_low"],
                                                   rows[f"{m}_diff_high"])]
        t["verdict"] = ["" if b else SHORT_VERDICT.get(v, v) for b, v in zip(rows["baseline"], rows[f"{m}_verdict"])]
        legend.append(f"Δ: the row minus {base}, simultaneous 95% interval over the methods")
    return Block(METRICS[m].label, t, legend, first_of_mechanism=first)


def blocks(summary: pd.DataFrame, axes: list[str], table_metrics: list[str], mechanism_metrics: list[str],
           reference: list[dict], preset: str, seeds: int | None) -> list[Block]:
    """Every block of a grid's tables: each score, then each quantity of the mechanism."""
    keep = spelled_axes(summary, axes)
    out = []
    for m in shown(summary, table_metrics):
        refs = [reference_for(reference, preset, {a: row[a] for a in axes}, m) for _, row in summary.iterrows()]
        out.append(score_block(summary, m, keep, seeds, refs))
    rows = mechanism_rows(summary)
    mech_axes = spelled_axes(rows, axes)
    out += [mechanism_block(summary, m, mech_axes, first=i == 0)
            for i, m in enumerate(shown(rows, mechanism_metrics))]
    return out


def marked(b: Block, mark) -> pd.DataFrame:
    """``b``'s table with ``mark`` applied to its best rows' means (the renderings' own marks)."""
    t = b.table.copy()
    for i in b.best:
        t.iloc[i, t.columns.get_loc(MEAN)] = mark(t.iloc[i, t.columns.get_loc(MEAN)])
    return t
