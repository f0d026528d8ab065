"""Weighted kNN classification on frozen features (InstDisc / DINO's monitor: k=200, T=0.07).

``python -m pretrain.knn RUN_DIR`` evaluates a run's newest checkpoint and, for comparison, the
same backbone randomly initialised; the result is logged to the run's MLflow run.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
import yaml

from . import checkpoint, config, data
from .cli import ArgumentParser, run, setup_logging
from .errors import UserError
from .moco import MoCo, from_config

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


def backbone(model: MoCo) -> nn.Module:
    """The query encoder without its projection head: the network evaluations use."""
    net = copy.deepcopy(model.encoder_q)
    net.fc = nn.Identity()
    return net.eval()


def val_transform(size: int) -> T.Compose:
    """Resize to size * 256 / 224, centre crop: the evaluation view of MoCo's main_lincls."""
    return T.Compose([T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])


class Transformed(torch.utils.data.Dataset):
    """(transform(image), label) over a labelled image dataset."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        img, y = self.base[i]
        return self.transform(img), y


@torch.no_grad()
def features(net: nn.Module, dataset, transform, device, batch_size: int = 256, workers: int = 0):
    """(features [n, D] float32 on the CPU, labels [n]) of a labelled image dataset; net in eval mode."""
    loader = torch.utils.data.DataLoader(Transformed(dataset, transform), batch_size=batch_size, num_workers=workers)
    net.eval().to(device)
    feats, labels = [], []
    for x, y in loader:
        feats.append(net(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


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


def evaluate(net: nn.Module, cfg: config.Config, device, train_size: int = 0, test_size: int = 0, k: int = 200,
             T: float = 0.07) -> float:
    """kNN top-1 (%) of ``net`` on the run's data: memory = train split, queries = test split."""
    train = data.base_dataset(cfg.data, "train")
    test = data.base_dataset(cfg.data, "test")
    num_classes = len(test.classes)
    if train_size:
        train = torch.utils.data.Subset(train, range(min(train_size, len(train))))
    if test_size:
        test = torch.utils.data.Subset(test, range(min(test_size, len(test))))
    return top1(net, train, test, num_classes, cfg.data.image_size, device, k, T)


def run_state(run_dir: Path) -> tuple[config.Config, dict]:
    """A run folder's saved config and its newest valid checkpoint."""
    cfg_file = Path(run_dir) / "config.yaml"
    if not cfg_file.is_file():
        raise UserError(f"{run_dir} is not a pretraining run folder (no config.yaml)")
    cfg = config.from_dict(yaml.safe_load(cfg_file.read_text()))
    state, _ = checkpoint.load_latest(Path(run_dir) / "checkpoints")
    if state is None:
        raise UserError(f"{run_dir} has no valid checkpoint")
    return cfg, state


def load_run(run_dir: Path) -> tuple[config.Config, MoCo]:
    """A run's saved config and its model at the newest valid checkpoint."""
    cfg, state = run_state(run_dir)
    model = from_config(cfg)
    model.load_state_dict(state["model"])
    return cfg, model


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m pretrain.knn", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a pretraining run folder (run.out)")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--train-size", type=int, default=10000, help="memory-bank images (0 = the whole split)")
    p.add_argument("--test-size", type=int, default=2000, help="query images (0 = the whole split)")
    p.add_argument("--no-baseline", action="store_true", help="skip the randomly initialised backbone")
    args = p.parse_args(argv)
    if args.k <= 0 or args.temperature <= 0 or args.train_size < 0 or args.test_size < 0:
        raise UserError("--k and --temperature must be > 0, sizes >= 0")
    setup_logging()
    run_dir = Path(args.run_dir)
    cfg, model = load_run(run_dir)
    cfg.data.subset = 0  # the memory bank is drawn from the whole split, not the pretraining subset
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kw = dict(train_size=args.train_size, test_size=args.test_size, k=args.k, T=args.temperature)
    result = {"knn_top1": evaluate(backbone(model), cfg, device, **kw)}
    if not args.no_baseline:
        torch.manual_seed(cfg.run.seed)
        fresh = from_config(cfg)
        result["knn_top1_random_init"] = evaluate(backbone(fresh), cfg, device, **kw)
    print(json.dumps(result))
    for name, v in result.items():
        print(f"{name}: {v:.2f}%")
    checkpoint.atomic_write(run_dir / "knn.json", json.dumps({**result, **kw}).encode())
    run_id_file = run_dir / "mlflow_run_id"
    if run_id_file.is_file():
        from .tracking import default_uri

        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(cfg.run.tracking_uri or default_uri(run_dir))
            for name, v in result.items():
                client.log_metric(run_id_file.read_text().strip(), name, v)
        except Exception as e:  # noqa: BLE001 - knn.json keeps the result
            log.warning("could not log to MLflow: %s", e)
    return 0


if __name__ == "__main__":
    run(main)
