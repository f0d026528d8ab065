"""Hard negatives moved one signed-gradient step toward the query (SynCo's type 6, "adversarial").

Giakoumoglou & Stathaki, SynCo, 2024 (synco/builder.py at 79a9c42):

    h_k = normalize(n_j + eta sign(grad_n (q . n))|_{n = n_j}) = normalize(n_j + eta sign(q)),
    n_j in the hard set, eta 0.01 (an FGSM step).

Choices:
- SynCo since 2024-10-15 (commit c214637, autograd); before, a finite difference with eps 1e-5
  that moved n by about 1e-6. Its 200-epoch number predates the change.
- sign(0) = 0, as torch.sign gives.
- Deterministic: no random numbers but the source's position.

Closed form (``logits``): with c = q . n_j, |q| = |n_j| = 1 and z = sign(q),

    q . h = (c + eta |q|_1) / sqrt(1 + eta^2 |z|^2 + 2 eta n_j . z).

It needs n_j . z besides q . n_j, so it reads the sources' rows but never builds the points; the
loss uses it, and its gradient into q is the point.

This module imports only the registry's types (torch where points are made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..losskind import Param
from .kind import SynthKind

if TYPE_CHECKING:
    import torch

    from .hardset import HardSet

ETA = Param("eta", 0.01, 0.0, short="eta", help="adversarial kind's signed step toward the query, >= 0 (SynCo: 0.01)")
KIND = SynthKind("s_adv", "adversarial", "sa", "adv", synco=6, params=(ETA,), closed_form=True)


def points(q: torch.Tensor, queue: torch.Tensor, hard: HardSet, n: int, eta: float = ETA.neutral) -> torch.Tensor:
    """[B, n, D] unit-norm points (zero where a query cannot make one), detached, float32."""
    import torch.nn.functional as F

    nj = hard.rows(queue, hard.positions(n))
    return hard.made(F.normalize(nj + eta * q.detach().sign()[:, None, :], dim=-1), 1)


def logits(q: torch.Tensor, queue: torch.Tensor, l_neg: torch.Tensor, hard: HardSet, n: int,
           eta: float = ETA.neutral) -> torch.Tensor:
    """q . h [B, n] for the points ``points`` makes from the same draws."""
    import torch

    from .hardset import query_dot

    pos = hard.positions(n)
    z = q.detach().sign()  # [B, D]
    nz = torch.einsum("bd,bnd->bn", z, hard.rows(queue, pos))
    norm = torch.sqrt(1 + eta * eta * (z * z).sum(dim=1, keepdim=True) + 2 * eta * nz)
    return hard.made((hard.cos(l_neg, pos) + eta * query_dot(q, z)) / norm, 1)
