"""Input-pipeline benchmark: the cpu and gpu (and dali) pipelines, and MoCHi training fed by JPEGs
versus the same step on synthetic device-resident images, side by side in one run.

``measure`` finds, on this machine:

1. two-view aug+ images/s delivered by each pipeline alone (``cpu``: PIL + torchvision in
   ``workers`` processes; ``gpu``: byte-reading workers + nvjpeg + batched aug+; ``dali``);
2. where the ``gpu`` pipeline's time goes, per stage (loader wait, decode, parameters, crop,
   colour/blur/flip, normalise; each stage synchronised, prefetch off);
3. end-to-end MoCHi training images/s (``pretrain.train.step``) with the ``gpu`` pipeline on the
   JPEG folder, and the same step on synthetic images already on the device; their ratio is the
   share of the model's speed the input pipeline keeps.

``main`` is the command ``mochi-bench-data [--data DIR]`` (old spelling: ``python -m
pretrain.bench_data``); it writes ``results/bench_pipeline.json``. Without ``--data`` a folder of
photo-like JPEGs at ImageNet's sizes is generated first (``pretrain.tools.jpegs``). Defaults on a
GPU: ResNet-50, batch 256, 224 px, K 65536, (1024, 1024, 256), bf16, channels_last; on a CPU the
small sizes of ``mochi-bench``, fp32.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import torch

from ..input import pipelines
from ..method.objective import Objective
from ..run import config
from ..run.cli import ArgumentParser, execute, setup_logging
from ..run.errors import UserError
from .bench import (Size, add_size_args, bench_model, cuda_math, describe_precision, device_name, precision,
                    resolve_size, sync, synthetic_images, time_steps, write_json)
from .jpegs import make_jpegs


def pipeline_cfg(data: str | Path, size: Size, pipeline: str, workers: int, seed: int, amp: bool,
                 channels_last: bool) -> config.Config:
    """The pretraining config one pipeline is measured with: an image folder with aug+ at ``size``."""
    return config.load(values={
        "data.dataset": "imagefolder", "data.path": str(data), "data.pipeline": pipeline,
        "data.image_size": size.image_size, "optim.batch_size": size.batch, "moco.K": size.K,
        "data.num_workers": workers, "data.min_scale": 0.2, "data.blur": True, "run.seed": seed,
        "model.arch": size.arch, "run.amp": amp, "run.channels_last": channels_last,
    })


def _endless(batches, sampler):
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from batches
        epoch += 1


def pipeline_rate(cfg: config.Config, dev: torch.device, warmup: int, measure_n: int) -> tuple[float, dict]:
    """Two-view images per second of one pipeline alone, and its decode counts."""
    batches, sampler = pipelines.train_loader(cfg, device=dev)
    it = _endless(batches, sampler)
    for _ in range(warmup):
        next(it)
    sync(dev)
    t = time.perf_counter()
    n = 0
    for _ in range(measure_n):
        q, *_ = next(it)
        n += q.shape[0]
    sync(dev)
    rate = n / (time.perf_counter() - t)
    counts = dict(getattr(batches, "counts", {}))
    it.close()
    return rate, counts


def gpu_profile(cfg: config.Config, dev: torch.device, batches_n: int) -> dict[str, float]:
    """Milliseconds per batch in each stage of the gpu pipeline, stages synchronised, no prefetch."""
    cfg = config.with_values(cfg, {"data.prefetch": 0})
    batches, sampler = pipelines.train_loader(cfg, device=dev)
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


def training_rates(cfg: config.Config, size: Size, dev: torch.device, steps: int, warmup: int,
                   compiled: bool) -> dict[str, float]:
    """MoCHi training images/s fed by the gpu pipeline, and on synthetic device-resident images."""
    model, opt = bench_model(size, dev, compiled, cfg.run.channels_last)
    syn_q, syn_k = synthetic_images(size, dev, cfg.run.channels_last)
    batches, sampler = pipelines.train_loader(cfg, device=dev)
    it = _endless(batches, sampler)
    # Alternate the two so clock or thermal drift hits both alike; keep each one's best.
    jpeg, synthetic = [], []
    mochi = Objective(mixing=size.mixing)
    for _ in range(2):
        synthetic.append(time_steps(model, opt, lambda: (syn_q, syn_k), mochi, steps, warmup, cfg.run.amp, dev))
        jpeg.append(time_steps(model, opt, lambda: next(it)[:2], mochi, steps, warmup, cfg.run.amp, dev))
    it.close()
    return {"jpeg_img_s": max(jpeg), "synthetic_img_s": max(synthetic)}


def measure(data: str | Path, files: list[Path], size: Size, dev: torch.device, names: list[str], workers: int,
            seed: int, amp: bool, channels_last: bool, warmup: int, batches_n: int, steps: int,
            compiled: bool, progress=print) -> dict:
    """The pipeline benchmark's figures for the JPEG folder ``data`` (its ``files`` counted by the
    caller); ``progress(line)`` hears each pipeline's rate as it is measured."""
    cuda_math(dev)

    def cfg(name: str) -> config.Config:
        return pipeline_cfg(data, size, name, workers, seed, amp, channels_last)

    rates, counts = {}, {}
    for name in names:
        rates[name], counts[name] = pipeline_rate(cfg(name), dev, warmup, batches_n)
        progress(f"  {name:<4} pipeline: {rates[name]:9.1f} two-view img/s")
    profile = gpu_profile(cfg("gpu"), dev, min(batches_n, 10)) if "gpu" in names else {}
    train = training_rates(cfg("gpu"), size, dev, steps, warmup, compiled)
    result = {
        "device": device_name(dev),
        "cpu_cores": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "dtype": describe_precision(amp, channels_last),
        "workers": workers,
        "files": len(files),
        "avg_file_kib": sum(f.stat().st_size for f in files[:2000]) / min(len(files), 2000) / 1024,
        **size.as_dict(),
        "compiled": compiled,
        "pipeline_img_s": rates,
        "decode_counts": counts,
        "gpu_profile_ms_per_batch": profile,
        **train,
        "jpeg_over_synthetic": train["jpeg_img_s"] / train["synthetic_img_s"],
    }
    if "cpu" in rates and "gpu" in rates:
        result["gpu_over_cpu"] = rates["gpu"] / rates["cpu"]
    return result


