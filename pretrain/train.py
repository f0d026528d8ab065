"""MoCo v2 / MoCHi pretraining (with InfoNCE, or the debiased or HCL loss): set-up, resume and the loop; DDP, bf16 autocast, atomic checkpoints,
exact resume.

The loop knows nothing of SLURM or grids: a launcher calls ``train(cfg)``; every start resumes
from the newest valid checkpoint in ``cfg.run.out``. ``step`` is the one training step, which the
step benchmark times as well.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .eval.monitor import Monitor
from .input import data, pipelines
from .method.loss import INFONCE, Loss
from .method.mixing import Mixing
from .method.moco import MoCo, from_config
from .method.objective import Objective
from .run import checkpoint, config, dist, rundir, sameness, yamlfile
from .run.errors import UserError
from .run.tracking import PRETRAIN, Tracker, default_uri, finalize, open_run

log = logging.getLogger(__name__)


def lr_at(cfg: config.Config, epoch: int) -> float:
    """MoCo's schedule: linear scaling, cosine set once per epoch, no warm-up."""
    lr = cfg.optim.lr
    if cfg.optim.schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.optim.epochs))
    return lr


def run_name(cfg: config.Config) -> str:
    """A name a person can read in a queue: method, arch, batch, epochs, K, data and seed."""
    if cfg.run.run_name:
        return cfg.run.run_name
    return (f"{cfg.objective.slug}_{cfg.model.arch}_b{cfg.optim.batch_size}-{cfg.optim.epochs}e_K{cfg.moco.K}_"
            f"{cfg.data.dataset}_seed{cfg.run.seed}")


def stats_due(global_step: int, log_every: int) -> bool:
    """Whether the step after ``global_step`` computes the statistics (and logs): every ``log_every``
    steps. Training also logs at each epoch's end; the benchmark follows this cadence alone."""
    return (global_step + 1) % log_every == 0


def memory_format(channels_last: bool) -> torch.memory_format:
    """``run.channels_last`` as the memory format the model and its input use, on any device."""
    return torch.channels_last if channels_last else torch.contiguous_format


