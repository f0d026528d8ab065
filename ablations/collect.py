"""A grid's runs as a typed table: every run folder synced into MLflow, then one row per cell x seed
read back from ``mlflow.search_runs``.

The run folders are the source of truth (``metrics.jsonl``, ``summary.json``, ``lincls.json``);
``sync_grid`` adds to the MLflow store whatever a job could not log there (a locked or
unreachable store), so the tables see every cell and seed. Axis values do not come back from
MLflow's string tags: each row takes them, typed, from the cell's own config.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablations import spec
from pretrain.run import rundir
from pretrain.run.tracking import LINCLS, PRETRAIN, StoreError, mlflow_client, retry_locked, sync, transfer_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    """A column of a grid's tables: which runs (stage) and which MLflow metric feed it.

    ``higher_is_better``: True for a score (verdicts say better/worse), None for a quantity that
    describes the method (higher/lower). ``late``: a seed's value is the mean of the points logged in
    the last quarter of its training (one logged batch alone is noisy), else the last point.
    ``unmixed``: the value a run without synthetic points has by definition where it logs nothing
    (a share of 0).
    """

    stage: str
    mlflow: str
    label: str
    scale: float = 1.0  # to percent
    higher_is_better: bool | None = True
    late: bool = False
    unmixed: float | None = None
    points: bool = True  # values in percent, so differences are in points


TRANSFER_VOC, TRANSFER_COCO = transfer_stage("voc"), transfer_stage("coco")
METRICS = {
    "linear_top1": Metric(LINCLS, "top1_last", "linear top-1"),
    "knn_top1": Metric(PRETRAIN, "knn_top1", "kNN top-1"),
    "voc_AP50": Metric(TRANSFER_VOC, "AP50", "VOC AP50"),
    "voc_AP": Metric(TRANSFER_VOC, "AP", "VOC AP"),
    "voc_AP75": Metric(TRANSFER_VOC, "AP75", "VOC AP75"),
    "coco_box_AP": Metric(TRANSFER_COCO, "box_AP", "COCO box AP"),
    "coco_mask_AP": Metric(TRANSFER_COCO, "mask_AP", "COCO mask AP"),
    # The paper's mechanism: how hard the proxy task and the hardest negatives are, late in training.
    "proxy_acc": Metric(PRETRAIN, "acc_moco", "proxy-task acc. over [positive, queue] (%)", 100.0, None, True),
    "proxy_acc_all": Metric(PRETRAIN, "acc_all", "proxy-task acc. with the synthetic negatives (%)", 100.0, None,
                            True),
    "hardest_cos": Metric(PRETRAIN, "neg_top1_cos_all", "cosine of the hardest negative", 1.0, None, True,
                          points=False),
    "syn_top10_share": Metric(PRETRAIN, "syn_top10_share", "synthetic share of the top-10 negatives (%)", 100.0,
                              None, True, unmixed=0.0),
    "alignment": Metric(PRETRAIN, "alignment", "alignment", 1.0, None, points=False),
    "uniformity": Metric(PRETRAIN, "uniformity", "uniformity", 1.0, None, points=False),
}
LATE_FRACTION = 0.25  # the share of training whose logged points a late metric averages


def sync_grid(grid_dir: Path, uri: str) -> int:
    """Sync every run folder of the grid (pretraining and probes) into the store; returns runs synced."""
    n = 0
    for folder in rundir.grid_tracked_folders(grid_dir):
        try:
            sync(folder, uri)
            n += 1
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - a store that is down: the next report retries
            log.warning("could not sync %s into MLflow (%s)", folder, e)
    return n


def close_parent(grid_dir: Path, uri: str) -> None:
    """Mark the grid's parent run FINISHED once every cell has its final result."""
    parent = Path(grid_dir) / rundir.PARENT_FILE
    try:
        if parent.is_file():
            retry_locked(mlflow_client(uri).set_terminated, parent.read_text().strip(), "FINISHED")
    except Exception as e:  # noqa: BLE001
        log.warning("could not close the grid's MLflow run (%s)", e)