def main(argv: list[str] | None = None) -> int:
    """``mochi-bench-data [--data DIR]``: parse, find or make the JPEGs, measure, print, write the JSON."""
    p = ArgumentParser(prog="mochi-bench-data",
                       description="Input-pipeline benchmark: each pipeline, and training fed by JPEGs vs synthetic.")
    p.add_argument("--data", help="an ImageFolder root of JPEGs (with train/); default: generate one")
    p.add_argument("--make", type=int, default=0, help="images to generate without --data (default 4000 GPU / 300 CPU)")
    p.add_argument("--pipelines", default=None, help="comma list of cpu, gpu, dali (default: cpu,gpu and dali if installed)")
    p.add_argument("--workers", type=int, default=min(15, max(1, (os.cpu_count() or 2) - 1)),
                   help="data-loading processes of the cpu pipeline (default: the cores but one, at most 15)")
    add_size_args(p)
    p.add_argument("--batches", type=int, default=0, help="batches measured per pipeline (default 30 GPU / 4 CPU)")
    p.add_argument("--steps", type=int, default=0, help="training steps measured (default 30 GPU / 3 CPU)")
    p.add_argument("--warmup", type=int, default=0, help="batches/steps before timing (default 5 GPU / 1 CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders for the training rates")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images and of the augmentations")
    p.add_argument("--json", default="results/bench_pipeline.json", help="where to write the figures")
    args = p.parse_args(argv)

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    size = resolve_size(args, small=not cuda)
    names = (args.pipelines or ("cpu,gpu,dali" if importlib.util.find_spec("nvidia.dali") else "cpu,gpu")).split(",")
    if not names or not set(names) <= set(pipelines.PIPELINES):
        raise UserError(f"--pipelines: {args.pipelines!r}; use a comma list of {', '.join(pipelines.PIPELINES)}")
    if args.workers < 0 or args.make < 0 or args.batches < 0 or args.steps < 0 or args.warmup < 0:
        raise UserError("--workers, --make, --batches, --steps and --warmup must be >= 0")
    measure_n = args.batches or (30 if cuda else 4)
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup or (5 if cuda else 1)
    amp, channels_last = precision(args, dev)
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
    root = Path(args.data) / "train" if (Path(args.data) / "train").is_dir() else Path(args.data)
    files = [f for f in root.rglob("*") if f.is_file()]
    need = (warmup + max(measure_n, steps)) * size.batch
    if len(files) < size.batch:
        raise UserError(f"--data {args.data} holds {len(files)} files, fewer than one batch of {size.batch}")
    if len(files) < need:
        print(f"note: {len(files)} files < {need} needed for one pass; epochs repeat (the OS cache then helps)")

    r = measure(args.data, files, size, dev, names, args.workers, args.seed, amp, channels_last, warmup,
                measure_n, steps, args.compile, progress=lambda line: print(line, flush=True))
    m = size.mixing
    print(f"device: {r['device']} ({r['cpu_cores']} CPU cores)  torch {r['torch']}  {r['dtype']}  {r['date']}")
    print(f"data: {len(files)} files, {r['avg_file_kib']:.0f} KiB on average; {args.workers} loader workers; "
          f"{size.arch}, batch {size.batch}, {size.image_size} px")
    rates = r["pipeline_img_s"]
    for name, rate in rates.items():
        extra = f"  ({rate / rates['cpu']:.2f}x cpu)" if "cpu" in rates and name != "cpu" else ""
        print(f"{name:<4} pipeline: {rate:9.1f} two-view img/s{extra}")
    if profile := r["gpu_profile_ms_per_batch"]:
        total = sum(profile.values())
        print("gpu pipeline, ms per batch (stages synchronised, no prefetch):")
        for stage, ms in profile.items():
            print(f"  {stage:<26} {ms:8.2f}  {100 * ms / total:5.1f}%")
    print(f"MoCHi training, K {size.K}, (N, s, s') = ({m.N}, {m.s}, {m.s_prime}){', compiled' if args.compile else ''}:")
    print(f"  on JPEGs (gpu pipeline): {r['jpeg_img_s']:9.1f} img/s")
    print(f"  on synthetic images:     {r['synthetic_img_s']:9.1f} img/s")
    print(f"  JPEG / synthetic:        {r['jpeg_over_synthetic']:9.3f}")
    if (out := write_json(args.json, r)) is not None:
        print(f"wrote {out}")
    if tmp is not None:
        tmp.cleanup()
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-bench-data``)."""
    execute(main)
