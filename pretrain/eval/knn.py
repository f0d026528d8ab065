"""Weighted kNN classification on frozen features (InstDisc / DINO's monitor: k=200, T=0.07).

``run`` evaluates a source (a run folder's newest checkpoint, this project's checkpoint, or a
MoCo-format one, as every evaluation takes) and, for comparison, the random backbone it pairs with;
the result goes to ``knn.json`` in the source's run folder and to its MLflow run. The command is
``mochi-knn SOURCE`` (``pretrain/knn.py``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..input import data
from ..run import checkpoint, rundir
from ..run.tracking import default_uri, mlflow_client
from .backbone import baseline_backbone, evaluated_on, features, load_backbone, read_source, val_transform

log = logging.getLogger(__name__)


def knn_predict(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    num_classes: int,
    k: int = 200,
    T: float = 0.07,
    chunk: int = 512,
) -> torch.Tensor:
    """Class scores [n_test, C]: sum over the k nearest training points of exp(cos / T).

    train_f: [n, D] and test_f: [m, D], both L2-normalised; train_y: [n] int64.
    """
    k = min(k, train_f.shape[0])
    out = []
    for start in range(0, test_f.shape[0], chunk):
        sim = test_f[start : start + chunk] @ train_f.T  # [c, n]
        top_sim, top_idx = sim.topk(k, dim=1)
        w = (top_sim / T).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=w.dtype, device=w.device)
        votes.scatter_add_(1, train_y[top_idx], w)
        out.append(votes)
    return torch.cat(out)


def extract(net: nn.Module, dataset, image_size: int, device, workers: int = 0):
    """(L2-normalised centre-crop features [n, D], labels [n]): what kNN compares."""
    f, y = features(net, dataset, val_transform(image_size), device, workers=workers)
    return F.normalize(f, dim=1), y


def top1(net: nn.Module, memory, queries, num_classes: int, image_size: int, device, k: int = 200,
         T: float = 0.07) -> float:
    """kNN top-1 (%) of ``net``: labelled ``memory`` images vote for each of the ``queries``."""
    mf, my = extract(net, memory, image_size, device)
    qf, qy = extract(net, queries, image_size, device)
    pred = knn_predict(mf, my, qf, num_classes, k, T).argmax(dim=1)
    return 100.0 * (pred == qy).float().mean().item()


def evaluate(net: nn.Module, data_cfg, device, train_size: int = 0, test_size: int = 0, k: int = 200,
             T: float = 0.07) -> float:
    """kNN top-1 (%) of ``net`` on a run's data (``cfg.data``): memory = train split, queries = test
    split, each cut to its first ``*_size`` images (0 = all)."""
    train = data.base_dataset(data_cfg, "train")
    test = data.base_dataset(data_cfg, "test")
    num_classes = len(test.classes)
    if train_size:
        train = torch.utils.data.Subset(train, range(min(train_size, len(train))))
    if test_size:
        test = torch.utils.data.Subset(test, range(min(test_size, len(test))))
    return top1(net, train, test, num_classes, data_cfg.image_size, device, k, T)


def run(source: str | Path, k: int = 200, T: float = 0.07, train_size: int = 10000, test_size: int = 2000,
        baseline: bool = True, *, arch: str | None = None, small_stem: bool = False, dataset: str | None = None,
        data_path: str | None = None, class_list: str | None = None, image_size: int | None = None) -> dict:
    """kNN top-1 of a source's query backbone (a run folder's newest checkpoint, this project's
    checkpoint, or a MoCo-format one) and, with ``baseline``, of the random backbone it pairs with (a
    run's own initialisation); writes ``knn.json`` in the source's run folder and logs to its MLflow
    run where it has one."""
    sd, cfg, run_id = read_source(source)
    data_cfg, arch, small_stem = evaluated_on(cfg, arch, small_stem, dataset, data_path, class_list, image_size)
    backbone = load_backbone(sd, arch, small_stem)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kw = dict(train_size=train_size, test_size=test_size, k=k, T=T)
    result = {"knn_top1": evaluate(backbone, data_cfg, device, **kw)}
    if baseline:
        seed = cfg.run.seed if cfg is not None else 0
        result["knn_top1_random_init"] = evaluate(baseline_backbone(cfg, arch, small_stem, seed), data_cfg, device,
                                                  **kw)
    home = rundir.run_home(source)
    checkpoint.atomic_write(home / rundir.KNN_FILE, json.dumps({**result, **kw}).encode())
    run_id_file = home / rundir.RUN_ID_FILE
    run_id = run_id_file.read_text().strip() if run_id_file.is_file() else run_id
    if run_id and cfg is not None:
        try:
            client = mlflow_client(cfg.run.tracking_uri or default_uri(home))
            for name, v in result.items():
                client.log_metric(run_id, name, v)
        except Exception as e:  # noqa: BLE001 - knn.json keeps the result
            log.warning("could not log to MLflow: %s", e)
    return result
