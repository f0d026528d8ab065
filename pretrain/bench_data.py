"""Input-pipeline benchmark: the cpu and gpu (and dali) pipelines, and MoCHi training fed by JPEGs
versus the same step on synthetic device-resident images, side by side in one run.

``python -m pretrain.bench_data [--data DIR]`` measures, on this machine:

1. two-view aug+ images/s delivered by each pipeline alone (``cpu``: PIL + torchvision in
   ``--workers`` processes; ``gpu``: byte-reading workers + nvjpeg + batched aug+; ``dali``);
2. where the ``gpu`` pipeline's time goes, per stage (loader wait, decode, parameters, crop,
   colour/blur/flip, normalise; each stage synchronised, prefetch off);
3. end-to-end MoCHi training images/s with the ``gpu`` pipeline on the JPEG folder, and the same
   training step on synthetic images already on the device; their ratio is the share of the
   model's speed the input pipeline keeps.

Without ``--data`` a folder of photo-like JPEGs at ImageNet's sizes is generated first
(``pretrain.jpegs``). Defaults on a GPU: ResNet-50, batch 256, 224 px, K 65536, (1024, 1024, 256),
bf16, channels_last; on a CPU the small sizes of ``pretrain.bench``.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import torch

from . import config, pipeline
from .bench import add_size_args, device_name, fast_math, resolve_size, time_steps, write_json
from .cli import ArgumentParser, run, setup_logging
from .errors import UserError
from .jpegs import make_jpegs
from .moco import MoCo


def _cfg(args, size: dict, name: str) -> config.Config:
    return config.load(overrides=[
        "data.dataset=imagefolder", f"data.path={args.data}", f"data.pipeline={name}",
        f"data.image_size={size['image_size']}", f"optim.batch_size={size['batch']}", f"moco.K={size['K']}",
        f"data.num_workers={args.workers}", "data.min_scale=0.2", "data.blur=true", f"run.seed={args.seed}",
        f"model.arch={size['arch']}",
    ])


def _endless(batches, sampler):
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from batches
        epoch += 1


def pipeline_rate(cfg, dev, warmup: int, measure: int) -> tuple[float, dict]:
    """Two-view images per second of one pipeline alone, and its decode counts."""
    batches, sampler = pipeline.train_loader(cfg, device=dev)
    it = _endless(batches, sampler)
    for _ in range(warmup):
        next(it)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    n = 0
    for _ in range(measure):
        q, *_ = next(it)
        n += q.shape[0]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    rate = n / (time.perf_counter() - t)
    counts = dict(getattr(batches, "counts", {}))
    it.close()
    return rate, counts


def gpu_profile(cfg, dev, batches_n: int) -> dict[str, float]:
    """Milliseconds per batch in each stage of the gpu pipeline, stages synchronised, no prefetch."""
    cfg.data.prefetch = 0
    batches, sampler = pipeline.train_loader(cfg, device=dev)
    sampler.set_epoch(0)
    it = iter(batches.loader)
    next(it)  # worker start-up
    batches.profile = {}
    wait = 0.0
    for _ in range(batches_n):
        t = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            break
        wait += time.perf_counter() - t
        batches.process(batch)
    prof = {"loader wait (read bytes)": wait, **batches.profile}
    return {k: 1000 * v / batches_n for k, v in prof.items()}


def training_rates(cfg, size: dict, dev, steps: int, warmup: int, compiled: bool) -> dict[str, float]:
    """MoCHi training images/s fed by the gpu pipeline, and on synthetic device-resident images."""
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    model = MoCo(size["arch"], 128, size["K"], shuffle_bn_groups=8).to(dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    if compiled:
        model.encoder_q.compile()
        model.encoder_k.compile()
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    mix = (size["N"], size["s"], size["s_prime"])
    autocast = fast_math(dev)

    gen = torch.Generator(device=dev).manual_seed(0)
    shape = (size["batch"], 3, size["image_size"], size["image_size"])
    syn_q = torch.randn(shape, device=dev, generator=gen).contiguous(memory_format=torch.channels_last)
    syn_k = torch.randn(shape, device=dev, generator=gen).contiguous(memory_format=torch.channels_last)
    batches, sampler = pipeline.train_loader(cfg, device=dev)
    it = _endless(batches, sampler)
    # Alternate the two so clock or thermal drift hits both alike; keep each one's best.
    jpeg, synthetic = [], []
    for _ in range(2):
        synthetic.append(time_steps(model, opt, lambda: (syn_q, syn_k), mix, steps, warmup, autocast, dev))
        jpeg.append(time_steps(model, opt, lambda: next(it)[:2], mix, steps, warmup, autocast, dev))
    it.close()
    return {"jpeg_img_s": max(jpeg), "synthetic_img_s": max(synthetic)}


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m pretrain.bench_data", description=__doc__.splitlines()[0])
    p.add_argument("--data", help="an ImageFolder root of JPEGs (with train/); default: generate one")
    p.add_argument("--make", type=int, default=0, help="images to generate without --data (default 4000 GPU / 300 CPU)")
    p.add_argument("--pipelines", default=None, help="comma list of cpu, gpu, dali (default: cpu,gpu and dali if installed)")
    p.add_argument("--workers", type=int, default=min(15, max(1, (os.cpu_count() or 2) - 1)))
    add_size_args(p)
    p.add_argument("--batches", type=int, default=0, help="batches measured per pipeline (default 30 GPU / 4 CPU)")
    p.add_argument("--steps", type=int, default=0, help="training steps measured (default 30 GPU / 3 CPU)")
    p.add_argument("--warmup", type=int, default=0, help="batches/steps before timing (default 5 GPU / 1 CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders for the training rates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="results/bench_pipeline.json")
    args = p.parse_args(argv)

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    size = resolve_size(args, small=not cuda)
    names = (args.pipelines or ("cpu,gpu,dali" if importlib.util.find_spec("nvidia.dali") else "cpu,gpu")).split(",")
    if not names or not set(names) <= set(pipeline.PIPELINES):
        raise UserError(f"--pipelines: {args.pipelines!r}; use a comma list of {', '.join(pipeline.PIPELINES)}")
    if args.workers < 0 or args.make < 0 or args.batches < 0 or args.steps < 0 or args.warmup < 0:
        raise UserError("--workers, --make, --batches, --steps and --warmup must be >= 0")
    measure = args.batches or (30 if cuda else 4)
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup or (5 if cuda else 1)
    setup_logging()

    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="mochi-jpegs-")
        n = args.make or (4000 if cuda else 300)
        print(f"generating {n} JPEGs in {tmp.name} ...", flush=True)
        make_jpegs(tmp.name, n)
        args.data = tmp.name
    elif not Path(args.data).is_dir():
        raise UserError(f"--data {args.data}: not a folder")
    files = [f for f in (Path(args.data) / "train").rglob("*") if f.is_file()] if (Path(args.data) / "train").is_dir() \
        else [f for f in Path(args.data).rglob("*") if f.is_file()]
    need = (warmup + max(measure, steps)) * size["batch"]
    if len(files) < size["batch"]:
        raise UserError(f"--data {args.data} holds {len(files)} files, fewer than one batch of {size['batch']}")
    if len(files) < need:
        print(f"note: {len(files)} files < {need} needed for one pass; epochs repeat (the OS cache then helps)")

    rates, counts = {}, {}
    for name in names:
        rates[name], counts[name] = pipeline_rate(_cfg(args, size, name), dev, warmup, measure)
        print(f"  {name:<4} pipeline: {rates[name]:9.1f} two-view img/s", flush=True)
    profile = gpu_profile(_cfg(args, size, "gpu"), dev, min(measure, 10)) if "gpu" in names else {}
    train = training_rates(_cfg(args, size, "gpu"), size, dev, steps, warmup, args.compile)

    result = {
        "device": device_name(dev),
        "cpu_cores": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "dtype": "bf16 autocast, channels_last" if cuda else "fp32",
        "workers": args.workers,
        "files": len(files),
        "avg_file_kib": sum(f.stat().st_size for f in files[:2000]) / min(len(files), 2000) / 1024,
        **size,
        "compiled": args.compile,
        "pipeline_img_s": rates,
        "decode_counts": counts,
        "gpu_profile_ms_per_batch": profile,
        **train,
    }
    train_ratio = train["jpeg_img_s"] / train["synthetic_img_s"]
    result["jpeg_over_synthetic"] = train_ratio
    if "cpu" in rates and "gpu" in rates:
        result["gpu_over_cpu"] = rates["gpu"] / rates["cpu"]
    print(f"device: {result['device']} ({result['cpu_cores']} CPU cores)  torch {result['torch']}  "
          f"{result['dtype']}  {result['date']}")
    print(f"data: {len(files)} files, {result['avg_file_kib']:.0f} KiB on average; {args.workers} loader workers; "
          f"{size['arch']}, batch {size['batch']}, {size['image_size']} px")
    for name, r in rates.items():
        extra = f"  ({r / rates['cpu']:.2f}x cpu)" if "cpu" in rates and name != "cpu" else ""
        print(f"{name:<4} pipeline: {r:9.1f} two-view img/s{extra}")
    if profile:
        total = sum(profile.values())
        print("gpu pipeline, ms per batch (stages synchronised, no prefetch):")
        for stage, ms in profile.items():
            print(f"  {stage:<26} {ms:8.2f}  {100 * ms / total:5.1f}%")
    print(f"MoCHi training, K {size['K']}, (N, s, s') = ({size['N']}, {size['s']}, {size['s_prime']})"
          f"{', compiled' if args.compile else ''}:")
    print(f"  on JPEGs (gpu pipeline): {train['jpeg_img_s']:9.1f} img/s")
    print(f"  on synthetic images:     {train['synthetic_img_s']:9.1f} img/s")
    print(f"  JPEG / synthetic:        {train_ratio:9.3f}")
    write_json(args.json, result)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    run(main)
