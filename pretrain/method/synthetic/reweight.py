"""The reweighted control: copies of hard negatives' own logits, no new points.

A kind no peer has. It appends, for each query, ``s_reweight`` logits q . n_j with n_j drawn
uniformly from the query's hard set, as every other kind draws its sources: the point is the hard
negative itself (h = n_j). It adds weight on the hardest negatives and nothing else, so a grid
that runs it with a method's count separates "more weight on the hardest negatives" from "new
synthetic points": if the control gains as much as the method, the method's points add nothing.

Closed form (``logits``): q . h = q . n_j, a column of the queue's logits, with its gradient n_j
into q, as the explicit copy's.

This module imports only the registry's types (torch where points are made).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .kind import SynthKind

if TYPE_CHECKING:
    import torch

    from .hardset import HardSet

KIND = SynthKind("s_reweight", "reweighted", "sr", "reweight", closed_form=True)


def points(q: torch.Tensor, queue: torch.Tensor, hard: HardSet, n: int) -> torch.Tensor:
    """[B, n, D] the hard negatives themselves (zero where a query has none), detached, float32."""
    return hard.made(hard.rows(queue, hard.positions(n)), 1)


def logits(q: torch.Tensor, queue: torch.Tensor, l_neg: torch.Tensor, hard: HardSet, n: int) -> torch.Tensor:
    """q . n_j [B, n] for the entries ``points`` copies from the same draws."""
    return hard.made(hard.cos(l_neg, hard.positions(n)), 1)
