"""Submitting a grid: one job per stage of each cell x seed that is not done, queued or running.

On SLURM pretraining is one job array, and the probes and transfer stages are arrays whose task i
starts when pretraining task i has ended (``aftercorr``). Every batch is announced in
submitting.json under a unique job name before ``sbatch`` runs, so a crash at any point is
recovered by the next run (``recover``) without duplicates or gaps; a batch sbatch refuses undoes
the whole submission (``undone_if_refused``). Locally (or in-process, ``debug``) each
cell x seed is one job that runs its stages in turn, ``array_parallelism`` at a time, and this
process waits for them. Every job carries the typed settings of its stage (``slurm.jobs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ablations import preflight, spec, terminal
from ablations.griddir import GridDir, Unit
from pretrain.run import rundir
from pretrain.run.checkpoint import atomic_write
from pretrain.run.errors import UserError
from pretrain.run.tracking import GRID, StoreError, experiment_id, finalize, git_commit, mlflow_client, retry_locked
from pretrain.tools.preflight_report import Report
from slurm import jobs as grid_jobs
from slurm import launcher

log = logging.getLogger("ablations.grid")


def finish(gd: GridDir, uri: str) -> int:
    """Sync every run folder into MLflow, then write and print the tables and plots
    (``report.finish``; imported here, so that a dry run or a status loads no pandas or MLflow)."""
    from ablations import report

    return report.finish(gd, uri)


def grid_params(grid: spec.Grid, profile: str, cluster: str) -> dict[str, object]:
    """What the grid's parent run records as its parameters: the grid as submitted."""
    return {"preset": grid.name, "base": grid.base, "seeds": grid.seeds, "cells": " ".join(c.id for c in grid.cells),
            "references": " ".join(r.id for r in grid.references), "profile": profile, "cluster": cluster,
            **{f"set.{k}": v for k, v in grid.set.items()}}


def ensure_parent(gd: GridDir, uri: str, profile: str, cluster: str) -> str | None:
    """The grid's MLflow parent run (created on first submission; its id kept in the grid folder), or
    None if the store cannot be reached (the jobs' folders are synced into it later)."""
    f = gd.out / rundir.PARENT_FILE
    if f.is_file():
        return f.read_text().strip()
    try:
        from mlflow.entities import Param

        client = mlflow_client(uri)
        exp_id = experiment_id(client, gd.grid.experiment)
        run_ = retry_locked(client.create_run, exp_id, run_name=f"grid {gd.grid.name}", tags={
            "grid_id": gd.grid.grid_id, "stage": GRID, "preset": gd.grid.base, "profile": profile,
            "cluster": cluster, "git_commit": git_commit(), "grid_dir": str(gd.out.resolve()),
            "mlflow.note.content": f"{gd.grid.paper}: {len(gd.grid.cells)} cells x {gd.grid.seeds} seeds",
        })
        retry_locked(client.log_batch, run_.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in grid_params(
            gd.grid, profile, cluster).items()])
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - the store may be down; jobs still keep their files
        log.warning("MLflow store %s unavailable (%s); runs will be synced by --status later", uri, e)
        return None
    atomic_write(f, run_.info.run_id.encode())
    return run_.info.run_id


def unit_jobs(gd: GridDir, u: Unit, uri: str, parent: str | None,
              cores: int | None = None) -> tuple[grid_jobs.PretrainJob | None, dict]:
    """The pretraining job of one row x seed (None for a reference row) and its evaluation jobs
    ({stage: job}), all logging to the grid's experiment as children of its parent run, each on
    ``cores`` threads."""
    grid = gd.grid
    tags = {"grid_id": grid.grid_id, "grid": grid.name, "cell": u.row, "seed": str(u.seed)}
    if u.cell is not None:  # setting: the row in words, as the tables name it
        tags.update({f"axis.{a}": str(v) for a, v in u.cell.values.items()}, setting=grid.objective(u.cell).label)
    else:
        tags.update(reference=u.ref.kind, setting=u.ref.label)
    where = {"tracking_uri": uri, "experiment": grid.experiment, "parent_run": parent}
    pre = None
    if u.cell is not None:
        cfg = grid.cfg(u.cell, u.seed, u.run_dir, {"run.run_name": f"{u.row}_seed{u.seed}_pretrain",
                                                   "run.tracking_uri": uri, "run.experiment": grid.experiment})
        pre = grid_jobs.PretrainJob(cfg, tags, parent, cores)
    evals: dict = {}
    if (probe := gd.probe(u)) is not None:
        evals["lincls"] = grid_jobs.LinclsJob(dataclasses.replace(
            probe, run_name=f"{u.row}_seed{u.seed}_lincls", tags={**probe.tags, **tags}, **where), cores)
    if (transfer := gd.transfer(u)) is not None:
        evals["transfer"] = grid_jobs.transfer_job(dataclasses.replace(
            transfer, tags={**transfer.tags, **tags}, **where), cores)
    return pre, evals


