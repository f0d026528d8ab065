"""A grid's runs as a typed table: every run folder synced into MLflow, then one row per cell x seed
read back from ``mlflow.search_runs``.

The run folders are the source of truth (``metrics.jsonl``, ``summary.json``, ``lincls.json``);
``sync_grid`` adds to the MLflow store whatever a job could not log there (a locked or
unreachable store), so the tables see every cell and seed. Axis values do not come back from
MLflow's string tags: each row takes them, typed, from the cell's own config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablations import spec
from pretrain.run import rundir
from pretrain.run.tracking import LINCLS, PRETRAIN, retry_locked, sync, transfer_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    """A column of a grid's tables: which runs (stage) and which MLflow metric feed it."""

    stage: str
    mlflow: str
    label: str
    scale: float = 1.0  # to percent


METRICS = {
    "linear_top1": Metric(LINCLS, "top1_best", "linear top-1"),
    "knn_top1": Metric(PRETRAIN, "knn_top1", "kNN top-1"),
    "voc_AP50": Metric(transfer_stage("voc"), "AP50", "VOC AP50"),
    "voc_AP": Metric(transfer_stage("voc"), "AP", "VOC AP"),
    "voc_AP75": Metric(transfer_stage("voc"), "AP75", "VOC AP75"),
    "coco_box_AP": Metric(transfer_stage("coco"), "box_AP", "COCO box AP"),
    "coco_mask_AP": Metric(transfer_stage("coco"), "mask_AP", "COCO mask AP"),
    "proxy_acc": Metric(PRETRAIN, "acc_moco", "proxy-task acc.", 100.0),
    "alignment": Metric(PRETRAIN, "alignment", "alignment"),
    "uniformity": Metric(PRETRAIN, "uniformity", "uniformity"),
}


def sync_grid(grid_dir: Path, uri: str) -> int:
    """Sync every run folder of the grid (pretraining and probes) into the store; returns runs synced."""
    n = 0
    for folder in rundir.grid_tracked_folders(grid_dir):
        try:
            sync(folder, uri)
            n += 1
        except Exception as e:  # noqa: BLE001 - a store that is down: the next report retries
            log.warning("could not sync %s into MLflow (%s)", folder, e)
    return n


def close_parent(grid_dir: Path, uri: str) -> None:
    """Mark the grid's parent run FINISHED once every cell has its final result."""
    from mlflow.tracking import MlflowClient

    parent = Path(grid_dir) / rundir.PARENT_FILE
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
    return df[df.get("tags.stage", pd.Series(dtype=str)).isin({m.stage for m in METRICS.values()})]


def cell_columns(grid: spec.Grid, cell: spec.Cell, axes: list[str]) -> dict[str, object]:
    """A cell's typed axis values (from its config, so an axis the cell leaves to the base preset
    shows the base's value), its method in words and whether it is plain MoCo."""
    cfg = grid.cfg(cell, 0, Path("runs/x"))
    flat, mixing = cfg.flat(), cfg.mochi.mixing
    return {**{a: flat[spec.axis(a).key] for a in axes}, "method": mixing.label, "plain_moco": mixing.is_plain_moco}


def per_seed(runs: pd.DataFrame, grid: spec.Grid, axes: list[str]) -> pd.DataFrame:
    """One row per cell x seed of the grid: typed axis values, the method, and each metric of
    ``METRICS`` (NaN where absent). Runs of cells the grid does not hold are left out.

    A transfer stage logs one run per fine-tuning trial; a seed's value is the mean of its trials.
    """
    cells = {c.id: c for c in grid.cells}
    columns = {c.id: cell_columns(grid, c, axes) for c in grid.cells}
    rows: dict[tuple[str, int], dict] = {}
    for _, r in runs.iterrows():
        if r.get("tags.cell") not in cells:
            continue
        key = (r["tags.cell"], int(r["tags.seed"]))
        row = rows.setdefault(key, {"cell": key[0], "seed": key[1], **columns[key[0]]})
        for col, m in METRICS.items():
            value = r.get(f"metrics.{m.mlflow}")
            if r["tags.stage"] == m.stage and value is not None and pd.notna(value):
                row.setdefault(col, []).append(float(value) * m.scale)
    records = [{k: float(np.mean(v)) if isinstance(v, list) else v for k, v in row.items()} for row in rows.values()]
    df = pd.DataFrame(records) if records else pd.DataFrame(columns=["cell", "seed", *axes, "method", "plain_moco"])
    for col in METRICS:
        if col not in df:
            df[col] = float("nan")
    return df


