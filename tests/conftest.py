"""Shared fixtures: a tiny real training config and a real MLflow tracking server on loopback; how
the suite is spread over pytest-xdist workers (``make test`` runs it with ``-n``)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from pretrain.run import config

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the machine's cores: each computes on one thread, and so do the commands and
    # jobs it starts (a second thread per process on a busy 2-core machine costs more than it gives).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Real Fashion-MNIST, real ResNet-18 steps, sized for 2 CPU cores: 8 steps per epoch.
TINY = [
    "model.arch=resnet18", "data.image_size=32", "optim.batch_size=32", "moco.K=256", "data.subset=256",
    "optim.epochs=2", "mochi.N=32", "mochi.s=16", "mochi.s_prime=8", "mochi.mix_start=1",
    "data.num_workers=0", "run.log_every=2", "moco.shuffle_bn_groups=2", "eval.every=0",
]


# The longest tests outside the SLURM group (`make test` prints the slowest 25 each run), started
# first in this order.
LONGEST = (
    "tests/pretrain/test_demo_quality.py",
    "tests/pretrain/test_train.py::test_sigkill_at_random_moments",
    # the module grid's three readers, together (its fixture is made once, torn down after the last)
    "tests/ablations/test_grid.py::test_local_grid",
    "tests/ablations/test_grid.py::test_mlflow_ui",
    "tests/ablations/test_grid.py::test_reference_rows",
)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the items
def pytest_collection_modifyitems(config, items):
    """Spread the suite over xdist workers (``--dist loadgroup``): the tests that submit to the one
    SLURM cluster run one after another on one worker (the node has 2 cores: a test waiting for its
    jobs must not wait behind another test's), and the longest tests are handed out first so that no
    worker picks one up at the end while the others idle."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))

    # Only the longest tests move (those that share a module fixture move together): the rest keep
    # pytest's order, so each module's fixtures are made once per worker.
    items.sort(key=lambda item: next((i for i, prefix in enumerate(LONGEST) if item.nodeid.startswith(prefix)),
                                     len(LONGEST)))


PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember whether a test's call passed, for ``_empty_tmp_path_when_passed``."""
    report = yield
    if report.when == "call":
        item.stash[PASSED] = report.passed
    return report


@pytest.fixture(autouse=True)
def _empty_tmp_path_when_passed(request):
    """A passed test's tmp_path is emptied as it ends: the suite writes about 8 GB of checkpoints
    in all, more than a CI machine's free disk may hold. The folder itself stays, so no later test
    gets its name (pytest's own "failed" retention policy frees the name, and a path-keyed cache,
    such as MLflow's store per sqlite URI, then reads a deleted file). Failed tests keep theirs."""
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if path is not None and request.node.stash.get(PASSED, False):
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def tiny_cfg(out: Path, *extra: str) -> config.Config:
    return config.load("demo", overrides=[*TINY, f"run.out={out}", *extra])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.3)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """URI of a real MLflow server: the one .ci/run started (MOCHI_TEST_MLFLOW_URI), else our own."""
    uri = os.environ.get("MOCHI_TEST_MLFLOW_URI")
    if uri:
        wait_http(f"{uri}/health")
        yield uri
        return
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, env=env,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


REPO = Path(__file__).resolve().parent.parent
# A grid small enough for tests: 8 steps of real ResNet-18 training per cell, its end-of-run monitor
# on 500 / 200 images (the demo's 5,000 / 1,000 took 9 of a cell's 21 CPU-s), a 2-epoch probe; the
# preflight is tested on its own (tests/ablations/test_preflight.py), so these grids skip it.
TINY_GRID = [
    "--set", "optim.epochs=1", "--set", "data.subset=256", "--set", "optim.batch_size=32", "--set", "moco.K=256",
    "--set", "mochi.mix_start=0", "--set", "data.num_workers=0", "--set", "run.log_every=2",
    "--set", "moco.shuffle_bn_groups=2", "--set", "eval.knn_train_size=500", "--set", "eval.heldout_size=200",
    "--lincls", "--fast --train-size=500 --test-size=200 --epochs=2",
    "--no-preflight",
]


def grid_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python ablations/grid.py ARGS`` from the repository root, as a user would."""
    return subprocess.run([sys.executable, str(REPO / "ablations" / "grid.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def slurm_conf():
    """SLURM_CONF of a running cluster (.ci/run starts one with slurm/cluster.sh); skip without one."""
    from slurm.launcher import controller_up

    if os.environ.get("SLURM_CONF") and controller_up():
        return os.environ["SLURM_CONF"]
    if os.environ.get("MOCHI_REQUIRE_SLURM"):
        pytest.fail("MOCHI_REQUIRE_SLURM is set but no SLURM controller answers through SLURM_CONF")
    pytest.skip("no SLURM controller answers: start one with `bash slurm/cluster.sh start` and export SLURM_CONF")


def grid_runs(client, grid_dir: Path) -> list:
    """Every MLflow run of the grid in ``grid_dir`` (its parent run and every stage's runs)."""
    grid = json.loads((grid_dir / "grid.json").read_text())
    exp = client.get_experiment_by_name(f"grid-{grid['name']}")
    return client.search_runs([exp.experiment_id], f"tags.grid_id = '{grid['grid_id']}'")