def check_transfer_gpus(grid, profile: launcher.Profile, cluster: str) -> None:
    """UserError, before anything is submitted, when a detectron2 transfer stage trains on more GPUs
    (its --gpus, by default the recipe's 8) than the profile gives a SLURM evaluation job (eval_gpus)."""
    stage = grid.transfer_stage(rundir.GRIDS / "x")
    if cluster != "slurm" or stage is None or stage.engine != "detectron2" or stage.device != "cuda":
        return
    if stage.workers > profile.eval_gpus:
        raise UserError(f"the detectron2 transfer stage trains on {stage.workers} GPUs but profile {profile.name} "
                        f"gives an evaluation job {profile.eval_gpus} (eval_gpus); give --gpus "
                        f"{max(profile.eval_gpus, 1)} in --transfer, or a profile with eval_gpus: {stage.workers}")


def check_cluster(grid, profile: launcher.Profile, cluster: str) -> None:
    """UserError, before anything is written or submitted, when the SLURM cluster cannot run the
    grid's jobs on ``profile`` (``launcher.check_fits`` of its pretraining, probe and transfer jobs)."""
    if cluster != "slurm":
        return
    stages = [grid_jobs.PretrainJob.tasks] if grid.cells else []
    if grid.lincls is not None:
        stages.append(grid_jobs.LinclsJob.tasks)
    if (transfer := grid.transfer_stage(rundir.GRIDS / "x")) is not None:
        stages.append(grid_jobs.transfer_job(transfer).tasks)
    launcher.check_fits(profile, list(dict.fromkeys(stages)))


def check_data(grid, profile: launcher.Profile) -> None:
    """UserError, before anything is written or submitted, for a cell whose image folder
    (``data.path`` of an ``imagefolder`` dataset) is not on this host, or for a transfer stage whose
    ``--data`` lacks a path its task needs (the stage's ``check_data``), unless the profile says the
    data lives on the compute nodes only (``data_on_nodes``: node-local scratch, which the preflight
    checks there)."""
    if profile.data_on_nodes:
        return
    if (stage := grid.transfer_stage(rundir.GRIDS / "x")) is not None:
        stage.check_data()
    for cell in grid.cells:
        data = grid.cfg(cell, 0, rundir.GRIDS / "x").data
        if data.dataset == "imagefolder" and data.path and not Path(data.path).is_dir():
            raise UserError(f"data.path {data.path} (cell {cell.id}) is not a folder on this host; give the "
                            f"dataset's folder, or set data_on_nodes: true in profile {profile.name} if it exists "
                            f"only on the compute nodes")


EVAL_STAGES = (grid_jobs.LinclsJob.stage, grid_jobs.TransferJob.stage)


def job_record(job_id: str, stage: str, cluster: str, stderr: Path) -> dict:
    """What jobs.json keeps of a submitted job."""
    return {"stage": stage, "cluster": cluster, "job_id": str(job_id), "stderr": str(stderr),
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}


def active(rec: dict | None, states: dict[str, launcher.SlurmJob]) -> bool:
    """Whether a recorded job is queued or running (``states``: ``slurm_jobs`` of jobs.json)."""
    if not rec:
        return False
    if rec["cluster"] == "slurm":
        return states.get(rec["job_id"], launcher.UNKNOWN).active
    if rec["cluster"] == "local":
        return launcher.local_state(rec["job_id"]) == "RUNNING"
    return False


def slurm_ids(jobs: dict) -> list[str]:
    """The ids of every SLURM job in jobs.json."""
    return [r["job_id"] for u in jobs.values() for r in u.values() if r.get("cluster") == "slurm"]


