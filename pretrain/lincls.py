"""Linear classification on a frozen backbone, following MoCo's main_lincls.py.

``python -m pretrain.lincls SOURCE`` where SOURCE is a pretraining run folder, one of this
project's checkpoints, or a checkpoint in MoCo's format (``state_dict`` with
``module.encoder_q.*`` keys, as the MoCo and MoCHi releases ship them).

Protocol: the query encoder without its head, BN frozen (eval mode), a new fc with N(0, 0.01)
weights is the only thing trained; SGD momentum 0.9, weight decay 0, batch 256; train views
RandomResizedCrop + flip, validation Resize + CenterCrop. Top-1/top-5 are reported for the best
and the last epoch; the tables use the best epoch, as MoCo's main_lincls.py reports.

``--fast`` extracts centre-crop features once, caches them, and trains the classifier on the
cache: a cheaper, weaker protocol for sweeps, labelled "fast" wherever its numbers appear.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T

from . import checkpoint, config, data
from .cli import ArgumentParser, run, setup_logging
from .errors import UserError
from .knn import Transformed, features, run_state, val_transform
from .models import resnet
from .tracking import Tracker, default_uri

log = logging.getLogger(__name__)

PRESETS = {
    # MoCo main_lincls.py defaults for ImageNet-1K.
    "imagenet1k": dict(lr=30.0, epochs=100, milestones=(60, 80), gamma=0.1, batch_size=256),
    # CMC's eval_moco_ins.py schedule for ImageNet-100.
    "imagenet100": dict(lr=10.0, epochs=60, milestones=(30, 40, 50), gamma=0.2, batch_size=256),
    # CPU-sized, for the Fashion-MNIST demo.
    "demo": dict(lr=10.0, epochs=30, milestones=(20, 25), gamma=0.1, batch_size=256),
}


# ---------------------------------------------------------------------------------------------
# Loading backbones
def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"refusing {path}: it cannot be loaded without executing pickled code "
            f"(torch.load weights_only=True: {first[:200]}); re-save its state_dict with plain tensors"
        ) from None


def read_source(source: str) -> tuple[dict[str, torch.Tensor], config.Config | None, str | None]:
    """(query-encoder state dict without the ``encoder_q.`` prefix, run config or None, MLflow run id).

    Accepts a run folder, this project's checkpoint file, or a MoCo-format checkpoint.
    """
    path = Path(source)
    cfg, run_id = None, None
    if path.is_dir():
        cfg, state = run_state(path)
        sd, run_id = state["model"], state.get("mlflow_run_id")
    elif path.is_file():
        state = _torch_load(path)
        if not isinstance(state, dict):
            raise UserError(f"{path} holds a {type(state).__name__}, not a checkpoint dictionary")
        if "model" in state and "config" in state:  # this project's
            sd, cfg, run_id = state["model"], config.from_dict(state["config"]), state.get("mlflow_run_id")
        elif "state_dict" in state:  # MoCo's format
            sd = state["state_dict"]
        else:
            sd = state
    else:
        raise UserError(f"{source}: no such file or folder")
    for prefix in ("module.encoder_q.", "encoder_q."):
        picked = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if picked:
            return picked, cfg, run_id
    example = next(iter(sd), "none")
    raise UserError(f"{source}: no query-encoder weights (keys module.encoder_q.* or encoder_q.*; first key: {example})")


SETTINGS_FILE = "settings.json"


def run_home(source: str | Path) -> Path:
    """The run folder a source belongs to: itself if a folder, RUN for RUN/checkpoints/x.pt, else
    the file's folder. Outputs derived from a source (probes, transfer) are written under it."""
    src = Path(source)
    if src.is_dir():
        return src
    return src.parent.parent if src.parent.name == "checkpoints" else src.parent


