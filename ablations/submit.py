"""Submitting a grid: one job per stage of each cell x seed that is not done, queued or running.

On SLURM pretraining is one job array, and the probes and transfer stages are arrays whose task i
starts when pretraining task i has ended (``aftercorr``). Locally (or in-process, ``debug``) each
cell x seed is one job that runs its stages in turn, ``array_parallelism`` at a time, and this
process waits for them. Every job carries the typed settings of its stage (``slurm.jobs``).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import signal
import sys
import time

from ablations.griddir import GridDir, Unit, finish
from pretrain.run import rundir
from pretrain.run.checkpoint import atomic_write
from pretrain.run.tracking import GRID, StoreError, experiment_id, git_commit, mlflow_client, retry_locked
from slurm import jobs as grid_jobs
from slurm import launcher

log = logging.getLogger("ablations.grid")


def ensure_parent(gd: GridDir, uri: str, profile: str, cluster: str) -> str | None:
    """The grid's MLflow parent run (created on first submission; its id kept in the grid folder), or
    None if the store cannot be reached (the jobs' folders are synced into it later)."""
    f = gd.out / rundir.PARENT_FILE
    if f.is_file():
        return f.read_text().strip()
    try:
        client = mlflow_client(uri)
        exp_id = experiment_id(client, gd.grid.experiment)
        run_ = retry_locked(client.create_run, exp_id, run_name=f"grid {gd.grid.name}", tags={
            "grid_id": gd.grid.grid_id, "stage": GRID, "preset": gd.grid.base, "profile": profile,
            "cluster": cluster, "git_commit": git_commit(), "grid_dir": str(gd.out.resolve()),
            "mlflow.note.content": f"{gd.grid.paper}: {len(gd.grid.cells)} cells x {gd.grid.seeds} seeds",
        })
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
    if u.cell is not None:
        tags.update({f"axis.{a}": str(v) for a, v in u.cell.values.items()})
    else:
        tags["reference"] = u.ref.kind
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
        evals["transfer"] = grid_jobs.TransferJob(dataclasses.replace(
            transfer, tags={**transfer.tags, **tags}, **where), cores)
    return pre, evals


def job_record(job, stage: str, cluster: str) -> dict:
    """What jobs.json keeps of a submitted job."""
    return {"stage": stage, "cluster": cluster, "job_id": str(job.job_id), "stderr": str(job.paths.stderr),
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}


def active(rec: dict | None, slurm_state: dict[str, str]) -> bool:
    """Whether a recorded job is queued or running."""
    if not rec:
        return False
    if rec["cluster"] == "slurm":
        return slurm_state.get(rec["job_id"], "UNKNOWN") in launcher.ACTIVE
    if rec["cluster"] == "local":
        return launcher.local_state(rec["job_id"]) == "RUNNING"
    return False


def slurm_job_states(jobs: dict) -> dict[str, str]:
    """{job id: SLURM state} of every SLURM job in jobs.json."""
    ids = [r["job_id"] for u in jobs.values() for r in u.values() if r.get("cluster") == "slurm"]
    return launcher.slurm_states(ids) if ids else {}


def submit(gd: GridDir, profile: launcher.Profile, cluster: str, uri: str, wait: bool) -> int:
    """Submit every stage that is not done, queued or running; locally, run them and wait; then
    (or with ``wait`` on SLURM) write the tables. Returns the exit code."""
    grid = gd.grid
    jobs = gd.jobs()
    states = slurm_job_states(jobs)
    todo_pre, todo_lin, skipped_done, skipped_active = [], [], 0, 0
    for u in gd.units():
        pre_done, lin_done = gd.stage_done(u)
        recs = jobs.get(u.key, {})
        if pre_done and lin_done:
            skipped_done += 1
        elif any(active(r, states) for r in recs.values()):
            skipped_active += 1
        elif pre_done:
            todo_lin.append(u)
        else:
            todo_pre.append(u)
    for cell_id, reason in grid.dropped:
        print(f"dropped {cell_id}: {reason}")
    print(f"grid {grid.name} ({grid.grid_id}) on {cluster}, profile {profile.name}: "
          f"{len(todo_pre)} to pretrain, {len(todo_lin)} to evaluate, {skipped_done} done, "
          f"{skipped_active} already queued or running")
    gd.save_grid()
    if not todo_pre and not todo_lin:
        return finish(gd, uri) if skipped_active == 0 else 0
    parent = ensure_parent(gd, uri, profile.name, cluster)

    if cluster == "slurm":
        submit_slurm(gd, profile, jobs, todo_pre, todo_lin, uri, parent)
        print(f"follow with: python ablations/grid.py {shlex.join(sys.argv[1:])} --status")
        if wait:
            wait_slurm(gd)
            return finish(gd, uri)
        return 0
    failures = run_local(gd, profile, cluster, jobs, todo_pre + todo_lin, uri, parent)
    if failures:
        print(f"{failures} cells failed; see --status for their log tails; run the same command to retry them")
        return 1
    return finish(gd, uri)


def submit_slurm(gd: GridDir, profile: launcher.Profile, jobs: dict, todo_pre: list, todo_lin: list, uri: str,
                 parent: str | None) -> None:
    """Pretraining as one array; each evaluation stage as an array chained task by task after it
    (units whose pretraining is done get their evaluations without a dependency)."""

    def submit_batch(executor, callables):
        with executor.batch():
            submitted = [executor.submit(c) for c in callables]
        return submitted

    def submit_evals(units: list[tuple[Unit, dict]], dep: str | None, why: str) -> None:
        for stage in ("lincls", "transfer"):
            todo = [(u, evals[stage]) for u, evals in units if stage in evals]
            if not todo:
                continue
            ex = launcher.make_executor("slurm", gd.logs, profile, name=f"{gd.grid.name}-{stage}", stage="eval",
                                        dependency=dep)
            submitted = submit_batch(ex, [job for _, job in todo])
            for (u, _), j in zip(todo, submitted):
                jobs.setdefault(u.key, {})[stage] = job_record(j, stage, "slurm")
            gd.save_jobs(jobs)
            print(f"submitted {len(submitted)} {stage} jobs: array {submitted[0].job_id.split('_')[0]}{why}")

    if todo_pre:
        units = [(u, *unit_jobs(gd, u, uri, parent, profile.cpus_per_task)) for u in todo_pre]
        ex = launcher.make_executor("slurm", gd.logs, profile, name=f"{gd.grid.name}-pretrain", stage="pretrain")
        pre_jobs = submit_batch(ex, [pre for _, pre, _ in units])
        for (u, _, _), j in zip(units, pre_jobs):
            jobs.setdefault(u.key, {})["pretrain"] = job_record(j, "pretrain", "slurm")
        gd.save_jobs(jobs)
        array_id = pre_jobs[0].job_id.split("_")[0]
        print(f"submitted {len(pre_jobs)} pretraining jobs: array {array_id} (at most {profile.array_parallelism} "
              f"at once)")
        dep = f"aftercorr:{array_id}" if "_" in pre_jobs[0].job_id else f"afterok:{array_id}"
        submit_evals([(u, evals) for u, _, evals in units], dep, f", each after its pretraining task "
                                                                f"({dep.split(':')[0]})")
    if todo_lin:
        units = []
        for u in todo_lin:
            _, evals = unit_jobs(gd, u, uri, parent, profile.cpus_per_task)
            done = gd.evals_done(u)
            units.append((u, {k: v for k, v in evals.items() if not done[k]}))
        submit_evals(units, None, " (no pretraining to wait for)")


def wait_slurm(gd: GridDir, poll_s: float = 10.0) -> None:
    """Return once none of the grid's SLURM jobs is queued or running."""
    while True:
        jobs = gd.jobs()
        states = slurm_job_states(jobs)
        live = [j for j, s in states.items() if s in launcher.ACTIVE]
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
                jobs.setdefault(key, {})["cell"] = job_record(job, "cell", cluster)
                gd.save_jobs(jobs)
                print(f"[{key}] started ({cluster} job {job.job_id}; log {job.paths.stderr})", flush=True)
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
                        extra = f": linear top-1 {res['top1_best']:.2f}" if "top1_best" in res else ""
                        print(f"[{key}] done{extra}", flush=True)
                    else:
                        failures += 1
                        print(f"[{key}] FAILED: {str(exc).strip().splitlines()[-1][:300]}", flush=True)
    except KeyboardInterrupt:
        for _, job in running:
            job.cancel(check=False)
        print("interrupted: running jobs cancelled; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    return failures
