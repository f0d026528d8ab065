"""pretrain.tracking: many concurrent jobs on one store lose nothing; sync rebuilds what a down store missed."""

import json
import signal
import subprocess
import sys
import time

import pytest

from mlflow.tracking import MlflowClient

from pretrain.run.tracking import RUN_ID_FILE, Tracker, read_metrics, sync
from tests.conftest import REPO, free_port

WRITER = """
import sys
from pathlib import Path
from pretrain.run.tracking import Tracker
i, uri, points = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
d = Path(sys.argv[4]) / f"job{i}"
d.mkdir()
t = Tracker(d, uri, "concurrent", f"job{i}", {f"p{j}": j for j in range(40)}, {"job": str(i)})
for step in range(points):
    t.log({"loss": 1.0 / (step + 1), "acc": step / points, "job": float(i)}, step)
t.finish()
"""


def test_eight_jobs_logging_at_once_to_the_default_sqlite_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).create_experiment("other")  # the store exists before the jobs, as a grid makes it
    points = 60
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i), uri, str(points), str(tmp_path)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for i in range(8)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert not any("MLflow logging failed" in e or "unavailable" in e for e in errors), errors
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.data.tags["job"] for r in runs) == [str(i) for i in range(8)]
    for r in runs:
        assert r.info.status == "FINISHED" and len(r.data.params) == 40
        for key in ("loss", "acc", "job"):
            assert sorted(m.step for m in client.get_metric_history(r.info.run_id, key)) == list(range(points))


def test_sync_rebuilds_a_run_the_store_never_saw(tmp_path, monkeypatch, mlflow_server):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"
    t = Tracker(run_dir, dead, f"sync-{tmp_path.name}", "offline-run", {"mochi.N": 64}, {"cell": "N64"})
    assert t.client is None and not (run_dir / RUN_ID_FILE).exists()
    for step in range(1, 6):
        t.log({"loss": 5.0 - step}, step, epoch=0)
    t.finish()

    run_id = sync(run_dir, mlflow_server)
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert (run_dir / RUN_ID_FILE).read_text() == run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "offline-run"
    assert run.data.params["mochi.N"] == "64" and run.data.tags["cell"] == "N64"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(s, 5.0 - s) for s in range(1, 6)]
    assert run.data.tags["synced_points"] == "5"
    # idempotent: nothing is added twice
    assert sync(run_dir, mlflow_server) == run_id
    assert len(client.get_metric_history(run_id, "loss")) == 5
    assert client.get_run(run_id).data.tags["synced_points"] == "0"
    assert json.loads((run_dir / "tracking.json").read_text())["status"] == "FINISHED"


STARTER = """
import sys, time
from pathlib import Path
from pretrain.run.tracking import Tracker
i, uri, points, root = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
while not (root / "go").exists():  # every process opens the store at the same moment
    time.sleep(0.001)
d = root / f"job{i}"
d.mkdir()
t = Tracker(d, uri, "first-use", f"job{i}", {"p": i}, {"job": str(i)})
for step in range(points):
    t.log({"loss": 1.0 / (step + 1)}, step)
t.finish()
"""


@pytest.mark.parametrize("jobs", [2, 8])
def test_jobs_that_start_together_on_a_new_store_lose_nothing(tmp_path, jobs):
    """The store does not exist yet: the first open is serialised, so no job falls back to its file."""
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    procs = [subprocess.Popen([sys.executable, "-c", STARTER, str(i), uri, "20", str(tmp_path)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for i in range(jobs)]
    time.sleep(3)  # all started and waiting
    (tmp_path / "go").write_text("")
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    assert not any("MLflow unavailable" in e or "logging failed" in e for e in errors), errors
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("first-use").experiment_id])
    assert sorted(r.data.tags["job"] for r in runs) == sorted(str(i) for i in range(jobs))
    for r in runs:
        assert r.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss")) == list(range(20))


