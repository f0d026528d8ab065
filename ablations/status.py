"""What a grid costs before it runs (``--dry-run``), where each of its cells stands (``--status``),
and stopping it (``--cancel``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ablations import cost, preflight, spec, terminal
from ablations.griddir import GridDir, Unit
from ablations.submit import EVAL_STAGES, PREFLIGHT_KEY, active, finish, settle, slurm_jobs
from pretrain.run import rundir
from pretrain.run.errors import UserError
from pretrain.run.tracking import read_metrics
from slurm import launcher

QUEUED = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING")


def dry_run(gd: GridDir, profile: launcher.Profile) -> None:
    """Print the cells, the dropped cells with their reasons, and the estimated GPU-hours."""
    grid = gd.grid
    report = preflight.passed_before(gd, profile)
    measured = preflight.measured_rates(gd, report) if report is not None else None
    rates = measured if measured is not None else cost.Rates.of_profile(profile)
    rows = []
    for cell in grid.cells:
        cfg = grid.cfg(cell, 0, gd.run_dir(cell, 0))
        hours, _ = cost.job_hours(cfg, rates)
        rows.append((cell.id, cfg.objective.label, str(cfg.moco.K), str(cfg.optim.epochs),
                     str(cost.images_per_epoch(cfg)), f"{hours:6.2f}"))
    terminal.say(f"grid {grid.name} ({grid.grid_id}): {len(grid.cells)} cells x {grid.seeds} seeds, base preset "
                 f"{grid.base}, profile {profile.name} ({profile.gpus_per_job or 'no'} GPUs and "
                 f"{profile.ranks_per_job} DDP rank{'s' * (profile.ranks_per_job > 1)} per pretraining job), "
                 f"folder {gd.out}")
    head = ("cell", "trains", "K", "epochs", "images/epoch", "h/job")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:  # the words left-aligned, the numbers right-aligned
        print("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    base_mixing = grid.base_config().objective.mixing
    if (base_mixing.active and any(a in c.values for c in grid.cells for a in spec.LOSS_AXES)
            and not any(a in c.values for c in grid.cells for a in spec.MIXING_AXES)):
        terminal.say(f"every cell trains with {base_mixing.notation}, from the base preset {grid.base}: for the losses "
                     f"alone, add --set mochi.s=0 --set mochi.s_prime=0 (or sweep N,s,s_prime too)")
    for cell_id, reason in grid.dropped:
        terminal.say(f"dropped {cell_id}: {reason}")
    for cell_id, why in grid.merged:
        terminal.say(f"merged {cell_id}: {why}")
    for ref in grid.references:
        terminal.say(f"reference row {ref.id}: {ref.label} ({grid.seeds} seeds; probe and transfer only)")
    if measured is not None:
        terminal.say(cost.describe(cost.of(gd, profile, measured), profile, "projected", "nothing submitted"))
        return
    terminal.say(cost.describe(cost.of(gd, profile, rates), profile, "estimated",
                               "nothing submitted; --preflight measures the rates on the cluster"))


def tail(path: str, n: int = 3) -> str:
    """The last ``n`` non-empty lines of a log, on one line."""
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(ln.strip()[:160] for ln in lines[-n:])


@dataclass(frozen=True)
class UnitState:
    """Where one cell x seed stands: ``kind`` is done, queued, running, cancelled, cancelled before it
    started, failed, unknown to SLURM or not submitted."""

    kind: str
    detail: str = ""
    log: str = ""  # a failed job's last log lines

    def __str__(self) -> str:
        text = f"{self.kind} ({self.detail})" if self.detail else self.kind
        return f"{text}: {self.log}" if self.log else text


def unit_state(gd: GridDir, u: Unit, recs: dict, states: dict[str, launcher.SlurmJob]) -> UnitState:
    """The state of one row x seed from its folder and its jobs' scheduler states."""
    pre_done, evals_done = gd.stage_done(u)
    if pre_done and evals_done:
        probe = gd.probe(u)
        if probe is not None:
            top1 = json.loads((probe.out_dir / rundir.LINCLS_FILE).read_text())["top1_last"]
            return UnitState("done", f"linear top-1 {top1:.2f}")
        return UnitState("done")
    for stage in ("pretrain", "cell", *EVAL_STAGES):
        rec = recs.get(stage)
        if rec is None or (stage == "pretrain" and pre_done):
            continue
        if rec["cluster"] == "slurm":
            job = states.get(rec["job_id"], launcher.UNKNOWN)
        else:
            job = launcher.SlurmJob(launcher.local_state(rec["job_id"]))
        where = f"{stage}, job {rec['job_id']}"
        if job.state in QUEUED:
            return UnitState("queued", where)
        if job.active:
            if pre_done:
                progress = "evaluation"
            else:
                metrics = read_metrics(u.run_dir)
                epochs = gd.grid.cfg(u.cell, u.seed, u.run_dir).optim.epochs
                progress = f"epoch {metrics[-1].get('epoch', 0) + 1}/{epochs}" if metrics else "starting"
            return UnitState("running", f"{progress}, job {rec['job_id']}")
        if stage in EVAL_STAGES and not pre_done and job.state in ("CANCELLED", "UNKNOWN"):
            continue  # an evaluation that its pretraining's end took with it: the pretraining says why
        if job.state == "CANCELLED":
            return UnitState("cancelled" if job.started else "cancelled before it started", where)
        if job.state == "UNKNOWN":
            return UnitState("unknown to SLURM", where)
        return UnitState("failed", f"{where} {job.state}", tail(rec["stderr"]))
    return UnitState("not submitted")


