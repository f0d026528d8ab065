"""``python ablations/grid.py``: ablation grids of MoCHi pretraining + linear probes through submitit.

    python ablations/grid.py                                  # the embedded demo grid, locally, on CPU
    python ablations/grid.py --sweep N,s,s_prime --N 64,128 --s 0,128 --s_prime 0,32
    python ablations/grid.py --preset in100-table1 --profile gpu-1 --set data.path=/data/imagenet
    python ablations/grid.py --preset in100-table1 --dry-run   # the cells and estimated GPU-hours
    python ablations/grid.py --preset in100-table1 --status    # queued / running (epoch) / done / failed
    python ablations/grid.py --preset in100-table1 --cancel

Each cell x seed is a run folder ``OUT/cells/CELL/seedK``. On SLURM its pretraining runs in a job
array and its linear probe in a second array that starts when the corresponding pretraining task
ends (``aftercorr``); locally both run in one job, ``array_parallelism`` jobs at a time. Running the
same command again skips finished cells and resumes unfinished ones; a folder holding a different
grid is refused. MLflow: one parent run per grid, one child per cell x seed x stage.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ablations import results, spec
from pretrain import config
from pretrain.checkpoint import atomic_write
from pretrain.cli import ArgumentParser, run, setup_logging
from pretrain.errors import UserError
from pretrain.tracking import default_uri, read_metrics, retry_locked
from pretrain.train import SUMMARY_FILE, git_commit
from slurm import launcher

log = logging.getLogger("ablations.grid")
GRID_FILE = "grid.json"
JOBS_FILE = "jobs.json"
PARENT_FILE = "mlflow_parent_run_id"
# Images per epoch for --dry-run estimates when the data is not on this machine.
DATASET_SIZE = {"fashion-mnist": 60000, "imagenet100": 126689, "imagenet1k": 1281167}
SHORT_AXES = ("N", "s", "s_prime", "K", "tau", "m", "epochs", "mix_start")


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python ablations/grid.py", description=__doc__.split("\n\n")[0],
                       epilog="Axis values: --N 256,512 style options or --axis KEY=V1,V2 for any config key.")
    p.add_argument("--preset", default="demo", help=f"grid preset: {', '.join(spec.presets())} or a .yaml path "
                                                    "(default: demo)")
    p.add_argument("--sweep", help="comma list of axes to cross, e.g. N,s,s_prime (default: the preset's cells)")
    for a in SHORT_AXES:
        p.add_argument(f"--{a}", dest=f"axis_{a}", metavar="V1,V2", help=f"values of {a} ({spec.AXES[a]})")
    p.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2", help="values of any axis")
    p.add_argument("--seeds", type=int, help="seeds per cell (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every cell")
    p.add_argument("--lincls", help="arguments of python -m pretrain.lincls for each cell, or 'none'")
    p.add_argument("--transfer", help="arguments of python -m transfer.finetune for each cell (e.g. '--task voc-c4 "
                                      "--data /datasets/VOCdevkit'), or 'none'")
    p.add_argument("--cluster", default="auto", help="slurm, local, debug or auto (slurm where a controller "
                                                     "answers, else local)")
    p.add_argument("--profile", help=f"cluster profile: {', '.join(launcher.profiles())} or a .yaml path "
                                     "(default: the preset's)")
    p.add_argument("--name", help="grid name (default: the preset's name)")
    p.add_argument("--out", help="grid folder (default: runs/grids/NAME)")
    p.add_argument("--results", help="where tables and plots go (default: results/NAME)")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite runs/mlflow.db "
                                          "beside the grid folders)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the cells and estimated GPU-hours; submit nothing")
    mode.add_argument("--status", action="store_true", help="show each cell's state (writes the tables once all are done)")
    mode.add_argument("--cancel", action="store_true", help="stop this grid's queued and running jobs")
    p.add_argument("--wait", action="store_true", help="on SLURM: wait for every job, then write the tables")
    return p


def axis_values(args) -> dict[str, list]:
    values: dict[str, list] = {}
    for a in SHORT_AXES:
        text = getattr(args, f"axis_{a}")
        if text is not None:
            values[a] = spec.parse_values(a, text)
    for item in args.axis:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise UserError(f"--axis {item!r} is not of the form KEY=V1,V2")
        values[key] = spec.parse_values(key, text)
    return values


def grid_from_args(args) -> spec.Grid:
    preset = spec.load_preset(args.preset)
    sweep = [a.strip() for a in args.sweep.split(",")] if args.sweep else None
    if sweep is not None and not all(sweep):
        raise UserError(f"--sweep {args.sweep!r}: empty axis name")
    for text in args.set:
        config.parse_override(text)
    return spec.build(preset, sweep, axis_values(args), args.seeds, list(args.set),
                      None if args.lincls is None else args.lincls, args.name, args.transfer)


# ---------------------------------------------------------------------------------------------
# The grid folder
class GridDir:
    """OUT/grid.json (identity), OUT/jobs.json (submitted jobs), OUT/cells/CELL/seedK (run folders)."""

    def __init__(self, out: Path, grid: spec.Grid, results_dir: Path):
        # Absolute: jobs run from wherever the scheduler starts them.
        self.out, self.grid, self.results_dir = out.resolve(), grid, results_dir

    def check_same(self) -> None:
        f = self.out / GRID_FILE
        if not f.is_file():
            return
        saved = json.loads(f.read_text())
        mine = json.loads(json.dumps(self.grid.identity()))
        theirs = {k: saved.get(k) for k in mine}
        if theirs != mine:
            what = next(k for k in mine if theirs[k] != mine[k])
            raise UserError(f"{self.out} holds a different grid ({what} differs: {theirs[what]!r} there); "
                            f"choose another --out or --name")

    def run_dir(self, cell: spec.Cell, seed: int) -> Path:
        return self.out / "cells" / cell.id / f"seed{seed}"

    def lincls_dir(self, run_dir: Path) -> Path | None:
        if self.grid.lincls is None:
            return None
        return run_dir / ("lincls-fast" if "--fast" in self.grid.lincls else "lincls-full")

    def units(self):
        for cell in self.grid.cells:
            for seed in range(self.grid.seeds):
                yield cell, seed, self.run_dir(cell, seed)

    def transfer_dir(self, run_dir: Path) -> Path | None:
        task = self.grid.transfer_task
        return None if task is None else run_dir / f"transfer-{task}"

    def evals_done(self, run_dir: Path) -> dict[str, bool]:
        """{stage: done} for the evaluation stages this grid runs after pretraining."""
        out = {}
        if (ld := self.lincls_dir(run_dir)) is not None:
            out["lincls"] = (ld / "lincls.json").is_file()
        if (td := self.transfer_dir(run_dir)) is not None:
            out["transfer"] = (td / "summary.json").is_file()
        return out

    def stage_done(self, run_dir: Path) -> tuple[bool, bool]:
        """(pretraining done, every evaluation stage done)."""
        return (run_dir / SUMMARY_FILE).is_file(), all(self.evals_done(run_dir).values())

    def jobs(self) -> dict:
        f = self.out / JOBS_FILE
        return json.loads(f.read_text()) if f.is_file() else {}

    def save_jobs(self, jobs: dict) -> None:
        atomic_write(self.out / JOBS_FILE, json.dumps(jobs, indent=1).encode())

    @contextlib.contextmanager
    def lock(self):
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another grid.py is working on {self.out}; wait for it or use --status") from None
            yield


def unit_key(cell: spec.Cell, seed: int) -> str:
    return f"{cell.id}/seed{seed}"


# ---------------------------------------------------------------------------------------------
# --dry-run
def images_per_epoch(cfg: config.Config) -> int:
    if cfg.data.dataset == "fashion-mnist":
        n = DATASET_SIZE["fashion-mnist"]
    else:
        n = DATASET_SIZE["imagenet100" if cfg.data.class_list else "imagenet1k"]
    return min(n, cfg.data.subset) if cfg.data.subset else n


def dry_run(gd: GridDir, profile: launcher.Profile) -> None:
    grid = gd.grid
    rows, total = [], 0.0
    for cell in grid.cells:
        cfg = grid.cfg(cell, 0, gd.run_dir(cell, 0))
        images = cfg.optim.epochs * images_per_epoch(cfg)
        rate = profile.img_per_s * launcher.ARCH_SPEED.get(cfg.model.arch, 1.0) * (224 / cfg.data.image_size) ** 2
        devices = max(profile.gpus_per_job, 1)
        hours = images / (rate * devices) / 3600
        total += hours * devices * grid.seeds
        rows.append((cell.id, cfg.mochi.N, cfg.mochi.s, cfg.mochi.s_prime, cfg.moco.K, cfg.optim.epochs,
                     images_per_epoch(cfg), hours))
    unit = "GPU-hours" if profile.gpus_per_job else "CPU-job-hours"
    print(f"grid {grid.name} ({grid.grid_id}): {len(grid.cells)} cells x {grid.seeds} seeds, base preset "
          f"{grid.base}, profile {profile.name} ({profile.gpus_per_job or 'no'} GPUs per job), folder {gd.out}")
    head = ("cell", "N", "s", "s'", "K", "epochs", "images/epoch", "h/job")
    widths = [max(len(str(r[i])) if i < 7 else 6 for r in [head, *rows]) for i in range(8)]
    print("  ".join(str(h).rjust(w) for h, w in zip(head, widths)))
    for r in rows:
        print("  ".join([*(str(v).rjust(w) for v, w in zip(r[:7], widths)), f"{r[7]:6.2f}".rjust(widths[7])]))
    for cell_id, reason in grid.dropped:
        print(f"dropped {cell_id}: {reason}")
    print(f"estimated pretraining cost: {total:.2f} {unit} at {profile.img_per_s:g} img/s per "
          f"{'GPU' if profile.gpus_per_job else 'job'} (ResNet-50, 224 px; profile img_per_s), linear probes not "
          f"included; nothing submitted")


# ---------------------------------------------------------------------------------------------
# MLflow parent run
def ensure_parent(gd: GridDir, uri: str, experiment: str, profile: str, cluster: str) -> str | None:
    f = gd.out / PARENT_FILE
    if f.is_file():
        return f.read_text().strip()
    from mlflow.tracking import MlflowClient

    from pretrain.tracking import experiment_id

    try:
        client = MlflowClient(tracking_uri=uri)
        exp_id = experiment_id(client, experiment)
        run_ = retry_locked(client.create_run, exp_id, run_name=f"grid {gd.grid.name}", tags={
            "grid_id": gd.grid.grid_id, "stage": "grid", "preset": gd.grid.base, "profile": profile,
            "cluster": cluster, "git_commit": git_commit(), "grid_dir": str(gd.out.resolve()),
            "mlflow.note.content": f"{gd.grid.paper}: {len(gd.grid.cells)} cells x {gd.grid.seeds} seeds",
        })
    except Exception as e:  # noqa: BLE001 - the store may be down; jobs still keep their files
        log.warning("MLflow store %s unavailable (%s); runs will be synced by --status later", uri, e)
        return None
    atomic_write(f, run_.info.run_id.encode())
    return run_.info.run_id


def grid_settings(gd: GridDir, uri: str) -> tuple[str, list[str]]:
    """Experiment name and the run-level overrides every cell gets."""
    experiment = f"grid-{gd.grid.name}"
    return experiment, [f"run.tracking_uri={uri}", f"run.experiment={experiment}"]


def unit_jobs(gd: GridDir, cell: spec.Cell, seed: int, run_dir: Path, uri: str, parent: str | None):
    experiment, run_over = grid_settings(gd, uri)
    grid = gd.grid
    tags = {"grid_id": grid.grid_id, "grid": grid.name, "cell": cell.id, "seed": str(seed),
            **{f"axis.{a}": str(v) for a, v in cell.values.items()}}
    if parent:
        tags["mlflow.parentRunId"] = parent
    over = [*grid.set, *cell.overrides(), f"run.seed={seed}", f"run.out={run_dir}",
            f"run.run_name={cell.id}_seed{seed}_pretrain", *run_over]
    pre = launcher.PretrainJob(grid.base, over, {**tags, "stage": "pretrain"})
    evals = {}
    if grid.lincls is not None:
        evals["lincls"] = launcher.LinclsJob(str(run_dir), [*grid.lincls, f"--seed={seed}",
                                                            f"--run-name={cell.id}_seed{seed}_lincls"],
                                             parent, {**tags, "stage": "lincls"})
    if grid.transfer is not None:
        argv = [str(run_dir), *grid.transfer, f"--out={gd.transfer_dir(run_dir)}",
                *[f"--tag={k}={v}" for k, v in tags.items() if k != "mlflow.parentRunId"]]
        evals["transfer"] = launcher.TransferJob(argv + ([f"--parent-run={parent}"] if parent else []))
    return pre, evals


def job_record(job, stage: str, cluster: str) -> dict:
    return {"stage": stage, "cluster": cluster, "job_id": str(job.job_id), "stderr": str(job.paths.stderr),
            "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}


def active(rec: dict | None, slurm_state: dict[str, str]) -> bool:
    if not rec:
        return False
    if rec["cluster"] == "slurm":
        return slurm_state.get(rec["job_id"], "UNKNOWN") in launcher.ACTIVE
    if rec["cluster"] == "local":
        return launcher.local_state(rec["job_id"]) == "RUNNING"
    return False


def slurm_job_states(jobs: dict) -> dict[str, str]:
    ids = [r["job_id"] for u in jobs.values() for r in u.values() if r.get("cluster") == "slurm"]
    return launcher.slurm_states(ids) if ids else {}


def submit(gd: GridDir, profile: launcher.Profile, cluster: str, uri: str, wait: bool) -> int:
    grid = gd.grid
    jobs = gd.jobs()
    states = slurm_job_states(jobs)
    todo_pre, todo_lin, skipped_done, skipped_active = [], [], 0, 0
    for cell, seed, run_dir in gd.units():
        pre_done, lin_done = gd.stage_done(run_dir)
        recs = jobs.get(unit_key(cell, seed), {})
        if pre_done and lin_done:
            skipped_done += 1
        elif any(active(r, states) for r in recs.values()):
            skipped_active += 1
        elif pre_done:
            todo_lin.append((cell, seed, run_dir))
        else:
            todo_pre.append((cell, seed, run_dir))
    for cell_id, reason in grid.dropped:
        print(f"dropped {cell_id}: {reason}")
    print(f"grid {grid.name} ({grid.grid_id}) on {cluster}, profile {profile.name}: "
          f"{len(todo_pre)} to pretrain, {len(todo_lin)} to evaluate, {skipped_done} done, "
          f"{skipped_active} already queued or running")
    atomic_write(gd.out / GRID_FILE, grid.to_json().encode())
    if not todo_pre and not todo_lin:
        return finish(gd, uri) if skipped_active == 0 else 0
    experiment, _ = grid_settings(gd, uri)
    parent = ensure_parent(gd, uri, experiment, profile.name, cluster)
    logs = gd.out / "logs"

    if cluster == "slurm":
        submit_slurm(gd, profile, jobs, todo_pre, todo_lin, uri, parent, logs)
        print(f"follow with: python ablations/grid.py {shlex.join(sys.argv[1:])} --status")
        if wait:
            wait_slurm(gd)
            return finish(gd, uri)
        return 0
    failures = run_local(gd, profile, cluster, jobs, todo_pre + todo_lin, uri, parent, logs)
    if failures:
        print(f"{failures} cells failed; see --status for their log tails; run the same command to retry them")
        return 1
    return finish(gd, uri)


def submit_slurm(gd, profile, jobs, todo_pre, todo_lin, uri, parent, logs) -> None:
    def submit_batch(executor, callables):
        with executor.batch():
            submitted = [executor.submit(c) for c in callables]
        return submitted

    def submit_evals(units, dep: str | None, why: str) -> None:
        for stage in ("lincls", "transfer"):
            todo = [(c, s, u[1][stage]) for c, s, u in units if stage in u[1]]
            if not todo:
                continue
            ex = launcher.make_executor("slurm", logs, profile, name=f"{gd.grid.name}-{stage}", stage="eval",
                                        dependency=dep)
            submitted = submit_batch(ex, [t[2] for t in todo])
            for (c, s, _), j in zip(todo, submitted):
                jobs.setdefault(unit_key(c, s), {})[stage] = job_record(j, stage, "slurm")
            gd.save_jobs(jobs)
            print(f"submitted {len(submitted)} {stage} jobs: array {submitted[0].job_id.split('_')[0]}{why}")

    if todo_pre:
        units = [(c, s, unit_jobs(gd, c, s, d, uri, parent)) for c, s, d in todo_pre]
        ex = launcher.make_executor("slurm", logs, profile, name=f"{gd.grid.name}-pretrain", stage="pretrain")
        pre_jobs = submit_batch(ex, [u[2][0] for u in units])
        for (c, s, _), j in zip(units, pre_jobs):
            jobs.setdefault(unit_key(c, s), {})["pretrain"] = job_record(j, "pretrain", "slurm")
        gd.save_jobs(jobs)
        array_id = pre_jobs[0].job_id.split("_")[0]
        print(f"submitted {len(pre_jobs)} pretraining jobs: array {array_id} (at most {profile.array_parallelism} "
              f"at once)")
        dep = f"aftercorr:{array_id}" if "_" in pre_jobs[0].job_id else f"afterok:{array_id}"
        submit_evals(units, dep, f", each after its pretraining task ({dep.split(':')[0]})")
    if todo_lin:
        units = []
        for c, s, d in todo_lin:
            pre, evals = unit_jobs(gd, c, s, d, uri, parent)
            done = gd.evals_done(d)
            units.append((c, s, (pre, {k: v for k, v in evals.items() if not done[k]})))
        submit_evals(units, None, " (their pretraining is done)")


def wait_slurm(gd: GridDir, poll_s: float = 10.0) -> None:
    while True:
        jobs = gd.jobs()
        states = slurm_job_states(jobs)
        live = [j for j, s in states.items() if s in launcher.ACTIVE]
        if not live:
            return
        log.info("%d jobs queued or running", len(live))
        time.sleep(poll_s)


def run_local(gd, profile, cluster, jobs, todo, uri, parent, logs) -> int:
    """Run cell jobs (pretraining then probe) ``array_parallelism`` at a time; wait for all."""
    pending = list(todo)
    running: list[tuple[str, object]] = []
    failures = 0
    ex = launcher.make_executor(cluster, logs, profile, name=f"{gd.grid.name}-cell", stage="pretrain")

    def stop(signum, _frame):
        for _, job in running:
            job.cancel(check=False)
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        while pending or running:
            while pending and len(running) < profile.array_parallelism:
                cell, seed, run_dir = pending.pop(0)
                pre, evals = unit_jobs(gd, cell, seed, run_dir, uri, parent)
                done_pre, _ = gd.stage_done(run_dir)
                done = gd.evals_done(run_dir)
                job = ex.submit(launcher.CellJob(None if done_pre else pre,
                                                 [v for k, v in evals.items() if not done[k]]))
                key = unit_key(cell, seed)
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


# ---------------------------------------------------------------------------------------------
# --status and --cancel
def tail(path: str, n: int = 3) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(ln.strip()[:160] for ln in lines[-n:])


def unit_state(gd: GridDir, cell, seed, run_dir, recs: dict, states: dict) -> str:
    pre_done, lin_done = gd.stage_done(run_dir)
    if pre_done and lin_done:
        ld = gd.lincls_dir(run_dir)
        if ld is not None:
            return f"done (linear top-1 {json.loads((ld / 'lincls.json').read_text())['top1_best']:.2f})"
        return "done"
    for stage in ("pretrain", "cell", "lincls", "transfer"):
        rec = recs.get(stage)
        if rec is None or (stage == "pretrain" and pre_done):
            continue
        st = states.get(rec["job_id"]) if rec["cluster"] == "slurm" else launcher.local_state(rec["job_id"])
        if st in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"):
            return f"queued ({stage}, job {rec['job_id']})"
        if st in launcher.ACTIVE:
            if pre_done:
                where = "linear probe"
            else:
                metrics = read_metrics(run_dir)
                epochs = gd.grid.cfg(cell, seed, run_dir).optim.epochs
                where = f"epoch {metrics[-1].get('epoch', 0) + 1}/{epochs}" if metrics else "starting"
            return f"running ({where}, job {rec['job_id']})"
        if stage in ("lincls", "transfer") and not pre_done and st in ("CANCELLED", "UNKNOWN"):
            continue
        return f"failed ({stage}, job {rec['job_id']} {st}): {tail(rec['stderr'])}"
    return "not submitted"


def status(gd: GridDir, uri: str) -> int:
    jobs = gd.jobs()
    states = slurm_job_states(jobs)
    print(f"grid {gd.grid.name} ({gd.grid.grid_id}) in {gd.out}")
    n_done = 0
    for cell, seed, run_dir in gd.units():
        st = unit_state(gd, cell, seed, run_dir, jobs.get(unit_key(cell, seed), {}), states)
        n_done += st.startswith("done")
        print(f"  {unit_key(cell, seed):<40} {st}")
    total = len(gd.grid.cells) * gd.grid.seeds
    print(f"{n_done}/{total} done")
    if n_done == total:
        return finish(gd, uri)
    return 0  # partial tables would mislead; they are written once every cell is done


def cancel(gd: GridDir) -> int:
    jobs = gd.jobs()
    states = slurm_job_states(jobs)
    slurm_ids, n_local = [], 0
    for recs in jobs.values():
        for rec in recs.values():
            if rec["cluster"] == "slurm" and states.get(rec["job_id"]) in launcher.ACTIVE:
                slurm_ids.append(rec["job_id"])
            elif rec["cluster"] == "local" and launcher.local_state(rec["job_id"]) == "RUNNING":
                os.kill(int(rec["job_id"]), signal.SIGTERM)
                n_local += 1
    if slurm_ids:
        subprocess.run(["scancel", *slurm_ids], check=False)
    print(f"cancelled {len(slurm_ids)} SLURM jobs and {n_local} local jobs of grid {gd.grid.name}; "
          f"run the same command without --cancel to resume")
    return 0


def finish(gd: GridDir, uri: str) -> int:
    """Sync every run folder into MLflow, then write and print the tables and plots."""
    complete = all(all(gd.stage_done(d)) for _, _, d in gd.units())
    return results.report(gd.grid, gd.out, uri, gd.results_dir, complete)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    grid = grid_from_args(args)
    profile = launcher.load_profile(args.profile or grid.profile)
    out = Path(args.out or Path("runs") / "grids" / grid.name)
    gd = GridDir(out, grid, Path(args.results or Path("results") / grid.name))
    gd.check_same()
    # Default store: runs/mlflow.db, the one `make demo` and `make ui` use; beside --out otherwise.
    uri = args.tracking_uri or default_uri(out.parent if args.out is None else out)
    setup_logging()
    if args.dry_run:
        dry_run(gd, profile)
        return 0
    if args.status:
        return status(gd, uri)
    if args.cancel:
        return cancel(gd)
    cluster = launcher.resolve_cluster(args.cluster)
    if not args.cluster == "debug" and cluster == "local" and profile.gpus_per_job > 1:
        raise UserError(f"profile {profile.name} asks for {profile.gpus_per_job} GPUs per job; local runs use one")
    with gd.lock():
        return submit(gd, profile, cluster, uri, args.wait)


if __name__ == "__main__":
    run(main)
