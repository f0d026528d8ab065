"""Grids on a real SLURM cluster (slurm/cluster.sh): arrays, chained probes, preemption, cancel."""

import json
import subprocess
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

from ablations import spec
from pretrain.run import checkpoint
from pretrain.train import train
from slurm.launcher import load_profile, slurm_states
from tests.conftest import TINY_GRID, grid_cli
from tests.ablations.test_grid import write_preset

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def wait_until(pred, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(poll)
    return value


def grid_runs(client, grid_dir):
    grid = json.loads((grid_dir / "grid.json").read_text())
    exp = client.get_experiment_by_name(f"grid-{grid['name']}")
    return client.search_runs([exp.experiment_id], f"tags.grid_id = '{grid['grid_id']}'")


def args_for(tmp_path, preset, *extra):
    return ["--preset", str(preset), "--name", f"s{tmp_path.name[-8:]}", "--out", str(tmp_path / "grid"),
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
    sets = ["--set", "optim.epochs=2", "--set", "data.subset=512", "--set", "run.ckpt_every_steps=4"]
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
    preset = write_preset(tmp_path, [{"N": 0, "s": 0, "s_prime": 0}, {"N": 32, "s": 16, "s_prime": 8}])
    args = args_for(tmp_path, preset, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *TINY_GRID,
                    "--set", "optim.epochs=50")
    assert grid_cli(*args).returncode == 0
    jobs = json.loads((tmp_path / "grid" / "jobs.json").read_text())
    ids = [rec["job_id"] for recs in jobs.values() for rec in recs.values()]
    r = grid_cli(*args, "--cancel")
    assert r.returncode == 0 and "cancelled 4 SLURM jobs" in r.stdout, r.stdout + r.stderr
    wait_until(lambda: not subprocess.run(["squeue", "-h", "-j", ",".join(ids)], capture_output=True,
                                          text=True).stdout.strip(), 60, "the jobs to leave the queue")
    status = grid_cli(*args, "--status").stdout
    assert status.count("failed (pretrain") == 2 and "CANCELLED" in status
    again = grid_cli(*args)
    assert again.returncode == 0 and "2 to pretrain" in again.stdout
    assert grid_cli(*args, "--cancel").returncode == 0
