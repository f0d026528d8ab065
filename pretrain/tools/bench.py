"""Training-step throughput: MoCo v2 vs MoCHi (and SynCo's six kinds, the reweighted control, the
debiased, HCL and Ring losses), side by side in one run, eager and compiled.

``measure`` times ``pretrain.train.step`` itself, the function training runs, on synthetic images
resident on the device (so only the model is measured), with the statistics computed on the
steps training computes them on; times ``mochi.synthesize`` alone; and times each synthetic kind's
closed form for q . h beside its explicit points (``time_closed_forms``). Sizes default to the
paper's ImageNet setting on a GPU (ResNet-50, batch 256, 224 px, K 65536, (N, s, s') = (1024,
1024, 256)) and to small ones on a CPU.

The command ``mochi-bench`` (``pretrain/bench.py``) prints each method's ratio to MoCo v2 and the
device, and writes ``results/bench_step.json``; its sizes and method names are in ``sizes``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..method import mochi
from ..method.loss import Loss
from ..method.mixing import Mixing
from ..method.moco import MoCo
from ..method.objective import Objective
from ..method.synthetic import registry as synthetic
from ..method.synthetic.hardset import HardSet
from ..run import dist
from ..run.config import RunCfg
from ..train import memory_format, stats_due, step
from .sizes import Size, reweighted, synco


def device_name(dev: torch.device) -> str:
    """The device in words, for a benchmark's figures."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def sync(dev: torch.device) -> None:
    """Wait for the device's queued work, so a clock reads finished work."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def precision(args, dev: torch.device) -> tuple[bool, bool]:
    """(amp, channels_last) from the flags, defaulting to on with CUDA and off on a CPU."""
    cuda = dev.type == "cuda"
    return (cuda if args.amp is None else args.amp), (cuda if args.channels_last is None else args.channels_last)


def describe_precision(amp: bool, channels_last: bool) -> str:
    """How the figures name a precision and memory format."""
    return f"{'bf16 autocast' if amp else 'fp32'}, {'channels_last' if channels_last else 'contiguous'}"


def cuda_math(dev: torch.device) -> None:
    """cuDNN autotuning and TF32 matmuls on CUDA, as a real run would use; nothing on a CPU."""
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def bench_model(size: Size, dev: torch.device, compiled: bool, channels_last: bool,
                shuffle_bn_groups: int = 8) -> tuple[MoCo, torch.optim.Optimizer]:
    """A seeded MoCo at ``size`` on ``dev`` and its SGD optimiser, as training builds them."""
    torch.manual_seed(0)
    model = MoCo(size.arch, 128, size.K, shuffle_bn_groups=shuffle_bn_groups).to(
        dev, memory_format=memory_format(channels_last))
    if compiled:
        model.encoder_q.compile()
        model.encoder_k.compile()
    return model, torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)


def time_steps(model: MoCo, opt: torch.optim.Optimizer, next_batch: Callable, objective: Objective, steps: int,
               warmup: int, amp: bool, dev: torch.device, log_every: int = RunCfg().log_every) -> float:
    """Images per second of ``train.step`` training ``objective`` (its loss and mixing) on the
    (view_q, view_k) that ``next_batch()`` gives; the statistics are computed (and averaged over
    ranks, as training logs them) every ``log_every`` steps, as training does."""
    gen = torch.Generator(device=dev).manual_seed(0)

    def one(i: int) -> int:
        im_q, im_k = next_batch()
        due = stats_due(i, log_every)
        loss, stats = step(model, opt, im_q, im_k, objective.mixing, gen, loss=objective.loss, with_stats=due,
                           amp=amp)
        if due:
            dist.mean_over_ranks({**stats, "loss": loss})
        return im_q.shape[0]

    for i in range(warmup):
        one(i)
    sync(dev)
    t = time.perf_counter()
    images = sum(one(warmup + i) for i in range(steps))
    sync(dev)
    return images / (time.perf_counter() - t)


def synthetic_images(size: Size, dev: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded batches of random images resident on the device, in the model's memory format."""
    g = torch.Generator(device=dev).manual_seed(0)
    shape = (size.batch, 3, size.image_size, size.image_size)
    fmt = memory_format(channels_last)
    return (torch.randn(shape, device=dev, generator=g).contiguous(memory_format=fmt),
            torch.randn(shape, device=dev, generator=g).contiguous(memory_format=fmt))


def time_mixing(B: int, K: int, mixing: Mixing, dev: torch.device, reps: int = 50) -> float:
    """Milliseconds of synthesize() per step, the logits it reuses already computed."""
    g = torch.Generator(device=dev).manual_seed(0)
    q = F.normalize(torch.randn(B, 128, device=dev, generator=g), dim=1)
    queue = F.normalize(torch.randn(K, 128, device=dev, generator=g), dim=1)
    l_neg = q @ queue.T
    for _ in range(5):
        mochi.synthesize(q, queue, mixing, g, l_neg=l_neg)
    sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        mochi.synthesize(q, queue, mixing, g, l_neg=l_neg)
    sync(dev)
    return 1000 * (time.perf_counter() - t) / reps


