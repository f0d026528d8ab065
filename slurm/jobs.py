"""The jobs a grid or a transfer submission hands to submitit: typed payloads around the stage
functions.

Training knows nothing of SLURM: a job holds the typed settings of its stage (a pretraining
``Config``, a linear probe's ``ProbeSettings``, a transfer stage's ``FinetuneSettings`` or
``D2Settings``), calls the stage function and returns its result. Every job is checkpointable: on preemption or a time limit
submitit calls ``checkpoint`` (on global rank 0 only) and requeues the job, and every start resumes
from the newest checkpoint in its folder, so the other ranks need do nothing but die and restart.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import submitit

from pretrain.run import rundir
from pretrain.run.cli import setup_logging
from pretrain.run.config import Config
from pretrain.run.rank import global_rank


def use_cores(n: int | None) -> None:
    """Run this job's math on ``n`` threads (its profile's cpus_per_task): a job that used every core
    of a shared node would slow the jobs beside it."""
    if n:
        import torch

        torch.set_num_threads(n)


def job_id() -> str:
    """The scheduler's id of the job this process belongs to ("" outside a submitit job)."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # not inside a submitit job (called directly)
        return ""


class PretrainJob(submitit.helpers.Checkpointable):
    """Pretrain one run folder (``pretrain.train.train``); resumable. Returns the run's summary."""

    stage = "pretrain"
    tasks = "pretrain"  # how launcher.make_executor lays the job out: one task per GPU on every node

    def __init__(self, cfg: Config, tags: dict[str, str], parent: str | None = None, cores: int | None = None):
        self.cfg, self.tags, self.parent, self.cores = cfg, dict(tags), parent, cores

    def __call__(self) -> dict:
        from pretrain.train import train

        setup_logging()
        use_cores(self.cores)
        train(self.cfg, tags={**self.tags, "slurm_job_id": job_id()}, parent=self.parent)
        summary = Path(self.cfg.run.out) / rundir.SUMMARY_FILE
        return json.loads(summary.read_text()) if summary.is_file() else {}


class PreflightJob:
    """A grid's preflight (``pretrain.tools.preflight.run``) on every task of a pretraining job's
    layout: its report as a dict. Raises ``PreflightFailed`` once a failed report is written, so
    jobs waiting on it with ``afterok`` never start. Not checkpointable: a requeued one runs anew."""

    stage = "preflight"
    tasks = "pretrain"

    def __init__(self, settings, cores: int | None = None):
        self.settings, self.cores = settings, cores

    def __call__(self) -> dict:
        from pretrain.tools import preflight

        setup_logging()
        use_cores(self.cores)
        s = self.settings
        return dataclasses.asdict(preflight.run(dataclasses.replace(s, tags={**s.tags, "slurm_job_id": job_id()})))


class StageJob(submitit.helpers.Checkpointable):
    """An evaluation stage's job: its typed settings, handed to the stage function with this job's id
    added to its MLflow tags; resumable (the stage resumes from its own checkpoints). A single-process
    stage (``tasks = "probe"``) runs on global rank 0 alone, should its job have more tasks."""

    stage = ""
    tasks = "eval"  # how launcher.make_executor lays the job out: one task per GPU (DDP ranks)

    def __init__(self, settings, cores: int | None = None):
        self.settings, self.cores = settings, cores

    @staticmethod
    def run(settings) -> dict:
        """The stage function, imported in the job: the submitting side needs none of its torch."""
        raise NotImplementedError

    def __call__(self) -> dict:
        if self.tasks == "probe" and global_rank() != 0:
            return {}
        setup_logging()
        use_cores(self.cores)
        return self.run(dataclasses.replace(self.settings, tags={**self.settings.tags, "slurm_job_id": job_id()}))


class LinclsJob(StageJob):
    """The linear probe of a finished run folder (``pretrain.eval.lincls.run``): its result record."""

    stage = "lincls"
    tasks = "probe"  # one process: one task, on one GPU

    @staticmethod
    def run(settings) -> dict:
        from pretrain.eval import lincls

        return lincls.run(settings)


class TransferJob(StageJob):
    """Detection fine-tuning trials of one source and task (``transfer.finetune.run``): its summary."""

    stage = "transfer"

    @staticmethod
    def run(settings) -> dict:
        from transfer import finetune

        return finetune.run(settings)


class D2TransferJob(StageJob):
    """The same through detectron2 (``transfer.train_d2.run``): its summary. One task holds the job's
    GPUs; each trial starts its own worker per GPU (detectron2's ``launch``)."""

    stage = "transfer"
    tasks = "spawn"

    @staticmethod
    def run(settings) -> dict:
        from transfer import train_d2

        return train_d2.run(settings)


def transfer_job(settings, cores: int | None = None) -> StageJob:
    """The job of a transfer stage, by its engine (``settings.engine``)."""
    return {"torchvision": TransferJob, "detectron2": D2TransferJob}[settings.engine](settings, cores)


class CellJob(submitit.helpers.Checkpointable):
    """Pretraining then its evaluations in one job, where no scheduler chains them (local, debug).
    Returns ``{stage: result}``."""

    stage = "cell"

    def __init__(self, pretrain: PretrainJob | None, evals: list[StageJob]):
        self.pretrain, self.evals = pretrain, list(evals)

    def __call__(self) -> dict:
        out = {"pretrain": self.pretrain() if self.pretrain is not None else {}}
        if global_rank() == 0:
            for job in self.evals:
                out[job.stage] = job()
        return out
