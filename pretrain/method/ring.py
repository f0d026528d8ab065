"""Ring: Wu, Mosse, Zhuang, Yamins, Goodman, "Conditional Negative Sampling for Contrastive Learning
of Visual Representations", ICLR 2021 (conditional NCE, "Ring" discrimination).

InfoNCE whose negatives are only those inside a ring of the query's similarity distribution: with
the queue negatives of a query ranked from the most similar down, the outer ball holds the top
``ring_outer`` fraction of them, and the ring is that ball minus its own top ``ring_inner``
fraction (the hardest, likeliest false negatives). The rest are masked out of the loss:

    n_out = floor(ring_outer * n),   n_in = floor(ring_inner * n_out)
    R     = the queue negatives of ranks n_in .. n_out - 1 (rank 0: the most similar)
    L     = -log( exp(l_pos) / (exp(l_pos) + sum_{i in R} exp(l_i)) ),   l = q . x / tau

``ring_outer`` = 1 and ``ring_inner`` = 0 keep every negative: InfoNCE. Choices the paper leaves
to the authors' code (mhw32/contrastive-ring-public), kept here unless said:

- The bounds are ranks, not similarity values: the negatives are sorted by q . n and cut at
  int(fraction * count) (``src/objectives/moco.py``, ``MoCoRing.get_loss``); int() truncates.
- The inner bound is a fraction of the outer ball, not of the queue (``dynamic_inner``, True in
  ``config/pretrain/mocov2/moco_ring.json``; ``src/systems/systems.py`` passes
  ``dynamic_inner or True``, so it is True whatever the config says).
- The positive stays in the denominator (``self_negative``, forced True the same way): the ring
  only removes negatives, so the loss keeps InfoNCE's form.
- The ring is chosen per query, from the similarities already divided by tau; the choice is a
  sort, so no gradient flows through it (here the ranks come from detached logits, the same
  thing); the kept logits carry the gradient into q.
- The MoCo config's ring: thres_outer 0.1, thres_inner 0.1 (the top 10% of the queue without its
  top 1%), with its own t 0.07 and K 65536 (a ResNet-18 on CIFAR/STL-sized data).
- Annealing: ``src/utils/policy.py`` and ``systems.py`` can anneal the outer fraction per
  optimisation step from 1.0 down to 0.1 over ``max_anneal_epoch`` epochs (linear, step,
  exponential or loss/accuracy-adaptive), the inner fraction always constant; the MoCo config
  switches every schedule off (constant thres_outer). Not implemented here: the bounds are
  constants of a run.
- The count the fractions apply to is the queue length K in the code. Here it is each query's
  own count of negatives: a negative the class oracle removed (-inf) ranks last and is not
  counted, so the ring is taken within the query's true negatives (without the oracle: K).
- MoCHi's synthetic points (the last ``synthetic`` columns) are not ring candidates: they stay
  negatives, unranked, and do not move the queue's percentiles. The percentiles describe the
  queue, a sample of the data; the synthetic points are mixed from the query's hardest entries,
  so ranking them with the queue would let the inner cut discard most of them and undo MoCHi.

Ties in q . n (of measure zero for real embeddings) are ranked in the order ``topk`` returns them.
This module imports only the registry's types and InfoNCE (torch where a loss is computed).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .infonce import infonce
from .losskind import LossKind, Param

if TYPE_CHECKING:
    import torch

RING_OUTER = Param("ring_outer", 1.0, 0.0, 1.0, low_open=True, short="ro",
                   help="ring: share of each query's negatives, most similar first, in its outer ball, (0, 1]")
RING_INNER = Param("ring_inner", 0.0, 0.0, 1.0, high_open=True, short="ri",
                   help="ring: share of the outer ball, most similar first, left out, [0, 1)")


def ring_mask(l_neg: torch.Tensor, ring_outer: float, ring_inner: float) -> torch.Tensor:
    """True for the negatives inside each query's ring.

    l_neg: [B, K] queue logits (-inf for negatives the oracle removed); ring_outer in (0, 1];
    ring_inner in [0, 1). Returns a [B, K] bool mask, no gradient."""
    import torch

    l_neg = l_neg.detach()
    # floor(share * count) as int() does it in the authors' code: in float64, as Python computes it
    n = torch.isfinite(l_neg).sum(dim=1, keepdim=True).double()
    n_out = (ring_outer * n).floor()
    n_in = (ring_inner * n_out).floor()
    # Only the outer ball needs ranking: a top-k of its size, not a sort of the whole queue (3x
    # cheaper on a CPU at B 256, K 65536). Positions below a row's n_out are finite, as n_out <= n.
    top = l_neg.topk(int(n_out.max()), dim=1, sorted=True).indices
    pos = torch.arange(top.shape[1], device=l_neg.device)[None]
    inside = (pos >= n_in) & (pos < n_out)
    return torch.zeros_like(l_neg, dtype=torch.bool).scatter_(1, top, inside)


def ring(logits: torch.Tensor, ring_outer: float, ring_inner: float, synthetic: int = 0) -> torch.Tensor:
    """Mean Ring loss over the batch.

    logits: [B, 1 + K + synthetic] already divided by tau: the positive in column 0, the queue, then
    ``synthetic`` MoCHi points (kept as they are); -inf for removed negatives. ring_outer in (0, 1]:
    the outer ball's share of each query's negatives; ring_inner in [0, 1): the share of that ball,
    the most similar, left out. Returns a scalar.
    """
    import torch

    K = logits.shape[1] - 1 - synthetic
    l_neg = logits[:, 1 : 1 + K]
    kept = l_neg.masked_fill(~ring_mask(l_neg, ring_outer, ring_inner), float("-inf"))
    return infonce(torch.cat([logits[:, :1], kept, logits[:, 1 + K :]], dim=1))


def ring_size(ring_outer: float, ring_inner: float, K: int) -> int:
    """How many of a query's K queue negatives the ring keeps (``ring_mask``'s counts: the outer
    ball floor(ring_outer K) without its top floor(ring_inner floor(ring_outer K)))."""
    outer = math.floor(ring_outer * K)
    return outer - math.floor(ring_inner * outer)


KIND = LossKind(
    name="ring", params=(RING_OUTER, RING_INNER),
    label=lambda loss: f"Ring (outer {loss.ring_outer:g}, inner {loss.ring_inner:g})",
    slug=lambda loss: f"ring-o{loss.ring_outer:g}-i{loss.ring_inner:g}",
    compute=lambda loss, logits, tau, synthetic: ring(logits, loss.ring_outer, loss.ring_inner, synthetic),
    reduces=lambda loss: ("infonce", {}) if (loss.ring_outer, loss.ring_inner) == (1.0, 0.0) else None,
    kept=lambda loss, K: ring_size(loss.ring_outer, loss.ring_inner, K),
)
