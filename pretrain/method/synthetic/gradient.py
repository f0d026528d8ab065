"""Hard negatives moved up the gradient of their similarity to the query (SynCo's type 5,
"gradient-based").

Giakoumoglou & Stathaki, SynCo, 2024 (synco/builder.py at 79a9c42):

    h_k = normalize(n_j + delta grad_n (q . n)|_{n = n_j}) = normalize(n_j + delta q),
    n_j in the hard set, delta 0.01.

The gradient of q . n in n is q, so the point is n_j nudged toward the query: harder than n_j.

Choices:
- This is SynCo since 2024-10-15 (commit c214637), which takes the gradient by autograd. Before,
  it was a finite difference with eps 1e-5 that moved n by about 1e-6, making copies of hard
  negatives; SynCo's 200-epoch number predates the change.
- delta's default 0.01 (SynCo's); SynCo's --delta help string is swapped with --sigma's.
- Deterministic: no random numbers but the source's position.

Closed form (``logits``): with c = q . n_j and |q| = |n_j| = 1,

    q . h = (c + delta) / sqrt(1 + delta^2 + 2 delta c);

the loss uses it, and its gradient into q is the point.

This module imports only the registry's types (torch where points are made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..losskind import Param
from .kind import SynthKind

if TYPE_CHECKING:
    import torch

    from .hardset import HardSet

DELTA = Param("delta", 0.01, 0.0, short="dl", help="gradient kind's step toward the query, >= 0 (SynCo: 0.01)")
KIND = SynthKind("s_grad", "gradient", "sg", "grad", synco=5, params=(DELTA,), closed_form=True)


def points(q: torch.Tensor, queue: torch.Tensor, hard: HardSet, n: int, delta: float = DELTA.neutral) -> torch.Tensor:
    """[B, n, D] unit-norm points (zero where a query cannot make one), detached, float32."""
    import torch.nn.functional as F

    nj = hard.rows(queue, hard.positions(n))
    return hard.made(F.normalize(nj + delta * q.detach()[:, None, :], dim=-1), 1)


def logits(q: torch.Tensor, queue: torch.Tensor, l_neg: torch.Tensor, hard: HardSet, n: int,
           delta: float = DELTA.neutral) -> torch.Tensor:
    """q . h [B, n] for the points ``points`` makes from the same draws, from q . n alone."""
    import torch

    from .hardset import query_dot

    c = hard.cos(l_neg, hard.positions(n))
    return hard.made((c + delta * query_dot(q, q)) / torch.sqrt(1 + delta * delta + 2 * delta * c.detach()), 1)
