"""MoCHi's s': the query mixed into hard negatives (SynCo's type 1, "interpolation").

Kalantidis et al., NeurIPS 2020, Sec. 4.2 (eq. 4):

    h'_k = normalize(b_k q + (1 - b_k) n_j),   n_j in the hard set,   b_k ~ U(0, 0.5)

b < 0.5 keeps the query's share below the negative's, so h' is harder than n_j but still closer to
n_j than to q. The copy of q inside h' is a constant (detached): the gradient reaches q only
through the logit q . h'.

Closed form (``logits``): with c = q . n_j and |q| = |n_j| = 1,

    q . h' = (b + (1 - b) c) / sqrt(b^2 + (1 - b)^2 + 2 b (1 - b) c).

The loss uses the points, not the closed form: the closed form rounds differently, and a MoCHi
run stays bit-identical to the runs made before the family existed. The tests hold the two equal
(values and gradients) to float32 precision, and ``mochi-bench`` times both.

This module imports only the registry's types (torch where points are made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .kind import SynthKind

if TYPE_CHECKING:
    import torch

    from .hardset import HardSet

KIND = SynthKind("s_prime", "query mixing", "sp", "sprime", synco=1)
B_MAX = 0.5  # b ~ U(0, 0.5)


def points(q: torch.Tensor, queue: torch.Tensor, hard: HardSet, n: int) -> torch.Tensor:
    """[B, n, D] unit-norm points (zero where a query cannot make one), detached, float32."""
    import torch.nn.functional as F

    nj = hard.rows(queue, hard.positions(n))
    b = B_MAX * hard.rand(hard.batch, n, 1)
    return hard.made(F.normalize(b * q.detach()[:, None, :] + (1 - b) * nj, dim=-1), 1)


def logits(q: torch.Tensor, queue: torch.Tensor, l_neg: torch.Tensor, hard: HardSet, n: int) -> torch.Tensor:
    """q . h' [B, n] for the points ``points`` makes from the same draws, from q . n alone; the
    gradient into q is h', as the explicit point's."""
    from .hardset import mix_with_query

    c = hard.cos(l_neg, hard.positions(n))
    b = B_MAX * hard.rand(hard.batch, n, 1)[..., 0]
    return hard.made(mix_with_query(q, c, b), 1)
