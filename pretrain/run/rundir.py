"""The run-folder contract: every file and folder name that a run, a probe, a transfer stage or a
grid writes, and the rules that place one folder inside another. Nothing else spells them.

A pretraining run folder (``run.out``)::

    config.yaml                     the resolved config
    checkpoints/checkpoint-N.pt     + .json manifests (pretrain.run.checkpoint)
    metrics.jsonl                   every logged point: the source of truth
    mlflow_run_id, tracking.json    the MLflow run this folder logs to, and how it was opened
    summary.json                    written when the run completes (from its final checkpoint)
    knn.json                        mochi-knn
    lincls-fast/ lincls-full/       linear probes (lincls.json, settings.json, features.pt, checkpoints/)
    transfer-TASK/trialK/           detection transfer, torchvision path (summary.json; each trial result.json
                                    and settings.json, the settings it was trained with)
    transfer-d2-TASK/trialK/        the same through detectron2 (+ weights-d2.pkl, the converted source,
                                    and weights-d2.json, what it was converted from;
                                    each trial also holds detectron2's own files: config.yaml, log.txt,
                                    metrics.json, last_checkpoint, model_final.pth)

A grid folder (``runs/grids/NAME``)::

    grid.json, jobs.json, submitting.json (submissions under way), mlflow_parent_run_id, .lock, logs/,
    preflight/preflight.json (the cluster check run ahead of the arrays), cells/CELL/seedK/ (run folders)
"""

from __future__ import annotations

from pathlib import Path

from . import checkpoint, config, yamlfile
from .errors import UserError

# A run folder
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
RUN_ID_FILE = "mlflow_run_id"
TRACKING_FILE = "tracking.json"  # store, experiment, name, tags, params and status the run was opened with
SUMMARY_FILE = "summary.json"  # a finished pretraining run, or a transfer stage's trials
KNN_FILE = "knn.json"
# An evaluation folder
LINCLS_FILE = "lincls.json"
SETTINGS_FILE = "settings.json"
FEATURES_FILE = "features.pt"
RESULT_FILE = "result.json"  # one transfer trial's metrics
D2_WEIGHTS_FILE = "weights-d2.pkl"  # a detectron2 transfer stage's source, in detectron2's format
D2_WEIGHTS_SOURCE = "weights-d2.json"  # the source (and its weights' digest) weights-d2.pkl was converted from
# A grid folder
GRIDS = Path("runs") / "grids"  # where grids live unless --out says otherwise
GRID_FILE = "grid.json"
JOBS_FILE = "jobs.json"
SUBMITTING_FILE = "submitting.json"  # batches being submitted: found again in SLURM after a crash
PARENT_FILE = "mlflow_parent_run_id"
LOCK_FILE = ".lock"
PREFLIGHT = "preflight"  # the grid's preflight: its report and scratch checkpoints
PREFLIGHT_FILE = "preflight.json"
LOGS = "logs"
CELLS = "cells"


def lincls_dir(home: Path, fast: bool, random_init: bool = False) -> Path:
    """Where a linear probe of the run at ``home`` writes: ``lincls-fast`` / ``lincls-full``, with
    ``-random-init`` for the randomly initialised baseline."""
    return Path(home) / f"lincls-{'fast' if fast else 'full'}{'-random-init' if random_init else ''}"


def transfer_dir(home: Path, task: str, random_init: bool = False, engine: str = "torchvision") -> Path:
    """Where the transfer stage of ``task`` writes for the run at ``home``: ``transfer-TASK`` through
    torchvision, ``transfer-d2-TASK`` through detectron2 (the two never share trials), with
    ``-random-init`` for the randomly initialised baseline."""
    d2 = "d2-" if engine == "detectron2" else ""
    return Path(home) / f"transfer-{d2}{task}{'-random-init' if random_init else ''}"


def trial_dir(stage_dir: Path, trial: int) -> Path:
    """One fine-tuning trial of a transfer stage."""
    return Path(stage_dir) / f"trial{trial}"


def grid_run_dir(grid_dir: Path, cell: str, seed: int) -> Path:
    """The run folder of one cell x seed of a grid."""
    return Path(grid_dir) / CELLS / cell / f"seed{seed}"


def grid_tracked_folders(grid_dir: Path) -> list[Path]:
    """Every folder of a grid that logs to MLflow (its runs and their probes and trials)."""
    return sorted(p.parent for p in Path(grid_dir).glob(f"{CELLS}/*/seed*/**/{TRACKING_FILE}"))


def run_home(source: str | Path) -> Path:
    """The run folder a source belongs to: itself if a folder, RUN for RUN/checkpoints/x.pt, else the
    file's folder. Outputs derived from a source (probes, transfer) are written under it."""
    src = Path(source)
    if src.is_dir():
        return src
    return src.parent.parent if src.parent.name == CHECKPOINTS else src.parent


def pretrain_done(run_dir: Path) -> bool:
    """True once the run's final checkpoint is written (it carries the summary; summary.json is
    written from it next, by the run or, after a kill in between, by ``pretrain.run.tracking.finalize``)."""
    return (Path(run_dir) / SUMMARY_FILE).is_file() or checkpoint.final_summary(Path(run_dir) / CHECKPOINTS) is not None


def read_run(run_dir: Path) -> tuple[config.Config, dict]:
    """A run folder's saved config and its newest valid checkpoint; UserError if it has neither."""
    cfg_file = Path(run_dir) / CONFIG_FILE
    if not cfg_file.is_file():
        raise UserError(f"{run_dir} is not a pretraining run folder (no {CONFIG_FILE})")
    cfg = config.from_dict(yamlfile.read(cfg_file) or {})
    state, _ = checkpoint.load_latest(Path(run_dir) / CHECKPOINTS)
    if state is None:
        raise UserError(f"{run_dir} has no valid checkpoint")
    return cfg, state
