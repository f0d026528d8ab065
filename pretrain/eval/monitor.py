"""The monitor run every ``eval.every`` epochs during pretraining and at its end.

* weighted kNN top-1 (k = 200, T = 0.07) of the backbone: memory = training images, queries =
  held-out (test / val split) images;
* alignment and uniformity (Wang & Isola 2020) of the normalised embeddings the loss sees, on two
  aug+ views of the held-out images (seeded, so every evaluation uses the same views).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..input import data
from ..method import analysis
from . import knn
from .backbone import query_backbone


class Monitor:
    """Builds its datasets once (so bad data fails before training starts); call with the model."""

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        full = dataclasses.replace(cfg.data, subset=0)
        train = data.base_dataset(full, "train")
        heldout = data.base_dataset(full, "test")
        if cfg.eval.knn_train_size:
            train = torch.utils.data.Subset(train, range(min(cfg.eval.knn_train_size, len(train))))
        self.heldout = torch.utils.data.Subset(heldout, range(min(cfg.eval.heldout_size, len(heldout))))
        self.train = train
        self.num_classes = len(heldout.classes)
        self.views = data.TwoViews(self.heldout, data.aug_plus(cfg.data.image_size, cfg.data.min_scale, cfg.data.blur), cfg.run.seed)

    @torch.no_grad()
    def embeddings(self, encoder: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised encoder outputs of the two views of every held-out image: ([n, D], [n, D])."""
        keys = [(0, i) for i in range(len(self.views))]  # epoch 0: the same views at every evaluation
        loader = torch.utils.data.DataLoader(self.views, batch_size=256, sampler=keys, collate_fn=data.collate)
        z1, z2 = [], []
        for v1, v2, *_ in loader:
            z1.append(F.normalize(encoder(v1.to(self.device)).float(), dim=1).cpu())
            z2.append(F.normalize(encoder(v2.to(self.device)).float(), dim=1).cpu())
        return torch.cat(z1), torch.cat(z2)

    @torch.no_grad()
    def __call__(self, model) -> dict[str, float]:
        e = self.cfg.eval
        was_training = model.training
        model.eval()
        try:
            knn_top1 = knn.top1(query_backbone(model), self.train, self.heldout, self.num_classes,
                                self.cfg.data.image_size, self.device, e.knn_k, e.knn_t)
            z1, z2 = self.embeddings(model.encoder_q)
        finally:
            model.train(was_training)
        return {
            "knn_top1": knn_top1,
            "alignment": analysis.alignment(z1, z2).item(),
            "uniformity": analysis.uniformity(z1).item(),
        }