def step(net: torch.nn.Module, opt: torch.optim.Optimizer, im_q: torch.Tensor, im_k: torch.Tensor, mixing: Mixing,
         generator: torch.Generator, *, loss: Loss = INFONCE, labels: torch.Tensor | None = None,
         oracle: bool = False, with_stats: bool = False,
         amp: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step of MoCo v2 / MoCHi: forward (the key encoder's momentum update and the
    enqueue included), the loss over the fp32 logits (InfoNCE, or the debiased, HCL or Ring loss),
    backward, SGD.

    im_q, im_k: [B, 3, H, W] on the model's device and in its memory format. ``amp``: bf16 autocast
    on whatever device the images are. Returns the detached loss and the statistics (empty unless
    ``with_stats``)."""
    with torch.autocast(im_q.device.type, dtype=torch.bfloat16, enabled=amp):
        logits, stats = net(im_q, im_k, mixing, generator, labels=labels, oracle=oracle, with_stats=with_stats)
    value = loss(logits, getattr(net, "module", net).tau, mixing.synthetic)
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return value.detach(), stats


def _check_same_run(saved: dict, cfg: config.Config, where: Path) -> None:
    """UserError if the run folder ``where`` (its config ``saved``) holds another run than ``cfg``
    (``sameness``: how a run runs and its monitors may differ)."""
    diff = sameness.first_difference(config.from_dict(saved).flat(), cfg.flat(),
                                     ignore_prefix=sameness.MONITOR_PREFIX)
    if diff:
        raise UserError(sameness.differs(where, "a run", diff, "choose another run.out"))


class Progress:
    """Throughput over each logging window and the ETA; shown as a tqdm bar on a terminal, as
    periodic plain log lines otherwise (batch logs)."""

    def __init__(self, total: int, initial: int, enabled: bool, batch_size: int):
        self.total, self.batch_size = total, batch_size
        self.t_start = self.window_t = time.monotonic()
        self.steps_at_start, self.window_steps = initial, 0
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def tick(self) -> None:
        """One more step in this window."""
        self.window_steps += 1

    def images_per_s(self) -> float:
        """Images per second since the last call (the logging window), which it closes."""
        now = time.monotonic()
        ips = self.window_steps * self.batch_size / max(now - self.window_t, 1e-9)
        self.window_t, self.window_steps = now, 0
        return ips

    def update(self, step: int, postfix: dict) -> None:
        """Show the position, the postfix values and the ETA from the rate since start."""
        rate = (step - self.steps_at_start) / max(time.monotonic() - self.t_start, 1e-9)
        eta_s = (self.total - step) / max(rate, 1e-9)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(postfix, refresh=False)
        else:
            items = " ".join(f"{k}={v}" for k, v in postfix.items())
            log.info("step %d/%d %s eta=%s", step, self.total, items, time.strftime("%H:%M:%S", time.gmtime(eta_s)))

    def close(self) -> None:
        """Close the bar, if any."""
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Run:
    """One pretraining run while it trains: what it trains with, where it is, and where it writes."""

    cfg: config.Config
    info: dist.DistInfo
    loader: object  # the batches (im_q, im_k, labels, indices, skipped) of ``pipelines.train_loader``
    sampler: object  # its sampler: ``steps_per_epoch``, ``set_epoch``
    monitor: Monitor | None
    model: MoCo
    opt: torch.optim.Optimizer
    objective: Objective
    total_steps: int
    net: torch.nn.Module | None = None  # the model, in DDP across ranks
    tracker: Tracker | None = None
    start_epoch: int = 0  # where this start resumes: the epoch and the step within it
    start_step: int = 0
    global_step: int = 0
    run_id: str | None = None  # the MLflow run
    skipped_total: int = 0  # unreadable images skipped so far
    last_stats: dict[str, float] = field(default_factory=dict)
    last_ckpt_time: float = 0.0

    @property
    def out(self) -> Path:
        """The run folder."""
        return Path(self.cfg.run.out)

    @property
    def ckpt_dir(self) -> Path:
        """Where its checkpoints go."""
        return self.out / rundir.CHECKPOINTS

    @property
    def fmt(self) -> torch.memory_format:
        """The memory format of the model and its input."""
        return memory_format(self.cfg.run.channels_last)

    def summary(self) -> dict | None:
        """The run's summary once it is complete (its final checkpoint carries it), else None."""
        if self.global_step < self.total_steps:
            return None
        return {"global_step": self.global_step, "run_id": self.run_id, **self.last_stats}

    def save(self, epoch: int, step_in_epoch: int) -> None:
        """A checkpoint at (``epoch``, ``step_in_epoch``), written by the main rank."""
        if not self.info.main:
            return
        checkpoint.save(
            self.ckpt_dir, self.global_step,
            {
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "epoch": epoch,
                "step_in_epoch": step_in_epoch, "global_step": self.global_step, "rng": checkpoint.rng_state(),
                "config": self.cfg.to_dict(), "mlflow_run_id": self.run_id, "skipped_images": self.skipped_total,
            },
            keep=self.cfg.run.keep_checkpoints, summary=self.summary(),
        )


def train(cfg: config.Config, tags: dict[str, str] | None = None, parent: str | None = None) -> MoCo:
    """Pretrain (or resume pretraining) as ``cfg`` says; returns the unwrapped model.

    ``tags`` are added to the MLflow run (a launcher's grid id, cell, job id), which is a child of
    ``parent`` if given; they are set again when a resumed run continues, so a requeued job's new
    job id shows.
    """
    run, state, ckpt_path = _set_up(cfg)
    if state is not None:
        _resume(run, state, ckpt_path)
    del state  # its tensors are the model's and the optimizer's now
    if run.global_step >= run.total_steps:
        if run.info.main:
            finalize(run.out)
        log.info("%s is already complete (%d steps); nothing to do", run.out, run.global_step)
        return run.model
    if run.info.main:
        set_aside_damaged(run.out / rundir.CHECKPOINTS, ckpt_path)
    _start(run, tags, parent)
    _epochs(run)
    if run.skipped_total:
        log.warning("%d unreadable images were skipped", run.skipped_total)
    return run.model


def set_aside_damaged(folder: Path, resumed_from: Path | None) -> None:
    """Move the checkpoints newer than the one a run resumes from (all of them without one: each failed
    its manifest) into ``folder/damaged/``, so that the run's next saves neither overwrite nor prune
    them: they are kept for inspection."""
    aside, stamp = folder / "damaged", time.strftime("%Y%m%d-%H%M%S")
    for path in checkpoint.newer_than(folder, resumed_from):
        aside.mkdir(exist_ok=True)
        for f in (path, path.with_suffix(".json")):
            if f.exists():
                target = aside / f.name
                f.replace(target if not target.exists() else aside / f"{f.name}.{stamp}")
        log.warning("%s failed its manifest: kept in %s", path, aside)


def _set_up(cfg: config.Config) -> tuple[_Run, dict | None, Path | None]:
    """The run ``cfg`` describes, its model and optimizer fresh, and its newest checkpoint (None, None
    without one). Everything that can fail on user input fails here, before anything is written."""
    info = dist.init(cfg.run.device)
    config.validate(cfg, info.world)
    out = Path(cfg.run.out)
    loader, sampler = pipelines.train_loader(cfg, info.rank, info.world, info.device)
    monitor = Monitor(cfg, info.device) if cfg.eval.every and info.main else None
    state, ckpt_path = checkpoint.load_latest(out / rundir.CHECKPOINTS)
    if state is not None:
        _check_same_run(state["config"], cfg, out)
    elif (out / rundir.CONFIG_FILE).is_file():
        _check_same_run(yamlfile.read(out / rundir.CONFIG_FILE) or {}, cfg, out)
    # A finished run whose newest checkpoint is damaged would be trained again from an older one (or
    # from scratch) over its results; one finished under run.max_steps and now given more steps is not.
    damaged = len(checkpoint.newer_than(out / rundir.CHECKPOINTS, ckpt_path))
    if (out / rundir.SUMMARY_FILE).is_file() and (state is None or damaged):
        raise UserError(f"{out} holds a finished run (its {rundir.SUMMARY_FILE}) whose final checkpoint cannot be read "
                        f"({damaged} damaged checkpoint{'s' * (damaged != 1)}); nothing was changed. Move the folder "
                        f"aside (or its {rundir.SUMMARY_FILE}) to train it again")

    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    model = from_config(cfg).to(info.device, memory_format=memory_format(cfg.run.channels_last))
    opt = torch.optim.SGD(
        model.encoder_q.parameters(), lr=lr_at(cfg, 0), momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )
    total_steps = cfg.optim.epochs * sampler.steps_per_epoch
    if cfg.run.max_steps:
        total_steps = min(total_steps, cfg.run.max_steps)
    run = _Run(cfg, info, loader, sampler, monitor, model, opt, cfg.objective, total_steps)
    return run, state, ckpt_path


def _resume(run: _Run, state: dict, ckpt_path: Path) -> None:
    """Continue from a checkpoint: the model, the optimizer, the position, the MLflow run, the
    skipped-image count and every random generator's state."""
    run.model.load_state_dict(state["model"])
    run.opt.load_state_dict(state["optimizer"])
    run.start_epoch, run.start_step = state["epoch"], state["step_in_epoch"]
    run.global_step, run.run_id = state["global_step"], state.get("mlflow_run_id")
    run.skipped_total = state.get("skipped_images", 0)
    try:
        checkpoint.set_rng_state(state["rng"])
    except ValueError as e:
        raise UserError(f"{ckpt_path}: {e}; choose another run.out") from None
    log.info("resuming from %s (epoch %d, step %d)", ckpt_path, run.start_epoch, run.start_step)


def _start(run: _Run, tags: dict[str, str] | None, parent: str | None) -> None:
    """What a run that will train needs beyond its model: DDP across ranks, compiled encoders, and
    on the main rank the run folder's config and the MLflow run (opened, or reopened on resume)."""
    cfg, info = run.cfg, run.info
    run.net = run.model
    if info.world > 1:
        # broadcast_buffers=False: the queue stays identical on every rank through the all-gathered
        # keys; re-broadcasting it (and BN statistics) each step would only cost bandwidth.
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            broadcast_buffers=False,
        )
    if cfg.run.compile:
        run.model.encoder_q.compile()
        run.model.encoder_k.compile()
    if info.main:
        out = run.out
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write(out / rundir.CONFIG_FILE, config.dump(cfg).encode())
        run.tracker = open_run(
            out, uri=cfg.run.tracking_uri or default_uri(out), experiment=cfg.run.experiment, name=run_name(cfg),
            stage=PRETRAIN, params={**cfg.flat(), "world_size": info.world, "device": str(info.device)},
            tags={"method": cfg.objective.method, **(tags or {})}, parent=parent, run_id=run.run_id,
            resume_step=run.global_step,
        )
        run.run_id = run.tracker.run_id
        if run.global_step == 0:  # the resolved config beside its metrics, once (a resume trains the same)
            run.tracker.log_artifacts(out / rundir.CONFIG_FILE)


