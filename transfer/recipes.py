"""The detectron2 recipes in transfer/configs/: resolve a config's _BASE_ chain, scale it to a GPU count
and an iteration budget, and check that a data folder holds what its datasets need.

detectron2 itself reads these files (``cfg.merge_from_file``); this module lets the project check
and adapt them without detectron2 installed.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass
from pathlib import Path

import yaml

from pretrain.run.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RECIPES = {
    "voc-c4": "pascal_voc_R_50_C4_24k.yaml",
    "coco-c4-1x": "coco_R_50_C4_1x.yaml",
    "coco-c4-2x": "coco_R_50_C4_2x.yaml",
    "coco-fpn-1x": "coco_R_50_FPN_1x.yaml",
    "demo-voc": "demo_voc_R_50_C4.yaml",
    "demo-coco": "demo_coco_R_50_C4.yaml",
}
IMAGES_PER_GPU = 2  # detectron2's convention, and MoCo's: 16 images on 8 GPUs


@dataclass(frozen=True)
class Dataset:
    """What one of the recipes' dataset names reads, relative to ``--data``: a VOC split
    (``VOC<year>/...``) or a COCO split (an images folder and an instances JSON)."""

    kind: str  # voc or coco
    split: str  # VOC image set (trainval, test) or COCO images folder (train2017, val)
    year: int = 2007  # VOC only; 2007 selects the 11-point AP, as detectron2's evaluator does
    own_classes: bool = False  # the local detection set: VOC layout, its own classes (classes.txt)

    def required(self) -> list[str]:
        """The paths under ``--data`` this split needs, in the order they are checked."""
        if self.kind == "voc":
            base = f"VOC{self.year}"
            need = [f"{base}/ImageSets/Main/{self.split}.txt", f"{base}/Annotations", f"{base}/JPEGImages"]
            return need + (["classes.txt"] if self.own_classes else [])
        return [f"annotations/instances_{self.split}.json", self.split]


# Every dataset name the recipes train or test on. The VOC and COCO names are detectron2's
# built-in ones (MoCo's configs use them); the demo names are the local detection set's own.
DATASETS = {
    "voc_2007_trainval": Dataset("voc", "trainval", 2007),
    "voc_2012_trainval": Dataset("voc", "trainval", 2012),
    "voc_2007_test": Dataset("voc", "test", 2007),
    "coco_2017_train": Dataset("coco", "train2017"),
    "coco_2017_val": Dataset("coco", "val2017"),
    "mochi_demo_voc_trainval": Dataset("voc", "trainval", 2007, own_classes=True),
    "mochi_demo_voc_test": Dataset("voc", "test", 2007, own_classes=True),
    "mochi_demo_coco_train": Dataset("coco", "train"),
    "mochi_demo_coco_val": Dataset("coco", "val"),
}
# What --data is, per kind of data, in the words the refusals use.
DATA_FOLDER = {
    "voc": "the folder holding VOC2007/ (and VOC2012/), e.g. /datasets/VOCdevkit",
    "coco": "the COCO folder holding annotations/ and the image folders, e.g. /datasets/coco",
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _literal(value):
    """A config value detectron2 reads from text (``"(18000, 22000)"``) as a Python value."""
    return ast.literal_eval(value) if isinstance(value, str) else value


def resolve(task: str) -> dict:
    """The merged config tree of a recipe (``voc-c4``, ``coco-c4-1x``, ...), _BASE_ files first."""
    if task not in RECIPES:
        raise UserError(f"unknown transfer task {task!r}; tasks: {', '.join(RECIPES)}")

    def load(name: str) -> dict:
        tree = yaml.safe_load((CONFIG_DIR / name).read_text()) or {}
        base = tree.pop("_BASE_", None)
        return _merge(load(base), tree) if base else tree

    return load(RECIPES[task])


def recipe_gpus(cfg: dict) -> int:
    """The GPU count a recipe is written for (its batch at 2 images per GPU): 8 for MoCo's."""
    return max(1, cfg["SOLVER"]["IMS_PER_BATCH"] // IMAGES_PER_GPU)


def scale_schedule(iters: int, max_iter: int, steps, warmup: int) -> tuple[tuple[int, ...], int]:
    """(steps, warm-up) of a schedule of ``max_iter`` iterations stretched to ``iters``.

    A step that scales to 0, to the end or onto the step before is dropped: detectron2's scheduler
    needs 0 < s1 < s2 < ... < MAX_ITER (only a budget of a few iterations drops any).
    """
    f = iters / max_iter
    scaled: list[int] = []
    for s in _literal(steps):
        s = int(round(s * f))
        if 0 < s < iters and (not scaled or s > scaled[-1]):
            scaled.append(s)
    return tuple(scaled), max(1, int(round(warmup * f)))


def scale_for_gpus(cfg: dict, gpus: int) -> dict:
    """Batch and learning rate scaled together, iterations and warm-up inversely (the linear scaling
    rule), so a run on ``gpus`` GPUs (2 images each) sees the same number of epochs as the recipe."""
    if gpus < 1:
        raise UserError(f"--gpus must be >= 1, got {gpus}")
    out = copy.deepcopy(cfg)
    sol = out["SOLVER"]
    f = gpus / recipe_gpus(cfg)
    max_iter = int(round(sol["MAX_ITER"] / f))
    sol["STEPS"], sol["WARMUP_ITERS"] = scale_schedule(max_iter, sol["MAX_ITER"], sol["STEPS"], sol["WARMUP_ITERS"])
    sol["IMS_PER_BATCH"] = gpus * IMAGES_PER_GPU
    sol["BASE_LR"] = sol["BASE_LR"] * f
    sol["MAX_ITER"] = max_iter
    return out


def with_iters(cfg: dict, iters: int) -> dict:
    """The schedule stretched to ``iters`` iterations: steps and warm-up scale with it (batch and
    learning rate do not)."""
    if iters < 1:
        raise UserError(f"--iters must be >= 1, got {iters}")
    out = copy.deepcopy(cfg)
    sol = out["SOLVER"]
    sol["STEPS"], sol["WARMUP_ITERS"] = scale_schedule(iters, sol["MAX_ITER"], sol["STEPS"], sol["WARMUP_ITERS"])
    sol["MAX_ITER"] = iters
    return out


def datasets(task: str, opts: list[str] = ()) -> tuple[list[str], list[str]]:
    """(train, test) dataset names of a recipe, as ``DATASETS.TRAIN`` / ``DATASETS.TEST`` in ``opts``
    (detectron2 ``KEY VALUE`` pairs) may override them."""
    cfg = resolve(task)["DATASETS"]
    names = {"TRAIN": _literal(cfg["TRAIN"]), "TEST": _literal(cfg["TEST"])}
    for key, value in zip(opts[::2], opts[1::2]):
        if key in ("DATASETS.TRAIN", "DATASETS.TEST"):
            try:
                names[key.split(".")[1]] = _literal(value)
            except (ValueError, SyntaxError):
                raise UserError(f"{key} {value!r}: give a tuple of dataset names, "
                                f"e.g. \"('voc_2007_test',)\"") from None
    return list(names["TRAIN"]), list(names["TEST"])


def data_kind(task: str, opts: list[str] = ()) -> str:
    """``voc`` or ``coco``: the data a recipe tests on (its MLflow stage, its metrics' names)."""
    return DATASETS[dataset(datasets(task, opts)[1][0])].kind


def dataset(name: str) -> str:
    """``name`` if it is one of ``DATASETS``; UserError naming the known ones otherwise."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; the recipes read {', '.join(DATASETS)}")
    return name


def check_layout(task: str, root: str | Path, opts: list[str] = ()) -> None:
    """UserError naming the first path a recipe's datasets need that ``root`` (``--data``) lacks,
    before anything is built."""
    root = Path(root)
    train, test = datasets(task, opts)
    kinds = {DATASETS[dataset(n)].kind for n in train + test}
    if len(kinds) > 1:
        raise UserError(f"{task}: its datasets mix VOC and COCO ({', '.join(train + test)}); one --data holds one kind")
    kind = kinds.pop()
    if not root.is_dir():
        raise UserError(f"--data {root} does not exist (for {task} it is {DATA_FOLDER[kind]})")
    for name in dict.fromkeys(train + test):
        for rel in DATASETS[name].required():
            if not (root / rel).exists():
                raise UserError(f"--data {root}: {rel} is missing, which {name} needs (for {task}, --data is "
                                f"{DATA_FOLDER[kind]})")
