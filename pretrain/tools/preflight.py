"""The preflight: prove, on the node a grid will run on, that its pretraining works there before the
grid spends hours of queue and GPU on it.

One short job checks, for each config it is given (a grid passes one per distinct objective):

1. ``data``: the layout the config names loads (class folders, ``data.class_list``, counts), and a
   sample of images decoded by the configured pipeline equals PIL's decode within ``DECODE_TOL``;
2. ``step``: a few training steps in fp32 on the device equal the same steps on the CPU (same
   seed, batch and random draws): losses within ``FP32.loss``, weight updates within ``FP32.update``;
3. ``precision``: the same steps with the run's ``amp`` / ``channels_last`` / ``compile`` settings
   against the fp32 steps on the device, within ``BF16`` where autocast is on;
4. ``resume``: a checkpoint of the model and optimiser written to the grid's folder through
   ``pretrain.run.checkpoint``, read back, and one step from it equal to the step without the
   round trip;
5. ``process group`` (every rank): DDP steps, then the ranks, queue, queue pointer and weights
   all-gathered agree on every rank (NCCL on GPUs, gloo on CPUs);
6. ``tracking``: the MLflow store reachable from this node: a run opened, a metric logged, closed;
7. ``speed``: images/s of the training step and of the input pipeline, the figures a grid's cost
   projection uses.

Each check ends as one line (pass, fail or skip) with, for a failure, its cause and its fix; the
report is ``preflight.json`` in the folder given. Knows nothing of grids or SLURM: the grid builds
the settings (``ablations.preflight``) and a job runs ``run`` (``slurm.jobs.PreflightJob``).

The tolerances are this project's choice, stated here and in the report: fp32 on a GPU differs from
the CPU by reordered sums (1e-3 of an update after a few steps is generous for it, a wrong kernel is
off by far more); bf16 autocast keeps 8 bits of mantissa: on the demo its losses differ by about
1e-2 and its first updates by about 0.7 of their size (cosine 0.77, measured on a CPU), so the
bf16 line catches a broken kernel (NaN, a loss off by 5%, an update larger than itself), not noise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..input import data, pipelines
from ..method.moco import MoCo, from_config, local_only
from ..run import checkpoint, config, dist, rundir
from ..run.errors import UserError
from ..run.tracking import PREFLIGHT, experiment_id, mlflow_client, retry_locked
from ..train import lr_at, memory_format, step
from .bench import device_name, sync
from .preflight_report import (  # noqa: F401  (the report's types, read here by the checks' callers too)
    BF16, FAIL, FP32, PASS, SKIP, Check, PreflightFailed, PreflightSettings, Report, Tolerance, read_report,
)

log = logging.getLogger(__name__)
DECODE_TOL = 2.0  # mean absolute difference, in 0-255 levels, of a decoded image from PIL's
DALI_TOL = 8.0  # likewise for DALI, whose decode is measured after its own resize (to image_size)


# ---------------------------------------------------------------------------------------------
# 1. data
def _pil(ds, i: int) -> torch.Tensor | None:
    """Image ``i`` of a training set decoded by PIL as uint8 [3, h, w] (None if PIL cannot)."""
    if isinstance(ds, data.ArrayImages):
        return pipelines.as_pixels(torch.from_numpy(np.array(ds.images[i])))
    try:
        with Image.open(ds.samples[i][0]) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _class_counts(ds) -> tuple[int, list[str] | None]:
    """(classes, names of classes without an image) of a training set."""
    if isinstance(ds, data.ArrayImages):
        return len(np.unique(ds.labels)), []
    counts = np.bincount(np.asarray(ds.targets), minlength=len(ds.classes))
    return len(ds.classes), [c for c, n in zip(ds.classes, counts) if n == 0]


def check_data(cfg: config.Config, device: torch.device, sample: int) -> Check:
    """The training set loads as the config names it, and ``sample`` images, spread over it, decode
    with the configured pipeline as PIL decodes them."""
    name = "data"
    try:
        ds = data.base_dataset(dataclasses.replace(cfg.data, subset=0), "train")
    except UserError as e:
        return Check(name, FAIL, str(e), "point data.path at the dataset root (holding train/), and make "
                                         "data.class_list name only classes it has")
    base = ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds
    n = len(base)
    n_classes, empty = _class_counts(base)
    if empty:
        return Check(name, FAIL, f"{len(empty)} of {n_classes} classes hold no image, e.g. {empty[0]}",
                     "restore those class folders, or leave them out of data.class_list")
    # training reads the first data.subset images (pretrain.input.data.base_dataset): count and sample those
    trained = min(cfg.data.subset, n) if cfg.data.subset else n
    if trained < cfg.optim.batch_size:
        return Check(name, FAIL, f"{trained} training images make no batch of {cfg.optim.batch_size}",
                     "raise data.subset (0 = all)" if trained < n else "point data.path at the full dataset")
    idx = sorted({int(i) for i in np.linspace(0, trained - 1, min(sample, trained))})
    ref = {i: _pil(base, i) for i in idx}
    bad = [i for i, im in ref.items() if im is None]
    if bad:
        return Check(name, FAIL, f"{len(bad)} of {len(idx)} sampled images cannot be decoded, e.g. "
                                 f"{base.samples[bad[0]][0]}",
                     "replace or remove the unreadable files (training would skip them, counted as skipped_images)")
    worst, how = _decode_difference(cfg, base, idx, ref, device)
    tol = DALI_TOL if cfg.data.pipeline == "dali" else DECODE_TOL
    what = f"{n} training images" if trained == n else f"{trained} of {n} training images (data.subset)"
    what += f" in {n_classes} classes" + (f" ({cfg.data.class_list})" if cfg.data.class_list else "")
    if worst > tol:
        return Check(name, FAIL, f"{what}; {how} decodes differ from PIL's by {worst:.2f} levels (mean |diff|; "
                                 f"tolerance {tol:g})",
                     "install matching image libraries, or use data.pipeline=cpu on this cluster")
    return Check(name, PASS, f"{what}; {len(idx)} images decoded by {how} within {worst:.2f} levels of PIL "
                             f"(tolerance {tol:g})")


def _decode_difference(cfg: config.Config, base, idx: list[int], ref: dict, device: torch.device
                       ) -> tuple[float, str]:
    """(the largest mean |difference| from PIL over the sample, in 0-255 levels; what decoded)."""
    if cfg.data.pipeline == "cpu":
        return 0.0, "PIL (data.pipeline=cpu)"  # the loader's workers decode with PIL itself
    enc = pipelines.EncodedImages(base)
    payloads = [enc[(0, i)][0] for i in idx]
    if cfg.data.pipeline == "gpu":
        dec = pipelines.Decoder(device)
        out = dec(payloads)
        diffs = [(o.cpu().float() - ref[i].float()).abs().mean().item() if o is not None and o.shape == ref[i].shape
                 else math.inf for o, i in zip(out, idx)]
        where = ", ".join(f"{k} {v}" for k, v in sorted(dec.counts.items()))
        return max(diffs), f"data.pipeline=gpu on {device.type} ({where})"
    S = cfg.data.image_size
    crops = pipelines.DaliCrops(len(idx), S, device)
    full = torch.tensor([[0, 0, r.shape[1], r.shape[2]] for r in (ref[i] for i in idx)] * 2, dtype=torch.float32)
    views = crops(payloads, full)
    if views is None:
        return math.inf, "DALI (failed on the sample)"
    import torch.nn.functional as F

    diffs = []
    for b, i in enumerate(idx):
        want = F.interpolate(ref[i][None].float(), size=(S, S), mode="bilinear", antialias=True, align_corners=False)
        diffs.append((views[b].cpu().float() * 255 - want[0]).abs().mean().item())
    return max(diffs), f"DALI on {device.type} (after its resize to {S} px)"


# ---------------------------------------------------------------------------------------------
# 2-4. the step on the device, its precision and resume
def comparison_batch(cfg: config.Config, rank: int, world: int, device: torch.device, size: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(view_q, view_k, labels) on the CPU in fp32: the first ``size`` images of this rank's first
    batch from the configured pipeline."""
    batches, sampler = pipelines.train_loader(cfg, rank, world, device)
    sampler.set_epoch(0)
    it = iter(batches)
    q, k, labels, *_ = next(it)
    del it
    n = min(size, q.shape[0])
    return (q[:n].float().cpu().contiguous(), k[:n].float().cpu().contiguous(), labels[:n].cpu())