def time_closed_forms(B: int, K: int, mixing: Mixing, dev: torch.device, reps: int = 20) -> dict[str, dict]:
    """For each kind with a closed form, milliseconds per step of its logits and their backward
    into q, from its explicit points and from its closed form, side by side: {kind: {explicit_ms,
    closed_ms, ratio}} at MoCHi's N and s' (the count of the query-mixed points)."""
    g = torch.Generator(device=dev).manual_seed(0)
    q = F.normalize(torch.randn(B, 128, device=dev, generator=g), dim=1).requires_grad_(True)
    queue = F.normalize(torch.randn(K, 128, device=dev, generator=g), dim=1)
    n = max(1, mixing.s_prime)
    hard = HardSet.of(q.detach(), queue, mixing.N, g)

    def explicit(mod):
        l_neg = q @ queue.T
        with torch.no_grad():
            h = mod.points(q.detach(), queue, hard, n)
        return (l_neg.sum() + mochi.logits_of(q, h).sum())

    def closed(mod):
        l_neg = q @ queue.T
        return l_neg.sum() + mod.logits(q, queue, l_neg, hard, n).sum()

    def ms(fn, mod) -> float:
        for _ in range(3):
            fn(mod).backward()
        sync(dev)
        t = time.perf_counter()
        for _ in range(reps):
            fn(mod).backward()
        sync(dev)
        return 1000 * (time.perf_counter() - t) / reps

    out = {}
    for name in synthetic.COUNTS:
        mod = synthetic.module(name)
        if hasattr(mod, "logits"):
            e, c = ms(explicit, mod), ms(closed, mod)
            out[synthetic.KINDS[name].label] = {"explicit_ms": e, "closed_ms": c, "ratio": c / e}
    return out


def objectives(names: list[str], mixing: Mixing) -> dict[str, Objective]:
    """{name: what it trains} for benchmark method names (MoCHi's setting is the size's)."""
    dcl, hard = Loss("debiased", tau_plus=0.1), Loss("hcl", tau_plus=0.1, beta=1.0)
    ring = Loss("ring", ring_outer=0.1, ring_inner=0.1)  # the authors' MoCo v2 config
    known = {"mocov2": Objective(), "mochi": Objective(mixing=mixing), "synco": Objective(mixing=synco(mixing)),
             "reweighted": Objective(mixing=reweighted(mixing)), "debiased": Objective(dcl),
             "hcl": Objective(hard), "hcl+mochi": Objective(hard, mixing), "ring": Objective(ring)}
    return {n: known[n] for n in names}


def measure(size: Size, dev: torch.device, variants: list[str], steps: int, warmup: int, amp: bool,
            channels_last: bool, shuffle_bn_groups: int = 8, log_every: int = RunCfg().log_every,
            methods: list[str] = ("mocov2", "mochi")) -> dict:
    """The step benchmark's figures: img/s of each method (MoCo v2 first, then MoCHi, the debiased,
    HCL and Ring losses, ...) per variant (eager, compiled), each one's ratio to MoCo v2, and the share of
    a MoCHi step that mixing alone takes. Statistics are computed every ``log_every`` steps
    (training's ``run.log_every``)."""
    cuda_math(dev)
    im_q, im_k = synthetic_images(size, dev, channels_last)
    todo = objectives(["mocov2", *[m for m in methods if m != "mocov2"]], size.mixing)
    rows = []
    for variant in variants:
        model, opt = bench_model(size, dev, variant == "compiled", channels_last, shuffle_bn_groups)
        # Interleave the methods so drift in clocks or temperature hits all alike; keep each one's best.
        rates: dict[str, list[float]] = {name: [] for name in todo}
        for _ in range(2):
            for name, objective in todo.items():
                rates[name].append(time_steps(model, opt, lambda: (im_q, im_k), objective, steps, warmup, amp, dev,
                                              log_every))
        best = {name: max(r) for name, r in rates.items()}
        rows.append({"variant": variant, **{f"{name}_img_s": v for name, v in best.items()},
                     "ratios": {todo[name].label: v / best["mocov2"] for name, v in best.items()}})
        del model, opt
    mix_ms = time_mixing(size.batch, size.K, size.mixing, dev)
    for r in rows:
        if "mochi_img_s" in r:
            r["ratio"] = r["mochi_img_s"] / r["mocov2_img_s"]
            r["mixing_share"] = mix_ms / (1000 * size.batch / r["mochi_img_s"])
    return {
        "device": device_name(dev),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "dtype": describe_precision(amp, channels_last),
        **size.as_dict(),
        "steps": steps,
        "stats_every": log_every,
        "results": rows,
        "mixing_ms": mix_ms,
        "closed_forms": time_closed_forms(size.batch, size.K, size.mixing, dev),
    }


def write_json(path: str | Path | None, result: dict) -> Path | None:
    """Write a benchmark's figures (skipped for an empty path); returns where."""
    if not path:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out
