"""What every evaluation starts from: the query encoder of a source, as a frozen torchvision ResNet.

A source is a pretraining run folder, one of this project's checkpoint files, or a checkpoint in
MoCo's release format (``state_dict`` with ``module.encoder_q.*`` keys, as the MoCo and MoCHi
releases ship them). Files from elsewhere are loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from pathlib import Path

import torch
import torch.nn as nn
import torchvision.transforms as T

from ..input import data
from ..method.encoders import resnet
from ..method.moco import MoCo, from_config
from ..run import config, rundir
from ..run.errors import UserError


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"refusing {path}: it cannot be loaded without executing pickled code "
            f"(torch.load weights_only=True: {first[:200]}); re-save its state_dict with plain tensors"
        ) from None


def read_source(source: str | Path) -> tuple[dict[str, torch.Tensor], config.Config | None, str | None]:
    """(query-encoder state dict without the ``encoder_q.`` prefix, run config or None, MLflow run id).

    Accepts a run folder, this project's checkpoint file, or a MoCo-format checkpoint.
    """
    path = Path(source)
    cfg, run_id = None, None
    if path.is_dir():
        cfg, state = rundir.read_run(path)
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


def load_backbone(sd: dict[str, torch.Tensor], arch: str, small_stem: bool) -> nn.Module:
    """A torchvision ResNet holding the given weights, its fc replaced by Identity.

    Raises UserError naming missing and unexpected keys (the head's ``fc.*`` is ignored).
    """
    net = random_backbone(arch, small_stem)
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


def random_backbone(arch: str, small_stem: bool) -> nn.Module:
    """A randomly initialised torchvision ResNet without its classifier (fc = Identity)."""
    try:
        net = resnet(arch, 1000, small_stem)
    except ValueError as e:
        raise UserError(str(e)) from None
    net.fc = nn.Identity()
    return net


def query_backbone(model: MoCo) -> nn.Module:
    """The query encoder without its projection head, in eval mode: the network evaluations use."""
    net = copy.deepcopy(model.encoder_q)
    net.fc = nn.Identity()
    return net.eval()


def initial_backbone(cfg: config.Config, seed: int) -> nn.Module:
    """The query backbone a pretraining run of ``cfg`` with this seed starts from: the random-init
    baseline that pairs, seed by seed, with the runs."""
    torch.manual_seed(seed)
    return query_backbone(from_config(cfg))


def evaluated_on(cfg: config.Config | None, arch: str | None = None, small_stem: bool = False,
                 dataset: str | None = None, data_path: str | None = None, class_list: str | None = None,
                 image_size: int | None = None) -> tuple[config.DataCfg, str, bool]:
    """(data, arch, small_stem) an evaluation of a source uses: the run's own (``cfg``, its whole
    training split) with the flags given over them; for a MoCo-format checkpoint (no ``cfg``),
    ResNet-50 on the default data with the flags."""
    data_cfg = dataclasses.replace(cfg.data, subset=0) if cfg else config.DataCfg()
    data_cfg = dataclasses.replace(data_cfg, **{k: v for k, v in (
        ("dataset", dataset), ("path", data_path), ("class_list", class_list), ("image_size", image_size))
        if v is not None})
    return data_cfg, arch or (cfg.model.arch if cfg else "resnet50"), small_stem or (cfg.model.small_stem if cfg
                                                                                     else False)


def baseline_backbone(cfg: config.Config | None, arch: str, small_stem: bool, seed: int) -> nn.Module:
    """The random-init baseline of an evaluation: the very weights a pretraining run of ``cfg`` starts
    from with this seed (so it pairs, seed by seed, with the runs), or, without a config of that
    architecture, a random backbone drawn from ``seed``."""
    if cfg is not None and (arch, small_stem) == (cfg.model.arch, cfg.model.small_stem):
        return initial_backbone(cfg, seed)
    torch.manual_seed(seed)
    return random_backbone(arch, small_stem)


def load_run(run_dir: Path) -> tuple[config.Config, MoCo]:
    """A run's saved config and its model at the newest valid checkpoint."""
    cfg, state = rundir.read_run(run_dir)
    model = from_config(cfg)
    model.load_state_dict(state["model"])
    return cfg, model


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
    loader = torch.utils.data.DataLoader(Transformed(dataset, transform), batch_size=batch_size, num_workers=workers,
                                         worker_init_fn=data.ignore_job_signals)
    net.eval().to(device)
    feats, labels = [], []
    for x, y in loader:
        feats.append(net(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)
