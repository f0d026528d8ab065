"""Metrics to a JSON-lines file in the run folder (the source of truth) and to MLflow.

The MLflow run id is kept in the run folder and in every checkpoint, so a restarted or requeued
job continues the same MLflow run instead of opening a new one. If the tracking store is
unreachable, training goes on and the JSON-lines file still holds every point.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from .checkpoint import atomic_write

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
# MLflow's HTTP client retries a dead server for minutes by default (7 retries, backoff 2); a
# training job should notice within seconds and carry on with the JSON-lines file. Users' own
# settings of these variables win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
RUN_ID_FILE = "mlflow_run_id"


def default_uri(out: Path) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store beside the run folders."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(out).resolve().parent / 'mlflow.db'}"


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line cut by a kill mid-write
            continue
    return out


class Tracker:
    """Logs scalars of one run. Only the main rank makes one."""

    def __init__(
        self,
        run_dir: Path,
        uri: str,
        experiment: str,
        run_name: str,
        params: dict,
        tags: dict | None = None,
        run_id: str | None = None,
        resume_step: int | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.client = None
        self.run_id = run_id or self._saved_run_id()
        if resume_step is not None:
            self._truncate(resume_step)
        self._file = open(self.run_dir / METRICS_FILE, "a")
        try:
            self._start_mlflow(uri, experiment, run_name, params, tags or {})
        except Exception as e:  # noqa: BLE001 - any store failure: keep training, keep the file
            log.warning("MLflow unavailable (%s: %s); metrics go to %s only", type(e).__name__, e, METRICS_FILE)
            self.client = None

    def _saved_run_id(self) -> str | None:
        p = self.run_dir / RUN_ID_FILE
        return p.read_text().strip() or None if p.is_file() else None

    def _truncate(self, step: int) -> None:
        """Drop points after ``step``: a resumed run logs them again."""
        keep = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= step]
        atomic_write(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in keep).encode())

    def _start_mlflow(self, uri, experiment, run_name, params, tags) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        client = MlflowClient(tracking_uri=uri)
        if self.run_id is not None:
            client.update_run(self.run_id, status="RUNNING")
        else:
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
            run = client.create_run(exp_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                client.log_batch(self.run_id, params=items[i : i + 100])
            client.log_batch(self.run_id, tags=[RunTag("run_dir", str(self.run_dir.resolve()))])
            atomic_write(self.run_dir / RUN_ID_FILE, self.run_id.encode())
        self.client = client
        log.info("MLflow run %s at %s", self.run_id, uri)

    def log(self, metrics: dict[str, float], step: int, **fields) -> None:
        rec = {"step": step, "time": time.time(), **fields, **metrics}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self.client is None:
            return
        from mlflow.entities import Metric

        ts = int(rec["time"] * 1000)
        points = [Metric(k, float(v), ts, step) for k, v in metrics.items() if math.isfinite(float(v))]
        try:
            self.client.log_batch(self.run_id, metrics=points)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow logging failed (%s); continuing with %s only", e, METRICS_FILE)
            self.client = None

    def log_artifact(self, path: Path) -> None:
        if self.client is None:
            return
        try:
            self.client.log_artifact(self.run_id, str(path))
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow artifact upload failed: %s", e)

    def finish(self, status: str = "FINISHED") -> None:
        self._file.close()
        if self.client is not None:
            try:
                self.client.set_terminated(self.run_id, status=status)
            except Exception as e:  # noqa: BLE001
                log.warning("MLflow could not close the run: %s", e)
