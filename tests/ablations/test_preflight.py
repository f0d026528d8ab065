"""The grid's preflight (ablations/preflight.py, submit.py): run ahead of the cells, a failure stops
the grid before anything trains, a pass is not repeated, and its speeds replace the estimate."""

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ablations.submit import PREFLIGHT_KEY
from pretrain.run import rundir
from pretrain.tools.jpegs import make_jpegs
from tests.conftest import TINY_GRID, grid_cli
from tests.ablations.test_grid import write_preset

GRID = [a for a in TINY_GRID if a != "--no-preflight"]


def grid_args(tmp_path, name, *extra):
    preset = write_preset(tmp_path, [{"N": 32, "s": 16, "s_prime": 8}])
    return ["--preset", str(preset), "--name", name, "--out", str(tmp_path / "grid"), "--results",
            str(tmp_path / "results"), "--seeds", "1", *GRID, *extra]


def report(tmp_path) -> dict:
    return json.loads((tmp_path / "grid" / rundir.PREFLIGHT / rundir.PREFLIGHT_FILE).read_text())


@pytest.mark.slow
def test_preflight_alone_then_its_speed_in_the_dry_run_then_a_grid_that_does_not_repeat_it(tmp_path, mlflow_server):
    args = grid_args(tmp_path, f"pf{tmp_path.name[-6:]}", "--cluster", "local", "--tracking-uri", mlflow_server)
    r = grid_cli(*args, "--preflight")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS  step" in r.stdout and "PASS  tracking" in r.stdout and "preflight passed" in r.stdout
    assert "projected cost (from the measured rates)" in r.stdout and not (tmp_path / "grid" / rundir.CELLS).exists()
    rep = report(tmp_path)
    assert rep["passed"] and rep["step_img_per_s"] > 0 and rep["tags"]["profile"] == "local-cpu"

    dry = grid_cli(*args, "--dry-run")
    assert "measured by the preflight on CPU" in dry.stdout and "estimated cost" not in dry.stdout
    assert "projected cost (nothing submitted)" in dry.stdout

    run = grid_cli(*args)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "preflight: local job" not in run.stdout and "done: linear top-1" in run.stdout  # passed here before
    assert "passed on CPU" in grid_cli(*args, "--status").stdout


def test_a_failed_preflight_stops_the_grid_before_any_cell_with_one_line(tmp_path):
    root = tmp_path / "data"
    make_jpegs(root, 40, classes=4, seed=2)
    bad = sorted((root / "train").rglob("*.JPEG"))[3]
    bad.write_bytes(bad.read_bytes()[:100])
    args = grid_args(tmp_path, "pfbad", "--cluster", "local", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                     "--set", "data.dataset=imagefolder", "--set", f"data.path={root}", "--set", "data.subset=0")
    r = grid_cli(*args)
    assert r.returncode == 1, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("preflight failed: data:") and str(bad) in last and "fix: replace or remove" in last
    assert "FAIL  data" in r.stdout and "] started" not in r.stdout  # no cell job was started
    assert not list((tmp_path / "grid").glob(f"{rundir.CELLS}/*/seed0/{rundir.CHECKPOINTS}/*.pt"))
    assert not report(tmp_path)["passed"]
    assert "preflight failed: data:" in grid_cli(*args, "--status").stdout


def two_task_profile(tmp_path):
    p = tmp_path / "two-tasks.yaml"
    p.write_text(yaml.safe_dump({"description": "two gloo ranks per job", "gpus_per_node": 0, "cpus_per_task": 1,
                                 "mem_gb": 4, "timeout_min": 30, "array_parallelism": 1, "img_per_s": 2.5,
                                 "tasks_per_node": 2}))
    return p


def job_field(job_id: str, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith(f"{field}=")), "")


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True)
    return out.stdout.split("\n")[0].split()[0] if out.stdout.strip() else ""


def wait_state(job_id: str, states: set, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while (st := sacct_state(job_id)) not in states:
        assert time.monotonic() < deadline, f"job {job_id} still {st!r}"
        time.sleep(2)
    return st


def submitted_ids(grid: Path) -> tuple[str, str]:
    """The SLURM ids of a grid's preflight job and of its (first) pretraining array task, from jobs.json."""
    jobs = json.loads((grid / rundir.JOBS_FILE).read_text())
    pretrain = next(rec["pretrain"]["job_id"] for key, rec in jobs.items() if key != PREFLIGHT_KEY)
    return jobs[PREFLIGHT_KEY]["preflight"]["job_id"], pretrain


@pytest.mark.slow
@pytest.mark.slurm
def test_on_slurm_the_pretraining_array_waits_on_a_two_rank_preflight(tmp_path, slurm_conf, mlflow_server):
    args = grid_args(tmp_path, f"pfs{tmp_path.name[-6:]}", "--cluster", "slurm", "--profile",
                     str(two_task_profile(tmp_path)), "--tracking-uri", mlflow_server)
    r = grid_cli(*args)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        pre_id, pretrain_id = submitted_ids(tmp_path / "grid")
        assert f"submitted the preflight: job {pre_id}" in r.stdout
        dep = job_field(pretrain_id, "Dependency")
        assert dep.startswith(f"afterok:{pre_id}") or sacct_state(pre_id) == "COMPLETED", dep
        assert wait_state(pre_id, {"COMPLETED", "FAILED", "CANCELLED"}) == "COMPLETED"
        rep = report(tmp_path)
        assert rep["passed"] and rep["world"] == 2, rep
        group = next(c for c in rep["checks"] if c["name"] == "process group")
        assert group["status"] == "pass" and "2 ranks over gloo" in group["detail"]
    finally:
        grid_cli(*args, "--cancel")


@pytest.mark.slow
@pytest.mark.slurm
def test_on_slurm_a_failed_preflight_cancels_the_array_it_guards(tmp_path, slurm_conf):
    root = tmp_path / "data"  # one image cut short: the data line fails on the node
    make_jpegs(root, 40, classes=4, seed=2)
    bad = sorted((root / "train").rglob("*.JPEG"))[3]
    bad.write_bytes(bad.read_bytes()[:100])
    args = grid_args(tmp_path, f"pff{tmp_path.name[-6:]}", "--cluster", "slurm", "--profile", "local-cpu",
                     "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--set", "data.dataset=imagefolder",
                     "--set", f"data.path={root}", "--set", "data.subset=0")
    r = grid_cli(*args)
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        pre_id, pretrain_id = submitted_ids(tmp_path / "grid")
        assert wait_state(pre_id, {"COMPLETED", "FAILED", "CANCELLED"}) == "FAILED"
        assert wait_state(pretrain_id.split("_")[0], {"CANCELLED", "COMPLETED", "FAILED"}, 60) == "CANCELLED"
        assert "preflight failed: data:" in grid_cli(*args, "--status").stdout
        assert not report(tmp_path)["passed"]
    finally:
        grid_cli(*args, "--cancel")
