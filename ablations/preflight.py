"""A grid's preflight: one short job on the grid's own profile that proves the cluster can run the
grid's pretraining (``pretrain.tools.preflight``) before the grid's arrays start.

By default ``grid.py`` runs it ahead of a submission that pretrains: on SLURM as a job the
pretraining array waits on (``afterok``: a failed preflight cancels the array before it starts),
locally before the first cell. ``--preflight`` runs it alone and prints its lines and the grid's
projected cost; ``--no-preflight`` skips it. A passed report for the same profile is not repeated.
Its measured speeds replace the profile's ``img_per_s`` in ``--dry-run``'s estimate.
"""

from __future__ import annotations

from pathlib import Path

from ablations import cost
from ablations.griddir import GridDir
from pretrain.run import config, rundir
from pretrain.tools.preflight_report import FAIL, PreflightSettings, Report, read_report
from slurm import launcher


# Training images of the full sets, for the cost of a config without a subset.
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
        synthetic = m.synthetic
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


def measured_rates(gd: GridDir, report: Report) -> cost.Rates | None:
    """The rates a passed preflight measured (step and the grid's input pipeline), or None."""
    if not report.step_img_per_s or not report.input_img_per_s:
        return None
    pipeline = configs(gd)[0].data.pipeline
    return cost.Rates(report.step_img_per_s, report.arch, report.image_size, {pipeline: report.input_img_per_s},
                      f"measured by the preflight on {report.device} ({report.date})")


def describe(gd: GridDir, profile: launcher.Profile, report: Report) -> str:
    """The report's table, then its verdict: the projection, or the first failure's cause and fix."""
    lines = [report.table()]
    if report.passed:
        rates = measured_rates(gd, report)
        if rates is not None:
            lines.append(cost.describe(cost.of(gd, profile, rates), profile, "projected", "from the measured rates"))
        lines.append("preflight passed")
    else:
        lines.append(failure_line(report))
    return "\n".join(lines)


def failure_line(report: Report) -> str:
    """One line: the first failed check, its cause and its fix."""
    c = report.failures()[0]
    return f"preflight failed: {c.name}: {c.detail}" + (f"; fix: {c.fix}" if c.fix else "") + \
        " (or skip it with --no-preflight)"

