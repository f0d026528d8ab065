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
