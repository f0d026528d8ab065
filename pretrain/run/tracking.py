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
import random
import subprocess
import time
from pathlib import Path

from .checkpoint import atomic_write, final_summary
from .errors import UserError
from .rundir import CHECKPOINTS, METRICS_FILE, RUN_ID_FILE, SUMMARY_FILE, TRACKING_FILE

log = logging.getLogger(__name__)
# The ``stage`` tag of each kind of run; a grid's tables pick their columns by it.
PRETRAIN, LINCLS, GRID, PREFLIGHT = "pretrain", "lincls", "grid", "preflight"
# MLflow's HTTP client retries a dead server for minutes by default (7 retries, backoff 2); a
# training job should notice within seconds and carry on with the JSON-lines file. Users' own
# settings of these variables win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
NOT_METRICS = {"step", "time", "epoch"}
# A shared sqlite store answers "database is locked" while another job writes; such calls are
# retried for up to this long before the tracker falls back to the JSON-lines file.
LOCK_RETRY_S = float(os.environ.get("MOCHI_MLFLOW_LOCK_RETRY_S", "120"))


def retry_locked(fn, *args, **kwargs):
    """Call ``fn``; retry with jittered back-off while the store reports a lock."""
    deadline = time.monotonic() + LOCK_RETRY_S
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - MlflowException wraps sqlalchemy's OperationalError
            text = str(e).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)


class StoreError(UserError):
    """An MLflow store that cannot be used as it is (a sqlite file a crash left half-created)."""


_READY: set[str] = set()  # stores this process has opened (and, for sqlite, created) already


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def mlflow_client(uri: str):
    """An MlflowClient bound to ``uri``, its store created first if it is a new sqlite file.

    MLflow creates a sqlite store's tables (and runs its migrations) on first open with no lock
    between processes: jobs that start together on a new store corrupt it. Here the first open
    holds an exclusive file lock beside the store, so one process creates it and the others find it
    made. A store that cannot be opened (its creator was killed half-way) is set aside and made
    again if it holds no run; one that holds runs is refused with one line saying how to recover
    (``StoreError``). Neither is ever used as it is.
    """
    from mlflow.tracking import MlflowClient

    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    path = _sqlite_path(uri)
    if path is None or uri in _READY:
        return MlflowClient(tracking_uri=uri)
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".init-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            c = _open(uri)
        except Exception as e:  # noqa: BLE001 - MlflowException or sqlalchemy's OperationalError
            # The lock is ours, so whoever was making the store is gone: killed while making it. A
            # store that holds no run loses nothing when it is set aside and made again.
            if _is_lock_error(e) or not path.is_file():
                raise
            if _runs_in(path) != 0:
                raise StoreError(
                    f"the MLflow store {path} holds runs but cannot be opened: left half-made by a process "
                    f"killed while creating or migrating it, or made by an older MLflow "
                    f"({' '.join(str(e).split())[:120]}); if an older MLflow made it: mlflow db upgrade {uri}; "
                    f"else move it aside (mv {path} {path}.broken) and run again: every run folder keeps its "
                    f"points in {METRICS_FILE}, and mochi-tables syncs a grid's runs into the new "
                    f"store") from None
            aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("-journal", "-wal", "-shm"):  # a hot journal must not meet the new file
                if path.with_name(path.name + suffix).exists():
                    os.replace(path.with_name(path.name + suffix), aside.with_name(aside.name + suffix))
            os.replace(path, aside)
            _forget_engine(uri)
            log.warning("the MLflow store %s could not be opened (%s) and holds no run: left half-made by a process "
                        "killed while creating it; set aside as %s and made again", path,
                        " ".join(str(e).split())[:120], aside.name)
            c = _open(uri)
    _READY.add(uri)
    return c