HALF = """
import sys
from pathlib import Path
from pretrain.run.errors import UserError
from pretrain.run.tracking import StoreError, Tracker, mlflow_client
uri, run_dir = sys.argv[1], Path(sys.argv[2])
try:
    mlflow_client(uri)
except StoreError as e:
    assert isinstance(e, UserError)
    print("REFUSED", e)
t = Tracker(run_dir, uri, "e", "r", {}, {})  # a job logging to it says so, and keeps its file
print("CLIENT", t.client)
t.log({"loss": 1.0}, 1)
t.finish()
"""


def open_half_made(tmp_path, with_run: bool) -> subprocess.CompletedProcess:
    """Make a store (holding a run or not), leave it as a process killed inside a migration leaves
    one, and run HALF on it in a fresh process (MLflow caches an opened store per process)."""
    import sqlite3

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    if with_run:
        client.create_run("0")
    else:
        client.search_experiments()  # creates the tables
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
        con.execute("CREATE TABLE _alembic_tmp_latest_metrics (x INTEGER)")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    r = subprocess.run([sys.executable, "-c", HALF, uri, str(run_dir)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_a_half_created_store_holding_runs_is_refused_with_how_to_recover(tmp_path):
    r = open_half_made(tmp_path, with_run=True)
    db = tmp_path / "mlflow.db"
    refused = next(ln for ln in r.stdout.splitlines() if ln.startswith("REFUSED"))
    assert "left half-made" in refused and f"mv {db} {db}.broken" in refused and "mlflow db upgrade" in refused
    assert "CLIENT None" in r.stdout and "left half-made" in r.stderr  # the job's warning says why
    assert [rec["step"] for rec in read_metrics(tmp_path / "run")] == [1]


# The child kills itself just before its k-th SQL statement: a kill lands at a known point of the store's
# creation however fast the machine is (creating and migrating a store is ~1700 statements, MLflow 3).
KILL_AT_STATEMENT = """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
k, n = int(sys.argv[2]), [0]
@event.listens_for(Engine, "before_cursor_execute")
def count(*args, **kwargs):
    n[0] += 1
    if n[0] == k:
        os.kill(os.getpid(), signal.SIGKILL)
from pretrain.run.tracking import mlflow_client
mlflow_client(sys.argv[1])
"""


def test_a_store_whose_creator_was_killed_is_made_again(tmp_path):
    """A process killed while creating a store (before its first statement, inside the migrations,
    near their end): the next open sets a half-made file aside if it holds no run, and every later
    run and point lands."""
    for k in (1, 400, 800, 1500):
        db = tmp_path / f"m{k}.db"
        uri = f"sqlite:///{db}"
        proc = subprocess.run([sys.executable, "-c", KILL_AT_STATEMENT, uri, str(k)], cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        run_dir = tmp_path / f"run{k}"
        run_dir.mkdir()
        t = Tracker(run_dir, uri, "e", "r", {}, {})
        assert t.client is not None
        t.log({"loss": 1.0}, 1)
        t.finish()
        assert [m.step for m in MlflowClient(uri).get_metric_history(t.run_id, "loss")] == [1]
    assert list(tmp_path.glob("m*.db.broken-*")), "no kill left a half-made store to set aside"


def test_a_half_created_store_without_runs_is_set_aside_and_made_again(tmp_path):
    r = open_half_made(tmp_path, with_run=False)
    assert "REFUSED" not in r.stdout and "CLIENT None" not in r.stdout and "set aside as" in r.stderr
    assert len(list(tmp_path.glob("mlflow.db.broken-*"))) == 1
    import sqlite3

    run_id = (tmp_path / "run" / RUN_ID_FILE).read_text()
    with sqlite3.connect(tmp_path / "mlflow.db") as con:  # (this process's MLflow still holds the file set aside)
        assert con.execute("SELECT step FROM metrics WHERE run_uuid = ? AND key = 'loss'", (run_id,)).fetchall() \
            == [(1,)]
