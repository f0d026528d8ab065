"""A ResNet-50 query encoder in detectron2's format (the command ``mochi-convert``, ``transfer/convert.py``,
and the detectron2 path's ``weights-d2.pkl``).

SOURCE is a pretraining run folder, one of this project's checkpoints, or a MoCo-format
checkpoint (``state_dict`` with ``module.encoder_q.*``). The renaming is MoCo's
(moco/detection/convert-pretrain-to-detectron2.py): stem keys get ``stem.``, ``layerK`` becomes
``res{K+1}``, ``bnJ`` becomes ``convJ.norm``, ``downsample.0/1`` become ``shortcut`` /
``shortcut.norm``; values are numpy arrays; the pickle carries ``__author__ = "MOCO"`` and
``matching_heuristics = True``. Unlike MoCo's script, the projection head (``fc.*``) and BN's
``num_batches_tracked`` counters are left out: detectron2 has no place for them.
"""

from __future__ import annotations

import re

from pretrain.eval.backbone import load_backbone, read_source
from pretrain.run.config import Config
from pretrain.run.errors import UserError


def d2_name(key: str) -> str:
    """torchvision ResNet key -> detectron2 ResNet key, e.g. layer1.0.bn1.weight -> res2.0.conv1.norm.weight."""
    if not key.startswith("layer"):
        key = "stem." + key
    key = re.sub(r"layer([1-4])", lambda m: f"res{int(m.group(1)) + 1}", key)
    key = re.sub(r"bn([1-3])", r"conv\1.norm", key)
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def resnet50_state(source: str, load: bool = True) -> tuple[dict | None, Config | None, str | None]:
    """(torchvision ResNet-50 state dict, run config or None, MLflow run id) of SOURCE's query encoder.

    UserError unless SOURCE is a standard ResNet-50 (no small stem), which every detection recipe
    needs; with ``load`` every key and shape is checked too, else the state dict is None.
    """
    sd, cfg, run_id = read_source(source)
    if cfg is not None and (cfg.model.arch != "resnet50" or cfg.model.small_stem):
        raise UserError(f"{source} is a {cfg.model.arch}{' with the small stem' if cfg.model.small_stem else ''}; "
                        f"the detection recipes need a standard ResNet-50")
    return (load_backbone(sd, "resnet50", False).state_dict() if load else None), cfg, run_id


def d2_checkpoint(state: dict) -> dict:
    """detectron2's checkpoint dictionary of a torchvision ResNet-50 state dict."""
    model = {d2_name(k): v.detach().cpu().numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return {"model": model, "__author__": "MOCO", "matching_heuristics": True}


def convert(source: str) -> dict:
    """detectron2's checkpoint dictionary for SOURCE; UserError unless it is a ResNet-50 query encoder."""
    state, _, _ = resnet50_state(source)
    return d2_checkpoint(state)