def _size(cfg: config.Config, per_rank: int, want: int) -> int:
    """Images per comparison step: at most ``want`` and the batch per rank, dividing K (the queue
    is refilled in whole batches) and leaving each Shuffle BN group 2 images or more."""
    for b in range(min(want, per_rank), 1, -1):
        if cfg.moco.K % b == 0 and (b // max(1, min(cfg.moco.shuffle_bn_groups, b // 2))) >= 2:
            return b
    return per_rank


@dataclass
class Trace:
    """What a run of comparison steps left: each step's loss, the query encoder's weights before
    and after (flat, fp64, CPU), and the model and optimiser for further steps."""

    losses: list[float]
    w0: torch.Tensor
    w: torch.Tensor
    model: MoCo
    opt: torch.optim.Optimizer


def flat_weights(model: MoCo) -> torch.Tensor:
    """The query encoder's parameters as one fp64 CPU vector."""
    return torch.cat([p.detach().double().cpu().reshape(-1) for p in model.encoder_q.parameters()])


def new_model(cfg: config.Config, device: torch.device, channels_last: bool = False,
              compiled: bool = False) -> tuple[MoCo, torch.optim.Optimizer]:
    """The config's seeded model on ``device`` and its SGD optimiser at the first epoch's lr, as
    training builds them."""
    torch.manual_seed(cfg.run.seed)
    model = from_config(cfg).to(device, memory_format=memory_format(channels_last))
    if compiled:
        model.encoder_q.compile()
        model.encoder_k.compile()
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=lr_at(cfg, 0), momentum=cfg.optim.momentum,
                          weight_decay=cfg.optim.weight_decay)
    return model, opt


