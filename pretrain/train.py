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
from pathlib import Path

import numpy as np
import torch
import yaml

from .eval.monitor import Monitor
from .input import data, pipelines
from .method.loss import INFONCE, Loss
from .method.mochi import Mixing
from .method.moco import MoCo, from_config
from .run import checkpoint, config, dist, rundir
from .run.errors import UserError
from .run.tracking import PRETRAIN, close, default_uri, open_run

log = logging.getLogger(__name__)
# Keys that may differ between a run and its resumption (they change how, not what, is computed).
OPERATIONAL = {
    "data.path", "data.num_workers", "data.prefetch", "run.out", "run.device", "run.compile", "run.ckpt_every_minutes",
    "run.ckpt_every_steps", "run.keep_checkpoints", "run.log_every", "run.max_steps", "run.experiment",
    "run.tracking_uri", "run.run_name",
}


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
    enqueue included), the loss over the fp32 logits (InfoNCE, or the debiased or HCL loss),
    backward, SGD.

    im_q, im_k: [B, 3, H, W] on the model's device and in its memory format. ``amp``: bf16 autocast
    on whatever device the images are. Returns the detached loss and the statistics (empty unless
    ``with_stats``)."""
    with torch.autocast(im_q.device.type, dtype=torch.bfloat16, enabled=amp):
        logits, stats = net(im_q, im_k, mixing, generator, labels=labels, oracle=oracle, with_stats=with_stats)
    value = loss(logits, getattr(net, "module", net).tau)
    opt.zero_grad(set_to_none=True)
    value.backward()
    opt.step()
    return value.detach(), stats


def _check_same_run(saved: dict, cfg: config.Config, where: Path) -> None:
    mine = cfg.flat()
    theirs = config.from_dict(saved).flat()
    diff = [k for k in mine if k not in OPERATIONAL and not k.startswith("eval.") and mine[k] != theirs[k]]
    if diff:
        k = diff[0]
        raise UserError(
            f"{where} holds a run with a different config ({k}: {theirs[k]!r} there, {mine[k]!r} now); "
            f"choose another run.out"
        )


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


def train(cfg: config.Config, tags: dict[str, str] | None = None, parent: str | None = None) -> MoCo:
    """Pretrain (or resume pretraining) as ``cfg`` says; returns the unwrapped model.

    ``tags`` are added to the MLflow run (a launcher's grid id, cell, job id), which is a child of
    ``parent`` if given; they are set again when a resumed run continues, so a requeued job's new
    job id shows.
    """
    info = dist.init(cfg.run.device)
    config.validate(cfg, info.world)
    out = Path(cfg.run.out)
    ckpt_dir = out / rundir.CHECKPOINTS

    # Everything that can fail on user input fails here, before anything is written.
    loader, sampler = pipelines.train_loader(cfg, info.rank, info.world, info.device)
    monitor = Monitor(cfg, info.device) if cfg.eval.every and info.main else None
    state, ckpt_path = checkpoint.load_latest(ckpt_dir)
    if state is not None:
        _check_same_run(state["config"], cfg, out)
    elif (out / rundir.CONFIG_FILE).is_file():
        _check_same_run(yaml.safe_load((out / rundir.CONFIG_FILE).read_text()), cfg, out)

    dev = info.device
    cuda = dev.type == "cuda"
    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    fmt = memory_format(cfg.run.channels_last)
    model = from_config(cfg).to(dev, memory_format=fmt)
    opt = torch.optim.SGD(
        model.encoder_q.parameters(), lr=lr_at(cfg, 0), momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )

    start_epoch, start_step, global_step, run_id, skipped_total = 0, 0, 0, None, 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        global_step, run_id = state["global_step"], state.get("mlflow_run_id")
        skipped_total = state.get("skipped_images", 0)
        try:
            checkpoint.set_rng_state(state["rng"])
        except ValueError as e:
            raise UserError(f"{ckpt_path}: {e}; choose another run.out") from None
        log.info("resuming from %s (epoch %d, step %d)", ckpt_path, start_epoch, start_step)
    del state

    steps_per_epoch = sampler.steps_per_epoch
    total_steps = cfg.optim.epochs * steps_per_epoch
    if cfg.run.max_steps:
        total_steps = min(total_steps, cfg.run.max_steps)

    if global_step >= total_steps:
        if info.main:
            finalize(out)
        log.info("%s is already complete (%d steps); nothing to do", out, global_step)
        return model

    net: torch.nn.Module = model
    if info.world > 1:
        # broadcast_buffers=False: the queue stays identical on every rank through the all-gathered
        # keys; re-broadcasting it (and BN statistics) each step would only cost bandwidth.
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if cuda else None, broadcast_buffers=False
        )
    if cfg.run.compile:
        model.encoder_q.compile()
        model.encoder_k.compile()

    tracker = None
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write(out / rundir.CONFIG_FILE, config.dump(cfg).encode())
        tracker = open_run(
            out, uri=cfg.run.tracking_uri or default_uri(out), experiment=cfg.run.experiment, name=run_name(cfg),
            stage=PRETRAIN, params={**cfg.flat(), "world_size": info.world, "device": str(dev)},
            tags={"method": cfg.objective.method, **(tags or {})}, parent=parent, run_id=run_id,
            resume_step=global_step,
        )
        run_id = tracker.run_id

    def summary() -> dict | None:
        """The run's summary once it is complete (its final checkpoint carries it), else None."""
        return {"global_step": global_step, "run_id": run_id, **last_stats} if global_step >= total_steps else None

    def save(epoch: int, step_in_epoch: int) -> None:
        if not info.main:
            return
        checkpoint.save(
            ckpt_dir, global_step,
            {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                "step_in_epoch": step_in_epoch, "global_step": global_step, "rng": checkpoint.rng_state(),
                "config": cfg.to_dict(), "mlflow_run_id": run_id, "skipped_images": skipped_total,
            },
            keep=cfg.run.keep_checkpoints, summary=summary(),
        )

    objective = cfg.objective
    mixing = objective.mixing
    gen = torch.Generator(device=dev)
    progress = Progress(total_steps, global_step, info.main, cfg.optim.batch_size)
    last_ckpt_time = time.monotonic()
    interrupted = False
    last_stats: dict[str, float] = {}

    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            if global_step >= total_steps:
                break
            lr = lr_at(cfg, epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            mix = mixing if epoch >= cfg.mochi.mix_start else Mixing()
            step_in_epoch = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch, step_in_epoch)
            model.train()
            for im_q, im_k, labels, _idx, skipped in loader:
                # Stateless randomness: each step's shuffle and mixing depend on (seed, rank, step)
                # only, so a resumed run draws exactly what the uninterrupted one drew.
                gen.manual_seed(data.sample_seed(cfg.run.seed, info.rank, global_step))
                im_q = im_q.to(dev, non_blocking=True).contiguous(memory_format=fmt)
                im_k = im_k.to(dev, non_blocking=True).contiguous(memory_format=fmt)
                log_now = stats_due(global_step, cfg.run.log_every) or step_in_epoch + 1 == steps_per_epoch \
                    or global_step + 1 >= total_steps
                loss, stats = step(net, opt, im_q, im_k, mix, gen, loss=objective.loss,
                                   labels=labels.to(dev, non_blocking=True), oracle=cfg.moco.oracle,
                                   with_stats=log_now, amp=cfg.run.amp)
                global_step += 1
                step_in_epoch += 1
                progress.tick()
                skipped_total += skipped

                if log_now:
                    last_stats = dist.mean_over_ranks({**stats, "loss": loss})  # (waits for the device)
                    ips = progress.images_per_s()
                    if tracker is not None:
                        tracker.log({**last_stats, "lr": lr, "images_per_s": ips, "skipped_images": skipped_total},
                                    global_step, epoch=epoch)
                    progress.update(global_step, {"epoch": epoch, "loss": f"{last_stats['loss']:.3f}",
                                                  "acc": f"{last_stats['acc_moco']:.3f}", "img/s": f"{ips:.0f}"})
                if global_step >= total_steps:
                    break
                if step_in_epoch < steps_per_epoch and (
                    (cfg.run.ckpt_every_steps and global_step % cfg.run.ckpt_every_steps == 0)
                    or (cfg.run.ckpt_every_minutes and time.monotonic() - last_ckpt_time >= 60 * cfg.run.ckpt_every_minutes)
                ):
                    save(epoch, step_in_epoch)
                    last_ckpt_time = time.monotonic()
            if step_in_epoch == steps_per_epoch:
                # Monitor before the checkpoint: a kill in between repeats the epoch and its
                # monitor point rather than losing it.
                if cfg.eval.every and ((epoch + 1) % cfg.eval.every == 0 or global_step >= total_steps):
                    if monitor is not None:
                        evals = monitor(model)
                        last_stats.update(evals)
                        tracker.log(evals, global_step, epoch=epoch)
                        log.info("epoch %d monitor: %s", epoch, " ".join(f"{k}={v:.4f}" for k, v in evals.items()))
                    dist.barrier()
                save(epoch + 1, 0)
            else:
                save(epoch, step_in_epoch)  # stopped by max_steps mid-epoch
            last_ckpt_time = time.monotonic()
    except (KeyboardInterrupt, SystemExit):  # SystemExit: submitit's requeue on preemption
        interrupted = True
        raise
    finally:
        progress.close()
        if tracker is not None:
            final = checkpoint.final_summary(ckpt_dir)
            tracker.finish("FINISHED" if final is not None else ("KILLED" if interrupted else "FAILED"))
            if final is not None:
                checkpoint.atomic_write(out / rundir.SUMMARY_FILE, json.dumps(final).encode())
    if skipped_total:
        log.warning("%d unreadable images were skipped", skipped_total)
    return model


def finalize(out: Path) -> dict | None:
    """The summary of a complete run (None if it is not complete). A kill between the final
    checkpoint, which carries the summary, and summary.json leaves the run done but unsettled: its
    MLflow run is closed FINISHED and summary.json written here, from the checkpoint."""
    out = Path(out)
    if (out / rundir.SUMMARY_FILE).is_file():
        return json.loads((out / rundir.SUMMARY_FILE).read_text())
    summary = checkpoint.final_summary(out / rundir.CHECKPOINTS)
    if summary is not None:
        close(out, "FINISHED")
        checkpoint.atomic_write(out / rundir.SUMMARY_FILE, json.dumps(summary).encode())
        log.info("%s: final checkpoint found without its summary; run closed and summary written", out)
    return summary