def runs_frame(uri: str, grid_id: str, experiment: str) -> pd.DataFrame:
    """The grid's child runs from MLflow, one row per run, in ``mlflow.search_runs``'s column layout
    (``run_id``, ``status``, ``tags.*``, ``params.*``, ``metrics.*``).

    Through a client bound to ``uri``: ``mlflow.set_tracking_uri`` would also set
    MLFLOW_TRACKING_URI for every process this one starts later (a grid's jobs, tests' runs).
    """
    client = mlflow_client(uri)
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
    return df[df.get("tags.stage", pd.Series(dtype=str)).isin({m.stage for m in METRICS.values()})]


TABLE_PREFIX = "table."  # a run's metric that holds the value a grid's tables show for it


def log_table_values(uri: str, runs: pd.DataFrame, seeds: pd.DataFrame) -> int:
    """Put on each pretraining and probe run the values the tables show for its seed, named as the
    tables' metrics (``table.linear_top1``, ``table.proxy_acc``, ...) and in their units (percent,
    late-training means), so the MLflow UI reads as the tables do (``acc_moco`` 0.0312 is
    ``table.proxy_acc`` 3.12). A value the run already holds is not logged again; returns how many
    were logged. Transfer stages log one run per trial and keep theirs."""
    from mlflow.entities import Metric

    if runs.empty or not {"tags.cell", "tags.seed", "tags.stage"} <= set(runs):
        return 0
    index = {(r["tags.cell"], str(r["tags.seed"]), r["tags.stage"]): r for _, r in runs.iterrows()}
    batches: dict[str, list] = {}
    now = int(time.time() * 1000)
    for _, row in seeds.iterrows():
        for m, metric in METRICS.items():
            run = index.get((row["cell"], str(int(row["seed"])), metric.stage))
            if metric.stage not in (PRETRAIN, LINCLS) or run is None or m not in row or not np.isfinite(row[m]):
                continue
            if run.get(f"metrics.{TABLE_PREFIX}{m}") == float(row[m]):
                continue
            batches.setdefault(run["run_id"], []).append(Metric(f"{TABLE_PREFIX}{m}", float(row[m]), now, 0))
    client = mlflow_client(uri)
    for run_id, metrics in batches.items():
        retry_locked(client.log_batch, run_id, metrics=metrics)
    return sum(map(len, batches.values()))


def fewer_gpus(runs: pd.DataFrame) -> list[str]:
    """One line per row and transfer task whose trials trained on fewer GPUs than their recipe (the
    detectron2 path tags ``gpus`` and ``recipe_gpus``): its synchronised BN saw 2 x GPUs images per
    step instead of the recipe's, so its AP is not the paper's protocol."""
    if runs.empty or "tags.gpus" not in runs or "tags.recipe_gpus" not in runs:
        return []
    t = runs[runs["tags.stage"].isin({TRANSFER_VOC, TRANSFER_COCO}) & runs["tags.gpus"].notna()
             & runs["tags.recipe_gpus"].notna()]
    t = t[t["tags.gpus"].astype(int) < t["tags.recipe_gpus"].astype(int)]
    lines = []
    for (cell, task, gpus, wanted), g in t.groupby(["tags.cell", "tags.task", "tags.gpus", "tags.recipe_gpus"]):
        seeds = ", ".join(sorted(set(g["tags.seed"]), key=int))
        lines.append(f"{cell} ({task}, seeds {seeds}): trained on {gpus} GPU(s) where the recipe needs {wanted}; "
                     f"the synchronised BN batch was {2 * int(gpus)} images, not {2 * int(wanted)}, so these AP "
                     f"figures are not the paper's protocol (rerun with --gpus {wanted})")
    return lines


ROW_COLUMNS = ["cell", "seed", "setting", "loss", "kind", "plain_moco", "mixes", "other_kinds", "paired"]
# pandas dtypes that keep an axis's type where a reference row has no value for it
NULLABLE = {int: "Int64", float: "Float64", bool: "boolean", str: "object"}