def run_steps(cfg: config.Config, batch, device: torch.device, steps: int, *, amp: bool = False,
              channels_last: bool = False, compiled: bool = False, start: tuple | None = None,
              first: int = 0) -> Trace:
    """``steps`` training steps (``pretrain.train.step``) of the config's objective, mixing on, on
    ``device``, from a fresh seeded model or from ``start`` (model, optimiser). Every random draw
    comes from a CPU generator seeded per step, so runs on any device draw the same numbers."""
    model, opt = start if start is not None else new_model(cfg, device, channels_last, compiled)
    fmt = memory_format(channels_last)
    q, k, labels = (t.to(device) for t in batch)
    q, k = q.contiguous(memory_format=fmt), k.contiguous(memory_format=fmt)
    w0 = flat_weights(model)
    gen = torch.Generator()
    losses = []
    model.train()
    for i in range(first, first + steps):
        gen.manual_seed(data.sample_seed(cfg.run.seed, 0, i))
        loss, _ = step(model, opt, q, k, cfg.objective.mixing, gen, loss=cfg.objective.loss, labels=labels,
                       oracle=cfg.moco.oracle, amp=amp)
        losses.append(float(loss))
    return Trace(losses, w0, flat_weights(model), model, opt)


def distance(a: Trace, b: Trace) -> tuple[float, float]:
    """(largest relative loss difference, ||w_a - w_b|| / ||w_b - w_0||) of two traces of the same
    steps, ``b`` the reference."""
    dl = max(abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a.losses, b.losses))
    moved = float((b.w - b.w0).norm())
    return dl, float((a.w - b.w).norm()) / max(moved, 1e-12)


def _verdict(name: str, what: str, dl: float, du: float, tol: Tolerance, fix: str) -> Check:
    ok = dl <= tol.loss and du <= tol.update and math.isfinite(dl) and math.isfinite(du)
    detail = (f"{what}: losses within {dl:.1e} (tolerance {tol.loss:g}), updates within {du:.1e} "
              f"(tolerance {tol.update:g})")
    return Check(name, PASS if ok else FAIL, detail, "" if ok else fix)


@contextlib.contextmanager
def exact_math(device: torch.device):
    """fp32 without TF32 and with deterministic cuDNN kernels while a comparison runs."""
    if device.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
           torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
         torch.backends.cudnn.benchmark) = old


