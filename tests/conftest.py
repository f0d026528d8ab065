"""Shared fixtures: a tiny real training config and a real MLflow tracking server on loopback."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pretrain import config

# Real Fashion-MNIST, real ResNet-18 steps, sized for 2 CPU cores: 8 steps per epoch.
TINY = [
    "model.arch=resnet18", "data.image_size=32", "optim.batch_size=32", "moco.K=256", "data.subset=256",
    "optim.epochs=2", "mochi.N=32", "mochi.s=16", "mochi.s_prime=8", "mochi.mix_start=1",
    "data.num_workers=0", "run.log_every=2", "moco.shuffle_bn_groups=2", "eval.every=0",
]


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
