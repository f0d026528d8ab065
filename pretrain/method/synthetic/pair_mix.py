"""MoCHi's s: hard negatives mixed in pairs (SynCo's type 3, "mixup").

Kalantidis et al., "Hard Negative Mixing for Contrastive Learning", NeurIPS 2020, Sec. 4 (eq. 3):

    h_k = normalize(a_k n_i + (1 - a_k) n_j),   n_i, n_j in the hard set, i != j,   a_k ~ U(0, 1)

Choices:
- i != j is enforced. A point mixed with itself is only a copy of a negative already there, so the
  paper's "mixing pairs" adds a new point only when the two differ; s > 0 therefore needs N >= 2.
  SynCo draws the two positions independently (they may be equal), so its type 3 makes such copies
  with probability 1/N; ours does not.
- The pair (i, j) and a are drawn per point and per query: i, then j, then a.
- No closed form: q . h needs n_i . n_j, so the loss uses the points.

This module imports only the registry's types (torch where points are made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .kind import SynthKind

if TYPE_CHECKING:
    import torch

    from .hardset import HardSet

KIND = SynthKind("s", "pair mixing", "s", "s", synco=3, sources=2)


def points(q: torch.Tensor, queue: torch.Tensor, hard: HardSet, n: int) -> torch.Tensor:
    """[B, n, D] unit-norm points (zero where a query cannot make one), detached, float32."""
    import torch.nn.functional as F

    pi = hard.positions(n)
    pj = hard.positions(n, fewer=1)
    pj = pj + (pj >= pi).long()  # uniform over the positions other than pi
    ni, nj = hard.rows(queue, pi), hard.rows(queue, pj)
    a = hard.rand(hard.batch, n, 1)
    return hard.made(F.normalize(a * ni + (1 - a) * nj, dim=-1), 2)
