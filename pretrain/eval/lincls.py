"""Linear classification on a frozen backbone, following MoCo's main_lincls.py.

``run(ProbeSettings(source=...))``, where the source is a pretraining run folder, one of this
project's checkpoints, or a checkpoint in MoCo's format (``pretrain.eval.backbone``).

Protocol: the query encoder without its head, BN frozen (eval mode), a new fc with N(0, 0.01)
weights is the only thing trained; SGD momentum 0.9, weight decay 0, batch 256; train views
RandomResizedCrop + flip, validation Resize + CenterCrop. Top-1/top-5 are reported for the best
and the last epoch; the tables use the best epoch, as MoCo's main_lincls.py reports.

``fast`` extracts centre-crop features once, caches them, and trains the classifier on the
cache: a cheaper, weaker protocol for sweeps, labelled "fast" wherever its numbers appear.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T

from ..input import data
from ..method.encoders import ARCHS
from ..run import checkpoint, config, rundir
from ..run.errors import UserError
from ..run.tracking import LINCLS, Tracker, default_uri, open_run
from .backbone import (Transformed, features, initial_backbone, load_backbone, random_backbone, read_source,
                       val_transform)

log = logging.getLogger(__name__)

PRESETS = {
    # MoCo main_lincls.py defaults for ImageNet-1K.
    "imagenet1k": dict(lr=30.0, epochs=100, milestones=(60, 80), gamma=0.1, batch_size=256),
    # CMC's eval_moco_ins.py schedule for ImageNet-100.
    "imagenet100": dict(lr=10.0, epochs=60, milestones=(30, 40, 50), gamma=0.2, batch_size=256),
    # CPU-sized, for the Fashion-MNIST demo.
    "demo": dict(lr=10.0, epochs=30, milestones=(20, 25), gamma=0.1, batch_size=256),
}


@dataclass
class ProbeSettings:
    """One linear probe, as ``python -m pretrain.lincls`` and a grid's probe job describe it.

    Unset (None) schedule and data fields come from the preset and from the source run's config.
    """

    source: str | None  # None: a random-init probe of ``pretrain_config`` (arch, data, initialisation)
    preset: str | None = None  # schedule: default demo for fashion-mnist, imagenet100 with a class list, else imagenet1k
    fast: bool = False  # cached centre-crop features (labelled "fast")
    arch: str | None = None  # of a MoCo-format checkpoint (default resnet50)
    small_stem: bool = False
    dataset: str | None = None
    data_path: str | None = None
    class_list: str | None = None
    image_size: int | None = None
    lr: float | None = None
    epochs: int | None = None
    milestones: tuple[int, ...] | None = None
    gamma: float | None = None
    batch_size: int | None = None
    train_size: int = 0  # first n training images (0 = all)
    val_size: int = 0
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    seed: int = 0
    random_init: bool = False  # the same architecture randomly initialised: the baseline
    out: str | None = None  # default: SOURCE_RUN/lincls-MODE[-random-init]
    parent_run: str | None = None  # MLflow parent (default: the source's pretraining run)
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    pretrain_config: config.Config | None = None  # stands in for a missing source: arch, data, initialisation
    tracking_uri: str | None = None  # where the probe logs (default: the source run's store)
    experiment: str | None = None  # default: the source run's experiment

    def check(self) -> None:
        """UserError for a schedule preset, architecture or dataset the probe does not know (nothing is read)."""
        for name, value, known in (("preset", self.preset, sorted(PRESETS)), ("arch", self.arch, ARCHS),
                                   ("dataset", self.dataset, sorted(config.DATASETS))):
            if value is not None and value not in known:
                raise UserError(f"{name} {value!r}: one of {', '.join(known)}")

    @property
    def mode(self) -> str:
        """``fast`` or ``full``."""
        return "fast" if self.fast else "full"

    @property
    def out_dir(self) -> Path:
        """Where this probe writes."""
        if self.out:
            return Path(self.out)
        if self.source is None:
            raise UserError("a probe without a source needs an output folder")
        return rundir.lincls_dir(rundir.run_home(self.source), self.fast, self.random_init)


# ---------------------------------------------------------------------------------------------
# Training the classifier
def accuracy(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> list[float]:
    """Top-k accuracies (%) for each k."""
    top = logits.topk(max(ks), dim=1).indices
    hit = top == y[:, None]
    return [100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks]


def train_transform(size: int) -> T.Compose:
    """RandomResizedCrop + flip: the training view of MoCo's main_lincls."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])


