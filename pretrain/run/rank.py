"""Which process of a job this is, read from the environment: no torch, so that every command's
logging can ask it before anything heavy is imported (``pretrain.run.dist`` holds the rest)."""

from __future__ import annotations

import os


def global_rank() -> int:
    """This process's rank in its job, before any process group exists: RANK (torchrun, or set by
    ``init``), else SLURM_PROCID (a task of a SLURM job step), else 0 (a single process)."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)