def slurm_jobs(jobs: dict) -> dict[str, launcher.SlurmJob]:
    """{job id: SlurmJob} of every SLURM job in jobs.json."""
    ids = slurm_ids(jobs)
    return launcher.slurm_jobs(ids) if ids else {}


@contextlib.contextmanager
def undone_if_refused(gd: GridDir, profile: launcher.Profile, uri: str):
    """Undo the submission in this block if sbatch refuses one of its batches, then say so on one
    line (UserError): the jobs it had submitted are cancelled, grid.json, jobs.json,
    submitting.json and the parent run's id are put back as they were, and a parent run it created
    is marked FAILED and deleted (a grid that runs nothing has no run to show; the next submission
    makes one afresh)."""
    files = [gd.out / f for f in (rundir.GRID_FILE, rundir.JOBS_FILE, rundir.SUBMITTING_FILE, rundir.PARENT_FILE)]
    before = {f: f.read_bytes() if f.is_file() else None for f in files}
    known = set(slurm_ids(gd.jobs()))
    try:
        yield
    except launcher.SbatchRefused as e:
        new = sorted(set(slurm_ids(gd.jobs())) - known)
        if new:
            subprocess.run(["scancel", *new], check=False)
        parent = gd.out / rundir.PARENT_FILE
        if before[parent] is None and parent.is_file():
            run_id = parent.read_text().strip()
            try:
                client = mlflow_client(uri)
                retry_locked(client.set_terminated, run_id, "FAILED")
                retry_locked(client.delete_run, run_id)
            except Exception as err:  # noqa: BLE001 - the store may be down: the refusal is still reported
                log.warning("could not delete the grid's MLflow run %s (%s)", run_id, err)
        for f, data in before.items():
            if data is None:
                f.unlink(missing_ok=True)
            else:
                atomic_write(f, data)
        n = len(new)
        undone = f"cancelled the {n} job{'s' * (n > 1)} this run had submitted" if n else "nothing was submitted"
        raise UserError(f"{e} (profile {profile.name}; {undone})") from None


@dataclass
class Todo:
    """What a submission has to do, unit by unit."""

    pretrain: list[Unit] = field(default_factory=list)  # pretrain, then every evaluation after it
    chained: list[tuple[Unit, str, str]] = field(default_factory=list)  # (unit, stage, live pretraining job)
    evals: list[tuple[Unit, str]] = field(default_factory=list)  # (unit, stage) of a pretrained unit
    stale: list[str] = field(default_factory=list)  # evaluations waiting on pretraining that is gone
    done: int = 0
    active: int = 0  # units with nothing to submit and a job queued or running

    def __bool__(self) -> bool:
        return bool(self.pretrain or self.chained or self.evals)

    def eval_units(self) -> list[Unit]:
        """The units that get only evaluation jobs, each once."""
        return list({u.key: u for u, *_ in self.chained + self.evals}.values())


def plan(gd: GridDir, jobs: dict, states: dict[str, launcher.SlurmJob]) -> Todo:
    """Every stage of every unit that is neither done nor queued or running."""
    todo = Todo()
    for u in gd.units():
        pre_done = gd.pretrained(u)
        evals_done = gd.evals_done(u)
        if pre_done and all(evals_done.values()):
            todo.done += 1
            continue
        live = {st: r for st, r in jobs.get(u.key, {}).items() if active(r, states)}
        if "cell" in live:  # a local job runs every stage of its unit
            todo.active += 1
            continue
        missing = [st for st, d in evals_done.items() if not d and st not in live]
        if not pre_done and "pretrain" not in live:
            todo.pretrain.append(u)
            todo.stale += [r["job_id"] for st, r in live.items() if st in EVAL_STAGES and r["cluster"] == "slurm"]
        else:
            if pre_done:
                todo.evals += [(u, st) for st in missing]
            else:
                todo.chained += [(u, st, live["pretrain"]["job_id"]) for st in missing]
            todo.active += not missing
    return todo