def load_backbone(sd: dict[str, torch.Tensor], arch: str, small_stem: bool) -> nn.Module:
    """A torchvision ResNet holding the given weights, its fc replaced by Identity.

    Raises UserError naming missing and unexpected keys (the head's ``fc.*`` is ignored).
    """
    net = resnet(arch, 1000, small_stem)
    net.fc = nn.Identity()
    mine = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(mine))
    unexpected = sorted(set(mine) - set(expected))
    wrong = sorted(k for k in set(mine) & set(expected) if mine[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {name} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        raise UserError(f"checkpoint does not fit a {arch}{' with small stem' if small_stem else ''}: {'; '.join(parts)}")
    net.load_state_dict(mine)
    return net


# ---------------------------------------------------------------------------------------------
# Training the classifier
def accuracy(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> list[float]:
    """Top-k accuracies (%) for each k."""
    top = logits.topk(max(ks), dim=1).indices
    hit = top == y[:, None]
    return [100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks]


def train_transform(size: int) -> T.Compose:
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])


@dataclasses.dataclass
class Setting:
    lr: float
    epochs: int
    milestones: tuple[int, ...]
    gamma: float
    batch_size: int
    image_size: int
    fast: bool
    seed: int = 0
    workers: int = 4


def lr_at(s: Setting, epoch: int) -> float:
    return s.lr * s.gamma ** sum(epoch >= m for m in s.milestones)


def linear_probe(backbone: nn.Module, train_ds, val_ds, num_classes: int, s: Setting, out: Path, device,
                 tracker: Tracker | None = None, state: dict | None = None) -> dict:
    """Train the linear classifier and return the result record.

    Checkpoints go to ``out/checkpoints`` each epoch; ``state`` is the newest one to resume from.
    """
    # Frozen first: a forward in train mode would move the BN running statistics.
    backbone.to(device).eval()
    for p in backbone.parameters():
        p.requires_grad = False
    with torch.no_grad():
        feat_dim = backbone(torch.zeros(2, 3, s.image_size, s.image_size, device=device)).shape[1]
    fc = nn.Linear(feat_dim, num_classes)
    torch.manual_seed(s.seed)
    fc.weight.data.normal_(mean=0.0, std=0.01)
    fc.bias.data.zero_()
    fc.to(device)
    opt = torch.optim.SGD(fc.parameters(), lr=s.lr, momentum=0.9, weight_decay=0.0)
    history: list[dict] = []
    start = 0
    if state is not None:
        fc.load_state_dict(state["fc"])
        opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"], state["history"]
        log.info("resuming the linear probe at epoch %d", start)

    if s.fast:
        out.mkdir(parents=True, exist_ok=True)
        cache = out / "features.pt"
        cached = torch.load(cache, weights_only=True) if cache.is_file() else None
        if cached is None:
            tr = features(backbone, train_ds, val_transform(s.image_size), device, workers=s.workers)
            va = features(backbone, val_ds, val_transform(s.image_size), device, workers=s.workers)
            cached = {"train": tr, "val": va}
            checkpoint.atomic_torch_save(cache, cached)
        (xtr, ytr), (xva, yva) = cached["train"], cached["val"]

    for epoch in range(start, s.epochs):
        lr = lr_at(s, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        gen = torch.Generator().manual_seed(data.sample_seed(s.seed, epoch))
        if s.fast:
            perm = torch.randperm(len(xtr), generator=gen)
            batches = [(xtr[i].to(device), ytr[i].to(device)) for i in perm.split(s.batch_size)]
        else:
            loader = torch.utils.data.DataLoader(
                Transformed(train_ds, train_transform(s.image_size)), batch_size=s.batch_size, shuffle=True,
                generator=gen, num_workers=s.workers, drop_last=False,
            )
            batches = ((x.to(device), y.to(device)) for x, y in loader)
        fc.train()
        total, n = 0.0, 0
        for x, y in batches:
            if not s.fast:
                with torch.no_grad():
                    x = backbone(x).float()
            loss = F.cross_entropy(fc(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(y), n + len(y)
        fc.eval()
        with torch.no_grad():
            if s.fast:
                logits, yv = fc(xva.to(device)).cpu(), yva
            else:
                fv, yv = features(backbone, val_ds, val_transform(s.image_size), device, workers=s.workers)
                logits = fc(fv.to(device)).cpu()
        top1, top5 = accuracy(logits, yv, (1, min(5, num_classes)))
        rec = {"epoch": epoch, "lr": lr, "train_loss": total / max(n, 1), "top1": top1, "top5": top5}
        history.append(rec)
        if tracker is not None:
            tracker.log({k: v for k, v in rec.items() if k != "epoch"}, epoch + 1, epoch=epoch)
        log.info("lincls epoch %d lr %.4g loss %.4f top1 %.2f top5 %.2f", epoch, lr, rec["train_loss"], top1, top5)
        checkpoint.save(out / "checkpoints", epoch + 1,
                        {"fc": fc.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1, "history": history},
                        keep=2)
    best = max(history, key=lambda r: r["top1"])
    last = history[-1]
    return {
        "mode": "fast" if s.fast else "full",
        "top1_best": best["top1"], "top5_best": best["top5"], "best_epoch": best["epoch"],
        "top1_last": last["top1"], "top5_last": last["top5"], "epochs": s.epochs,
        "tables_use": "best",
    }


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m pretrain.lincls", description=__doc__.splitlines()[0])
    p.add_argument("source", help="a run folder, this project's checkpoint, or a MoCo-format checkpoint")
    p.add_argument("--preset", choices=sorted(PRESETS), help="schedule (default: the run's data: demo for "
                   "fashion-mnist, imagenet1k otherwise)")
    p.add_argument("--fast", action="store_true", help="train on cached centre-crop features (labelled 'fast')")
    p.add_argument("--arch", help="architecture of a MoCo-format checkpoint (default resnet50)")
    p.add_argument("--small-stem", action="store_true", help="the checkpoint uses the small-image stem")
    p.add_argument("--data", choices=["imagefolder", "fashion-mnist"], help="dataset (default: the run's)")
    p.add_argument("--data-path", help="dataset root (ImageNet root with train/ and val/)")
    p.add_argument("--class-list", help="class list file (e.g. imagenet100.txt)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--milestones", help="comma list of epochs where lr is multiplied by --gamma")
    p.add_argument("--gamma", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--train-size", type=int, default=0, help="use the first n training images (0 = all)")
    p.add_argument("--val-size", type=int, default=0, help="use the first n validation images (0 = all)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data-loading processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-init", action="store_true",
                   help="baseline: the same architecture randomly initialised (SOURCE gives arch and data only)")
    p.add_argument("--out", help="output folder (default: SOURCE_RUN/lincls-MODE[-random-init])")
    p.add_argument("--parent-run", help="MLflow parent run id (default: the source run's pretraining run)")
    p.add_argument("--run-name", help="MLflow run name (default: lincls-MODE_SOURCE)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow tag (repeatable)")
    args = p.parse_args(argv)
    extra_tags = {}
    for t in args.tag:
        k, eq, v = t.partition("=")
        if not eq or not k:
            raise UserError(f"--tag {t!r} is not of the form KEY=VALUE")
        extra_tags[k] = v
    setup_logging()

    sd, cfg, parent_id = read_source(args.source)
    src = Path(args.source)
    data_cfg = dataclasses.replace(cfg.data, subset=0) if cfg else config.DataCfg()
    if args.data:
        data_cfg.dataset = args.data
    if args.data_path:
        data_cfg.path = args.data_path
    if args.class_list:
        data_cfg.class_list = args.class_list
    if args.image_size:
        data_cfg.image_size = args.image_size
    arch = args.arch or (cfg.model.arch if cfg else "resnet50")
    small_stem = args.small_stem or (cfg.model.small_stem if cfg else False)
    preset = args.preset or ("demo" if data_cfg.dataset == "fashion-mnist" else
                             "imagenet100" if data_cfg.class_list else "imagenet1k")
    pre = PRESETS[preset]
    milestones = tuple(int(m) for m in args.milestones.split(",")) if args.milestones else pre["milestones"]
    s = Setting(
        lr=args.lr or pre["lr"], epochs=args.epochs or pre["epochs"], milestones=milestones,
        gamma=args.gamma or pre["gamma"], batch_size=args.batch_size or pre["batch_size"],
        image_size=data_cfg.image_size, fast=args.fast, seed=args.seed, workers=args.workers,
    )
    if s.lr <= 0 or s.epochs <= 0 or s.batch_size <= 0 or not 0 < s.gamma <= 1 or args.workers < 0:
        raise UserError("--lr, --epochs and --batch-size must be > 0, --gamma in (0, 1], --workers >= 0")

    if args.random_init:
        torch.manual_seed(args.seed)
        backbone = resnet(arch, 1000, small_stem)
        backbone.fc = nn.Identity()
    else:
        backbone = load_backbone(sd, arch, small_stem)
    train_ds = data.base_dataset(data_cfg, "train")
    val_ds = data.base_dataset(data_cfg, "test")
    num_classes = len(val_ds.classes)
    if args.train_size:
        train_ds = torch.utils.data.Subset(train_ds, range(min(args.train_size, len(train_ds))))
    if args.val_size:
        val_ds = torch.utils.data.Subset(val_ds, range(min(args.val_size, len(val_ds))))

    mode = "fast" if s.fast else "full"
    suffix = "-random-init" if args.random_init else ""
    home = run_home(src)
    out = Path(args.out) if args.out else home / f"lincls-{mode}{suffix}"
    # A folder holds one probe: resuming it (or extending its epochs) is fine, reusing it with other
    # settings would mix two probes in one history.
    settings = {**{k: v for k, v in dataclasses.asdict(s).items() if k not in ("workers", "epochs")}, "milestones": list(milestones),
                "preset": preset, "arch": arch, "small_stem": small_stem, "dataset": data_cfg.dataset,
                "data_path": data_cfg.path, "class_list": data_cfg.class_list, "train_size": args.train_size,
                "val_size": args.val_size, "random_init": args.random_init, "source": str(src.resolve())}
    saved = out / SETTINGS_FILE
    if saved.is_file():
        old = json.loads(saved.read_text())
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            k = diff[0]
            raise UserError(f"{out} holds a linear probe with other settings ({k}: {old.get(k)!r} there, "
                            f"{settings[k]!r} now); pass --out for a new folder")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(saved, json.dumps(settings, indent=1).encode())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Our runs log beside their run folder (runs/mlflow.db); external checkpoints beside the output.
    uri = (cfg.run.tracking_uri if cfg else None) or default_uri(home if cfg else out)
    tags = {"stage": "lincls", "mode": mode, "source": str(src.resolve()), "random_init": str(args.random_init)}
    if parent_id:
        tags["pretrain_run_id"] = parent_id
    parent_id = args.parent_run or parent_id
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    tags.update(extra_tags)
    params = {**{f"lincls.{k}": v for k, v in dataclasses.asdict(s).items()}, "lincls.preset": preset, "arch": arch}
    state, _ = checkpoint.load_latest(out / "checkpoints")
    tracker = Tracker(out, uri, cfg.run.experiment if cfg else "mochi-bench",
                      args.run_name or f"lincls-{mode}{suffix}_{src.name}",
                      params, tags, resume_step=state["epoch"] if state else None)
    result = linear_probe(backbone, train_ds, val_ds, num_classes, s, out, device, tracker, state)
    result.update(preset=preset, source=str(src), random_init=args.random_init)
    checkpoint.atomic_write(out / "lincls.json", json.dumps(result, indent=2).encode())
    tracker.log({k: result[k] for k in ("top1_best", "top5_best", "top1_last", "top5_last")}, s.epochs)
    tracker.finish()
    label = " (fast: cached centre-crop features)" if s.fast else ""
    print(f"linear top-1 {result['top1_best']:.2f} (best, epoch {result['best_epoch']}), "
          f"{result['top1_last']:.2f} (last); top-5 {result['top5_best']:.2f}{label}")
    print(f"wrote {out / 'lincls.json'}" + (f"; MLflow run {tracker.run_id} (child of {parent_id})" if parent_id else ""))
    return 0


if __name__ == "__main__":
    run(main)
