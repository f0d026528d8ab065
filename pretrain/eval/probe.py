"""A linear probe's settings (``ProbeSettings``) and the schedules it names; the probe itself is
``pretrain.eval.lincls``. Torch-free, so that a grid or a command line checks a probe's settings
without loading what trains it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..method.archs import ARCHS
from ..run import config, rundir
from ..run.cli import ArgumentParser, parse_tags
from ..run.errors import UserError

PRESETS = {
    # MoCo main_lincls.py defaults for ImageNet-1K.
    "imagenet1k": dict(lr=30.0, epochs=100, milestones=(60, 80), gamma=0.1, batch_size=256),
    # CMC's eval_moco_ins.py schedule for ImageNet-100.
    "imagenet100": dict(lr=10.0, epochs=60, milestones=(30, 40, 50), gamma=0.2, batch_size=256),
    # CPU-sized, for the Fashion-MNIST demo.
    "demo": dict(lr=10.0, epochs=30, milestones=(20, 25), gamma=0.1, batch_size=256),
}
# The fast probe's lr candidates: the preset's lr times these, three and a half decades in
# half-decade steps (they train together, so a wide grid costs little). The published lrs were tuned
# for augmented crops; on cached centre crops of the demo, a pretrained ResNet-18 did best at the
# demo preset's lr x 0.003 and a random one near x 0.03 (validation top-1, 2026-12-02).
LR_FACTORS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
VAL_SPLIT = 0.1  # the share of the training images held out to choose among candidates
RULE = "highest top-1 on the validation split at the last epoch; a tie goes to the smaller lr"


def add_source_flags(p) -> None:
    """SOURCE and what it is evaluated on, as every evaluation command (mochi-lincls, mochi-knn) takes
    them: a run folder reads its own architecture and data; a MoCo-format checkpoint needs them said."""
    p.add_argument("source", help="a run folder, this project's checkpoint, or a MoCo-format checkpoint")
    p.add_argument("--arch", choices=ARCHS, metavar="ARCH", help="architecture of a MoCo-format checkpoint "
                   "(default resnet50; any torchvision ResNet/ResNeXt/Wide-ResNet)")
    p.add_argument("--small-stem", action="store_true", help="the checkpoint uses the small-image stem")
    p.add_argument("--dataset", choices=config.DATASETS, help="dataset (default: the run's data.dataset)")
    p.add_argument("--data", metavar="DIR", help="the dataset's folder (default: the run's data.path; for imagefolder "
                                                 "the ImageNet root holding train/ and val/), as --data of every command")
    p.add_argument("--class-list", help="class list file (e.g. imagenet100.txt)")
    p.add_argument("--image-size", type=int, help="centre-crop side in pixels (default: the run's data.image_size)")


@dataclass
class ProbeSettings:
    """One linear probe, as ``mochi-lincls`` and a grid's probe job describe it.

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
    lr: float | None = None  # one lr, nothing chosen
    lrs: tuple[float, ...] | None = None  # candidates, chosen among on the validation split
    val_split: float | None = None  # held out of the training images: a fraction in (0, 1) or a count;
    # default VAL_SPLIT where there are candidates to choose among, else 0 (none)
    epochs: int | None = None
    milestones: tuple[int, ...] | None = None
    gamma: float | None = None
    batch_size: int | None = None
    train_size: int = 0  # first n training images (0 = all)
    test_size: int = 0  # first n test images (0 = all)
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

    def __post_init__(self):
        if self.lr is not None and self.lrs is not None:
            raise UserError("give --lr (one lr) or --lrs (candidates to choose among), not both")

    def check(self) -> None:
        """UserError for a schedule preset, architecture or dataset the probe does not know, or a number
        it cannot run with (nothing is read)."""
        for name, value, known in (("preset", self.preset, sorted(PRESETS)), ("arch", self.arch, ARCHS),
                                   ("dataset", self.dataset, sorted(config.DATASETS))):
            if value is not None and value not in known:
                raise UserError(f"{name} {value!r}: one of {', '.join(known)}")
        at_least = {"epochs": (self.epochs, 1), "batch_size": (self.batch_size, 1), "image_size": (self.image_size, 1),
                    "train_size": (self.train_size, 0), "test_size": (self.test_size, 0), "workers": (self.workers, 0),
                    "seed": (self.seed, 0)}
        for name, (value, low) in at_least.items():
            if value is not None and value < low:
                raise UserError(f"{name} {value}: must be >= {low}")
        for name, value in (("lr", self.lr), ("gamma", self.gamma), *(("lrs", v) for v in self.lrs or ())):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"{name} {value}: must be a finite number > 0")
        v = self.val_split
        if v is not None and not (math.isfinite(v) and v >= 0 and (v < 1 or float(v).is_integer())):
            raise UserError(f"val_split {self.val_split}: a fraction in [0, 1) or a count of images")
        if self.milestones is not None and any(m < 1 for m in self.milestones):
            raise UserError(f"milestones {list(self.milestones)}: epochs >= 1")

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

    def preset_for(self, dataset: str, class_list: str | None) -> str:
        """The schedule this probe trains with on that data: ``preset``, else demo for Fashion-MNIST,
        imagenet100 with a class list, else imagenet1k."""
        preset = self.preset or ("demo" if dataset == "fashion-mnist" else "imagenet100" if class_list else "imagenet1k")
        if preset not in PRESETS:
            raise UserError(f"unknown linear-probe preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
        return preset

    def candidates(self, preset_lr: float) -> tuple[float, ...]:
        """The lrs to choose among, ascending: ``lrs``, else ``lr`` alone, else (``fast``) the
        preset's lr times ``LR_FACTORS``, else the preset's lr alone."""
        if self.lrs is not None:
            return tuple(sorted(set(self.lrs)))
        if self.lr is not None:
            return (self.lr,)
        return tuple(round(preset_lr * f, 12) for f in LR_FACTORS) if self.fast else (preset_lr,)


def lincls_parser() -> ArgumentParser:
    """The command line of ``mochi-lincls``, which a grid's ``--lincls`` takes too."""
    p = ArgumentParser(prog="mochi-lincls",
                       description="Linear classification on a frozen backbone, following MoCo's main_lincls.py.")
    add_source_flags(p)
    p.add_argument("--preset", choices=sorted(PRESETS), help="schedule (default: the run's data: demo for "
                   "fashion-mnist, imagenet1k otherwise)")
    p.add_argument("--fast", action="store_true", help="train on cached centre-crop features (labelled 'fast')")
    p.add_argument("--lr", type=float, help="one lr, nothing chosen (default: the preset's; with --fast, chosen "
                   f"on the validation split among the preset's lr x {', '.join(f'{f:g}' for f in LR_FACTORS)})")
    p.add_argument("--lrs", help="comma list of candidate lrs, the one with the best validation top-1 is kept")
    p.add_argument("--val-split", type=float, help="held out of the training images to choose the lr on: a fraction "
                   f"in (0, 1) or a count (default {VAL_SPLIT:g} with candidates to choose among, else 0)")
    p.add_argument("--epochs", type=int, help="probe epochs (default: the preset's)")
    p.add_argument("--milestones", help="comma list of epochs where lr is multiplied by --gamma")
    p.add_argument("--gamma", type=float, help="lr factor at each milestone (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the preset's)")
    p.add_argument("--train-size", type=int, default=0, help="use the first n training images (0 = all)")
    p.add_argument("--test-size", type=int, default=0, help="use the first n test images (0 = all)")
    p.add_argument("--workers", type=int, default=ProbeSettings("").workers, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the classifier's initialisation and data order")
    p.add_argument("--random-init", action="store_true",
                   help="baseline: the same architecture randomly initialised (SOURCE gives arch and data only)")
    p.add_argument("--out", help="output folder (default: SOURCE_RUN/lincls-MODE[-random-init])")
    p.add_argument("--parent-run", help="MLflow parent run id (default: the source run's pretraining run)")
    p.add_argument("--run-name", help="MLflow run name (default: lincls-MODE_SOURCE)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow tag (repeatable)")
    return p


def lincls_settings(argv: list[str]) -> ProbeSettings:
    """The probe an argument list describes (UserError for a malformed one)."""
    a = lincls_parser().parse_args(argv)
    try:
        milestones = tuple(int(m) for m in a.milestones.split(",")) if a.milestones else None
    except ValueError:
        raise UserError(f"--milestones {a.milestones!r}: give a comma list of epochs, e.g. 60,80") from None
    try:
        lrs = tuple(float(lr) for lr in a.lrs.split(",")) if a.lrs else None
    except ValueError:
        raise UserError(f"--lrs {a.lrs!r}: give a comma list of learning rates, e.g. 1,3,10") from None
    s = ProbeSettings(
        source=a.source, preset=a.preset, fast=a.fast, arch=a.arch, small_stem=a.small_stem, dataset=a.dataset,
        data_path=a.data, class_list=a.class_list, image_size=a.image_size, lr=a.lr, lrs=lrs,
        val_split=a.val_split, epochs=a.epochs,
        milestones=milestones, gamma=a.gamma, batch_size=a.batch_size, train_size=a.train_size,
        test_size=a.test_size, workers=a.workers, seed=a.seed, random_init=a.random_init, out=a.out,
        parent_run=a.parent_run, run_name=a.run_name, tags=parse_tags(a.tag),
    )
    s.check()
    return s
