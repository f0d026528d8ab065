"""Training-step throughput: MoCo v2 vs MoCHi (and the debiased, HCL and Ring losses), side by side in
one run, eager and compiled.

``measure`` times ``pretrain.train.step`` itself, the function training runs, on synthetic images
resident on the device (so only the model is measured), with the statistics computed on the
steps training computes them on; and times ``mochi.synthesize`` alone. Sizes default to the
paper's ImageNet setting on a GPU (ResNet-50, batch 256, 224 px, K 65536, (N, s, s') = (1024,
1024, 256)) and to small ones on a CPU.

``main`` is the command ``mochi-bench`` (old spelling: ``python -m pretrain.bench``): it prints each
method's ratio to MoCo v2 and the device, and writes ``results/bench_step.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..method import mochi
from ..method.loss import Loss
from ..method.mixing import Mixing
from ..method.moco import MoCo
from ..method.objective import Objective
from ..run import dist
from ..run.cli import ArgumentParser, execute
from ..run.config import RunCfg
from ..run.errors import UserError
from ..train import memory_format, stats_due, step


@dataclass(frozen=True)
class Size:
    """The model and MoCHi sizes a benchmark runs at."""

    arch: str
    batch: int
    image_size: int
    K: int
    mixing: Mixing

    def as_dict(self) -> dict:
        """Flat, for the JSON figures: arch, batch, image_size, K, N, s, s_prime."""
        m = self.mixing
        return {"arch": self.arch, "batch": self.batch, "image_size": self.image_size, "K": self.K, "N": m.N,
                "s": m.s, "s_prime": m.s_prime}


PAPER = Size("resnet50", 256, 224, 65536, Mixing(1024, 1024, 256))
SMALL = Size("resnet18", 32, 64, 4096, Mixing(256, 256, 64))


def device_name(dev: torch.device) -> str:
    """The device in words, for a benchmark's figures."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def sync(dev: torch.device) -> None:
    """Wait for the device's queued work, so a clock reads finished work."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def add_size_args(p) -> None:
    """The model, MoCHi and precision flags both benchmarks take (defaults: PAPER and bf16 autocast +
    channels_last on a GPU; SMALL, fp32 and contiguous on a CPU)."""
    import argparse

    p.add_argument("--arch", help=f"backbone (default: {PAPER.arch}; --small: {SMALL.arch})")
    p.add_argument("--batch", type=int, help=f"images per step (default: {PAPER.batch}; --small: {SMALL.batch})")
    p.add_argument("--image-size", type=int, help=f"crop side in pixels (default: {PAPER.image_size}; --small: "
                                                 f"{SMALL.image_size})")
    p.add_argument("--K", type=int, help=f"queue length K (default: {PAPER.K}; --small: {SMALL.K})")
    for symbol, what in (("N", "hardest negatives mixed per query"), ("s", "negatives mixed from pairs of the N "
                         "hardest"), ("s_prime", "negatives mixed from the query and one of the N hardest")):
        p.add_argument(f"--{symbol}", type=int, help=f"MoCHi's {symbol}, {what} (default: "
                       f"{getattr(PAPER.mixing, symbol)}; --small: {getattr(SMALL.mixing, symbol)})")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on with CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last model and images (default: on with CUDA)")


def resolve_size(args, small: bool) -> Size:
    """PAPER or SMALL sizes with the flags given, checked: one error line for impossible sizes."""
    from ..method.archs import ARCHS

    base = SMALL if small else PAPER
    pick = {k: getattr(args, k) if getattr(args, k) is not None else getattr(base, k)
            for k in ("arch", "batch", "image_size", "K")}
    for flag, key in (("--batch", "batch"), ("--image-size", "image_size"), ("--K", "K")):
        if pick[key] <= 0:
            raise UserError(f"{flag} must be > 0, got {pick[key]}")
    if pick["arch"] not in ARCHS:
        raise UserError(f"--arch {pick['arch']!r}: choose one of {', '.join(ARCHS)}")
    if pick["K"] % pick["batch"]:
        raise UserError(f"--K {pick['K']} must be a multiple of --batch {pick['batch']}")
    try:
        mixing = Mixing(*(getattr(args, k) if getattr(args, k) is not None else getattr(base.mixing, k)
                          for k in ("N", "s", "s_prime")))
        mixing.check_queue(pick["K"])
    except ValueError as e:
        raise UserError(str(e)) from None
    return Size(mixing=mixing, **pick)


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


# The methods the benchmark can time beside MoCo v2 (the losses with their authors' defaults).
METHODS = ("mocov2", "mochi", "debiased", "hcl", "hcl+mochi", "ring")


def objectives(names: list[str], mixing: Mixing) -> dict[str, Objective]:
    """{name: what it trains} for benchmark method names (MoCHi's setting is the size's)."""
    dcl, hard = Loss("debiased", tau_plus=0.1), Loss("hcl", tau_plus=0.1, beta=1.0)
    ring = Loss("ring", ring_outer=0.1, ring_inner=0.1)  # the authors' MoCo v2 config
    known = {"mocov2": Objective(), "mochi": Objective(mixing=mixing), "debiased": Objective(dcl),
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
    }


def write_json(path: str | Path | None, result: dict) -> Path | None:
    """Write a benchmark's figures (skipped for an empty path); returns where."""
    if not path:
        return None
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    """``mochi-bench``: parse, measure, print the table, write the JSON."""
    p = ArgumentParser(prog="mochi-bench",
                       description="Training-step throughput: MoCo v2 vs MoCHi, side by side in one run.")
    add_size_args(p)
    p.add_argument("--small", action="store_true", help=f"small sizes for a CPU: {SMALL.as_dict()}")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per method and variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    p.add_argument("--variants", default="eager,compiled", help="comma list of eager, compiled")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of {', '.join(METHODS)}: each timed beside MoCo v2 (debiased, "
                        f"Chuang et al.'s, HCL with tau+ 0.1, beta 1.0, and Ring with its MoCo config's "
                        f"outer 0.1, inner 0.1)")
    p.add_argument("--shuffle-bn-groups", type=int, default=8,
                   help="shuffle-BN groups of the key encoder on one device (moco.shuffle_bn_groups)")
    p.add_argument("--stats-every", type=int, default=RunCfg().log_every,
                   help="compute the step statistics every this many steps, as training does every run.log_every "
                        "(default: its default)")
    p.add_argument("--json", default="results/bench_step.json", help="where to write the figures")
    args = p.parse_args(argv)

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = resolve_size(args, args.small or dev.type == "cpu")
    variants = [v for v in args.variants.split(",") if v]
    if not set(variants) <= {"eager", "compiled"} or not variants:
        raise UserError(f"--variants: {args.variants!r}; use eager, compiled or both")
    methods = [m for m in args.methods.split(",") if m]
    if not methods or not set(methods) <= set(METHODS):
        raise UserError(f"--methods: {args.methods!r}; use a comma list of {', '.join(METHODS)}")
    if args.steps <= 0 or args.warmup < 0 or args.shuffle_bn_groups <= 0 or args.stats_every <= 0:
        raise UserError("--steps, --shuffle-bn-groups and --stats-every must be > 0 and --warmup >= 0")
    amp, channels_last = precision(args, dev)

    r = measure(size, dev, variants, args.steps, args.warmup, amp, channels_last, args.shuffle_bn_groups,
                args.stats_every, methods)
    m = size.mixing
    print(f"device: {r['device']}  torch {r['torch']}  {r['dtype']}  {r['date']}")
    print(f"{size.arch}, batch {size.batch}, {size.image_size} px, K {size.K}, MoCHi (N, s, s') = "
          f"({m.N}, {m.s}, {m.s_prime}); statistics every {r['stats_every']} steps, as training")
    print(f"{'variant':<10} {'method':<50} {'img/s':>9} {'vs MoCo v2':>11}")
    for row in r["results"]:
        for label, ratio in row["ratios"].items():
            print(f"{row['variant']:<10} {label:<50} {ratio * row['mocov2_img_s']:>9.1f} {ratio:>11.3f}")
        if "mixing_share" in row:
            print(f"{row['variant']:<10} MoCHi/MoCo {row['ratio']:.3f}; mixing share of a MoCHi step "
                  f"{100 * row['mixing_share']:.2f}%")
    print(f"mixing alone: {r['mixing_ms']:.3f} ms per step")
    if (out := write_json(args.json, r)) is not None:
        print(f"wrote {out}")
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-bench``)."""
    execute(main)
