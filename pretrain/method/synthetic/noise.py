"""Hard negatives with Gaussian noise (SynCo's type 4, "noise injection").

Giakoumoglou & Stathaki, "SynCo: Synthetic Hard Negatives for Contrastive Visual Representation
Learning", 2024 (github.com/giakoumoglou/synco, synco/builder.py, read at commit 79a9c42):

    h_k = normalize(n_j + e_k),   n_j in the hard set,   e_k ~ N(0, sigma^2 I)

Choices:
- sigma's default is 0.01, SynCo's since 2024-10-15 (commit c214637); it was 0.1 before, and the
  help strings of its --sigma and --delta are swapped. Set ``mochi.sigma`` for either.
- SynCo switches this kind on from n5's count and type 5 from n4's (``use_type4 = n5 > 0``), which
  is harmless only when the two counts are equal. Here each kind's count switches that kind alone.
- No closed form: q . h depends on the drawn noise, so the loss uses the points.

This module imports only the registry's types (torch where points are made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..losskind import Param
from .kind import SynthKind

if TYPE_CHECKING:
    import torch

    from .hardset import HardSet

SIGMA = Param("sigma", 0.01, 0.0, short="sig", help="noise kind's standard deviation per dimension, >= 0 (SynCo: 0.01)")
KIND = SynthKind("s_noise", "noise", "sn", "noise", synco=4, params=(SIGMA,))


def points(q: torch.Tensor, queue: torch.Tensor, hard: HardSet, n: int, sigma: float = SIGMA.neutral) -> torch.Tensor:
    """[B, n, D] unit-norm points (zero where a query cannot make one), detached, float32."""
    import torch.nn.functional as F

    nj = hard.rows(queue, hard.positions(n))
    e = sigma * hard.randn(*nj.shape)
    return hard.made(F.normalize(nj + e, dim=-1), 1)