def _epochs(run: _Run) -> None:
    """Train the remaining epochs, then settle the MLflow run and summary.json however it stops."""
    gen = torch.Generator(device=run.info.device)
    progress = Progress(run.total_steps, run.global_step, run.info.main, run.cfg.optim.batch_size)
    run.last_ckpt_time = time.monotonic()
    interrupted = False
    try:
        for epoch in range(run.start_epoch, run.cfg.optim.epochs):
            if run.global_step >= run.total_steps:
                break
            _epoch(run, epoch, gen, progress)
    except (KeyboardInterrupt, SystemExit):  # SystemExit: submitit's requeue on preemption
        interrupted = True
        raise
    finally:
        progress.close()
        _finish(run, interrupted)


def _epoch(run: _Run, epoch: int, gen: torch.Generator, progress: Progress) -> None:
    """One epoch (or the rest of it, on resume, or up to ``run.max_steps``): its steps, the
    statistics every ``log_every`` steps, timed checkpoints within it, and its end."""
    cfg, dev, fmt = run.cfg, run.info.device, run.fmt
    steps_per_epoch = run.sampler.steps_per_epoch
    lr = lr_at(cfg, epoch)
    for g in run.opt.param_groups:
        g["lr"] = lr
    mix = run.objective.mixing if cfg.mochi.synthesises_in(epoch) else Mixing()
    step_in_epoch = run.start_step if epoch == run.start_epoch else 0
    run.sampler.set_epoch(epoch, step_in_epoch)
    run.model.train()
    for im_q, im_k, labels, _idx, skipped in run.loader:
        # Stateless randomness: each step's shuffle and mixing depend on (seed, rank, step)
        # only, so a resumed run draws exactly what the uninterrupted one drew.
        gen.manual_seed(data.sample_seed(cfg.run.seed, run.info.rank, run.global_step))
        im_q = im_q.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        im_k = im_k.to(dev, non_blocking=True).contiguous(memory_format=fmt)
        log_now = stats_due(run.global_step, cfg.run.log_every) or step_in_epoch + 1 == steps_per_epoch \
            or run.global_step + 1 >= run.total_steps
        loss, stats = step(run.net, run.opt, im_q, im_k, mix, gen, loss=run.objective.loss,
                           labels=labels.to(dev, non_blocking=True), oracle=cfg.moco.oracle,
                           with_stats=log_now, amp=cfg.run.amp)
        run.global_step += 1
        step_in_epoch += 1
        progress.tick()
        run.skipped_total += skipped

        if log_now:
            run.last_stats = dist.mean_over_ranks({**stats, "loss": loss})  # (waits for the device)
            ips = progress.images_per_s()
            if run.tracker is not None:
                run.tracker.log({**run.last_stats, "lr": lr, "images_per_s": ips, "skipped_images": run.skipped_total},
                                run.global_step, epoch=epoch)
            progress.update(run.global_step, {"epoch": epoch, "loss": f"{run.last_stats['loss']:.3f}",
                                              "acc": f"{run.last_stats['acc_moco']:.3f}", "img/s": f"{ips:.0f}"})
        if run.global_step >= run.total_steps:
            break
        if step_in_epoch < steps_per_epoch and (
            (cfg.run.ckpt_every_steps and run.global_step % cfg.run.ckpt_every_steps == 0)
            or (cfg.run.ckpt_every_minutes and time.monotonic() - run.last_ckpt_time >= 60 * cfg.run.ckpt_every_minutes)
        ):
            run.save(epoch, step_in_epoch)
            run.last_ckpt_time = time.monotonic()
    _end_epoch(run, epoch, step_in_epoch)


