"""What a grid costs: the device-hours of its pretraining jobs and linear probes.

A job goes at the slower of two rates: the training step (``img_per_s``, for ResNet-50 at 224 px,
scaled to each cell's architecture and image size) and the input pipeline the cell configures
(``data.pipeline``: JPEG decoding and aug+, whatever the network). ``--dry-run`` takes both from the
profile (``img_per_s``, ``input_img_per_s``), the preflight measures them on the cluster; either way
the estimate names which one binds and where the figure comes from.

A linear probe is forward passes only: about three times the step's rate (no backward, no key
encoder) and twice the pipeline's (one view, not two), over its epochs of training images plus a
test pass per epoch (``--fast``: one pass over both, then classifiers on cached features).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from ablations.griddir import GridDir
from pretrain.eval.probe import PRESETS
from pretrain.run import config
from slurm import launcher

# Training images of each dataset, and the split a probe tests on (ImageNet's validation split).
DATASET_SIZE = {"fashion-mnist": 60000, "imagenet100": 126689, "imagenet1k": 1281167}
TEST_SIZE = {"fashion-mnist": 10000, "imagenet100": 5000, "imagenet1k": 50000}
# A probe's forward-only pass against a training step (forward and backward of the query encoder,
# forward of the key encoder), and one view against two.
PROBE_STEP_SPEEDUP, PROBE_INPUT_SPEEDUP = 3.0, 2.0


def dataset_name(dataset: str, class_list: str | None) -> str:
    """fashion-mnist, imagenet100 (an image folder read through a class list) or imagenet1k."""
    return "fashion-mnist" if dataset == "fashion-mnist" else "imagenet100" if class_list else "imagenet1k"


def images_per_epoch(cfg: config.Config) -> int:
    """Training images per epoch of a config's data (its subset, else the full set's known size)."""
    n = DATASET_SIZE[dataset_name(cfg.data.dataset, cfg.data.class_list)]
    return min(n, cfg.data.subset) if cfg.data.subset else n


def steps_per_epoch(cfg: config.Config) -> int:
    """Training steps per epoch of a config: whole global batches of its images (the sampler drops the tail)."""
    return images_per_epoch(cfg) // cfg.optim.batch_size


@dataclass(frozen=True)
class Rates:
    """Images/s per job of the step (for ``arch`` at ``image_size``) and of each input pipeline,
    and where the figures come from."""

    step: float
    arch: str
    image_size: int
    inputs: dict[str, float]  # data.pipeline -> img/s; a pipeline not listed is not a bound
    source: str

    @classmethod
    def of_profile(cls, profile: launcher.Profile) -> Rates:
        devices = max(profile.gpus_per_job, 1)
        source = f"profile {profile.name}" + (f": {profile.rates_source}" if profile.rates_source else "")
        return cls(profile.img_per_s * devices, "resnet50", 224,
                   {p: r * devices for p, r in profile.input_img_per_s.items()}, source)

    def step_for(self, cfg: config.Config) -> float:
        """Images/s of ``cfg``'s training step: the measured one scaled to its architecture and size."""
        speed = launcher.ARCH_SPEED.get(cfg.model.arch, 1.0) / launcher.ARCH_SPEED.get(self.arch, 1.0)
        return self.step * speed * (self.image_size / cfg.data.image_size) ** 2

    def for_cell(self, cfg: config.Config) -> tuple[float, str]:
        """(img/s, what binds) of a job training ``cfg``: the step or its input pipeline."""
        step, pipe = self.step_for(cfg), self.inputs.get(cfg.data.pipeline)
        if pipe is not None and pipe < step:
            return pipe, f"the {cfg.data.pipeline} input pipeline ({pipe:g} img/s per job; the step: {step:.0f})"
        return step, f"the step ({step:.0f} img/s per job{'' if pipe is None else f'; the input: {pipe:g}'})"