def submit(gd: GridDir, profile: launcher.Profile, cluster: str, uri: str, wait: bool, check: bool = True) -> int:
    """Submit every stage that is not done, queued or running; locally, run them and wait; then
    (or with ``wait`` on SLURM) write the tables. With ``check``, a submission that pretrains is
    preceded by the grid's preflight (unless one passed on this profile): on SLURM the pretraining
    array waits on it (afterok); locally a failed one stops the grid before its first cell.
    Returns the exit code."""
    grid = gd.grid
    jobs = recover(gd, gd.jobs())
    settle(gd)
    todo = plan(gd, jobs, slurm_jobs(jobs))
    for cell_id, reason in grid.dropped:
        terminal.say(f"dropped {cell_id}: {reason}")
    for cell_id, why in grid.merged:
        terminal.say(f"merged {cell_id}: {why}")
    terminal.say(f"grid {grid.name} ({grid.grid_id}) on {cluster}, profile {profile.name}: "
                 f"{len(todo.pretrain)} to pretrain, {len(todo.eval_units())} to evaluate, {todo.done} done, "
                 f"{todo.active} already queued or running")
    if todo.stale:
        subprocess.run(["scancel", *todo.stale], check=False)
        terminal.say(f"cancelled {len(todo.stale)} evaluation jobs whose pretraining job is gone")
    if not todo:
        gd.save_grid()
        if todo.active and cluster == "slurm" and wait:
            wait_slurm(gd)
            return finish(gd, uri)
        return finish(gd, uri) if todo.active == 0 else 0
    with undone_if_refused(gd, profile, uri):
        gd.save_grid()
        parent = ensure_parent(gd, uri, profile.name, cluster)
        after = None
        if check and todo.pretrain and preflight.passed_before(gd, profile) is None:
            if cluster == "slurm":
                after = submit_preflight(gd, profile, jobs, uri, parent).job_id
                terminal.say(f"submitted the preflight: job {after}; the pretraining array starts once it passes "
                             f"(afterok)")
            else:
                report = run_preflight(gd, profile, cluster, jobs, uri, parent)
                terminal.say(preflight.describe(gd, profile, report), flush=True)
                if not report.passed:
                    print(preflight.failure_line(report), file=sys.stderr)
                    return 1
        if cluster == "slurm":
            submit_slurm(gd, profile, jobs, todo, uri, parent, after)
    if cluster == "slurm":
        terminal.say(f"follow with: mochi-grid {shlex.join(sys.argv[1:])} --status")
        if wait:
            wait_slurm(gd)
            return finish(gd, uri)
        return 0
    failures = run_local(gd, profile, cluster, jobs, todo.pretrain + todo.eval_units(), uri, parent)
    if failures:
        terminal.say(f"{failures} cells failed; see --status for their log tails; run the same command to retry them")
        return 1
    return finish(gd, uri)


def settle(gd: GridDir) -> None:
    """Finish the runs whose final checkpoint was written but whose summary was not (a kill in
    between): their summary is written from the checkpoint and their MLflow run closed."""
    for u in gd.units():
        if u.pretrains:
            finalize(u.run_dir)


def submit_batch(gd: GridDir, profile: launcher.Profile, jobs: dict, stage: str, items: list[tuple[str, object]],
                 dependency: str | None = None) -> list:
    """Submit the callables of ``items`` ((jobs.json key, job) pairs: a unit's key, or the
    preflight's) as one SLURM array (one job if single) and record them in jobs.json. A crash at any point leaves a state the next run reads: the batch
    and its unique job name are written to submitting.json first, and ``recover`` finds its jobs in
    SLURM by that name."""
    name = f"{gd.grid.name}-{stage}-{secrets.token_hex(3)}"
    batch = {"name": name, "stage": stage, "units": [key for key, _ in items], "since": time.strftime("%Y-%m-%d")}
    gd.save_submitting([*gd.submitting(), batch])
    ex = launcher.make_executor("slurm", gd.logs, profile, name=name, stage=items[0][1].tasks, dependency=dependency)
    submitted = launcher.submit_all(ex, [job for _, job in items])
    for (key, _), j in zip(items, submitted):
        jobs.setdefault(key, {})[stage] = job_record(j.job_id, stage, "slurm", j.paths.stderr)
    gd.save_jobs(jobs)
    gd.save_submitting([b for b in gd.submitting() if b["name"] != name])
    return submitted


