"""A grid's numbers per row, with their uncertainty: mean and 95% interval over seeds, each row's
difference to the baseline row with its interval, test and verdict (``ablations.stats``), sourced
reference numbers beside ours, the printable tables and what they let one conclude, in words.

``summarize`` makes one typed frame (``table.csv``); every other form (Markdown, LaTeX, HTML, the
printed table) is formatted from it, so all carry the same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ablations import spec, stats
from ablations.collect import METRICS, ROW_COLUMNS, typed_axes
from pretrain.run.errors import UserError

# The scores the main table shows (where present); the mechanism table shows how MoCHi changes the task.
TABLE_METRICS = ["linear_top1", "knn_top1", "voc_AP50", "voc_AP", "voc_AP75", "coco_box_AP", "coco_mask_AP"]
MECHANISM_METRICS = ["proxy_acc", "proxy_acc_all", "hardest_cos", "syn_top10_share"]
DETECT = 0.5  # points: the difference the "seeds needed" column is for
REFERENCE_FILE = Path(__file__).resolve().parent.parent / "results" / "reference.yaml"


def baseline_id(grid: spec.Grid, seeds: pd.DataFrame) -> str | None:
    """The row every other is compared with: the grid's named baseline, else its first plain-MoCo
    cell (``Objective.is_plain_moco``); None if it has neither."""
    if grid.baseline is not None:
        return grid.baseline
    plain = [c for c in grid.row_ids() if c in set(seeds.loc[seeds["plain_moco"].astype(bool), "cell"])]
    return plain[0] if plain else None


def summarize(seeds: pd.DataFrame, grid: spec.Grid, axes: list[str], detect: float = DETECT) -> pd.DataFrame:
    """One row per table row, in grid order: its columns, ``n`` (its seeds), and per metric M with
    values ``M_mean, M_low, M_high`` (95% t interval over seeds), ``M_std`` (sample sd), ``M_n``,
    ``M_trial_std`` (transfer: the spread of a seed's trials, averaged), and against the baseline ``M_diff, M_diff_low, M_diff_high, M_p, M_p_holm, M_test,
    M_verdict, M_seeds_needed`` (seeds to detect ``detect`` points at the observed spread)."""
    base = baseline_id(grid, seeds)
    order = [r for r in grid.row_ids() if r in set(seeds["cell"])]
    first = seeds.drop_duplicates("cell").set_index("cell")
    out = pd.DataFrame({"cell": order})
    for col in [*axes, *[c for c in ROW_COLUMNS if c not in ("cell", "seed")]]:
        out[col] = [first.at[r, col] for r in order]
    typed_axes(out, axes)
    out["baseline"] = [r == base for r in order]
    out["n"] = [int(seeds.loc[seeds["cell"] == r, "seed"].nunique()) for r in order]
    by = {r: seeds[seeds["cell"] == r] for r in order}
    for name, m in METRICS.items():
        if seeds[name].isna().all():
            continue
        ivs = [stats.mean_ci(by[r][name].tolist()) for r in order]
        out[f"{name}_mean"] = [iv.mean for iv in ivs]
        out[f"{name}_low"] = [iv.low for iv in ivs]
        out[f"{name}_high"] = [iv.high for iv in ivs]
        out[f"{name}_std"] = [iv.sd for iv in ivs]
        out[f"{name}_n"] = [iv.n for iv in ivs]
        if f"{name}_trial_std" in seeds:
            out[f"{name}_trial_std"] = [by[r][f"{name}_trial_std"].mean() for r in order]
        if base is None or base not in by or by[base][name].isna().all():
            continue
        base_values = dict(zip(by[base]["seed"], by[base][name]))
        compared = [r for r in order if r != base]
        comps = stats.with_holm([stats.compare(dict(zip(by[r]["seed"], by[r][name])), base_values,
                                               paired=bool(first.at[r, "paired"])) for r in compared])
        found = dict(zip(compared, comps))
        for field in ("diff", "low", "high", "p", "p_holm", "test"):
            out[f"{name}_{'diff_' + field if field in ('low', 'high') else field}"] = [
                getattr(found[r], field) if r in found else (0.0 if field == "diff" else "" if field == "test" else math.nan)
                for r in order]
        out[f"{name}_verdict"] = ["baseline" if r == base else stats.verdict(found[r], m.higher_is_better)
                                  for r in order]
        out[f"{name}_seeds_needed"] = [
            stats.seeds_needed(detect, found[r].sd, paired=found[r].test != stats.WELCH) if r in found and m.points
            else None for r in order]
    return out


def shown(summary: pd.DataFrame, names: list[str]) -> list[str]:
    """The metrics of ``names`` the summary has values for."""
    return [m for m in names if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]


def has_comparison(summary: pd.DataFrame, m: str) -> bool:
    """Whether the summary compares metric ``m`` with a baseline row."""
    return f"{m}_verdict" in summary


def fmt(mean: float, sd: float, n: int, best: bool = False) -> str:
    """'mean ± sd (n=k)' (bold with ``best``); empty for a missing mean."""
    if pd.isna(mean):
        return ""
    text = f"{mean:.2f}" + (f" ± {sd:.2f}" if pd.notna(sd) else "") + f" (n={n})"
    return f"**{text}**" if best else text


def fmt_interval(mean: float, low: float, high: float, signed: bool = False) -> str:
    """'mean [low, high]' ('+0.95 [-0.30, +2.20]' when ``signed``); no bounds where n < 2."""
    if pd.isna(mean):
        return ""
    f = "{:+.2f}" if signed else "{:.2f}"
    return f.format(mean) + (f" [{f.format(low)}, {f.format(high)}]" if pd.notna(low) else "")


def fmt_p(p: float, test: str) -> str:
    """'0.031 (paired t)'; empty where no test ran."""
    if pd.isna(p) or not test:
        return ""
    return ("<0.001" if p < 0.001 else f"{p:.3f}") + f" ({test})"


def best_rows(summary: pd.DataFrame, m: str) -> set[str]:
    """The row to print in bold: the highest mean among rows significantly better than the baseline."""
    if not has_comparison(summary, m):
        return set()
    better = summary[summary[f"{m}_verdict"] == "better"]
    return {better.loc[better[f"{m}_mean"].idxmax(), "cell"]} if len(better) else set()


def load_reference() -> list[dict]:
    """Sourced reference numbers from ``results/reference.yaml``."""
    return yaml_reference(REFERENCE_FILE)


def yaml_reference(path: Path) -> list[dict]:
    """Reference entries of a YAML file, their cells' values typed; an entry without a source is an error."""
    import yaml

    if not Path(path).is_file():
        return []
    entries = yaml.safe_load(Path(path).read_text()) or []
    for e in entries:
        if not e.get("source") or "value" not in e or e.get("metric") not in METRICS:
            raise UserError(f"{path}: every reference needs preset, cell, a known metric, value and source: {e}")
        e["cell"] = spec.typed_values(e.get("cell") or {})
    return entries


def reference_for(entries: list[dict], preset: str, values: dict, metric: str) -> dict | None:
    """The reference entry for a row of ``preset``'s table with these typed axis values, if any."""
    for e in entries:
        if e["preset"] == preset and e["metric"] == metric and \
                all(values.get(a) == v for a, v in e["cell"].items()):
            return e
    return None


def table(summary: pd.DataFrame, axes: list[str], reference: list[dict] | None = None, preset: str = "",
          metrics: list[str] | None = None, detect: float = DETECT) -> pd.DataFrame:
    """A printable table of ``summary``: axis columns and the method; per metric the value (mean ±
    sd over seeds, n), the difference to the baseline with its 95% interval, the Holm-adjusted p with
    the test that ran, the verdict and the seeds a ``detect``-point difference would need; where
    ``reference`` has a sourced value for the row, the reference and our difference to it."""
    metrics = shown(summary, TABLE_METRICS if metrics is None else metrics)
    t = summary[axes].astype(object).where(summary[axes].notna(), "")
    t["setting"] = summary["setting"]
    for m in metrics:
        label = METRICS[m].label
        best = best_rows(summary, m)
        trial = f"{m}_trial_std" in summary
        t[label] = [fmt(mu, sd, int(n), cell in best) + (f", trials sd {tr:.2f}" if trial and pd.notna(tr) else "")
                    for cell, mu, sd, n, tr in zip(summary["cell"], summary[f"{m}_mean"], summary[f"{m}_std"],
                                                   summary[f"{m}_n"],
                                                   summary[f"{m}_trial_std"] if trial else [math.nan] * len(summary))]
        if has_comparison(summary, m):
            base = summary.loc[summary["baseline"], "setting"].iloc[0]
            t[f"Δ vs {base} [95% CI]"] = [
                "baseline" if b else fmt_interval(d, lo, hi, signed=True)
                for b, d, lo, hi in zip(summary["baseline"], summary[f"{m}_diff"], summary[f"{m}_diff_low"],
                                        summary[f"{m}_diff_high"])]
            t["p (Holm)"] = [fmt_p(p, test) for p, test in zip(summary[f"{m}_p_holm"], summary[f"{m}_test"])]
            t["verdict"] = ["" if b else v for b, v in zip(summary["baseline"], summary[f"{m}_verdict"])]
            if METRICS[m].points:
                t[f"seeds for {detect:g} pt"] = ["" if pd.isna(k) or k is None else str(int(k))
                                                 for k in summary[f"{m}_seeds_needed"]]
            if len(metrics) > 1:  # several metrics: each comparison column names its metric
                t = t.rename(columns={c: f"{label}: {c}" for c in
                                      (f"Δ vs {base} [95% CI]", "p (Holm)", "verdict", f"seeds for {detect:g} pt")})
        refs = [reference_for(reference or [], preset, {a: row[a] for a in axes}, m) for _, row in summary.iterrows()]
        if any(refs):
            t[f"{label} (reference)"] = [
                "" if r is None else f"{r['value']:.2f}" + (f" ± {r['std']:.2f}" if r.get("std") is not None else "")
                for r in refs]
            t[f"Δ {label} vs reference"] = [
                "" if r is None or pd.isna(mu) else f"{mu - r['value']:+.2f}" for r, mu in zip(refs, summary[f"{m}_mean"])]
    return t


def mechanism_table(summary: pd.DataFrame, axes: list[str]) -> pd.DataFrame | None:
    """The paper's mechanism, late in training: proxy-task accuracy over [positive, queue] and with
    the synthetic negatives, the hardest negative's cosine, the synthetic share of the top-10; each
    as mean [95% CI] over seeds, with its difference to the baseline. None without pretraining runs."""
    metrics = shown(summary, MECHANISM_METRICS)
    if not metrics:
        return None
    rows = summary[summary["kind"] == "cell"].reset_index(drop=True)
    t = rows[axes].copy()
    t["setting"] = rows["setting"]
    for m in metrics:
        label = METRICS[m].label
        t[label] = [fmt_interval(mu, lo, hi) + (f" (n={int(n)})" if pd.notna(mu) else "")
                    for mu, lo, hi, n in zip(rows[f"{m}_mean"], rows[f"{m}_low"], rows[f"{m}_high"], rows[f"{m}_n"])]
        if has_comparison(rows, m):
            t[f"{label}: Δ [95% CI], verdict"] = [
                "baseline" if b else "" if pd.isna(d) else fmt_interval(d, lo, hi, signed=True) + f"; {v}"
                for b, d, lo, hi, v in zip(rows["baseline"], rows[f"{m}_diff"], rows[f"{m}_diff_low"],
                                           rows[f"{m}_diff_high"], rows[f"{m}_verdict"])]
    return t


def conclusions(summary: pd.DataFrame, detect: float = DETECT) -> list[str]:
    """What the tables let one conclude, and what they do not, in sentences built from the numbers."""
    out = []
    if not summary["baseline"].any():
        return ["No plain MoCo v2 row (and no --baseline): the rows are not compared with each other."]
    base = summary.loc[summary["baseline"]].iloc[0]
    others = summary[~summary["baseline"]]
    for m in shown(summary, TABLE_METRICS + MECHANISM_METRICS):
        if not has_comparison(summary, m):
            continue
        metric = METRICS[m]
        label = metric.label
        rows = others[others[f"{m}_mean"].notna()]
        if not len(rows):
            continue
        untested = rows[rows[f"{m}_verdict"] == "n too small to test"]
        seeds = f"{int(rows[f'{m}_n'].min())}" if rows[f"{m}_n"].nunique() == 1 else \
            f"{int(rows[f'{m}_n'].min())}-{int(rows[f'{m}_n'].max())}"
        if len(untested) == len(rows):
            out.append(f"{label}: with {seeds} seed(s) per row no test can run (at least {stats.MIN_N} are needed); "
                       f"the differences and intervals in the table are descriptive only.")
            continue
        tested = rows[rows[f"{m}_verdict"] != "n too small to test"]
        words = []
        for _, r in tested.iterrows():
            v = r[f"{m}_verdict"]
            diff = fmt_interval(r[f"{m}_diff"], r[f"{m}_diff_low"], r[f"{m}_diff_high"], signed=True)
            if v == "no detectable difference":
                words.append(f"{r['setting']} does not differ detectably ({diff}, p {fmt_p(r[f'{m}_p_holm'], r[f'{m}_test'])})")
            else:
                words.append(f"{r['setting']} is {v} ({diff}, p {fmt_p(r[f'{m}_p_holm'], r[f'{m}_test'])})")
        sentence = (f"{label}, against {base['setting']} ({fmt(base[f'{m}_mean'], base[f'{m}_std'], int(base[f'{m}_n']))}), "
                    f"Holm-corrected over {len(tested)} row(s) at the 5% level: " + "; ".join(words) + ".")
        if metric.points and metric.higher_is_better:
            needed = [int(k) for k in tested[f"{m}_seeds_needed"] if k is not None and pd.notna(k)]
            if needed:
                sentence += (f" At the observed spread, detecting a {detect:g}-point difference would need about "
                             f"{min(needed)}-{max(needed)} seeds per row" if min(needed) != max(needed) else
                             f" At the observed spread, detecting a {detect:g}-point difference would need about "
                             f"{needed[0]} seeds per row")
                sentence += f" (here {seeds})."
            if (tested[f"{m}_verdict"] == "no detectable difference").all():
                sentence += " No setting can be called better or worse from these runs."
        out.append(sentence)
    return out
