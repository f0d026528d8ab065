"""pretrain.tracking: many concurrent jobs on one store lose nothing; sync rebuilds what a down store missed."""

import json
import subprocess
import sys

from mlflow.tracking import MlflowClient

from pretrain.run.tracking import RUN_ID_FILE, Tracker, sync
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
