"""A grid's preflight: one short job on the grid's own profile that proves the cluster can run the
grid's pretraining (``pretrain.tools.preflight``) before the grid's arrays start.

By default ``grid.py`` runs it ahead of a submission that pretrains: on SLURM as a job the
pretraining array waits on (``afterok``: a failed preflight cancels the array before it starts),
locally before the first cell. ``--preflight`` runs it alone and prints its lines and the grid's
projected cost; ``--no-preflight`` skips it. A passed report for the same profile is not repeated.
Its measured speeds replace the profile's ``img_per_s`` in ``--dry-run``'s estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ablations.griddir import GridDir
from pretrain.run import config, rundir
from pretrain.tools.preflight_report import FAIL, PreflightSettings, Report, read_report
from slurm import launcher


# Training images of the full sets, for the cost of a config without a subset.
DATASET_SIZE = {"fashion-mnist": 60000, "imagenet100": 126689, "imagenet1k": 1281167}


def images_per_epoch(cfg: config.Config) -> int:
    """Training images per epoch of a config's data (its subset, else the full set's known size)."""
    if cfg.data.dataset == "fashion-mnist":
        n = DATASET_SIZE["fashion-mnist"]
    else:
        n = DATASET_SIZE["imagenet100" if cfg.data.class_list else "imagenet1k"]
    return min(n, cfg.data.subset) if cfg.data.subset else n


def folder(gd: GridDir) -> Path:
    """Where the grid's preflight writes its report and scratch checkpoints."""
    return gd.out / rundir.PREFLIGHT


def configs(gd: GridDir) -> list[config.Config]:
    """The configs a preflight checks: for each loss the grid trains with, its cell with the most
    synthetic negatives (seed 0), the grid's first such cell first."""
    grid = gd.grid
    best: dict[str, tuple[int, config.Config]] = {}
    for cell in grid.cells:
        cfg = grid.cfg(cell, 0, folder(gd), {"run.tracking_uri": None})
        m = cfg.objective.mixing
        synthetic = m.s + m.s_prime
        if cfg.loss.method not in best or synthetic > best[cfg.loss.method][0]:
            best[cfg.loss.method] = (synthetic, cfg)
    return [cfg for _, cfg in best.values()]


def settings(gd: GridDir, uri: str, parent: str | None, profile: launcher.Profile) -> PreflightSettings:
    """The typed settings of the grid's preflight job."""
    tags = {"grid_id": gd.grid.grid_id, "grid": gd.grid.name, "profile": profile.name}
    return PreflightSettings(configs=configs(gd), out_dir=folder(gd), tracking_uri=uri,
                             experiment=gd.grid.experiment, parent_run=parent, tags=tags)


def passed_before(gd: GridDir, profile: launcher.Profile) -> Report | None:
    """The grid's passed report made on ``profile``, if there is one (it need not run again)."""
    report = read_report(folder(gd))
    if report is None or not report.passed or report.tags.get("profile") != profile.name:
        return None
    return report


def from_failed_job(gd: GridDir, error: BaseException | str) -> Report:
    """The report of a preflight job: the one it wrote, else (it died before writing) one failed line
    naming what killed it."""
    report = read_report(folder(gd))
    if report is not None:
        return report
    from pretrain.tools.preflight_report import Check

    text = " ".join(str(error).split())[-300:]
    return Report(checks=[Check("job", FAIL, f"the preflight job died before its report: {text}",
                                "see the job's log under the grid's logs/ folder")],
                  device="unknown", host="unknown", world=0, date="")


@dataclass(frozen=True)
class Projection:
    """The grid's pretraining cost at the preflight's measured speed: device-hours over every job,
    and the wall time with the profile's ``array_parallelism`` jobs at once."""

    device_hours: float
    wall_hours: float
    img_per_s: float  # global, per job: the slower of the step and the input pipeline
    unit: str  # GPU-hours or CPU-job-hours


def job_hours(gd: GridDir, rate_at: float, arch: str, image_size: int) -> list[float]:
    """Wall hours of every pretraining job (cell x seed) at ``rate_at`` images/s measured for
    ``arch`` at ``image_size``, scaled to each cell's architecture and image size."""
    grid = gd.grid
    out = []
    for cell in grid.cells:
        cfg = grid.cfg(cell, 0, gd.run_dir(cell, 0))
        speed = launcher.ARCH_SPEED.get(cfg.model.arch, 1.0) / launcher.ARCH_SPEED.get(arch, 1.0)
        rate = rate_at * speed * (image_size / cfg.data.image_size) ** 2
        out += [cfg.optim.epochs * images_per_epoch(cfg) / rate / 3600] * grid.seeds
    return out


def project(gd: GridDir, profile: launcher.Profile, report: Report) -> Projection | None:
    """The projection from a report's speeds (None if it measured none)."""
    if not report.step_img_per_s or not report.input_img_per_s:
        return None
    rate = min(report.step_img_per_s, report.input_img_per_s)
    hours = job_hours(gd, rate, report.arch, report.image_size)
    slots = [0.0] * min(profile.array_parallelism, max(len(hours), 1))
    for h in sorted(hours, reverse=True):  # longest first onto the slot that frees first
        slots[slots.index(min(slots))] += h
    devices = max(profile.gpus_per_job, 1)
    return Projection(sum(hours) * devices, max(slots) if slots else 0.0, rate,
                      "GPU-hours" if profile.gpus_per_job else "CPU-job-hours")


def describe(gd: GridDir, profile: launcher.Profile, report: Report) -> str:
    """The report's table, then its verdict: the projection, or the first failure's cause and fix."""
    lines = [report.table()]
    if report.passed:
        p = project(gd, profile, report)
        if p is not None:
            lines.append(f"projected pretraining cost at {p.img_per_s:.1f} img/s per job: {p.device_hours:.3g} "
                         f"{p.unit}, about {p.wall_hours:.3g} h wall with {profile.array_parallelism} jobs at once")
        lines.append("preflight passed")
    else:
        lines.append(failure_line(report))
    return "\n".join(lines)


def failure_line(report: Report) -> str:
    """One line: the first failed check, its cause and its fix."""
    c = report.failures()[0]
    return f"preflight failed: {c.name}: {c.detail}" + (f"; fix: {c.fix}" if c.fix else "") + \
        " (or skip it with --no-preflight)"