def _end_epoch(run: _Run, epoch: int, step_in_epoch: int) -> None:
    """After an epoch's steps: the monitor where due, then the checkpoint (at the next epoch's start,
    or mid-epoch where ``max_steps`` stopped it)."""
    cfg = run.cfg
    if step_in_epoch == run.sampler.steps_per_epoch:
        # Monitor before the checkpoint: a kill in between repeats the epoch and its
        # monitor point rather than losing it.
        if cfg.eval.every and ((epoch + 1) % cfg.eval.every == 0 or run.global_step >= run.total_steps):
            if run.monitor is not None:
                evals = run.monitor(run.model)
                run.last_stats.update(evals)
                run.tracker.log(evals, run.global_step, epoch=epoch)
                log.info("epoch %d monitor: %s", epoch, " ".join(f"{k}={v:.4f}" for k, v in evals.items()))
            dist.barrier()
        run.save(epoch + 1, 0)
    else:
        run.save(epoch, step_in_epoch)  # stopped by max_steps mid-epoch
    run.last_ckpt_time = time.monotonic()


def _finish(run: _Run, interrupted: bool) -> None:
    """Close the MLflow run however training stopped (FINISHED once the final checkpoint is there,
    else KILLED or FAILED) and write summary.json from the final checkpoint."""
    if run.tracker is None:
        return
    final = checkpoint.final_summary(run.ckpt_dir)
    run.tracker.finish("FINISHED" if final is not None else ("KILLED" if interrupted else "FAILED"))
    if final is not None:
        checkpoint.atomic_write(run.out / rundir.SUMMARY_FILE, json.dumps(final).encode())