def typed_axes(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """The axis columns of ``df`` in their axis's type, missing values allowed (0, 32, 128, not 0.0)."""
    for a in axes:
        if a in df:
            df[a] = df[a].astype(NULLABLE.get(spec.axis(a).type, "object"))
    return df


def row_columns(grid: spec.Grid, axes: list[str]) -> dict[str, dict[str, object]]:
    """{row id: its columns}: a cell's typed axis values (from its config, so an axis the cell leaves
    to the base preset shows the base's value), what it trains in words (``setting``, and its ``loss``
    alone), whether it is plain MoCo; a reference row's kind. ``paired``: whether its seeds pair with
    the cells' (a released checkpoint's seeds only reseed its probe)."""
    out = {}
    for cell in grid.cells:
        cfg = grid.cfg(cell, 0, Path("runs/x"))
        flat, objective = cfg.flat(), cfg.objective
        out[cell.id] = {**{a: flat[spec.axis(a).key] for a in axes}, "setting": objective.label,
                        "loss": objective.loss.label, "kind": "cell",
                        "plain_moco": objective.is_plain_moco, "mixes": objective.mixing.active,
                        "other_kinds": bool(objective.mixing.others), "paired": True}
    for ref in grid.references:
        out[ref.id] = {**{a: None for a in axes}, "setting": ref.label, "loss": None, "kind": ref.kind,
                       "plain_moco": False,
                       "mixes": False, "other_kinds": False, "paired": ref.path is None}
    return out


def histories(client, runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Long table (cell, seed, metric, step, value) of the pretraining runs' histories of the given
    MLflow metrics; a step logged twice (by an older version's replay) counts once."""
    rows = []
    pre = runs[runs["tags.stage"] == PRETRAIN] if len(runs) else runs
    for _, r in pre.iterrows():
        for m in metrics:
            if f"metrics.{m}" not in r or pd.isna(r[f"metrics.{m}"]):
                continue
            for point in retry_locked(client.get_metric_history, r["run_id"], m):
                rows.append((r["tags.cell"], int(r["tags.seed"]), m, point.step, point.value))
    hist = pd.DataFrame(rows, columns=["cell", "seed", "metric", "step", "value"])
    return hist.drop_duplicates(["cell", "seed", "metric", "step"], keep="last")


def late_means(hist: pd.DataFrame) -> dict[tuple[str, int, str], float]:
    """{(cell, seed, MLflow metric): mean of its points in the last ``LATE_FRACTION`` of the run's steps}."""
    out = {}
    for (cell, seed, metric), g in hist.groupby(["cell", "seed", "metric"]):
        last = g["step"].max()
        out[(cell, int(seed), metric)] = float(g.loc[g["step"] >= (1 - LATE_FRACTION) * last, "value"].mean())
    return out


def per_seed(runs: pd.DataFrame, grid: spec.Grid, axes: list[str], hist: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per row x seed of the grid (cells, then reference rows): typed axis values, the
    method, and each metric of ``METRICS`` (NaN where absent). Runs of rows the grid does not hold
    are left out. ``hist``: the pretraining histories (``histories``) that late metrics average.

    A transfer stage logs one run per fine-tuning trial; a seed's value is the mean of its trials,
    and ``METRIC_trial_std`` holds the spread of its trials.
    """
    columns = row_columns(grid, axes)
    late = late_means(hist) if hist is not None else {}
    rows: dict[tuple[str, int], dict] = {}
    for _, r in runs.iterrows():
        if r.get("tags.cell") not in columns:
            continue
        key = (r["tags.cell"], int(r["tags.seed"]))
        row = rows.setdefault(key, {"cell": key[0], "seed": key[1], **columns[key[0]]})
        for col, m in METRICS.items():
            if r["tags.stage"] != m.stage:
                continue
            value = late.get((*key, m.mlflow)) if m.late else None
            if value is None:
                value = r.get(f"metrics.{m.mlflow}")
            if value is not None and pd.notna(value):
                row.setdefault(col, []).append(float(value) * m.scale)
            elif m.unmixed is not None and not row["mixes"]:
                row.setdefault(col, []).append(m.unmixed * m.scale)
    records = []
    for row in rows.values():
        rec = {}
        for k, v in row.items():
            if isinstance(v, list):
                rec[k] = float(np.mean(v))
                if METRICS[k].stage in (TRANSFER_VOC, TRANSFER_COCO):
                    rec[f"{k}_trial_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
            else:
                rec[k] = v
        records.append(rec)
    df = pd.DataFrame(records) if records else pd.DataFrame(columns=[*ROW_COLUMNS, *axes])
    for col in METRICS:
        if col not in df:
            df[col] = float("nan")
    order = {r: i for i, r in enumerate(grid.row_ids())}
    df = df.sort_values(["cell", "seed"], key=lambda s: s.map(order) if s.name == "cell" else s,
                        kind="stable").reset_index(drop=True)
    return typed_axes(df, axes)


