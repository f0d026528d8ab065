"""MoCHi: synthetic hard negatives mixed from each query's hardest queue entries, and the family of
kinds that generalises it.

Kalantidis et al., "Hard Negative Mixing for Contrastive Learning", NeurIPS 2020, Sec. 4.

For a query q with the queue negatives n_1..n_K (all unit-norm), let Q_N be the N entries with
the largest q . n (``synthetic.hardset``). MoCHi adds

* s points  h_k  = normalize(a_k n_i + (1 - a_k) n_j),  n_i, n_j in Q_N, i != j, a_k ~ U(0, 1)
* s' points h'_k = normalize(b_k q   + (1 - b_k) n_j),  n_j in Q_N,          b_k ~ U(0, 0.5)

as extra negatives. They are constants (detached, the copy of q inside h' too) and never enqueued.
SynCo (Giakoumoglou & Stathaki 2024) draws four more kinds from the same Q_N, and the reweighted
control copies Q_N's own logits; each kind is one module of ``pretrain.method.synthetic`` with its
formula and choices, listed by its registry. This module draws them for a batch, in the
registry's order: the kinds' columns follow one another in that order, and so do their draws, so
a MoCHi setting draws and computes exactly what it did before the family existed.

``Mixing`` is the setting (N and every kind's count and parameters) as one value, checked once
where it is made (``pretrain.method.mixing``, which needs no torch, so that settings load in a
command that trains nothing); with the loss it makes a run's ``Objective``
(``pretrain.method.objective``), which says whether that is plain MoCo.

This module imports nothing of the project but its setting and the synthetic kinds, so that it
stays checkable beside the papers.
"""

from __future__ import annotations

import torch

from .mixing import Mixing
from .synthetic import registry
from .synthetic.hardset import HardSet, draw, hardest

__all__ = ["HardSet", "draw", "hardest", "logits_of", "synthesize", "synthetic_logits"]


def _params(mixing: Mixing, name: str) -> dict[str, float]:
    return {p.name: getattr(mixing, p.name) for p in registry.KINDS[name].params}


@torch.no_grad()
def synthesize(
    q: torch.Tensor,
    queue: torch.Tensor,
    mixing: Mixing,
    generator: torch.Generator | None = None,
    *,
    l_neg: torch.Tensor | None = None,
    removed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every kind's synthetic points for each query: the definitions.

    Args:
        q: [B, D] L2-normalised queries.
        queue: [K, D] L2-normalised negatives, one per row, K >= mixing.N. Never modified.
        mixing: N and the counts, already checked when it was made.
        generator: source of randomness (on any device: see ``draw``); the global one if None.
        l_neg: optional [B, K] precomputed ``q @ queue.T`` so the caller's logits are reused.
        removed: optional [B, K] bool, True where the class oracle removed the entry from the
            query's negatives; such an entry is never a source (see ``synthetic.hardset``).

    Returns:
        [B, S, D] detached, in float32, S = ``mixing.synthetic``: each kind's points in the
        registry's order (MoCHi's s, then s', then the others); unit-norm (the reweighted control's
        are the hard negatives themselves), or zero for a point its query cannot make.

    Example:
        >>> import torch.nn.functional as F
        >>> q = F.normalize(torch.randn(4, 8), dim=1); queue = F.normalize(torch.randn(32, 8), dim=1)
        >>> synthesize(q, queue, Mixing(N=8, s=5, s_prime=2)).shape
        torch.Size([4, 7, 8])
    """
    B, D = q.shape
    q, queue = q.detach().float(), queue.detach().float()
    if not mixing.active:
        return q.new_zeros(B, 0, D)
    hard = HardSet.of(q, queue, mixing.N, generator, l_neg=l_neg, removed=removed)
    return torch.cat([registry.module(k).points(q, queue, hard, n, **_params(mixing, k))
                      for k, n in mixing.counts.items() if n], dim=1)


def synthetic_logits(
    q: torch.Tensor,
    queue: torch.Tensor,
    mixing: Mixing,
    generator: torch.Generator | None = None,
    *,
    l_neg: torch.Tensor | None = None,
    removed: torch.Tensor | None = None,
) -> torch.Tensor:
    """q . h for each query and its own synthetic points, as the loss takes them: [B, S] float32,
    -inf for a point not made; the columns of ``logits_of(q, synthesize(...))`` for the same draws.

    A kind whose registry entry says ``closed_form`` computes its logits from ``l_neg`` (q . n, with
    its gradient) without building points; the others build their points, all in one product, as
    MoCHi always has. The gradient flows into q only, and equals the explicit points' either way.
    ``l_neg`` is ``q @ queue.T`` with its gradient (computed here if None); ``removed`` as in
    ``synthesize``.
    """
    qf, queue = q.float(), queue.detach().float()
    if not mixing.active:
        return qf.new_zeros(q.shape[0], 0)
    if l_neg is None:
        l_neg = qf @ queue.T
    hard = HardSet.of(qf.detach(), queue, mixing.N, generator, l_neg=l_neg, removed=removed)
    points, closed = [], []
    with torch.no_grad():
        for k, n in mixing.counts.items():
            if n and not registry.KINDS[k].closed_form:
                points.append(registry.module(k).points(qf.detach(), queue, hard, n, **_params(mixing, k)))
    for k, n in mixing.counts.items():
        if n and registry.KINDS[k].closed_form:
            closed.append(registry.module(k).logits(qf, queue, l_neg.float(), hard, n, **_params(mixing, k)))
    cols = ([logits_of(qf, torch.cat(points, dim=1))] if points else []) + closed
    return torch.cat(cols, dim=1)


def logits_of(q: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """q . h for each query and its own synthetic points: [B, D] x [B, S, D] -> [B, S]; -inf for a
    point not made (h = 0, see ``synthesize``), which the losses then leave out.

    The gradient flows into q only; h is a constant.
    """
    return torch.einsum("bd,bsd->bs", q.float(), h).masked_fill(~h.any(dim=-1), float("-inf"))