@dataclass(frozen=True)
class Cost:
    """A grid's cost at some rates: device-hours of pretraining and of the probes, and the wall time
    of its pretraining with ``array_parallelism`` jobs at once."""

    pretrain_hours: float
    probe_hours: float
    wall_hours: float
    unit: str  # GPU-hours or CPU-job-hours
    bounds: list[str]  # what binds each cell's jobs, one entry per distinct bound
    source: str


def job_hours(cfg: config.Config, rates: Rates) -> tuple[float, str]:
    """Hours of one pretraining job of ``cfg`` at ``rates``, and what bounds its rate."""
    rate, bound = rates.for_cell(cfg)
    return cfg.optim.epochs * images_per_epoch(cfg) / rate / 3600, bound


def of(gd: GridDir, profile: launcher.Profile, rates: Rates) -> Cost:
    """The grid's cost at ``rates``."""
    grid = gd.grid
    devices = max(profile.gpus_per_job, 1)
    jobs, bounds = [], []
    for cell in grid.cells:
        hours, bound = job_hours(grid.cfg(cell, 0, gd.run_dir(cell, 0)), rates)
        jobs += [hours] * grid.seeds
        bounds += [bound] if bound not in bounds else []
    slots = [0.0] * min(profile.array_parallelism, max(len(jobs), 1))
    for h in sorted(jobs, reverse=True):  # longest first onto the slot that frees first
        slots[slots.index(min(slots))] += h
    # The rates are a pretraining job's (``devices`` GPUs); a probe's device-hours are the same on
    # however many GPUs it runs: its hours at the job's rate times the job's devices.
    probes = sum(probe_hours(gd, u, rates) for u in gd.units()) * devices
    return Cost(sum(jobs) * devices, probes, max(slots) if slots else 0.0,
                "GPU-hours" if profile.gpus_per_job else "CPU-job-hours", bounds, rates.source)


def probe_hours(gd: GridDir, u, rates: Rates) -> float:
    """Hours of one unit's linear probe (0 without one), forward passes at the probe's rate on a
    pretraining job's devices."""
    s = gd.probe(u)
    if s is None:
        return 0.0
    cfg = gd.grid.base_config() if u.cell is None else gd.grid.cfg(u.cell, u.seed, u.run_dir)
    dataset, class_list = s.dataset or cfg.data.dataset, s.class_list or cfg.data.class_list
    name = dataset_name(dataset, class_list)
    train = min(s.train_size or DATASET_SIZE[name], DATASET_SIZE[name])
    test = min(s.test_size or TEST_SIZE[name], TEST_SIZE[name])
    epochs = s.epochs or PRESETS[s.preset_for(dataset, class_list)]["epochs"]
    pipe = rates.inputs.get(cfg.data.pipeline)
    rate = min(rates.step_for(cfg) * PROBE_STEP_SPEEDUP, pipe * PROBE_INPUT_SPEEDUP if pipe else float("inf"))
    images = (train + test) if s.fast else epochs * (train + test)
    return images / rate / 3600


def describe(c: Cost, profile: launcher.Profile, kind: str, note: str) -> str:
    """``kind`` (estimated, projected) cost and ``note`` on a first line, then pretraining, what binds,
    the probes and the rates' source, one per line, wrapped to fit 100 columns."""
    rows = [("pretraining", f"{c.pretrain_hours:.3g} {c.unit}, about {c.wall_hours:.3g} h wall with "
                            f"{profile.array_parallelism} jobs at once"),
            ("bound by", "; ".join(c.bounds)),
            ("linear probes", f"{c.probe_hours:.3g} {c.unit} (forward passes: {PROBE_STEP_SPEEDUP:g}x the step's "
                              f"rate, {PROBE_INPUT_SPEEDUP:g}x the input's)"),
            ("rates", c.source)]
    lines = [f"{kind} cost ({note}):"]
    for name, text in rows:
        lines += textwrap.wrap(text, 100, initial_indent=f"  {name:<14}", subsequent_indent=" " * 16)
    return "\n".join(lines)
