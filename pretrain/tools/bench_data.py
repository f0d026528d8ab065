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

The command ``mochi-bench-data [--data DIR]`` (``pretrain/bench_data.py``) writes
``results/bench_pipeline.json``. Without ``--data`` a folder of photo-like JPEGs at ImageNet's sizes is generated first (``pretrain.tools.jpegs``). Defaults on a
GPU: ResNet-50, batch 256, 224 px, K 65536, (1024, 1024, 256), bf16, channels_last; on a CPU the
small sizes of ``mochi-bench``, fp32.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import torch

from ..input import pipelines
from ..method.objective import Objective
from ..run import config
from .bench import bench_model, cuda_math, describe_precision, device_name, sync, synthetic_images, time_steps
from .sizes import Size


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
