"""MoCHi: synthetic hard negatives mixed from each query's hardest queue entries.

Kalantidis et al., "Hard Negative Mixing for Contrastive Learning", NeurIPS 2020, Sec. 4.

For a query q with the queue negatives n_1..n_K (all unit-norm), let Q_N be the N entries with
the largest q . n. MoCHi adds

* s points  h_k  = normalize(a_k n_i + (1 - a_k) n_j),  n_i, n_j in Q_N, i != j, a_k ~ U(0, 1)
* s' points h'_k = normalize(b_k q   + (1 - b_k) n_j),  n_j in Q_N,          b_k ~ U(0, 0.5)

as extra negatives. They are constants (detached, the copy of q inside h' too) and never enqueued.

Choice on i != j: enforced. A point mixed with itself is only a copy of an existing negative, so
the paper's "mixing pairs" only adds new points when the two differ; s > 0 therefore needs N >= 2.
The pair (i, j) and every coefficient are drawn independently per synthetic point and per query.

With the class oracle, the entries it removed for a query (its false negatives) are not that
query's negatives, so they never enter its Q_N: Q_N is its N hardest kept entries, or all of them
when fewer than N are kept, and the positions are drawn uniformly within that query's own count.
A point the query cannot make (a pair needs two kept entries, a query mix one) is the zero vector,
and ``synthetic_logits`` gives it -inf: it drops out of the loss as a removed negative does.
Without the oracle the draws are those of plain MoCHi, bit for bit.

``Mixing`` is the setting (N, s, s') as one value, checked once where it is made
(``pretrain.method.mixing``, which needs no torch, so that settings load in a command that trains
nothing); with the loss it makes a run's ``Objective`` (``pretrain.method.objective``), which says
whether that is plain MoCo.

This module imports nothing of the project but its setting, so that it stays checkable beside the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mixing import Mixing




@torch.no_grad()
def hardest(q: torch.Tensor, queue: torch.Tensor, N: int, l_neg: torch.Tensor | None = None) -> torch.Tensor:
    """Indices [B, N] of each query's N most similar queue entries, in ascending queue order.

    q: [B, D], queue: [K, D]; l_neg: optional precomputed q @ queue.T, [B, K]. ``topk`` returns an
    unsorted set in an order that differs between devices; sorting the indices makes a position in
    the hard set name the same entry everywhere, so a seed mixes the same points on any device.
    """
    if l_neg is None:
        l_neg = q.float() @ queue.float().T
    return l_neg.topk(N, dim=1, sorted=False).indices.sort(dim=1).values


def draw(fn, *shape: int, device: torch.device, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
    """``fn(*shape, ...)`` (torch.rand, randint, randperm) drawn where ``generator`` lives, then moved
    to ``device``: a CPU generator gives the same numbers to a model on any device (the preflight
    compares a GPU's steps with the CPU's this way); a generator on ``device`` costs no copy."""
    where = generator.device if generator is not None else device
    return fn(*shape, device=where, generator=generator, **kw).to(device)


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
    """Synthetic hard negatives for each query.

    Args:
        q: [B, D] L2-normalised queries.
        queue: [K, D] L2-normalised negatives, one per row, K >= mixing.N. Never modified.
        mixing: (N, s, s'), already checked when it was made.
        generator: source of randomness (on any device: see ``draw``); the global one if None.
        l_neg: optional [B, K] precomputed ``q @ queue.T`` so the caller's logits are reused.
        removed: optional [B, K] bool, True where the class oracle removed the entry from the
            query's negatives; such an entry is never mixed (see the module's note).

    Returns:
        [B, s + s_prime, D] detached, in float32: the first s from negative pairs, the last s_prime
        from the query; unit-norm, or zero for a point whose query has too few kept entries to make it.

    Example:
        >>> q = F.normalize(torch.randn(4, 8), dim=1); queue = F.normalize(torch.randn(32, 8), dim=1)
        >>> synthesize(q, queue, Mixing(N=8, s=5, s_prime=2)).shape
        torch.Size([4, 7, 8])
    """
    B, D = q.shape
    N, s, s_prime = mixing.N, mixing.s, mixing.s_prime
    q = q.detach().float()
    queue = queue.detach().float()
    if not mixing.active:
        return q.new_zeros(B, 0, D)

    dev = q.device
    count = None  # [B, 1] each query's hard-set size under the oracle; N for all without it
    if removed is not None:
        l_neg = (q @ queue.T if l_neg is None else l_neg).masked_fill(removed, float("-inf"))
        count = (~removed).sum(dim=1, keepdim=True).clamp(max=N)
    hard = hardest(q, queue, N, l_neg)  # [B, N] queue rows
    if removed is not None:
        # Kept entries first: a query's hard set is then its first `count` positions.
        hard = hard.gather(1, removed.gather(1, hard).int().argsort(dim=1, stable=True))

    def positions(size: int, fewer: int = 0) -> torch.Tensor:
        """[B, size] positions drawn uniformly in [0, N - fewer), or in [0, count - fewer) per query."""
        if count is None:
            return draw(torch.randint, 0, N - fewer, (B, size), device=dev, generator=generator)
        high = (count - fewer).clamp(min=1)  # a point that cannot be made draws 0, then is zeroed
        u = draw(torch.rand, B, size, device=dev, generator=generator)
        return torch.minimum((u * high).long(), high - 1)  # u * high may round up to high in fp32

    def made(points: torch.Tensor, needed: int) -> torch.Tensor:
        """``points`` [B, n, D], zero for a query with fewer than ``needed`` kept entries."""
        return points if count is None else points.masked_fill((count < needed)[:, :, None], 0.0)

    parts = []
    if s > 0:
        # Sample positions inside each query's hard set first and gather only the rows needed:
        # cheaper than materialising the whole [B, N, D] hard set.
        pi = positions(s)
        pj = positions(s, fewer=1)
        pj = pj + (pj >= pi).long()  # uniform over the positions other than pi
        ni = queue[hard.gather(1, pi)]  # [B, s, D]
        nj = queue[hard.gather(1, pj)]
        a = draw(torch.rand, B, s, 1, device=dev, generator=generator)
        parts.append(made(F.normalize(a * ni + (1 - a) * nj, dim=-1), 2))
    if s_prime > 0:
        pj = positions(s_prime)
        nj = queue[hard.gather(1, pj)]
        b = 0.5 * draw(torch.rand, B, s_prime, 1, device=dev, generator=generator)
        parts.append(made(F.normalize(b * q[:, None, :] + (1 - b) * nj, dim=-1), 1))
    return torch.cat(parts, dim=1)


def synthetic_logits(q: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """q . h for each query and its own synthetic points: [B, D] x [B, S, D] -> [B, S]; -inf for a
    point not made (h = 0, see ``synthesize``), which the losses then leave out.

    The gradient flows into q only; h is a constant.
    """
    return torch.einsum("bd,bsd->bs", q.float(), h).masked_fill(~h.any(dim=-1), float("-inf"))