def check_steps(cfg: config.Config, batch, device: torch.device, steps: int, label: str) -> list[Check]:
    """The ``step`` and ``precision`` lines of one config."""
    cpu = torch.device("cpu")
    with exact_math(device):
        ref = run_steps(cfg, batch, cpu, steps)
        dev = run_steps(cfg, batch, device, steps)
    if device.type == "cpu":
        where = f"{label}: {steps} fp32 steps run twice on the CPU (no GPU on this node: a determinism check)"
    else:
        where = f"{label}: {steps} fp32 steps on {device.type} vs the CPU"
    lines = [_verdict("step", where, *distance(dev, ref), FP32,
                      "the device's fp32 kernels disagree with the CPU's: check the driver / CUDA / torch build "
                      "(torch.cuda.is_available(), torch.version.cuda) and run mochi-bench on that node")]
    r = cfg.run
    if not (r.amp or r.channels_last or r.compile):
        lines.append(Check("precision", SKIP, f"{label}: the run is fp32, contiguous, eager (the line above)"))
        return lines
    what = ", ".join(w for w, on in (("bf16 autocast", r.amp), ("channels_last", r.channels_last),
                                     ("torch.compile", r.compile)) if on)
    fast = run_steps(cfg, batch, device, steps, amp=r.amp, channels_last=r.channels_last, compiled=r.compile)
    lines.append(_verdict("precision", f"{label}: {what} vs fp32 on {device.type}", *distance(fast, dev),
                          BF16 if r.amp else FP32,
                          "turn the failing setting off for this cluster (run.amp=false, run.channels_last=false or "
                          "run.compile=false) and report the torch version"))
    return lines


def check_resume(cfg: config.Config, batch, device: torch.device, folder: Path, label: str) -> Check:
    """A step, a checkpoint (model and optimiser, through ``pretrain.run.checkpoint``) written to
    ``folder`` and read back into a new model, one more step: equal to two steps in one go (the
    second step uses the optimiser's momentum, so a checkpoint that lost it fails). The checkpoint is
    scratch: removed once read back (a ResNet-50's is hundreds of MB)."""
    with exact_math(device):
        straight = run_steps(cfg, batch, device, 2)
        head = run_steps(cfg, batch, device, 1)
        ckpt = folder / rundir.CHECKPOINTS
        try:
            checkpoint.save(ckpt, 1, {"model": head.model.state_dict(), "optimizer": head.opt.state_dict()}, keep=1)
            state, _ = checkpoint.load_latest(ckpt)
        except OSError as e:
            return Check("resume", FAIL, f"{label}: cannot write a checkpoint to {ckpt}: {e}",
                         "give the grid a folder (--out) on a filesystem the compute nodes can write")
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
        if state is None:
            return Check("resume", FAIL, f"{label}: the checkpoint written to {ckpt} does not read back intact",
                         "give the grid a folder (--out) on a filesystem that keeps what is written")
        model, opt = new_model(cfg, device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        resumed = run_steps(cfg, batch, device, 1, start=(model, opt), first=1)
    du = float((resumed.w - straight.w).norm()) / max(float((straight.w - head.w).norm()), 1e-12)
    dl = abs(resumed.losses[0] - straight.losses[-1]) / max(abs(straight.losses[-1]), 1e-6)
    return _verdict("resume", f"{label}: a step after a checkpoint round trip in {ckpt} vs without it", dl, du,
                    FP32, "the checkpoint lost state: report this (it is a bug)")


# ---------------------------------------------------------------------------------------------
# 5. the process group, 7. speed
def check_group(cfg: config.Config, info: dist.DistInfo, steps: int) -> Check:
    """DDP steps of the run's settings on every rank, then the ranks, the queue, its pointer and the
    weights all-gathered: equal on every rank."""
    if info.world == 1:
        return Check("process group", SKIP, "one task: nothing to gather (a job of several tasks checks it)")
    backend = torch.distributed.get_backend()
    batch = comparison_batch(cfg, info.rank, info.world, info.device, cfg.optim.batch_size // info.world)
    model, opt = new_model(cfg, info.device, cfg.run.channels_last)
    net = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[info.device.index] if info.device.type == "cuda" else None, broadcast_buffers=False)
    fmt = memory_format(cfg.run.channels_last)
    q, k, labels = (t.to(info.device) for t in batch)
    q, k = q.contiguous(memory_format=fmt), k.contiguous(memory_format=fmt)
    gen = torch.Generator(device=info.device)
    for i in range(steps):
        gen.manual_seed(data.sample_seed(cfg.run.seed, info.rank, i))
        step(net, opt, q, k, cfg.objective.mixing, gen, loss=cfg.objective.loss, labels=labels,
             oracle=cfg.moco.oracle, amp=cfg.run.amp)
    mine = torch.tensor([float(info.rank), model.queue.double().sum().item(), float(model.queue_ptr.item()),
                         flat_weights(model).sum().item(),
                         torch.cat([p.detach().double().reshape(-1).cpu() for p in model.encoder_k.parameters()]).sum().item()],
                        dtype=torch.float64, device=info.device)
    every = [torch.empty_like(mine) for _ in range(info.world)]
    torch.distributed.all_gather(every, mine)
    every = [t.cpu() for t in every]
    ranks_ok = [int(t[0]) for t in every] == list(range(info.world))
    same = all(torch.equal(t[1:], every[0][1:]) for t in every)
    detail = f"{info.world} ranks over {backend}: {steps} DDP steps, then ranks, queue, pointer and weights gathered"
    if ranks_ok and same:
        return Check("process group", PASS, f"{detail}: identical on every rank")
    return Check("process group", FAIL, f"{detail}: {'rank ids out of order' if not ranks_ok else 'ranks disagree'}",
                 "check the interconnect and NCCL (NCCL_DEBUG=INFO in the profile's setup lines), or run one task per job")


def measure_speed(cfg: config.Config, info: dist.DistInfo, steps: int) -> tuple[Check, float, float]:
    """(the line, global step img/s, global input img/s): the run's own step on a real batch held on
    the device, and the configured input pipeline alone, each after warm-up."""
    batches, sampler = pipelines.train_loader(cfg, info.rank, info.world, info.device)
    sampler.set_epoch(0)
    it = iter(batches)
    q, k, labels, *_ = next(it)
    n_in, t = 0, time.perf_counter()
    for _ in range(steps):
        try:
            b = next(it)
        except StopIteration:
            break
        n_in += b[0].shape[0]
    sync(info.device)
    input_rate = n_in / max(time.perf_counter() - t, 1e-9) * info.world
    del it
    model, opt = new_model(cfg, info.device, cfg.run.channels_last, cfg.run.compile)
    net = model if info.world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[info.device.index] if info.device.type == "cuda" else None, broadcast_buffers=False)
    fmt = memory_format(cfg.run.channels_last)
    q = q.to(info.device).contiguous(memory_format=fmt)
    k = k.to(info.device).contiguous(memory_format=fmt)
    labels = labels.to(info.device)
    gen = torch.Generator(device=info.device)

    def one(i: int) -> None:
        gen.manual_seed(data.sample_seed(cfg.run.seed, info.rank, i))
        step(net, opt, q, k, cfg.objective.mixing, gen, loss=cfg.objective.loss, labels=labels,
             oracle=cfg.moco.oracle, amp=cfg.run.amp)

    for i in range(2):
        one(i)
    sync(info.device)
    dist.barrier()
    t = time.perf_counter()
    for i in range(steps):
        one(2 + i)
    sync(info.device)
    step_rate = steps * q.shape[0] * info.world / max(time.perf_counter() - t, 1e-9)
    bound = "the input pipeline" if input_rate < step_rate else "the step"
    return (Check("speed", PASS, f"step {step_rate:.1f} img/s, input pipeline ({cfg.data.pipeline}, "
                                 f"{cfg.data.num_workers} workers) {input_rate:.1f} img/s over {info.world} "
                                 f"rank{'s' * (info.world > 1)}: {bound} bounds training"),
            step_rate, input_rate)


