"""``mochi-bench-data [--data DIR]``: the input-pipeline benchmark: each pipeline alone, where the
gpu pipeline's time goes, and MoCHi training fed by JPEGs against the same step on synthetic images,
side by side in one run, the device named; writes ``results/bench_pipeline.json``. Without
``--data`` a folder of photo-like JPEGs at ImageNet's sizes is generated first. The measuring is
``pretrain.tools.bench_data``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from .run.cli import ArgumentParser, execute, setup_logging
from .run.config import PIPELINES
from .run.errors import UserError
from .tools.sizes import add_size_args, resolve_size


def parser() -> ArgumentParser:
    """The command line of ``mochi-bench-data``."""
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, find or make the JPEGs, measure, print, write the JSON."""
    args = parser().parse_args(argv)
    import torch

    from .tools.bench import precision, write_json
    from .tools.bench_data import measure
    from .tools.jpegs import make_jpegs


    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    size = resolve_size(args, small=not cuda)
    names = (args.pipelines or ("cpu,gpu,dali" if importlib.util.find_spec("nvidia.dali") else "cpu,gpu")).split(",")
    if not names or not set(names) <= set(PIPELINES):
        raise UserError(f"--pipelines: {args.pipelines!r}; use a comma list of {', '.join(PIPELINES)}")
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


if __name__ == "__main__":
    entry()
