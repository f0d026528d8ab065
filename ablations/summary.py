"""A grid's numbers per cell: mean, spread and seed count of every metric, the baseline row, and
sourced reference numbers beside ours, as the printable table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ablations import spec
from ablations.collect import METRICS
from pretrain.run.errors import UserError

# Shown in the tables (where present); the others feed the figures.
TABLE_METRICS = ["linear_top1", "knn_top1", "voc_AP50", "voc_AP", "voc_AP75", "coco_box_AP", "coco_mask_AP",
                 "proxy_acc"]
REFERENCE_FILE = Path(__file__).resolve().parent.parent / "results" / "reference.yaml"


def summarize(seeds: pd.DataFrame, order: list[str], axes: list[str]) -> pd.DataFrame:
    """Mean, std (ddof 1; NaN for one seed) and seed count of each metric per cell, in grid order."""
    agg = seeds.groupby("cell").agg(
        **{f"{m}_{f}": (m, f) for m in METRICS for f in ("mean", "std")}, n=("seed", "nunique")
    )
    first = seeds.drop_duplicates("cell").set_index("cell")[[*axes, "method", "plain_moco"]]
    out = first.join(agg).reindex([c for c in order if c in agg.index])
    return out.reset_index()


def baseline_row(summary: pd.DataFrame) -> pd.Series | None:
    """The first plain-MoCo row (``Mixing.is_plain_moco``), or None if the grid has none."""
    plain = summary[summary["plain_moco"].astype(bool)]
    return plain.iloc[0] if len(plain) else None


def fmt(mean: float, std: float, n: int, best: bool = False) -> str:
    """'mean ± std (n=k)' (bold with ``best``); empty for a missing mean."""
    if pd.isna(mean):
        return ""
    text = f"{mean:.2f}" + (f" ± {std:.2f}" if pd.notna(std) else "") + f" (n={n})"
    return f"**{text}**" if best else text


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


def table(summary: pd.DataFrame, axes: list[str], reference: list[dict] | None = None,
          preset: str = "") -> pd.DataFrame:
    """The printable table: axis columns, 'mean ± std (n)' per metric, best marked, delta to the MoCo row,
    and, where ``reference`` has a sourced value for the row, the reference and our difference to it."""
    shown = [m for m in TABLE_METRICS if summary[f"{m}_mean"].notna().any()]
    base = baseline_row(summary)
    t = summary[axes].copy()
    for m in shown:
        label = METRICS[m].label
        col = summary[f"{m}_mean"]
        best = col.max()
        mark = m != "proxy_acc"  # a harder proxy task is the point of MoCHi, not a score
        t[label] = [fmt(mu, sd, n, mark and mu == best and col.notna().sum() > 1)
                    for mu, sd, n in zip(col, summary[f"{m}_std"], summary["n"])]
        if base is not None and pd.notna(base[f"{m}_mean"]):
            t[f"Δ {label} vs MoCo"] = [
                "baseline" if cell == base["cell"] else f"{mu - base[f'{m}_mean']:+.2f}" if pd.notna(mu) else ""
                for cell, mu in zip(summary["cell"], col)
            ]
        refs = [reference_for(reference or [], preset, dict(row[axes]), m) for _, row in summary.iterrows()]
        if any(refs):
            t[f"{label} (reference)"] = [
                "" if r is None else f"{r['value']:.2f}" + (f" ± {r['std']:.2f}" if r.get("std") is not None else "")
                for r in refs]
            t[f"Δ {label} vs reference"] = [
                "" if r is None or pd.isna(mu) else f"{mu - r['value']:+.2f}" for r, mu in zip(refs, col)]
    return t
