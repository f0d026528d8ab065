"""Training-step throughput: MoCo v2 vs MoCHi, side by side in one run, eager and compiled.

``python -m pretrain.bench`` times full optimisation steps (query forward/backward, momentum
update, Shuffle-BN key forward, logits, loss, SGD, enqueue) on synthetic images resident on the
device, so only the model is measured; and times ``mochi.synthesize`` alone. Defaults are the
paper's ImageNet setting (ResNet-50, batch 256, 224 px, K 65536, (N, s, s') = (1024, 1024, 256));
without CUDA, ``--small`` sizes are used unless sizes are given.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import mochi
from .cli import ArgumentParser, run
from .errors import UserError
from .moco import MoCo

PAPER = dict(arch="resnet50", batch=256, image_size=224, K=65536, N=1024, s=1024, s_prime=256)
SMALL = dict(arch="resnet18", batch=32, image_size=64, K=4096, N=256, s=256, s_prime=64)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_steps(model, opt, next_batch, mix: tuple[int, int, int], steps: int, warmup: int, autocast, dev) -> float:
    """Images per second of full training steps on the (view_q, view_k) that ``next_batch()`` gives."""
    gen = torch.Generator(device=dev).manual_seed(0)

    def step():
        im_q, im_k = next_batch()
        with autocast():
            logits, _ = model(im_q, im_k, *mix, generator=gen)
        loss = F.cross_entropy(logits.float(), torch.zeros(im_q.shape[0], dtype=torch.long, device=dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return im_q.shape[0]

    for _ in range(warmup):
        step()
    _sync(dev)
    t = time.perf_counter()
    images = sum(step() for _ in range(steps))
    _sync(dev)
    return images / (time.perf_counter() - t)


def time_mixing(B: int, K: int, N: int, s: int, s_prime: int, dev, reps: int = 50) -> float:
    """Milliseconds of synthesize() per step, the logits it reuses already computed."""
    g = torch.Generator(device=dev).manual_seed(0)
    q = F.normalize(torch.randn(B, 128, device=dev, generator=g), dim=1)
    queue = F.normalize(torch.randn(K, 128, device=dev, generator=g), dim=1)
    l_neg = q @ queue.T
    for _ in range(5):
        mochi.synthesize(q, queue, N, s, s_prime, g, l_neg=l_neg)
    _sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        mochi.synthesize(q, queue, N, s, s_prime, g, l_neg=l_neg)
    _sync(dev)
    return 1000 * (time.perf_counter() - t) / reps


def write_json(path: str | None, result: dict) -> None:
    """Write a benchmark's figures (skipped for an empty path) and say where."""
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def add_size_args(p) -> None:
    """The model and MoCHi sizes both benchmarks take (defaults: PAPER on a GPU, SMALL on a CPU)."""
    p.add_argument("--arch")
    p.add_argument("--batch", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--K", type=int)
    p.add_argument("--N", type=int)
    p.add_argument("--s", type=int)
    p.add_argument("--s-prime", type=int)


def resolve_size(args, small: bool) -> dict:
    """PAPER or SMALL sizes with the flags given, checked: one error line for impossible sizes."""
    base = SMALL if small else PAPER
    size = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    if size["K"] % size["batch"]:
        raise UserError(f"--K {size['K']} must be a multiple of --batch {size['batch']}")
    try:
        mochi.check_params(size["N"], size["s"], size["s_prime"], size["K"])
    except ValueError as e:
        raise UserError(str(e)) from None
    return size


def fast_math(dev: torch.device):
    """cuDNN autotuning and TF32 on CUDA; returns a factory of the step's autocast context
    (bf16 on CUDA, off on a CPU)."""
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    return autocast


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m pretrain.bench", description=__doc__.splitlines()[0])
    add_size_args(p)
    p.add_argument("--small", action="store_true", help=f"small sizes for a CPU: {SMALL}")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--variants", default="eager,compiled", help="comma list of eager, compiled")
    p.add_argument("--shuffle-bn-groups", type=int, default=8)
    p.add_argument("--json", default="results/bench_step.json", help="where to write the figures")
    args = p.parse_args(argv)

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = resolve_size(args, args.small or dev.type == "cpu")
    variants = [v for v in args.variants.split(",") if v]
    if not set(variants) <= {"eager", "compiled"} or not variants:
        raise UserError(f"--variants: {args.variants!r}; use eager, compiled or both")
    if args.steps <= 0 or args.warmup < 0:
        raise UserError("--steps must be > 0 and --warmup >= 0")

    cuda = dev.type == "cuda"
    autocast = fast_math(dev)
    g = torch.Generator(device=dev).manual_seed(0)
    shape = (size["batch"], 3, size["image_size"], size["image_size"])
    im_q = torch.randn(shape, device=dev, generator=g)
    im_k = torch.randn(shape, device=dev, generator=g)
    if cuda:
        im_q = im_q.contiguous(memory_format=torch.channels_last)
        im_k = im_k.contiguous(memory_format=torch.channels_last)

    mix = (size["N"], size["s"], size["s_prime"])
    rows = []
    for variant in variants:
        torch.manual_seed(0)
        model = MoCo(size["arch"], 128, size["K"], shuffle_bn_groups=args.shuffle_bn_groups).to(dev)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        if variant == "compiled":
            model.encoder_q.compile()
            model.encoder_k.compile()
        opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
        # Interleave the two methods so drift in clocks or temperature hits both alike.
        moco, mochi_ips = [], []
        for _ in range(2):
            moco.append(time_steps(model, opt, lambda: (im_q, im_k), (0, 0, 0), args.steps, args.warmup, autocast, dev))
            mochi_ips.append(time_steps(model, opt, lambda: (im_q, im_k), mix, args.steps, args.warmup, autocast, dev))
        rows.append({"variant": variant, "mocov2_img_s": max(moco), "mochi_img_s": max(mochi_ips)})
        del model, opt
    mix_ms = time_mixing(size["batch"], size["K"], *mix, dev)

    result = {
        "device": device_name(dev),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "dtype": "bf16 autocast, channels_last" if cuda else "fp32",
        **size,
        "steps": args.steps,
        "results": rows,
        "mixing_ms": mix_ms,
    }
    print(f"device: {result['device']}  torch {result['torch']}  {result['dtype']}  {result['date']}")
    print(f"{size['arch']}, batch {size['batch']}, {size['image_size']} px, K {size['K']}, "
          f"MoCHi (N, s, s') = ({size['N']}, {size['s']}, {size['s_prime']})")
    print(f"{'variant':<10} {'MoCo v2 img/s':>14} {'MoCHi img/s':>12} {'MoCHi/MoCo':>11} {'mixing share':>13}")
    for r in rows:
        step_ms = 1000 * size["batch"] / r["mochi_img_s"]
        r["ratio"] = r["mochi_img_s"] / r["mocov2_img_s"]
        r["mixing_share"] = mix_ms / step_ms
        print(f"{r['variant']:<10} {r['mocov2_img_s']:>14.1f} {r['mochi_img_s']:>12.1f} {r['ratio']:>11.3f} "
              f"{100 * r['mixing_share']:>12.2f}%")
    print(f"mixing alone: {mix_ms:.3f} ms per step")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    run(main)