# ---------------------------------------------------------------------------------------------
# 6. tracking
def check_tracking(s: PreflightSettings) -> Check:
    """A run opened in the store (a child of the grid's parent run, stage ``preflight``), a metric
    logged and read back, the run closed."""
    uri = s.tracking_uri
    if not uri:
        return Check("tracking", SKIP, "no MLflow store given")
    host = socket.gethostname()
    # One quick try: a store that does not answer from here must not hold the node for minutes.
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        client = mlflow_client(uri)
        exp = experiment_id(client, s.experiment)
        tags = {"stage": PREFLIGHT, "host": host, **s.tags}
        if s.parent_run:
            tags["mlflow.parentRunId"] = s.parent_run
        r = retry_locked(client.create_run, exp, run_name="preflight", tags=tags)
        retry_locked(client.log_metric, r.info.run_id, "preflight_check", 1.0)
        retry_locked(client.set_terminated, r.info.run_id, "FINISHED")
        back = retry_locked(client.get_run, r.info.run_id).data.metrics.get("preflight_check")
    except Exception as e:  # noqa: BLE001 - whatever the store or the network says
        return Check("tracking", FAIL, f"the MLflow store {uri} is not usable from {host}: "
                                       f"{' '.join(str(e).split())[:200]}",
                     "start the tracking server, or give --tracking-uri a store the compute nodes reach "
                     "(http://HOST:PORT of a server, or sqlite:/// on a shared filesystem)")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if back != 1.0:
        return Check("tracking", FAIL, f"the MLflow store {uri} lost a logged metric", "check the store's backend")
    return Check("tracking", PASS, f"MLflow store {uri} reached from {host}: run {r.info.run_id} opened, logged, "
                                   f"closed")


