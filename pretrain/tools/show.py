"""A picture of one batch as each input pipeline makes it, for the eye (``mochi-pipeline show``)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..input import data, gpu_aug
from ..input.pipelines import train_loader


def show(cfg, pipelines: list[str], n: int, out: str | Path, device: torch.device | None = None) -> Path:
    """Write a PNG: one row per image, the source then view_q, view_k of each pipeline."""
    device = device or torch.device("cpu")
    S = cfg.data.image_size
    mean = torch.tensor(gpu_aug.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(gpu_aug.IMAGENET_STD).view(3, 1, 1)
    base = data.base_dataset(cfg.data, "train")
    columns: list[list[torch.Tensor]] = []
    first_index = None
    for name in pipelines:
        c = copy.deepcopy(cfg)
        c.data.pipeline, c.data.num_workers, c.optim.batch_size, c.data.prefetch = name, 0, n, 0
        batches, sampler = train_loader(c, device=device)
        sampler.set_epoch(0)
        q, k, _, index, _ = next(iter(batches))
        first_index = index if first_index is None else first_index
        for v in (q, k):
            columns.append([(t.float().cpu() * std + mean).clamp(0, 1) for t in v])
    source = []
    for i in first_index.tolist():
        img = base[i][0]
        img = img if img is not None else Image.new("RGB", (S, S))
        source.append(torch.from_numpy(np.asarray(img.convert("RGB").resize((S, S)))).permute(2, 0, 1) / 255)
    columns.insert(0, source)
    gap = 2
    canvas = torch.ones(3, n * (S + gap) + gap, len(columns) * (S + gap) + gap)
    for col, tiles in enumerate(columns):
        for row, tile in enumerate(tiles):
            y, x = gap + row * (S + gap), gap + col * (S + gap)
            canvas[:, y : y + S, x : x + S] = tile
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((canvas * 255).round().byte().permute(1, 2, 0).numpy()).save(out)
    return out
