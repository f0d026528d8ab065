"""The detectron2 recipes in transfer/configs/: resolve a config's _BASE_ chain, scale it to a GPU count.

detectron2 itself reads these files (``cfg.merge_from_file``); this module lets the project check
and adapt them without detectron2 installed.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import yaml

from pretrain.run.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RECIPES = {
    "voc-c4": "pascal_voc_R_50_C4_24k.yaml",
    "coco-c4-1x": "coco_R_50_C4_1x.yaml",
    "coco-c4-2x": "coco_R_50_C4_2x.yaml",
    "coco-fpn-1x": "coco_R_50_FPN_1x.yaml",
}
REFERENCE_GPUS = 8  # MoCo's recipes: 16 images on 8 GPUs


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve(task: str) -> dict:
    """The merged config tree of a recipe (``voc-c4``, ``coco-c4-1x``, ...), _BASE_ files first."""
    if task not in RECIPES:
        raise UserError(f"unknown transfer task {task!r}; tasks: {', '.join(RECIPES)}")

    def load(name: str) -> dict:
        tree = yaml.safe_load((CONFIG_DIR / name).read_text()) or {}
        base = tree.pop("_BASE_", None)
        return _merge(load(base), tree) if base else tree

    return load(RECIPES[task])


def scale_for_gpus(cfg: dict, gpus: int) -> dict:
    """Batch and learning rate scaled together, iterations inversely (the linear scaling rule), so a
    run on ``gpus`` GPUs (2 images each) sees the same number of epochs as the 8-GPU recipe."""
    if gpus < 1:
        raise UserError(f"--gpus must be >= 1, got {gpus}")
    f = gpus / REFERENCE_GPUS
    out = copy.deepcopy(cfg)
    sol = out["SOLVER"]
    sol["IMS_PER_BATCH"] = int(sol["IMS_PER_BATCH"] * f)
    sol["BASE_LR"] = sol["BASE_LR"] * f
    sol["MAX_ITER"] = int(round(sol["MAX_ITER"] / f))
    steps = ast.literal_eval(sol["STEPS"]) if isinstance(sol["STEPS"], str) else sol["STEPS"]
    sol["STEPS"] = tuple(int(round(s / f)) for s in steps)
    if "WARMUP_ITERS" in sol:
        sol["WARMUP_ITERS"] = int(round(sol["WARMUP_ITERS"] / f))
    return out
