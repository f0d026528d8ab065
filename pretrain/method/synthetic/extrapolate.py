"""Hard negatives pushed past themselves, away from the query (SynCo's type 2, "extrapolation").

Giakoumoglou & Stathaki, SynCo, 2024 (synco/builder.py at 79a9c42):

    h_k = normalize(q + beta_k (n_j - q)),   n_j in the hard set,   beta_k = 1 + U[0, 1) (extrap_max - 1)

with extrap_max 1.5 (SynCo's ``hard_beta``, not a flag there). The q inside h is a constant.

Despite the family's aim, this kind makes negatives *easier* than their source: for beta > 1 the
point moves along the line from q through n_j beyond n_j, so q . h < q . n_j whenever q . n_j < 1
(q . n_j = 0.60 becomes 0.45 at beta = 1.25). The statistics show it: ``syn_extrap_cos`` against
``hard_cos``, the mean q . n over the run's hard sets.

Closed form (``logits``): h is the query mix of w = 1 - beta <= 0, so with c = q . n_j

    q . h = ((1 - beta) + beta c) / sqrt((1 - beta)^2 + beta^2 + 2 beta (1 - beta) c);

the loss uses it, and its gradient into q is the point, as the explicit one's.

This module imports only the registry's types (torch where points are made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..losskind import Param
from .kind import SynthKind

if TYPE_CHECKING:
    import torch

    from .hardset import HardSet

EXTRAP_MAX = Param("extrap_max", 1.5, 1.0, short="xm",
                   help="extrapolation kind's beta is drawn in [1, extrap_max), >= 1 (SynCo: 1.5)")
KIND = SynthKind("s_extrap", "extrapolation", "sx", "extrap", synco=2, params=(EXTRAP_MAX,), closed_form=True)


def _beta(hard: HardSet, n: int, extrap_max: float) -> torch.Tensor:
    return 1 + hard.rand(hard.batch, n, 1) * (extrap_max - 1)


def points(q: torch.Tensor, queue: torch.Tensor, hard: HardSet, n: int,
           extrap_max: float = EXTRAP_MAX.neutral) -> torch.Tensor:
    """[B, n, D] unit-norm points (zero where a query cannot make one), detached, float32."""
    import torch.nn.functional as F

    nj = hard.rows(queue, hard.positions(n))
    beta = _beta(hard, n, extrap_max)
    qd = q.detach()[:, None, :]
    return hard.made(F.normalize(qd + beta * (nj - qd), dim=-1), 1)


def logits(q: torch.Tensor, queue: torch.Tensor, l_neg: torch.Tensor, hard: HardSet, n: int,
           extrap_max: float = EXTRAP_MAX.neutral) -> torch.Tensor:
    """q . h [B, n] for the points ``points`` makes from the same draws, from q . n alone."""
    from .hardset import mix_with_query

    c = hard.cos(l_neg, hard.positions(n))
    beta = _beta(hard, n, extrap_max)[..., 0]
    return hard.made(mix_with_query(q, c, 1 - beta), 1)