def _is_lock_error(e: Exception) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def _open(uri: str):
    """Open (creating it if new) the store at ``uri``."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    retry_locked(c.search_experiments, max_results=1)  # opens the store: creates or checks its tables
    return c


def _forget_engine(uri: str) -> None:
    """Drop this process's pooled connections to the store file just set aside (MLflow keeps one
    engine per store URI), so the next open makes the new file."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
    if engine is not None:
        engine.dispose()


def _runs_in(path: Path) -> int | None:
    """How many runs a sqlite store holds: 0 if it has no runs table yet, None if it cannot be
    read (not a sqlite file, locked): such a file is never set aside."""
    import sqlite3

    try:
        con = sqlite3.connect(path, timeout=30)  # read-write: a hot journal is rolled back first
    except sqlite3.Error:
        return None
    try:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]
    except sqlite3.Error as e:
        return 0 if "no such table" in str(e) else None
    finally:
        con.close()


# The UI opens an experiment of this kind on its runs (MLflow 3 opens one of no kind on GenAI traces).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
ARTIFACTS_DIR = "mlartifacts"  # beside a sqlite store: where its experiments keep their artifacts


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of the store at ``uri`` keeps its artifacts: beside a sqlite file (so
    they move with it, not into the folder a command ran in); None for a server, which decides."""
    path = _sqlite_path(uri)
    return None if path is None else (Path(path).resolve().parent / ARTIFACTS_DIR).as_uri()


def log_files(client, run_id: str, paths, folder: str | None = None) -> None:
    """Attach files to run ``run_id`` (a run's config, a grid's tables and figures), each under
    ``folder``; a file the store refuses costs a warning, never the stage."""
    for path in paths:
        try:
            retry_locked(client.log_artifact, run_id, str(path), folder)
        except Exception as e:  # noqa: BLE001 - the file stays on disk whatever the store does
            log.warning("could not attach %s to MLflow run %s (%s)", path, run_id, e)


def experiment_id(client, name: str) -> str:
    """The id of MLflow experiment ``name``, created if missing (or read back if a concurrent job
    created it first), of the kind whose UI opens on its runs, its artifacts beside a sqlite store."""
    exp = retry_locked(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return retry_locked(client.create_experiment, name, artifact_location=artifact_location(
            client.tracking_uri), tags=EXPERIMENT_KIND)
    except Exception:  # noqa: BLE001 - RESOURCE_ALREADY_EXISTS from a race
        exp = retry_locked(client.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def transfer_stage(data: str) -> str:
    """The ``stage`` tag of a transfer trial on ``voc`` or ``coco`` data."""
    return f"transfer-{data}"


def unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why an MLflow tracking server at ``uri`` (http or https) does not answer its health check from
    this host, in a few words ("Connection refused"), or None where it answers or the store is not a
    server (a SQLite file is opened, not reached). One try, no retries: a quick question, asked
    before anything is submitted."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answers (a proxy's or an older server's error page): the jobs will say more
    except OSError as e:  # URLError and timeouts among them
        reason = getattr(e, "reason", e)
        return getattr(reason, "strerror", None) or str(reason)


def default_uri(out: Path) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store beside the run folder ``out``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(out).resolve().parent / 'mlflow.db'}"


def git_commit() -> str:
    """The commit of this checkout, for a run's ``git_commit`` tag ("unknown" outside git)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of a folder's ``metrics.jsonl`` (a line cut by a kill is skipped)."""
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


def open_run(run_dir: Path, *, uri: str, experiment: str, name: str, stage: str, params: dict,
             tags: dict[str, str] | None = None, parent: str | None = None, run_id: str | None = None,
             resume_step: int | None = None) -> "Tracker":
    """The one way a stage opens its tracked run in ``run_dir``: the MLflow run the folder already
    logs to (or ``run_id``), else a new one in ``experiment`` at ``uri``, named ``name``; tagged with
    its stage, the git commit and ``tags``, a child of ``parent`` if given. ``resume_step``: the
    step the stage resumes from (points after it are logged again, each once)."""
    tags = {"stage": stage, "git_commit": git_commit(), **(tags or {})}
    if parent:
        tags["mlflow.parentRunId"] = parent
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return Tracker(run_dir, uri, experiment, name, params, tags, run_id, resume_step)


class Tracker:
    """Logs scalars of one run. Only the main rank makes one (through ``open_run``)."""

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
        continued = self.run_id is not None
        if resume_step is not None:
            self._truncate(resume_step)
        # Steps replayed after a resume reproduce the same values, and MLflow cannot delete points:
        # the (metric, step) pairs the store already holds are not sent again. They are read from
        # the store itself: the file cannot say, since a kill after an earlier resume had cut it
        # may have come before those points were logged again.
        self._in_mlflow: dict[str, set[int]] = {}
        self._meta = {"uri": uri, "experiment": experiment, "run_name": run_name, "tags": tags or {},
                      "params": {k: str(v) for k, v in params.items()}, "status": "RUNNING"}
        self._write_meta()
        self._file = open(self.run_dir / METRICS_FILE, "a")
        try:
            self._start_mlflow(uri, experiment, run_name, params, tags or {})
            if continued:
                keys = retry_locked(self.client.get_run, self.run_id).data.metrics
                self._in_mlflow = {k: {m.step for m in retry_locked(self.client.get_metric_history, self.run_id, k)}
                                   for k in keys}
        except Exception as e:  # noqa: BLE001 - any store failure: keep training, keep the file
            log.warning("MLflow unavailable (%s: %s); metrics go to %s only", type(e).__name__, e, METRICS_FILE)
            self.client = None

    def _write_meta(self) -> None:
        atomic_write(self.run_dir / TRACKING_FILE, json.dumps(self._meta, indent=1).encode())

    def _saved_run_id(self) -> str | None:
        p = self.run_dir / RUN_ID_FILE
        return p.read_text().strip() or None if p.is_file() else None

    def _truncate(self, step: int) -> None:
        """Drop points after ``step`` from the file (a resumed run logs them again)."""
        keep = [r for r in read_metrics(self.run_dir) if r.get("step", 0) <= step]
        atomic_write(self.run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in keep).encode())

    def _start_mlflow(self, uri, experiment, run_name, params, tags) -> None:
        from mlflow.entities import Param, RunTag

        client = mlflow_client(uri)
        tags = {**tags, "run_dir": str(self.run_dir.resolve())}
        if self.run_id is not None:
            retry_locked(client.update_run, self.run_id, status="RUNNING")
            retry_locked(client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        else:
            exp_id = experiment_id(client, experiment)
            run = retry_locked(client.create_run, exp_id, run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
            atomic_write(self.run_dir / RUN_ID_FILE, self.run_id.encode())
            items = [Param(k, str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                retry_locked(client.log_batch, self.run_id, params=items[i : i + 100])
        self.client = client
        log.info("MLflow run %s at %s", self.run_id, uri)

    def log_artifacts(self, *paths: Path, folder: str | None = None) -> None:
        """Attach files to the run (``log_files``)."""
        if self.client is not None:
            log_files(self.client, self.run_id, paths, folder)

    def log(self, metrics: dict[str, float], step: int, **fields) -> None:
        rec = {"step": step, "time": time.time(), **fields, **metrics}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self.client is None:
            return
        from mlflow.entities import Metric

        ts = int(rec["time"] * 1000)
        points = [Metric(k, float(v), ts, step) for k, v in metrics.items()
                  if math.isfinite(float(v)) and step not in self._in_mlflow.get(k, ())]
        if not points:
            return
        try:
            retry_locked(self.client.log_batch, self.run_id, metrics=points)
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow logging failed (%s); continuing with %s only", e, METRICS_FILE)
            self.client = None

    def log_artifact(self, path: Path) -> None:
        if self.client is None:
            return
        try:
            retry_locked(self.client.log_artifact, self.run_id, str(path))
        except Exception as e:  # noqa: BLE001
            log.warning("MLflow artifact upload failed: %s", e)

    def finish(self, status: str = "FINISHED") -> None:
        self._file.close()
        self._meta["status"] = status
        self._write_meta()
        if self.client is not None:
            try:
                retry_locked(self.client.set_terminated, self.run_id, status=status)
            except Exception as e:  # noqa: BLE001
                log.warning("MLflow could not close the run: %s", e)


def close(run_dir: Path, status: str) -> None:
    """Record a folder's final ``status`` in its tracking.json and carry it, with any points the
    store lacks, into MLflow (a store that is down gets it at the next ``sync``)."""
    f = Path(run_dir) / TRACKING_FILE
    if not f.is_file():
        return
    meta = json.loads(f.read_text())
    atomic_write(f, json.dumps({**meta, "status": status}, indent=1).encode())
    try:
        sync(run_dir)
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001
        log.warning("MLflow could not close the run of %s now (%s); the next sync will", run_dir, e)


def sync(run_dir: Path, uri: str | None = None) -> str:
    """Make the MLflow store hold everything ``run_dir`` holds; return the run id.

    Creates the run (with its tags and params) if the store never saw it, adds every point of
    ``metrics.jsonl`` the store lacks (matched by metric and step) and sets the final status.
    Idempotent: a second call logs nothing.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / TRACKING_FILE).read_text())
    client = mlflow_client(uri or meta["uri"])
    run_id = (run_dir / RUN_ID_FILE).read_text().strip() if (run_dir / RUN_ID_FILE).is_file() else ""
    try:
        run = retry_locked(client.get_run, run_id) if run_id else None
    except MlflowException:
        run = None
    if run is None:
        exp_id = experiment_id(client, meta["experiment"])
        tags = {**meta["tags"], "run_dir": str(run_dir.resolve())}
        run_id = retry_locked(client.create_run, exp_id, run_name=meta["run_name"], tags=tags).info.run_id
        atomic_write(run_dir / RUN_ID_FILE, run_id.encode())
        items = [Param(k, v[:6000]) for k, v in meta["params"].items()]
        for i in range(0, len(items), 100):
            retry_locked(client.log_batch, run_id, params=items[i : i + 100])
        log.info("created MLflow run %s for %s", run_id, run_dir)
        run = retry_locked(client.get_run, run_id)
    records = read_metrics(run_dir)
    keys = {k for r in records for k in r if k not in NOT_METRICS}
    have = {k: {m.step for m in retry_locked(client.get_metric_history, run_id, k)} for k in keys}
    missing = [
        Metric(k, float(v), int(r["time"] * 1000), r["step"])
        for r in records for k, v in r.items()
        if k not in NOT_METRICS and r["step"] not in have[k] and math.isfinite(float(v))
    ]
    for i in range(0, len(missing), 500):
        retry_locked(client.log_batch, run_id, metrics=missing[i : i + 500])
    if missing:
        log.info("added %d missing metric points to MLflow run %s", len(missing), run_id)
    if meta.get("status") in ("FINISHED", "FAILED", "KILLED") and run.info.status != meta["status"]:
        retry_locked(client.set_terminated, run_id, status=meta["status"])
    retry_locked(client.log_batch, run_id, tags=[RunTag("synced_points", str(len(missing)))])
    return run_id


def finalize(out: Path) -> dict | None:
    """The summary of a complete run (None if it is not complete). A kill between the final
    checkpoint, which carries the summary, and summary.json leaves the run done but unsettled: its
    MLflow run is closed FINISHED and summary.json written here, from the checkpoint."""
    out = Path(out)
    if (out / SUMMARY_FILE).is_file():
        return json.loads((out / SUMMARY_FILE).read_text())
    summary = final_summary(out / CHECKPOINTS)
    if summary is not None:
        close(out, "FINISHED")
        atomic_write(out / SUMMARY_FILE, json.dumps(summary).encode())
        log.info("%s: final checkpoint found without its summary; run closed and summary written", out)
    return summary