def preflight_state(gd: GridDir, rec: dict | None, states: dict[str, launcher.SlurmJob]) -> str:
    """The preflight in words: passed (where), failed (why, and the fix), queued or running, or not run."""
    if active(rec, states):
        return f"queued or running (job {rec['job_id']})"
    report = preflight.read_report(preflight.folder(gd))
    if report is None:
        return "died before its report: see " + rec["stderr"] if rec else "not run"
    if report.passed:
        return f"passed on {report.device} ({report.date})"
    return preflight.failure_line(report)


def submitted_here(gd: GridDir, flag: str) -> None:
    """UserError, naming the folder looked in, when no grid was ever submitted to ``gd.out``."""
    if not (gd.out / rundir.GRID_FILE).is_file():
        raise UserError(f"{flag}: no grid in {gd.out.resolve()} (nothing was submitted to it; a grid folder is "
                        f"relative to the directory the grid was submitted from, or --out names it)")


def status(gd: GridDir, uri: str) -> int:
    """Print each cell x seed's state; write the tables once every one is done."""
    submitted_here(gd, "--status")
    jobs = gd.jobs()
    settle(gd)
    states = slurm_jobs(jobs)
    terminal.say(f"grid {gd.grid.name} ({gd.grid.grid_id}) in {gd.out}")
    print(f"  {'preflight':<40} {preflight_state(gd, jobs.get(PREFLIGHT_KEY, {}).get('preflight'), states)}")
    n_done = 0
    units = gd.units()
    for u in units:
        st = unit_state(gd, u, jobs.get(u.key, {}), states)
        n_done += st.kind == "done"
        print(f"  {u.key:<40} {st}")
    total = len(units)
    terminal.say(f"{n_done}/{total} done")
    for batch in gd.submitting():
        terminal.say(f"submission {batch['name']} ({len(batch['units'])} {batch['stage']} jobs) was cut short; "
                     f"run the same command without --status to recover it")
    if n_done == total:
        return finish(gd, uri)
    return 0  # partial tables would mislead; they are written once every cell is done


def cancel(gd: GridDir) -> int:
    """Stop the grid's queued and running jobs (scancel; local jobs get SIGTERM)."""
    submitted_here(gd, "--cancel")
    jobs = gd.jobs()
    states = slurm_jobs(jobs)
    slurm_ids, n_local = [], 0
    for recs in jobs.values():
        for rec in (r for r in recs.values() if active(r, states)):
            if rec["cluster"] == "slurm":
                slurm_ids.append(rec["job_id"])
            else:  # local
                os.kill(int(rec["job_id"]), signal.SIGTERM)
                n_local += 1
    for batch in gd.submitting():  # a submission a crash cut short: its jobs are known by name only
        slurm_ids += [j for j, st in launcher.slurm_jobs(name=batch["name"], since=batch["since"]).items() if st.active]
    if slurm_ids:
        subprocess.run(["scancel", *slurm_ids], check=False)
    terminal.say(f"cancelled {len(slurm_ids)} SLURM jobs and {n_local} local jobs of grid {gd.grid.name}; "
                 f"run the same command without --cancel to resume")
    return 0