# ---------------------------------------------------------------------------------------------
def _label(cfg: config.Config) -> str:
    return cfg.objective.label


def _guard(name: str, fn, *args) -> list[Check]:
    """``fn(*args)`` as report lines; an exception becomes a failed line naming it."""
    try:
        out = fn(*args)
    except UserError as e:
        return [Check(name, FAIL, str(e), "fix the config or the data it names")]
    except Exception as e:  # noqa: BLE001 - a preflight reports what broke instead of dying
        log.exception("preflight check %s raised", name)
        return [Check(name, FAIL, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}",
                      "see the job's log for the traceback")]
    return out if isinstance(out, list) else [out]  # a list of lines, a line, or measure_speed's tuple


def local_checks(s: PreflightSettings, info: dist.DistInfo) -> list[Check]:
    """The data, step, precision and resume lines of every config, on this rank alone."""
    checks: list[Check] = []
    first = s.configs[0]
    for cfg in s.configs:
        label = _label(cfg)
        data_line = _guard("data", check_data, cfg, info.device, s.sample)
        if cfg is first or data_line[0].status == FAIL:
            checks += data_line
        if data_line[0].status == FAIL:
            continue
        size = _size(cfg, cfg.optim.batch_size // info.world, s.compare_batch)
        try:
            batch = comparison_batch(cfg, 0, 1, info.device, size)
        except Exception as e:  # noqa: BLE001
            checks.append(Check("step", FAIL, f"{label}: no batch from the input pipeline: {e}",
                                "see the job's log"))
            continue
        checks += _guard("step", check_steps, cfg, batch, info.device, s.steps, label)
        checks += _guard("resume", check_resume, cfg, batch, info.device, Path(s.out_dir) / "scratch", label)
    return checks


def _agree(flag: bool, info: dist.DistInfo) -> bool:
    """Rank 0's ``flag`` on every rank."""
    if info.world == 1:
        return flag
    t = torch.tensor([int(flag)], device=info.device)
    torch.distributed.broadcast(t, src=0)
    return bool(t.item())


def run(s: PreflightSettings) -> Report:
    """Run every check (``check_group`` and the speed on every rank, the rest on rank 0), write the
    report to ``s.out_dir`` and return it; raises ``PreflightFailed`` after writing a failed one."""
    first = s.configs[0]
    info = dist.init(first.run.device)
    checks: list[Check] = []
    if info.main:
        with local_only():  # rank 0 alone: its model must not wait for the other ranks
            checks += local_checks(s, info)
        checks += _guard("tracking", check_tracking, s)
    # The ranks go on together only where rank 0's checks passed: a rank that fails alone in a
    # collective would leave the others waiting in it.
    go = _agree(all(c.status != FAIL for c in checks), info)
    step_rate = input_rate = None
    if go:
        checks += _guard("process group", check_group, first, info, s.steps)
        go = _agree(all(c.status != FAIL for c in checks), info)
    if go:  # a broken node's speed means nothing
        speed = _guard("speed", measure_speed, first, info, s.speed_steps)
        if isinstance(speed[0], tuple):
            line, step_rate, input_rate = speed[0]
            speed = [line]
        checks += speed
    else:
        checks.append(Check("speed", SKIP, "not measured: a check above failed"))
    report = Report(checks=checks, device=device_name(info.device), host=socket.gethostname(), world=info.world,
                    date=datetime.datetime.now().isoformat(timespec="seconds"), step_img_per_s=step_rate,
                    input_img_per_s=input_rate, arch=first.model.arch, image_size=first.data.image_size,
                    tolerances={"fp32": dataclasses.asdict(FP32), "bf16": dataclasses.asdict(BF16),
                                "decode_levels": DECODE_TOL, "dali_levels": DALI_TOL}, tags=dict(s.tags))
    if info.main:
        out = Path(s.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.atomic_write(out / rundir.PREFLIGHT_FILE, report.to_json().encode())
        for c in report.checks:
            (log.info if c.status != FAIL else log.error)("%s", c.line())
    dist.barrier()
    if not report.passed:
        raise PreflightFailed("; ".join(c.line() for c in report.failures()))
    return report
