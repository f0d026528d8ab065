"""Grids on a real SLURM cluster (slurm/cluster.sh): arrays, chained probes, preemption, cancel."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from ablations import spec
from pretrain.run import checkpoint
from pretrain.run.tracking import read_metrics
from pretrain.train import train
from slurm.launcher import SACCT_STATES, load_profile, slurm_states
from tests.conftest import REPO, TINY_GRID, free_port, grid_cli, grid_runs
from tests.ablations.test_grid import write_preset

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def wait_until(pred, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(poll)
    return value


def args_for(tmp_path, preset, *extra):
    # The name carries the worker's pid: a tracking server that outlives a session (a developer's) must not
    # find the same grid id, and its runs, from an earlier session's test of the same name.
    return ["--preset", str(preset), "--name", f"s{tmp_path.name[-8:]}{os.getpid()}", "--out", str(tmp_path / "grid"),
            "--results", str(tmp_path / "results"), "--cluster", "slurm", "--profile", "local-cpu", *extra]


def test_grid_on_slurm_chains_probes_after_pretraining(tmp_path, slurm_conf, mlflow_server):
    preset = write_preset(tmp_path, [{"N": 0, "s": 0, "s_prime": 0}, {"N": 32, "s": 16, "s_prime": 8}])
    args = args_for(tmp_path, preset, "--tracking-uri", mlflow_server, *TINY_GRID)
    r = grid_cli(*args, "--wait", timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted 2 pretraining jobs: array" in r.stdout and "(aftercorr)" in r.stdout
    assert "linear top-1" in (tmp_path / "results" / "table.md").read_text()

    jobs = json.loads((tmp_path / "grid" / "jobs.json").read_text())
    ids = {(k, st): rec["job_id"] for k, recs in jobs.items() for st, rec in recs.items()}
    assert len(ids) == 4 and all("_" in j for j in ids.values())  # array tasks
    assert set(slurm_states(list(ids.values())).values()) == {"COMPLETED"}
    runs = grid_runs(MlflowClient(mlflow_server), tmp_path / "grid")
    children = [r for r in runs if r.data.tags["stage"] != "grid"]
    assert len(children) == 4
    for run in children:
        key = (f"{run.data.tags['cell']}/seed{run.data.tags['seed']}", run.data.tags["stage"])
        assert run.data.tags["slurm_job_id"] == ids[key]
    # The probe started only after its pretraining ended.
    for cell in ("N0-s0-sp0", "N32-s16-sp8"):
        pre = next(r for r in children if r.data.tags["cell"] == cell and r.data.tags["stage"] == "pretrain")
        lin = next(r for r in children if r.data.tags["cell"] == cell and r.data.tags["stage"] == "lincls")
        assert lin.info.start_time >= pre.info.end_time


def test_preempted_job_requeues_and_ends_as_an_uninterrupted_run(tmp_path, slurm_conf, mlflow_server):
    preset = write_preset(tmp_path, [{"N": 32, "s": 16, "s_prime": 8}], lincls=False)
    # Two loader workers: they inherit the job's signal handlers and must leave USR2 to the main process.
    sets = ["--set", "optim.epochs=2", "--set", "data.subset=512", "--set", "run.ckpt_every_steps=4",
            "--set", "data.num_workers=2"]
    args = args_for(tmp_path, preset, "--tracking-uri", mlflow_server, *TINY_GRID, *sets, "--lincls", "none")
    r = grid_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = json.loads((tmp_path / "grid" / "jobs.json").read_text())["N32-s16-sp8/seed0"]["pretrain"]["job_id"]
    run_dir = tmp_path / "grid" / "cells" / "N32-s16-sp8" / "seed0"
    # A checkpoint counts once its manifest is written (a kill before that falls back a checkpoint).
    wait_until(lambda: list((run_dir / "checkpoints").glob("checkpoint-*.json")), 180, "a first checkpoint")

    # What SLURM sends before a time limit or preemption: submitit checkpoints and requeues.
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)

    def restarted() -> bool:
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        if "Restarts=1" not in shown:
            return False
        if "Reason=BeginTime" in shown:  # a requeued job waits ~2 minutes before it is eligible again
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        return "JobState=RUNNING" in shown or "JobState=COMPLETED" in shown

    wait_until(restarted, 120, "the requeued job to start again")
    wait_until(lambda: "1/1 done" in grid_cli(*args, "--status").stdout, 300, "the requeued job to finish", 3)

    logs = "".join(p.read_text() for p in (tmp_path / "grid" / "logs").glob(f"{job_id}_*log.*"))
    assert "resuming from" in logs
    # The main process alone acted on USR2, not its loader workers (submitit's own log line, once).
    err = (tmp_path / "grid" / "logs" / f"{job_id}_0_log.err").read_text()
    assert err.count(") - Caught signal SIGUSR2") == 1, err
    state, _ = checkpoint.load_latest(run_dir / "checkpoints")

    # The same cell, uninterrupted, in this process, on as many threads as the job had (a float sum
    # over another number of threads rounds differently).
    argv = TINY_GRID + sets
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    grid = spec.build(spec.load_preset(str(preset)), None, {}, None, overrides, None)
    ref_cfg = grid.cfg(grid.cells[0], 0, tmp_path / "ref", {"run.tracking_uri": f"sqlite:///{tmp_path}/ref.db"})
    threads = torch.get_num_threads()
    torch.set_num_threads(load_profile("local-cpu").cpus_per_task)
    try:
        train(ref_cfg)
    finally:
        torch.set_num_threads(threads)
    ref, _ = checkpoint.load_latest(tmp_path / "ref" / "checkpoints")
    assert state["global_step"] == ref["global_step"] == 32
    for k, v in ref["model"].items():
        assert torch.equal(state["model"][k], v), k

    runs = [r for r in grid_runs(MlflowClient(mlflow_server), tmp_path / "grid") if r.data.tags["stage"] == "pretrain"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    loss = MlflowClient(mlflow_server).get_metric_history(runs[0].info.run_id, "loss")
    assert sorted(m.step for m in loss) == list(range(2, 33, 2))  # each point once, none replayed twice


def test_cancel_stops_the_grid_and_a_rerun_resubmits(tmp_path, slurm_conf):
    # Three cells, two at a time (local-cpu profile): the third is cancelled before it starts.
    preset = write_preset(tmp_path, [{"N": 0, "s": 0, "s_prime": 0}, {"N": 32, "s": 16, "s_prime": 8},
                                     {"N": 16, "s": 8, "s_prime": 4}])
    args = args_for(tmp_path, preset, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *TINY_GRID,
                    "--set", "optim.epochs=50")
    assert grid_cli(*args).returncode == 0
    jobs = json.loads((tmp_path / "grid" / "jobs.json").read_text())
    ids = [rec["job_id"] for recs in jobs.values() for rec in recs.values()]
    wait_until(lambda: list(slurm_states(ids).values()).count("RUNNING") == 2, 120, "two jobs to start")
    r = grid_cli(*args, "--cancel")
    assert r.returncode == 0 and "cancelled 6 SLURM jobs" in r.stdout, r.stdout + r.stderr
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True,
                                          text=True).stdout.strip(), 60, "the jobs to leave the queue")
    status = grid_cli(*args, "--status").stdout
    assert status.count("cancelled (pretrain") == 2, status
    assert status.count("cancelled before it started (pretrain") == 1, status
    assert "failed" not in status and "UNKNOWN" not in status
    again = grid_cli(*args, "--cluster", "auto")  # auto finds the controller, and says so before submitting
    assert again.returncode == 0 and "3 to pretrain" in " ".join(again.stdout.split())
    said = again.stdout.index("--cluster auto: a SLURM controller answers")
    assert said < again.stdout.index("submitted"), again.stdout
    assert grid_cli(*args, "--cancel").returncode == 0


# sbatch as the cluster has it, except that the plan file's line for this call can kill grid.py
# (this script's parent) just before or just after the real submission, submit the job held, or
# have the real sbatch refuse it (a constraint no node has).
SBATCH_WRAPPER = """#!/bin/bash
n=$(( $(cat "$SBATCH_PLAN.count" 2>/dev/null || echo 0) + 1 )); echo $n > "$SBATCH_PLAN.count"
action=$(sed -n "${n}p" "$SBATCH_PLAN")
if [ "$action" = before ]; then kill -9 $PPID; exit 1; fi
if [ "$action" = hold ]; then exec %(sbatch)s --hold "$@"; fi
if [ "$action" = late ]; then exec %(sbatch)s --begin=now+40 "$@"; fi
if [ "$action" = refuse ]; then exec %(sbatch)s --constraint=no-such-feature "$@"; fi
out=$(%(sbatch)s "$@") || exit $?
echo "$out"
if [ "$action" = after ]; then kill -9 $PPID; fi
"""


def array_tasks(job_id: str) -> int:
    """How many jobs one sacct line stands for: ``61_[0-1%2]`` (an array's tasks that never started)
    is 2, ``61_0`` or ``64`` is 1."""
    m = re.search(r"_\[([^%\]]*)(%\d+)?\]$", job_id)
    if not m:
        return 1
    spans = [part.partition("-") for part in m.group(1).split(",")]
    return sum(int(b) - int(a) + 1 if dash else 1 for a, dash, b in spans)


def test_a_submission_cut_at_any_point_is_recovered_without_duplicates_or_gaps(tmp_path, slurm_conf):
    """grid.py killed just after the pretraining array reached SLURM, just before the probe array
    did, and just after one chained probe did: each re-run finds the grid's jobs by name, cancels the
    ones without a payload, submits every missing stage once (probes chained to live pretraining),
    and --wait then waits for the queued jobs and writes the table."""
    preset = write_preset(tmp_path, [{"N": 0, "s": 0, "s_prime": 0}, {"N": 32, "s": 16, "s_prime": 8}])
    args = args_for(tmp_path, preset, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *TINY_GRID)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(SBATCH_WRAPPER % {"sbatch": shutil.which("sbatch")})
    (bin_dir / "sbatch").chmod(0o755)
    plan = tmp_path / "plan"
    # sbatch calls: 1 pretrain array (killed after), 2 pretrain array, 3 probe array (killed before),
    # 4 and 5 one chained probe per cell (killed after the second), 6 that probe again. The second
    # pretraining array may start only 40 s after it is submitted, so that it is still live (queued)
    # while the probes are chained to it; waiting costs the shared cores nothing, unlike a longer run.
    plan.write_text("after\nlate\nbefore\nok\nafter\nok\n")
    # Unbuffered: what grid.py printed before the kill is what a terminal would have shown.
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_PLAN": str(plan), "PYTHONUNBUFFERED": "1"}
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    grid_dir = tmp_path / "grid"

    def jobs():
        return json.loads((grid_dir / "jobs.json").read_text()) if (grid_dir / "jobs.json").is_file() else {}

    r1 = grid_cli(*args, env=env)
    assert r1.returncode == -9 and not jobs()
    assert len(json.loads((grid_dir / "submitting.json").read_text())) == 1
    st = grid_cli(*args, "--status", env=env)
    assert st.returncode == 0 and "(2 pretrain jobs) was cut short" in st.stdout, st.stdout + st.stderr

    r2 = grid_cli(*args, env=env)
    assert r2.returncode == -9, r2.stdout + r2.stderr
    said = " ".join(r2.stdout.split())  # (messages wrap to the terminal's width)
    assert "0 of its jobs recorded, 2 without their payload cancelled" in said and "2 to pretrain" in said
    assert {k: set(v) for k, v in jobs().items()} == {"N0-s0-sp0/seed0": {"pretrain"},
                                                      "N32-s16-sp8/seed0": {"pretrain"}}

    r3 = grid_cli(*args, env=env)
    assert r3.returncode == -9, r3.stdout + r3.stderr
    said3 = " ".join(r3.stdout.split())
    assert "never reached SLURM" in said3 and "0 to pretrain, 2 to evaluate" in said3
    assert "(afterok)" in r3.stdout  # the first chained probe, after its live pretraining job

    r4 = grid_cli(*args, env=env)
    assert r4.returncode == 0, r4.stdout + r4.stderr
    assert "0 of its jobs recorded, 1 without their payload cancelled" in " ".join(r4.stdout.split())
    assert "0 to pretrain, 1 to evaluate" in " ".join(r4.stdout.split()) and "(afterok)" in r4.stdout
    assert json.loads((grid_dir / "submitting.json").read_text()) == []

    r5 = grid_cli(*args, "--wait", env=env, timeout=900)  # everything is queued: it waits, then reports
    assert r5.returncode == 0, r5.stdout + r5.stderr
    assert "2 already queued or running" in " ".join(r5.stdout.split())
    assert "linear top-1" in (tmp_path / "results" / "table.md").read_text()
    assert plan.with_suffix(".count").read_text().strip() == "6"

    recorded = {rec["job_id"] for recs in jobs().values() for rec in recs.values()}
    assert len(recorded) == 4 and set(slurm_states(sorted(recorded)).values()) == {"COMPLETED"}
    # Every other job the grid ever had in SLURM is an orphan without a payload, cancelled.
    name = json.loads((grid_dir / "grid.json").read_text())["name"]
    acct = subprocess.run(["sacct", "-n", "-X", "-P", "-S", since, "-E", "now", "-s", SACCT_STATES, "-o",
                           "JobID,JobName,State"],
                          capture_output=True, text=True).stdout.splitlines()
    others = [line for line in acct if f"|{name}-" in line and line.split("|")[0] not in recorded]
    # 3 orphans: the first pretraining array's 2 tasks (one sacct line while none of them had started)
    # and the probe of the cut submission
    assert sum(array_tasks(line.split("|")[0]) for line in others) == 3, others
    assert all("|CANCELLED" in line for line in others), others
    runs = grid_runs(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), grid_dir)
    assert sorted(r.data.tags["stage"] for r in runs) == ["grid", "lincls", "lincls", "pretrain", "pretrain"]


def write_profile(tmp_path, **keys):
    """local-cpu with ``keys`` changed, as a profile file."""
    import yaml

    tree = {k: v for k, v in vars(load_profile("local-cpu")).items() if k != "name"}
    path = tmp_path / f"mine-{len(list(tmp_path.glob('mine-*')))}.yaml"
    path.write_text(yaml.safe_dump({**tree, **keys}))
    return path


def test_a_profile_the_cluster_cannot_hold_is_refused_before_anything_is_written(tmp_path, slurm_conf):
    preset = write_preset(tmp_path, [{"N": 0, "s": 0, "s_prime": 0}])
    for keys, message in [({"partition": "nosuchpart"}, "partition 'nosuchpart' does not exist"),
                          ({"cpus_per_task": 64}, "asks for 64 CPUs per node (cpus_per_task 64 x 1 task)")]:
        args = args_for(tmp_path, preset, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *TINY_GRID,
                        "--profile", str(write_profile(tmp_path, **keys)))
        r = grid_cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stdout + r.stderr
        assert not (tmp_path / "grid").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_sbatch_refusal_ends_in_one_line_and_leaves_nothing_submitted(tmp_path, slurm_conf):
    """A refusal the profile check cannot foresee (a constraint no node has; features are not
    checked), first of the grid's first batch, then of its probe array after the pretraining array was
    accepted (held, so that it cannot start): one line and exit 2, the accepted array cancelled, the
    grid folder without a trace of the submission, no MLflow run left RUNNING."""
    preset = write_preset(tmp_path, [{"N": 0, "s": 0, "s_prime": 0}, {"N": 32, "s": 16, "s_prime": 8}])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    name = f"s{tmp_path.name[-8:]}"
    grid_dir = tmp_path / "grid"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(SBATCH_WRAPPER % {"sbatch": shutil.which("sbatch")})
    (bin_dir / "sbatch").chmod(0o755)
    plan = tmp_path / "plan"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_PLAN": str(plan)}

    def left_behind() -> list[str]:
        files = [f for f in ("grid.json", "jobs.json", "submitting.json", "mlflow_parent_run_id")
                 if (grid_dir / f).is_file()]
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(f"grid-{name}")
        runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL) if exp else []
        return files + [f"run {r.info.run_name} {r.info.status}" for r in runs if r.info.status == "RUNNING"]

    def error_lines(r) -> list[str]:  # stderr but MLflow's lines as it creates a new store
        return [line for line in r.stderr.splitlines() if " INFO mlflow." not in line]

    profile = write_profile(tmp_path, constraint="no-such-feature")
    r = grid_cli(*args_for(tmp_path, preset, "--tracking-uri", uri, *TINY_GRID, "--profile", str(profile)))
    assert r.returncode == 2 and len(error_lines(r)) == 1, r.stdout + r.stderr
    assert error_lines(r)[0] == ("error: sbatch: error: Batch job submission failed: Invalid feature specification "
                                 f"(profile {profile.stem}; nothing was submitted)")
    assert left_behind() == []

    plan.write_text("hold\nrefuse\n")
    r = grid_cli(*args_for(tmp_path, preset, "--tracking-uri", uri, *TINY_GRID), env=env)
    assert r.returncode == 2 and len(error_lines(r)) == 1, r.stdout + r.stderr
    assert "Invalid feature specification" in r.stderr and "cancelled the 2 jobs this run had submitted" in r.stderr
    assert plan.with_suffix(".count").read_text().strip() == "2"
    assert left_behind() == []
    array = r.stdout.split("submitted 2 pretraining jobs: array ")[1].split()[0]
    assert not subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip()
    # A held array cancelled before any task split off: sacct records it under its own id alone.
    acct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", array], capture_output=True,
                          text=True).stdout.splitlines()
    assert acct and all(state.startswith("CANCELLED") for state in acct), acct


# One rank of the reference for a two-task job: the grid's cell, trained by train() under the
# variables torch.distributed reads, on one thread as each of the job's one-core tasks.
REFERENCE_RANK = """
import json, sys
import torch
from ablations import spec
from pretrain.train import train
preset, overrides, out, uri = json.loads(sys.argv[1])
torch.set_num_threads(1)
grid = spec.build(spec.load_preset(preset), None, {}, None, overrides, None)
train(grid.cfg(grid.cells[0], 0, out, {"run.tracking_uri": uri}))
"""


def test_a_two_task_pretraining_job_is_one_ddp_run_and_its_probe_one_process(tmp_path, slurm_conf, mlflow_server):
    """A profile's tasks_per_node: 2 on the CPU cluster: pretraining is one two-rank gloo group (one
    checkpoint folder, one MLflow run), requeued half-way by ``scontrol requeue`` it ends bit-identical
    to an uninterrupted two-rank run; its probe is one process: one MLflow run, each point once."""
    preset = write_preset(tmp_path, [{"N": 32, "s": 16, "s_prime": 8}])
    sets = ["--set", "optim.epochs=2", "--set", "data.subset=512", "--set", "run.ckpt_every_steps=4"]
    args = args_for(tmp_path, preset, "--tracking-uri", mlflow_server, *TINY_GRID, *sets,
                    "--profile", str(write_profile(tmp_path, tasks_per_node=2)))
    r = grid_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = json.loads((tmp_path / "grid" / "jobs.json").read_text())["N32-s16-sp8/seed0"]
    job_id, probe_id = jobs["pretrain"]["job_id"], jobs["lincls"]["job_id"]
    run_dir = tmp_path / "grid" / "cells" / "N32-s16-sp8" / "seed0"
    wait_until(lambda: list((run_dir / "checkpoints").glob("checkpoint-*.json")), 180, "a first checkpoint")
    subprocess.run(["scontrol", "requeue", job_id], check=True)

    def started_again() -> bool:
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        if "Reason=BeginTime" in shown:  # a requeued job waits ~2 minutes before it is eligible again
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        return "Restarts=1" in shown and ("JobState=RUNNING" in shown or "JobState=COMPLETED" in shown)

    wait_until(started_again, 120, "the requeued job to start again")
    wait_until(lambda: set(slurm_states([job_id, probe_id]).values()) == {"COMPLETED"}, 400,
               "the pretraining job and its probe to complete", 3)

    logs = {p.name: p.read_text() for p in (tmp_path / "grid" / "logs").glob(f"{job_id}_*log.err")}
    assert sorted(logs) == [f"{job_id}_0_log.err", f"{job_id}_1_log.err"], sorted(logs)  # one log per task
    assert "rank 0 of 2 on cpu" in logs[f"{job_id}_0_log.err"] and "resuming from" in logs[f"{job_id}_0_log.err"]
    assert [p.name for p in (tmp_path / "grid" / "logs").glob(f"{probe_id}_*log.err")] == [f"{probe_id}_0_log.err"]

    runs = grid_runs(MlflowClient(mlflow_server), tmp_path / "grid")
    pre = [r for r in runs if r.data.tags["stage"] == "pretrain"]
    probe = [r for r in runs if r.data.tags["stage"] == "lincls"]
    assert len(pre) == 1 and len(probe) == 1 and pre[0].info.status == probe[0].info.status == "FINISHED"
    assert pre[0].data.params["world_size"] == "2"
    for folder in {p.parent for p in run_dir.rglob("metrics.jsonl")}:  # pretraining's and the probe's
        points = [(r["step"], *sorted(set(r) - {"time"})) for r in read_metrics(folder)]
        assert points and len(points) == len(set(points)), f"{folder}: a point logged twice"
    assert len({p.parent for p in run_dir.rglob("metrics.jsonl")}) == 2

    ref, port = tmp_path / "ref", free_port()
    argv = TINY_GRID + sets
    spec_args = json.dumps([str(preset), [argv[i + 1] for i, a in enumerate(argv) if a == "--set"], str(ref),
                            f"sqlite:///{tmp_path}/ref.db"])
    procs = [subprocess.Popen([sys.executable, "-c", REFERENCE_RANK, spec_args], cwd=REPO,
                              env={**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for rank in (0, 1)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    state, _ = checkpoint.load_latest(run_dir / "checkpoints")
    want, _ = checkpoint.load_latest(ref / "checkpoints")
    assert state["global_step"] == want["global_step"] == 32
    for k, v in want["model"].items():
        assert torch.equal(state["model"][k], v), k