def recover(gd: GridDir, jobs: dict) -> dict:
    """jobs.json completed with the batches a crash cut short (``submit_batch``). Their jobs are
    found in SLURM by name: a task whose submitit pickle was written is recorded (it runs); one
    without it could only fail, so it is cancelled and its unit submitted again. Returns the jobs."""
    batches = gd.submitting()
    for b in batches:
        found = launcher.slurm_jobs(name=b["name"], since=b["since"])
        if not found:
            terminal.say(f"submission {b['name']} never reached SLURM; its {len(b['units'])} jobs are submitted again")
            continue
        first = next(iter(found))
        ids = [first] if len(b["units"]) == 1 and "_" not in first else \
            [f"{first.split('_')[0]}_{i}" for i in range(len(b["units"]))]
        orphans = []
        for key, jid in zip(b["units"], ids):
            if (stderr := launcher.submitted_stderr(gd.logs, jid)) is not None:
                jobs.setdefault(key, {})[b["stage"]] = job_record(jid, b["stage"], "slurm", stderr)
            else:
                orphans.append(jid)
        if orphans:
            subprocess.run(["scancel", *orphans], check=False)
        terminal.say(f"submission {b['name']} was cut short: {len(ids) - len(orphans)} of its jobs recorded, "
                     f"{len(orphans)} without their payload cancelled and submitted again")
    if batches:
        gd.save_jobs(jobs)
        gd.save_submitting([])
    return jobs


PREFLIGHT_KEY = "preflight"  # the preflight job's entry in jobs.json, beside the units'


def preflight_job(gd: GridDir, profile: launcher.Profile, uri: str, parent: str | None) -> grid_jobs.PreflightJob:
    """The grid's preflight job, its old report removed (so a job that dies leaves none behind)."""
    (preflight.folder(gd) / rundir.PREFLIGHT_FILE).unlink(missing_ok=True)
    return grid_jobs.PreflightJob(preflight.settings(gd, uri, parent, profile), profile.cpus_per_task)


def submit_preflight(gd: GridDir, profile: launcher.Profile, jobs: dict, uri: str, parent: str | None):
    """Submit the grid's preflight to SLURM (recorded in jobs.json); returns the submitit job."""
    (job,) = submit_batch(gd, profile, jobs, "preflight", [(PREFLIGHT_KEY, preflight_job(gd, profile, uri, parent))])
    return job


def run_preflight(gd: GridDir, profile: launcher.Profile, cluster: str, jobs: dict, uri: str,
                  parent: str | None) -> Report:
    """Run the grid's preflight on ``cluster`` and wait for it; its report (one failed line naming
    what killed the job if it wrote none)."""
    if cluster == "slurm":
        job = submit_preflight(gd, profile, jobs, uri, parent)
    else:
        ex = launcher.make_executor(cluster, gd.logs, profile, name=f"{gd.grid.name}-preflight", stage="pretrain")
        job = ex.submit(preflight_job(gd, profile, uri, parent))
    terminal.say(f"preflight: {cluster} job {job.job_id} (log {job.paths.stderr})", flush=True)
    try:
        job.result()
    except Exception as e:  # noqa: BLE001 - the job failed: its report says why, or its error does
        return preflight.from_failed_job(gd, e)
    return preflight.read_report(preflight.folder(gd)) or preflight.from_failed_job(gd, "no report was written")


def preflight_only(gd: GridDir, profile: launcher.Profile, cluster: str, uri: str) -> int:
    """``--preflight``: run the grid's preflight alone on ``cluster``, print its lines and the grid's
    projected cost; 0 if it passed, else 1 with the first failure's cause and fix on stderr."""
    jobs = recover(gd, gd.jobs())
    with undone_if_refused(gd, profile, uri):
        gd.save_grid()
        report = run_preflight(gd, profile, cluster, jobs, uri, ensure_parent(gd, uri, profile.name, cluster))
    terminal.say(preflight.describe(gd, profile, report))
    if not report.passed:
        print(preflight.failure_line(report), file=sys.stderr)
        return 1
    return 0


