"""A transfer stage's settings, for both paths (torchvision's ``finetune``, detectron2's
``train_d2``), and the command lines that spell them (``mochi-transfer``, ``mochi-transfer-d2``, and
a grid's ``--transfer``); without torch, so those parse, and a grid dry-runs, in milliseconds.

The torchvision path's tasks are here (``TASKS``, in iterations); detectron2's recipes are
transfer/configs/ (``recipes``).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pretrain.run import rundir
from pretrain.run.cli import ArgumentParser, parse_tags
from pretrain.run.errors import UserError

from .recipes import RECIPES, check_layout, recipe_gpus, resolve, scale_for_gpus, scale_schedule, with_iters

FINETUNE_DOC = "Detection transfer through torchvision: the path that runs wherever PyTorch does."
D2_DOC = "The paper's transfer protocol with detectron2 (MoCo's detection recipe)."


@dataclass
class StageSettings:
    """What the settings of every transfer stage hold, whichever path trains it
    (``FinetuneSettings``, ``D2Settings``), and where the stage writes."""

    engine: ClassVar[str]  # "torchvision" or "detectron2": names the stage's folder and its runs' tag
    source: str | None  # run folder, checkpoint or MoCo-format checkpoint; None with random_init
    task: str  # a recipe of the stage's path
    data: str  # the folder holding VOC2007/ (VOC tasks), or the COCO folder with annotations/
    trials: int = 5  # seeds 0..trials-1, as MoCo reports
    random_init: bool = False
    out: str | None = None  # default: SOURCE_RUN/transfer[-d2]-TASK[-random-init]
    parent_run: str | None = None  # default: the source run's pretraining run
    tags: dict[str, str] = field(default_factory=dict)
    tracking_uri: str | None = None  # where the trials log (default: the source run's store)
    experiment: str | None = None  # default: the source run's experiment

    @property
    def out_dir(self) -> Path:
        """Where this stage writes."""
        if self.out:
            return Path(self.out)
        if self.source is None:
            raise UserError("a transfer stage without a source needs an output folder")
        return rundir.transfer_dir(rundir.run_home(self.source), self.task, self.random_init, self.engine)


VOC_SIZES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
COCO_SIZES = (640, 672, 704, 736, 768, 800)


@dataclass(frozen=True)
class Task:
    kind: str  # c4 or fpn
    mask: bool
    data: str  # voc or coco
    train: tuple[str, ...]  # VOC "year:split" or COCO split names
    test: str
    iters: int
    steps: tuple[int, ...]
    warmup: int
    batch: int
    lr: float
    min_size: tuple[int, ...]
    test_size: int
    max_size: int = 1333
    rois_per_image: int = 512
    test_proposals: int = 1000

    def required(self) -> list[str]:
        """The paths under ``--data`` its train and test splits need, in the order they are checked
        (``datasets`` reads them): VOC's image-set list, annotations and images per year, COCO's
        annotations file and images folder per split."""
        if self.data == "voc":
            sets = [t.split(":") for t in dict.fromkeys((*self.train, self.test))]
            years = dict.fromkeys(y for y, _ in sets)
            return ([f"VOC{y}/ImageSets/Main/{split}.txt" for y, split in sets]
                    + [f"VOC{y}/{d}" for y in years for d in ("Annotations", "JPEGImages")])
        return [p for split in dict.fromkeys((*self.train, self.test))
                for p in (f"annotations/instances_{split}.json", split)]


TASKS = {
    "voc-c4": Task("c4", False, "voc", ("2007:trainval", "2012:trainval"), "2007:test", 24000, (18000, 22000), 100,
                   16, 0.02, VOC_SIZES, 800),
    "coco-c4-1x": Task("c4", True, "coco", ("train2017",), "val2017", 90000, (60000, 80000), 1000, 16, 0.02,
                       COCO_SIZES, 800),
    "coco-c4-2x": Task("c4", True, "coco", ("train2017",), "val2017", 180000, (120000, 160000), 1000, 16, 0.02,
                       COCO_SIZES, 800),
    "coco-fpn-1x": Task("fpn", True, "coco", ("train2017",), "val2017", 90000, (60000, 80000), 1000, 16, 0.02,
                        COCO_SIZES, 800),
    # The local detection set (128 px canvases) on a CPU: FPN heads (the C4 head runs res5 on every
    # RoI, seconds per image on a CPU), fewer RoIs and proposals per image. lr 0.005 is the recipes'
    # 0.02 at batch 16 scaled linearly to batch 4; 0.01 diverged to NaN within 30 iterations.
    "demo-voc": Task("fpn", False, "voc", ("2007:trainval",), "2007:test", 300, (200, 260), 20, 4, 0.005,
                     (112, 128, 144), 128, 256, 64, 100),
    "demo-coco": Task("fpn", True, "coco", ("train",), "val", 300, (200, 260), 20, 4, 0.005, (112, 128, 144), 128,
                      256, 64, 100),
}


@dataclass
class FinetuneSettings(StageSettings):
    """One transfer stage (N trials of one task on one source), as ``mochi-transfer``
    and a grid's transfer job describe it."""

    engine: ClassVar[str] = "torchvision"
    iters: int | None = None  # default: the recipe's; steps and warm-up scale with it
    batch: int | None = None  # default: the recipe's; lr scales with it
    ckpt_every: int = 1000

    def check(self) -> None:
        """UserError for a task or number that cannot run (nothing is read)."""
        self.recipe()
        if self.ckpt_every < 1:
            raise UserError(f"--ckpt-every {self.ckpt_every}: must be >= 1")

    def check_data(self) -> None:
        """UserError naming the first path the task's data needs that ``data`` lacks: checked where
        the stage is asked for (the command, a submission) before anything is built or submitted."""
        root = Path(self.data)
        if not root.is_dir():
            raise UserError(f"--data {root} does not exist")
        for rel in self.recipe().required():
            if not (root / rel).exists():
                raise UserError(f"--data {root}: {rel} is missing, which {self.task} needs")

    def recipe(self) -> Task:
        """The task's recipe with ``iters`` and ``batch`` applied; UserError for impossible values."""
        if self.task not in TASKS:
            raise UserError(f"unknown transfer task {self.task!r}; tasks: {', '.join(sorted(TASKS))}")
        for flag, value in (("--trials", self.trials), ("--iters", self.iters), ("--batch", self.batch)):
            if value is not None and value < 1:
                raise UserError(f"{flag} {value}: must be >= 1")
        task = TASKS[self.task]
        if self.iters:
            steps, warmup = scale_schedule(self.iters, task.iters, task.steps, task.warmup)
            task = dataclasses.replace(task, iters=self.iters, steps=steps, warmup=warmup)
        if self.batch:
            task = dataclasses.replace(task, batch=self.batch, lr=task.lr * self.batch / task.batch)
        return task


