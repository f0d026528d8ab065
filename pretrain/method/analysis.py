"""The paper's analyses as pure functions of tensors the training step already has.

* hardness: how close the hardest negatives are to the query;
* class oracle: how many of a query's hardest negatives share its label (false negatives);
* alignment and uniformity of normalised features (Wang & Isola, ICML 2020).

Imports nothing of the project: each function is checked on hand-built inputs.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def hardness(l_neg: torch.Tensor, ks: tuple[int, ...] = (1, 10)) -> dict[str, torch.Tensor]:
    """Mean over queries of the mean of each query's top-k negative cosines, for k in ``ks``.

    l_neg: [B, K] cosine similarities q . n (not divided by tau).
    Returns {"neg_top{k}_cos": 0-dim tensor}.
    """
    top = l_neg.topk(min(max(ks), l_neg.shape[1]), dim=1).values  # sorted, largest first
    return {f"neg_top{k}_cos": top[:, :k].mean() for k in ks}


@torch.no_grad()
def synthetic_share_topk(l_neg: torch.Tensor, l_syn: torch.Tensor, k: int) -> torch.Tensor:
    """Share of synthetic points among each query's k highest negative logits, averaged.

    l_neg: [B, K] queue negatives; l_syn: [B, S] synthetic negatives (same scale).
    """
    both = torch.cat([l_neg, l_syn], dim=1)
    k = min(k, both.shape[1])
    top = both.topk(k, dim=1).indices
    return (top >= l_neg.shape[1]).float().mean()


@torch.no_grad()
def false_negative_mask(labels: torch.Tensor, queue_labels: torch.Tensor) -> torch.Tensor:
    """[B, K] True where a queue entry has the query's label (a false negative); -1 = unknown."""
    return (labels[:, None] == queue_labels[None, :]) & (queue_labels[None, :] >= 0)


@torch.no_grad()
def false_negative_share(l_neg: torch.Tensor, labels: torch.Tensor, queue_labels: torch.Tensor, N: int) -> torch.Tensor:
    """Class oracle: mean over queries of the share of its N hardest negatives with its label.

    l_neg: [B, K]; labels: [B]; queue_labels: [K] (-1 for entries with no label yet).
    """
    N = min(N, l_neg.shape[1])
    idx = l_neg.topk(N, dim=1).indices  # [B, N]
    same = queue_labels[idx] == labels[:, None]
    return same.float().mean()


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """E ||f(x) - f(x+)||^alpha over positive pairs; x, y: [n, D] normalised, row i pairs row i."""
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E exp(-t ||f(x) - f(y)||^2) over all distinct pairs of rows of x: [n, D] normalised."""
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()
