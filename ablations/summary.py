"""A grid's numbers per row, with their uncertainty: mean and 95% interval over seeds, each row's
difference to the baseline row with its simultaneous interval, test and verdict within its family
(``ablations.stats``: the methods, and the reference rows on their own), sourced reference numbers
beside ours, the printable tables and what they let one conclude, in words.

``summarize`` makes one typed frame (``table.csv``); every other form (Markdown, LaTeX, HTML, the
printed table) is formatted from it, so all carry the same numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ablations import controls, spec, stats
from ablations.collect import METRICS, ROW_COLUMNS, typed_axes
from pretrain.run.errors import UserError

# The scores the main table shows (where present); the mechanism table shows how MoCHi changes the task.
TABLE_METRICS = ["linear_top1", "knn_top1", "voc_AP50", "voc_AP", "voc_AP75", "coco_box_AP", "coco_mask_AP"]
MECHANISM_METRICS = ["proxy_acc", "proxy_acc_all", "hardest_cos", "syn_top10_share"]
DETECT = 0.5  # points: the difference the "seeds needed" column is for
REFERENCE_FILE = Path(__file__).resolve().parent / "reference.yaml"  # package data: an input, not a result
# A compared row's family: the grid's cells are hypotheses about methods; random init and released
# checkpoints are reference rows, adjusted among themselves.
METHODS, REFERENCES = "methods", "reference rows"


def baseline_id(grid: spec.Grid, seeds: pd.DataFrame) -> str | None:
    """The row every other is compared with: the grid's named baseline, else its first plain-MoCo
    cell (``Objective.is_plain_moco``); None if it has neither."""
    if grid.baseline is not None:
        return grid.baseline
    plain = [c for c in grid.row_ids() if c in set(seeds.loc[seeds["plain_moco"].astype(bool), "cell"])]
    return plain[0] if plain else None


def family_of(kind: str) -> str:
    """The family of a compared row of this kind (``collect.ROW_COLUMNS``' kind): METHODS for a
    cell, REFERENCES for random init and released checkpoints."""
    return METHODS if kind == "cell" else REFERENCES


def summarize(seeds: pd.DataFrame, grid: spec.Grid, axes: list[str], detect: float = DETECT) -> pd.DataFrame:
    """One row per table row, in grid order: its columns, ``family`` ("baseline", METHODS or
    REFERENCES), ``n`` (its seeds), and per metric M with values ``M_mean, M_low, M_high`` (95% t
    interval over seeds), ``M_std`` (sample sd), ``M_n``, ``M_trial_std`` (transfer: the spread of a
    seed's trials, averaged), and against the baseline, within the row's family (``stats.family``):
    ``M_diff``, ``M_diff_low, M_diff_high`` (the simultaneous interval the tables show, at level
    ``M_diff_level`` = 1 - 0.05 / ``M_family_m``), ``M_diff_low_unadj, M_diff_high_unadj`` (the
    row's own 95% interval), ``M_p`` and ``M_p_adj`` (Bonferroni within the family), ``M_test``,
    ``M_verdict`` and ``M_seeds_needed`` (seeds to detect ``detect`` points at the observed spread
    and the family's level). A row with a reweighted control in the grid (``controls``) names it in
    ``control`` and carries the row minus it: ``M_ctrl_diff``, ``M_ctrl_low``, ``M_ctrl_high``,
    ``M_ctrl_p_adj``, ``M_ctrl_test``, ``M_ctrl_family_m``, ``M_ctrl_verdict`` (paired on seeds;
    Bonferroni over the rows that have a control)."""
    base = baseline_id(grid, seeds)
    order = [r for r in grid.row_ids() if r in set(seeds["cell"])]
    control = {r: c for r, c in controls.controls(grid).items() if r in order and c in order}
    first = seeds.drop_duplicates("cell").set_index("cell")
    out = pd.DataFrame({"cell": order})
    for col in [*axes, *[c for c in ROW_COLUMNS if c not in ("cell", "seed")]]:
        out[col] = [first.at[r, col] for r in order]
    typed_axes(out, axes)
    out["baseline"] = [r == base for r in order]
    out["family"] = ["baseline" if r == base else family_of(first.at[r, "kind"]) for r in order]
    out["n"] = [int(seeds.loc[seeds["cell"] == r, "seed"].nunique()) for r in order]
    out["control"] = [control.get(r, "") for r in order]
    family = dict(zip(order, out["family"]))
    by = {r: seeds[seeds["cell"] == r] for r in order}
    cols: dict[str, list] = {}  # every metric column, joined at once (one insert each would fragment the frame)
    for name, m in METRICS.items():
        if seeds[name].isna().all():
            continue
        ivs = [stats.mean_ci(by[r][name].tolist()) for r in order]
        cols[f"{name}_mean"] = [iv.mean for iv in ivs]
        cols[f"{name}_low"] = [iv.low for iv in ivs]
        cols[f"{name}_high"] = [iv.high for iv in ivs]
        cols[f"{name}_std"] = [iv.sd for iv in ivs]
        cols[f"{name}_n"] = [iv.n for iv in ivs]
        if f"{name}_trial_std" in seeds:
            cols[f"{name}_trial_std"] = [by[r][f"{name}_trial_std"].mean() for r in order]
        if control:  # each row with a reweighted control against it, paired on seeds, a family of their own
            with_control = list(control)
            comps = dict(zip(with_control, stats.family([
                stats.compare(dict(zip(by[r]["seed"], by[r][name])),
                              dict(zip(by[control[r]]["seed"], by[control[r]][name]))) for r in with_control])))
            for key, get in (("diff", lambda c: c.diff), ("low", lambda c: c.low), ("high", lambda c: c.high),
                             ("p_adj", lambda c: c.p_adj), ("test", lambda c: c.test), ("family_m", lambda c: c.m)):
                cols[f"{name}_ctrl_{key}"] = [get(comps[r]) if r in comps else ("" if key == "test" else math.nan)
                                              for r in order]
            cols[f"{name}_ctrl_verdict"] = [stats.verdict(comps[r], m.higher_is_better) if r in comps else ""
                                            for r in order]
        if base is None or base not in by or by[base][name].isna().all():
            continue
        base_values = dict(zip(by[base]["seed"], by[base][name]))
        found: dict[str, stats.Comparison] = {}
        for fam in (METHODS, REFERENCES):
            rows = [r for r in order if family[r] == fam]
            comps = [stats.compare(dict(zip(by[r]["seed"], by[r][name])), base_values,
                                   paired=bool(first.at[r, "paired"])) for r in rows]
            found.update(zip(rows, stats.family(comps)))

        def column(get, missing=math.nan) -> list:
            return [get(found[r]) if r in found else missing for r in order]

        cols[f"{name}_diff"] = column(lambda c: c.diff, 0.0)
        cols[f"{name}_diff_low"] = column(lambda c: c.low)
        cols[f"{name}_diff_high"] = column(lambda c: c.high)
        cols[f"{name}_diff_level"] = column(lambda c: c.level)
        cols[f"{name}_diff_low_unadj"] = column(lambda c: c.interval(0.95)[0])
        cols[f"{name}_diff_high_unadj"] = column(lambda c: c.interval(0.95)[1])
        cols[f"{name}_p"] = column(lambda c: c.p)
        cols[f"{name}_p_adj"] = column(lambda c: c.p_adj)
        cols[f"{name}_test"] = column(lambda c: c.test, "")
        cols[f"{name}_family_m"] = column(lambda c: c.m)
        cols[f"{name}_verdict"] = ["baseline" if r == base else stats.verdict(found[r], m.higher_is_better)
                                  for r in order]
        cols[f"{name}_seeds_needed"] = [
            stats.seeds_needed(detect, found[r].sd, paired=found[r].test != stats.WELCH,
                               alpha=stats.ALPHA / found[r].m) if r in found and m.points else None for r in order]
    return pd.concat([out, pd.DataFrame(cols)], axis=1)


def shown(summary: pd.DataFrame, names: list[str]) -> list[str]:
    """The metrics of ``names`` the summary has values for."""
    return [m for m in names if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]


def has_comparison(summary: pd.DataFrame, m: str) -> bool:
    """Whether the summary compares metric ``m`` with a baseline row."""
    return f"{m}_verdict" in summary


def has_control(summary: pd.DataFrame, m: str) -> bool:
    """Whether some row of the summary is compared with its reweighted control on metric ``m``."""
    return f"{m}_ctrl_diff" in summary and summary[f"{m}_ctrl_diff"].notna().any()


CONTROL_NOTE = ("the row minus its reweighted control (the same setting with the same N and as many copies of "
                "hard negatives' own logits as the row has synthetic points), paired on seeds, simultaneous 95% "
                "interval over the rows that have one: a row that gains no more than its control gains nothing "
                "from its new points")


def fmt(mean: float, sd: float, n: int, best: bool = False, of: int | None = None) -> str:
    """'mean ± sd (n=k)' (bold with ``best``), 'n=k of m' where ``of`` seeds were asked for and
    fewer have a value; empty for a missing mean."""
    if pd.isna(mean):
        return ""
    count = f"n={n}" + (f" of {of}" if of is not None and n < of else "")
    text = f"{mean:.2f}" + (f" ± {sd:.2f}" if pd.notna(sd) else "") + f" ({count})"
    return f"**{text}**" if best else text


def missing_seeds(seeds: pd.DataFrame, expected: int, metrics: list[str]) -> list[str]:
    """One line per row and metric of ``metrics`` that has a value for some of its ``expected``
    seeds but not for all (a probe whose result is NaN, a job that never logged): which seeds, so
    that a table never loses a unit silently."""
    lines = []
    for m in metrics:
        if m not in seeds or seeds[m].isna().all():
            continue
        for row, g in seeds.groupby("cell", sort=False):
            have = set(g.loc[np.isfinite(g[m].astype(float)), "seed"].astype(int))
            lost = sorted(set(range(expected)) - have)
            if have and lost:
                lines.append(f"{row}: {METRICS[m].label} from {len(have)} of {expected} seeds; seed"
                             f"{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} "
                             f"{'have' if len(lost) > 1 else 'has'} no finite value (not finished, or NaN)")
    return lines


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
    """The row to print in bold: the highest mean among the methods (the grid's cells) significantly
    better than the baseline; reference rows are never bold."""
    if not has_comparison(summary, m):
        return set()
    better = summary[(summary[f"{m}_verdict"] == "better") & (summary["kind"] == "cell")]
    return {better.loc[better[f"{m}_mean"].idxmax(), "cell"]} if len(better) else set()


def load_reference() -> list[dict]:
    """Sourced reference numbers from ``ablations/reference.yaml`` (shipped with the package)."""
    return yaml_reference(REFERENCE_FILE)


def yaml_reference(path: Path) -> list[dict]:
    """Reference entries of a YAML file, their cells' values typed; an entry without a source is an error."""
    from pretrain.run import yamlfile

    if not Path(path).is_file():
        return []
    entries = yamlfile.read(path) or []
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


def _percent(level: float) -> str:
    """0.98333 -> '98.33%'."""
    return f"{100 * level:.4g}%"


def family_note(summary: pd.DataFrame, metrics: list[str]) -> str:
    """The note under a table of ``metrics``: which family each compared row is in and the level its
    Δ interval is shown at; "" where nothing is compared."""
    metrics = [m for m in metrics if has_comparison(summary, m)]
    parts = []
    for fam in (METHODS, REFERENCES):
        rows = summary[summary["family"] == fam]
        if not len(rows) or not metrics:
            continue
        sizes: dict[int, list[str]] = {}
        for m in metrics:
            sizes.setdefault(int(rows[f"{m}_family_m"].iloc[0]), []).append(METRICS[m].label)
        levels = "; ".join(f"m = {k}" + (f" for {', '.join(labels)}" if len(sizes) > 1 else "") +
                           f": each at {_percent(1 - stats.ALPHA / k)}" for k, labels in sizes.items())
        names = ", ".join(rows["setting"])
        parts.append(f"the methods ({names}; {levels})" if fam == METHODS else
                     f"the reference rows ({names}; {levels}), which are not hypotheses about methods and form "
                     f"a family of their own")
    control = f" Δ vs its reweighted control: {CONTROL_NOTE}." if any(has_control(summary, m) for m in metrics) else ""
    if not parts:
        return control.strip()
    return ("Δ: the row minus the baseline, with a simultaneous 95% interval over the row's family (Bonferroni "
            "over its m tested rows: each interval at level 1 - 0.05/m, each p multiplied by m), so an interval "
            "excludes 0 exactly where the verdict is a difference. Families: " + "; ".join(parts) + "." + control)


def table(summary: pd.DataFrame, axes: list[str], reference: list[dict] | None = None, preset: str = "",
          metrics: list[str] | None = None, detect: float = DETECT, seeds: int | None = None) -> pd.DataFrame:
    """A printable table of ``summary``: axis columns and the method; per metric the value (mean ±
    sd over seeds, n), the difference to the baseline with its simultaneous 95% interval over the
    row's family, the Bonferroni-adjusted p with the test that ran, the verdict and the seeds a
    ``detect``-point difference would need; where ``reference`` has a sourced value for the row, the
    reference and our difference to it; ``seeds``: the seeds each row was asked for (a value from
    fewer says 'n=2 of 3'). ``family_note`` is the note that goes under it."""
    metrics = shown(summary, TABLE_METRICS if metrics is None else metrics)
    t = summary[axes].astype(object).where(summary[axes].notna(), "")
    t["setting"] = summary["setting"]
    for m in metrics:
        label = METRICS[m].label
        best = best_rows(summary, m)
        trial = f"{m}_trial_std" in summary
        t[f"{label} (mean ± sd)"] = [
            fmt(mu, sd, int(n), cell in best, seeds) + (f", trials sd {tr:.2f}" if trial and pd.notna(tr) else "")
            for cell, mu, sd, n, tr in zip(summary["cell"], summary[f"{m}_mean"], summary[f"{m}_std"],
                                           summary[f"{m}_n"],
                                           summary[f"{m}_trial_std"] if trial else [math.nan] * len(summary))]
        if has_comparison(summary, m):
            base = summary.loc[summary["baseline"], "setting"].iloc[0]
            delta, p_col = f"Δ vs {base} [simultaneous 95% CI]", "p (Bonferroni)"
            t[delta] = [
                "baseline" if b else fmt_interval(d, lo, hi, signed=True)
                for b, d, lo, hi in zip(summary["baseline"], summary[f"{m}_diff"], summary[f"{m}_diff_low"],
                                        summary[f"{m}_diff_high"])]
            t[p_col] = [fmt_p(p, test) for p, test in zip(summary[f"{m}_p_adj"], summary[f"{m}_test"])]
            t["verdict"] = ["" if b else v for b, v in zip(summary["baseline"], summary[f"{m}_verdict"])]
            if METRICS[m].points:
                t[f"seeds for {detect:g} pt"] = ["" if pd.isna(k) or k is None else str(int(k))
                                                 for k in summary[f"{m}_seeds_needed"]]
            if len(metrics) > 1:  # several metrics: each comparison column names its metric
                t = t.rename(columns={c: f"{label}: {c}" for c in (delta, p_col, "verdict", f"seeds for {detect:g} pt")})
        if has_control(summary, m):
            named = (lambda c: f"{label}: {c}") if len(metrics) > 1 else (lambda c: c)
            t[named("Δ vs its reweighted control [simultaneous 95% CI]")] = [
                fmt_interval(d, lo, hi, signed=True) for d, lo, hi in
                zip(summary[f"{m}_ctrl_diff"], summary[f"{m}_ctrl_low"], summary[f"{m}_ctrl_high"])]
            t[named("p vs control (Bonferroni)")] = [fmt_p(p, test) for p, test in
                                                   zip(summary[f"{m}_ctrl_p_adj"], summary[f"{m}_ctrl_test"])]
            t[named("verdict vs control")] = list(summary[f"{m}_ctrl_verdict"])
        refs = [reference_for(reference or [], preset, {a: row[a] for a in axes}, m) for _, row in summary.iterrows()]
        if any(refs):
            t[f"{label} (reference, mean ± sd)"] = [
                "" if r is None else f"{r['value']:.2f}" + (f" ± {r['std']:.2f}" if r.get("std") is not None else "")
                for r in refs]
            t[f"Δ {label} vs reference"] = [
                "" if r is None or pd.isna(mu) else f"{mu - r['value']:+.2f}" for r, mu in zip(refs, summary[f"{m}_mean"])]
    return t


def mechanism_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the mechanism table: the pretrained cells (reference rows have no pretraining)."""
    return summary[summary["kind"] == "cell"].reset_index(drop=True)


def mechanism_table(summary: pd.DataFrame, axes: list[str]) -> pd.DataFrame | None:
    """The paper's mechanism, late in training: proxy-task accuracy over [positive, queue] and with
    the synthetic negatives, the hardest negative's cosine, the synthetic share of the top-10; each
    as mean [95% CI] over seeds, with its difference to the baseline (simultaneous 95% interval over
    the methods) and verdict. None without pretraining runs."""
    metrics = shown(summary, MECHANISM_METRICS)
    if not metrics:
        return None
    rows = mechanism_rows(summary)
    t = rows[axes].copy()
    t["setting"] = rows["setting"]
    for m in metrics:
        label = METRICS[m].label
        t[f"{label}, mean [95% CI]"] = [
            fmt_interval(mu, lo, hi) + (f" (n={int(n)})" if pd.notna(mu) else "")
            for mu, lo, hi, n in zip(rows[f"{m}_mean"], rows[f"{m}_low"], rows[f"{m}_high"], rows[f"{m}_n"])]
        if has_comparison(rows, m):
            t[f"{label}: Δ [simultaneous 95% CI], verdict"] = [
                "baseline" if b else "" if pd.isna(d) else fmt_interval(d, lo, hi, signed=True) + f"; {v}"
                for b, d, lo, hi, v in zip(rows["baseline"], rows[f"{m}_diff"], rows[f"{m}_diff_low"],
                                           rows[f"{m}_diff_high"], rows[f"{m}_verdict"])]
    return t


def conclusions(summary: pd.DataFrame, detect: float = DETECT) -> list[str]:
    """What the tables let one conclude, and what they do not, in sentences built from the numbers:
    per metric, each family's verdicts with their simultaneous intervals."""
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
        families = []
        for fam, g in tested.groupby("family", sort=False):
            words = []
            for _, r in g.iterrows():
                v = r[f"{m}_verdict"]
                diff = fmt_interval(r[f"{m}_diff"], r[f"{m}_diff_low"], r[f"{m}_diff_high"], signed=True)
                p = fmt_p(r[f"{m}_p_adj"], r[f"{m}_test"])
                words.append(f"{r['setting']} does not differ detectably ({diff}, p {p})"
                             if v == "no detectable difference" else f"{r['setting']} is {v} ({diff}, p {p})")
            k = int(g[f"{m}_family_m"].iloc[0])
            families.append(f"Among the {fam} (Bonferroni over {k} row(s), intervals at "
                            f"{_percent(1 - stats.ALPHA / k)}): " + "; ".join(words) + ".")
        sentence = (f"{label}, against {base['setting']} ({fmt(base[f'{m}_mean'], base[f'{m}_std'], int(base[f'{m}_n']))}), "
                    f"simultaneous 95% intervals per family. " + " ".join(families))
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
        if has_control(summary, m):
            out.append(control_sentence(summary, m))
    return out


def control_sentence(summary: pd.DataFrame, m: str) -> str:
    """Metric ``m`` of each row against its reweighted control, in words: whether its new points add
    anything beyond more weight on the hardest negatives."""
    rows = summary[summary[f"{m}_ctrl_diff"].notna()]
    k = int(rows[f"{m}_ctrl_family_m"].iloc[0])
    words = []
    for _, r in rows.iterrows():
        v = r[f"{m}_ctrl_verdict"]
        diff = fmt_interval(r[f"{m}_ctrl_diff"], r[f"{m}_ctrl_low"], r[f"{m}_ctrl_high"], signed=True)
        control = summary.loc[summary["cell"] == r["control"], "setting"].iloc[0]
        p = fmt_p(r[f"{m}_ctrl_p_adj"], r[f"{m}_ctrl_test"])
        if v in ("better", "higher"):
            words.append(f"{r['setting']} gains more than {control} ({diff}, p {p}): its new points add something")
        elif v in ("worse", "lower"):
            words.append(f"{r['setting']} is {v} than {control} ({diff}, p {p}): its new points cost")
        elif v == "n too small to test":
            words.append(f"{r['setting']} against {control}: {diff}, too few seeds to test")
        else:
            words.append(f"{r['setting']} does not differ detectably from {control} ({diff}): no gain from its new "
                         f"points can be told from more weight on the hardest negatives")
    return (f"{METRICS[m].label} against the reweighted controls (Bonferroni over {k} row(s), intervals at "
            f"{_percent(1 - stats.ALPHA / k)}): " + "; ".join(words) + ".")