DEVICES = ("cuda", "cpu")
# Config keys this command sets itself: the stage's folder layout, the trial seeds, --device, SOURCE.
OWN_KEYS = {"OUTPUT_DIR": "--out", "SEED": "the trial number", "MODEL.DEVICE": "--device", "MODEL.WEIGHTS": "SOURCE"}
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*")


@dataclass
class D2Settings(StageSettings):
    """One detectron2 transfer stage (N trials of one recipe of transfer/recipes.py on one source),
    as ``mochi-transfer-d2`` and a grid's transfer job describe it."""

    engine: ClassVar[str] = "detectron2"
    device: str = "cuda"
    gpus: int | None = None  # worker processes, one per GPU; default: the recipe's (8) on cuda, 1 on cpu
    iters: int | None = None  # default: the recipe's at this GPU count; steps and warm-up scale with it
    opts: list[str] = field(default_factory=list)  # detectron2 KEY VALUE options, applied last

    @property
    def workers(self) -> int:
        """Processes a trial trains in: ``gpus``, else the recipe's GPU count on cuda, 1 on a CPU."""
        if self.gpus is not None:
            return self.gpus
        return recipe_gpus(resolve(self.task)) if self.device == "cuda" else 1

    def check_data(self) -> None:
        """UserError naming the first path the recipe's datasets need that ``data`` lacks
        (``recipes.check_layout``): checked where the stage is asked for, before anything is built
        or submitted."""
        check_layout(self.task, self.data, self.opts)

    def check(self) -> None:
        """UserError for a task, number, device or option that cannot run (nothing is read)."""
        resolve(self.task)
        for flag, value in (("--trials", self.trials), ("--iters", self.iters), ("--gpus", self.gpus)):
            if value is not None and value < 1:
                raise UserError(f"{flag} {value}: must be >= 1")
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device!r}: one of {', '.join(DEVICES)}")
        if self.device == "cpu" and self.workers > 1:
            raise UserError(f"--device cpu trains in one process; --gpus {self.gpus} counts GPUs")
        if self.source is None and not self.random_init:
            raise UserError("a transfer stage needs a source, or --random-init")
        if len(self.opts) % 2:
            raise UserError(f"detectron2 options come as KEY VALUE pairs; {self.opts[-1]!r} has no value")
        for key in self.opts[::2]:
            if not CONFIG_KEY.fullmatch(key):
                raise UserError(f"{key!r} is not a detectron2 config key (options are KEY VALUE, e.g. "
                                f"SOLVER.CHECKPOINT_PERIOD 1000)")
            if key in OWN_KEYS:
                raise UserError(f"{key} is set by mochi-transfer-d2 (from {OWN_KEYS[key]}), not as an option")

    def solver(self) -> dict:
        """The recipe's SOLVER section scaled to ``workers`` GPUs, then to ``iters`` iterations."""
        cfg = scale_for_gpus(resolve(self.task), self.workers)
        return (with_iters(cfg, self.iters) if self.iters else cfg)["SOLVER"]