def submit_slurm(gd: GridDir, profile: launcher.Profile, jobs: dict, todo: Todo, uri: str,
                 parent: str | None, after: str | None = None) -> None:
    """Pretraining as one array (after job ``after``, the preflight, if given: afterok), each
    evaluation stage as an array chained task by task after it; evaluations of a unit whose
    pretraining job is live as jobs chained after that job; evaluations of a pretrained unit as
    arrays without a dependency."""
    cores = profile.cpus_per_task
    if todo.pretrain:
        units = [(u, *unit_jobs(gd, u, uri, parent, cores)) for u in todo.pretrain]
        pre_jobs = submit_batch(gd, profile, jobs, "pretrain", [(u.key, pre) for u, pre, _ in units],
                                f"afterok:{after}" if after else None)
        array_id = pre_jobs[0].job_id.split("_")[0]
        terminal.say(f"submitted {len(pre_jobs)} pretraining jobs: array {array_id} (at most "
                     f"{profile.array_parallelism} at once)")
        dep = f"aftercorr:{array_id}" if "_" in pre_jobs[0].job_id else f"afterok:{array_id}"
        for stage in EVAL_STAGES:
            if items := [(u.key, evals[stage]) for u, _, evals in units if stage in evals]:
                sub = submit_batch(gd, profile, jobs, stage, items, dep)
                terminal.say(f"submitted {len(sub)} {stage} jobs: array {sub[0].job_id.split('_')[0]}, each after its "
                             f"pretraining task ({dep.split(':')[0]})")
    for u, stage, pre_id in todo.chained:
        _, evals = unit_jobs(gd, u, uri, parent, cores)
        (sub,) = submit_batch(gd, profile, jobs, stage, [(u.key, evals[stage])], f"afterok:{pre_id}")
        terminal.say(f"submitted {stage} of {u.key}: job {sub.job_id}, after its pretraining job {pre_id} (afterok)")
    for stage in EVAL_STAGES:
        if items := [(u.key, unit_jobs(gd, u, uri, parent, cores)[1][stage]) for u, st in todo.evals if st == stage]:
            sub = submit_batch(gd, profile, jobs, stage, items)
            terminal.say(f"submitted {len(sub)} {stage} jobs: array {sub[0].job_id.split('_')[0]} (no pretraining to "
                         f"wait for)")


def wait_slurm(gd: GridDir, poll_s: float = 10.0) -> None:
    """Return once none of the grid's SLURM jobs is queued or running."""
    while True:
        live = [j for j, st in slurm_jobs(gd.jobs()).items() if st.active]
        if not live:
            return
        log.info("%d jobs queued or running", len(live))
        time.sleep(poll_s)


def run_local(gd: GridDir, profile: launcher.Profile, cluster: str, jobs: dict, todo: list, uri: str,
              parent: str | None) -> int:
    """Run cell jobs (pretraining then evaluations) ``array_parallelism`` at a time; wait for all.
    Returns how many failed."""
    pending = list(todo)
    running: list[tuple[str, object]] = []
    failures = 0
    ex = launcher.make_executor(cluster, gd.logs, profile, name=f"{gd.grid.name}-cell", stage="pretrain")

    def stop(signum, _frame):
        for _, job in running:
            job.cancel(check=False)
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            while pending and len(running) < profile.array_parallelism:
                u = pending.pop(0)
                pre, evals = unit_jobs(gd, u, uri, parent, profile.cpus_per_task)
                done_pre, _ = gd.stage_done(u)
                done = gd.evals_done(u)
                job = ex.submit(grid_jobs.CellJob(None if done_pre else pre,
                                                  [v for k, v in evals.items() if not done[k]]))
                key = u.key
                jobs.setdefault(key, {})["cell"] = job_record(job.job_id, "cell", cluster, job.paths.stderr)
                gd.save_jobs(jobs)
                terminal.say(f"[{key}] started ({cluster} job {job.job_id}; log {job.paths.stderr})", flush=True)
                if cluster == "debug":
                    job.result()
                running.append((key, job))
            time.sleep(0.5 if cluster != "debug" else 0)
            for key, job in list(running):
                if job.done():
                    running.remove((key, job))
                    exc = job.exception()
                    if exc is None:
                        res = job.result().get("lincls") or {}
                        extra = f": linear top-1 {res['top1_last']:.2f}" if "top1_last" in res else ""
                        terminal.say(f"[{key}] done{extra}", flush=True)
                    else:
                        failures += 1
                        terminal.say(f"[{key}] FAILED: {str(exc).strip().splitlines()[-1][:300]}", flush=True)
    except KeyboardInterrupt:
        for _, job in running:
            job.cancel(check=False)
        print("interrupted: running jobs cancelled; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    return failures