@dataclasses.dataclass
class Setting:
    """The resolved schedule of one probe."""

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
    """Step schedule: lr x gamma at each milestone passed."""
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
        cache = out / rundir.FEATURES_FILE
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
                generator=gen, num_workers=s.workers, drop_last=False, worker_init_fn=data.ignore_job_signals,
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
        checkpoint.save(out / rundir.CHECKPOINTS, epoch + 1,
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


def run(s: ProbeSettings) -> dict:
    """Train (or resume, or extend) the probe ``s`` describes; returns its result record, also
    written to ``OUT/lincls.json``. UserError for bad settings, before anything is written."""
    if s.source is not None:
        sd, cfg, parent_id = read_source(s.source)
        src = Path(s.source)
    elif s.random_init and s.pretrain_config is not None:
        sd, cfg, parent_id, src = None, s.pretrain_config, None, None
    else:
        raise UserError("a probe needs a source, or random_init with the pretraining config it stands for")
    data_cfg = dataclasses.replace(cfg.data, subset=0) if cfg else config.DataCfg()
    data_cfg = dataclasses.replace(data_cfg, **{k: v for k, v in (
        ("dataset", s.dataset), ("path", s.data_path), ("class_list", s.class_list), ("image_size", s.image_size))
        if v is not None})
    arch = s.arch or (cfg.model.arch if cfg else "resnet50")
    small_stem = s.small_stem or (cfg.model.small_stem if cfg else False)
    preset = s.preset or ("demo" if data_cfg.dataset == "fashion-mnist" else
                          "imagenet100" if data_cfg.class_list else "imagenet1k")
    if preset not in PRESETS:
        raise UserError(f"unknown linear-probe preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    pre = PRESETS[preset]
    sched = Setting(
        lr=s.lr or pre["lr"], epochs=s.epochs or pre["epochs"],
        milestones=tuple(s.milestones) if s.milestones is not None else pre["milestones"],
        gamma=s.gamma or pre["gamma"], batch_size=s.batch_size or pre["batch_size"],
        image_size=data_cfg.image_size, fast=s.fast, seed=s.seed, workers=s.workers,
    )
    if sched.lr <= 0 or sched.epochs <= 0 or sched.batch_size <= 0 or not 0 < sched.gamma <= 1 or s.workers < 0:
        raise UserError("--lr, --epochs and --batch-size must be > 0, --gamma in (0, 1], --workers >= 0")

    if s.random_init:
        if cfg is not None and (arch, small_stem) == (cfg.model.arch, cfg.model.small_stem):
            # The very weights a pretraining run of this config starts from with this seed, so the
            # baseline pairs seed by seed with the runs it is compared with.
            backbone = initial_backbone(cfg, s.seed)
        else:
            torch.manual_seed(s.seed)
            backbone = random_backbone(arch, small_stem)
    else:
        backbone = load_backbone(sd, arch, small_stem)
    train_ds = data.base_dataset(data_cfg, "train")
    val_ds = data.base_dataset(data_cfg, "test")
    num_classes = len(val_ds.classes)
    if s.train_size:
        train_ds = torch.utils.data.Subset(train_ds, range(min(s.train_size, len(train_ds))))
    if s.val_size:
        val_ds = torch.utils.data.Subset(val_ds, range(min(s.val_size, len(val_ds))))

    suffix = "-random-init" if s.random_init else ""
    out = s.out_dir
    home = rundir.run_home(src) if src is not None else out
    source = str(src.resolve()) if src is not None else f"random init of {arch} (seed {s.seed})"
    # A folder holds one probe: resuming it (or extending its epochs) is fine, reusing it with other
    # settings would mix two probes in one history.
    identity = {**{k: v for k, v in dataclasses.asdict(sched).items() if k not in ("workers", "epochs")},
                "milestones": list(sched.milestones), "preset": preset, "arch": arch, "small_stem": small_stem,
                "dataset": data_cfg.dataset, "data_path": data_cfg.path, "class_list": data_cfg.class_list,
                "train_size": s.train_size, "val_size": s.val_size, "random_init": s.random_init,
                "source": source}
    saved = out / rundir.SETTINGS_FILE
    if saved.is_file():
        old = json.loads(saved.read_text())
        diff = [k for k in identity if old.get(k) != identity[k]]
        if diff:
            k = diff[0]
            raise UserError(f"{out} holds a linear probe with other settings ({k}: {old.get(k)!r} there, "
                            f"{identity[k]!r} now); pass --out for a new folder")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(saved, json.dumps(identity, indent=1).encode())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # Our runs log beside their run folder (runs/mlflow.db); external checkpoints beside the output.
    uri = s.tracking_uri or (cfg.run.tracking_uri if cfg else None) or default_uri(home if cfg else out)
    tags = {"mode": s.mode, "source": source, "random_init": str(s.random_init)}
    if parent_id:
        tags["pretrain_run_id"] = parent_id
    params = {**{f"lincls.{k}": v for k, v in dataclasses.asdict(sched).items()}, "lincls.preset": preset, "arch": arch}
    state, _ = checkpoint.load_latest(out / rundir.CHECKPOINTS)
    tracker = open_run(out, uri=uri, experiment=s.experiment or (cfg.run.experiment if cfg else "mochi-bench"),
                       name=s.run_name or f"lincls-{s.mode}{suffix}_{src.name if src else arch}", stage=LINCLS,
                       params=params,
                       tags={**tags, **s.tags}, parent=s.parent_run or parent_id,
                       resume_step=state["epoch"] if state else None)
    result = linear_probe(backbone, train_ds, val_ds, num_classes, sched, out, device, tracker, state)
    result.update(preset=preset, source=source, random_init=s.random_init, out=str(out),
                  mlflow_run_id=tracker.run_id, parent_run=s.parent_run or parent_id)
    checkpoint.atomic_write(out / rundir.LINCLS_FILE, json.dumps(result, indent=2).encode())
    tracker.log({k: result[k] for k in ("top1_best", "top5_best", "top1_last", "top5_last")}, sched.epochs)
    tracker.finish()
    return result