def add_stage_flags(p: ArgumentParser, baseline: str, folder: str) -> None:
    """The flags both paths' command lines share: the baseline, where the trials go, reusing them,
    and the MLflow parent and tags."""
    p.add_argument("--random-init", action="store_true", help=f"baseline: {baseline}")
    p.add_argument("--out", help=f"output folder (default: SOURCE_RUN/{folder}-TASK[-random-init])")
    p.add_argument("--discard-trials", action="store_true",
                   help="remove the output folder's trials (and summary.json) first, to train them again with "
                        "these settings; without it, trials trained with other settings are refused")
    p.add_argument("--parent-run", help="MLflow parent run id (default: the source run's pretraining run)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow tag (repeatable)")


def finetune_parser() -> ArgumentParser:
    """The command line of ``mochi-transfer``, which a grid's ``--transfer`` takes too."""
    p = ArgumentParser(prog="mochi-transfer", description=FINETUNE_DOC)
    p.add_argument("source", nargs="?", help="run folder, this project's checkpoint, or a MoCo-format checkpoint")
    p.add_argument("--task", choices=sorted(TASKS), help="recipe")
    p.add_argument("--data", help="VOCdevkit folder (VOC tasks) or COCO root with annotations/ (COCO tasks)")
    p.add_argument("--trials", type=int, default=5, help="fine-tuning runs with seeds 0..n-1 (default 5, as MoCo)")
    p.add_argument("--iters", type=int, help="iterations (default: the recipe's); steps and warm-up scale with it")
    p.add_argument("--batch", type=int, help="images per iteration (default: the recipe's); lr scales with it")
    p.add_argument("--ckpt-every", type=int, default=1000, help="iterations between checkpoints")
    add_stage_flags(p, "a randomly initialised ResNet-50", "transfer")
    p.add_argument("--make-demo-data", metavar="DIR", help="build the local detection set into DIR and exit")
    return p


def finetune_settings(argv: list[str]) -> FinetuneSettings:
    """The transfer stage an argument list describes (UserError for a malformed one)."""
    a = finetune_parser().parse_args(argv)
    if not a.source or not a.task or not a.data:
        raise UserError("give SOURCE, --task and --data (or --make-demo-data DIR)")
    s = FinetuneSettings(source=a.source, task=a.task, data=a.data, trials=a.trials, iters=a.iters, batch=a.batch,
                         ckpt_every=a.ckpt_every, random_init=a.random_init, out=a.out, parent_run=a.parent_run,
                         tags=parse_tags(a.tag))
    s.check()  # bad numbers fail here, before anything is read
    return s


def d2_parser() -> ArgumentParser:
    """The command line of ``mochi-transfer-d2``, which a grid's ``--transfer --engine detectron2`` takes too."""
    p = ArgumentParser(prog="mochi-transfer-d2", description=D2_DOC)
    p.add_argument("source", nargs="?", help="run folder, this project's checkpoint, or a MoCo-format checkpoint")
    p.add_argument("--task", choices=sorted(RECIPES), help="recipe (transfer/configs/)")
    p.add_argument("--data", help="the folder holding VOC2007/ and VOC2012/ (VOC tasks), or the COCO folder holding "
                                  "annotations/ and the image folders (COCO tasks)")
    p.add_argument("--device", choices=DEVICES, default="cuda", help="cuda (default) or cpu (a smoke run)")
    p.add_argument("--gpus", type=int, help="worker processes, one per GPU (default: the recipe's 8 on cuda, 1 on "
                                            "cpu); batch, lr and schedule scale to them")
    p.add_argument("--iters", type=int, help="iterations (default: the recipe's at this GPU count); steps and "
                                             "warm-up scale with it")
    p.add_argument("--trials", type=int, default=5, help="fine-tuning runs with seeds 0..n-1 (default 5, as MoCo)")
    add_stage_flags(p, "detectron2's random initialisation", "transfer-d2")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE",
                   help="detectron2 config options, applied last (e.g. SOLVER.CHECKPOINT_PERIOD 1000)")
    return p


def d2_settings(argv: list[str]) -> D2Settings:
    """The detectron2 transfer stage an argument list describes (UserError for a malformed one)."""
    # intermixed: KEY VALUE pairs after the flags, SOURCE before them, as train_net.py users write them
    a = d2_parser().parse_intermixed_args(argv)
    if a.source is not None and CONFIG_KEY.fullmatch(a.source) and not Path(a.source).exists():
        a.source, a.opts = None, [a.source, *a.opts]  # --random-init without SOURCE: the first word was a KEY
    if not a.task or not a.data or (a.source is None and not a.random_init):
        raise UserError("give SOURCE (or --random-init), --task and --data")
    s = D2Settings(source=a.source, task=a.task, data=a.data, trials=a.trials, device=a.device, gpus=a.gpus,
                   iters=a.iters, opts=list(a.opts), random_init=a.random_init, out=a.out, parent_run=a.parent_run,
                   tags=parse_tags(a.tag))
    s.check()
    return s


# A grid's --transfer, by its --engine: the settings its arguments describe.
SETTINGS = {"torchvision": finetune_settings, "detectron2": d2_settings}
