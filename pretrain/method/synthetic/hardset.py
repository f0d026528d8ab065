"""Each query's hard set: the N queue entries most similar to it, from which every synthetic kind
draws its sources, and the draws they share.

With the class oracle, the entries it removed for a query (its false negatives) are not that
query's negatives, so they never enter its hard set: the set is its N hardest kept entries, or all
of them when fewer than N are kept, and positions are drawn uniformly within that query's own
count. A point the query cannot make (a pair needs two kept entries, the others one) is the zero
vector, and its logit -inf: it drops out of the loss as a removed negative does. Without the oracle
the draws are plain uniform ones, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def draw(fn, *shape: int, device: torch.device, generator: torch.Generator | None = None, **kw) -> torch.Tensor:
    """``fn(*shape, ...)`` (torch.rand, randn, randint, randperm) drawn where ``generator`` lives,
    then moved to ``device``: a CPU generator gives the same numbers to a model on any device (the
    preflight compares a GPU's steps with the CPU's this way); a generator on ``device`` costs no copy."""
    where = generator.device if generator is not None else device
    return fn(*shape, device=where, generator=generator, **kw).to(device)


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


@dataclass
class HardSet:
    """The hard sets of a batch of queries.

    index: [B, N] queue rows, each query's kept entries first. count: [B, 1] each query's number of
    kept entries (at most N) under the class oracle; None without it (N for every query).
    generator: where the kinds' random numbers come from (the global one if None).
    """

    index: torch.Tensor
    N: int
    count: torch.Tensor | None = None
    generator: torch.Generator | None = None

    @classmethod
    @torch.no_grad()
    def of(cls, q: torch.Tensor, queue: torch.Tensor, N: int, generator: torch.Generator | None = None, *,
           l_neg: torch.Tensor | None = None, removed: torch.Tensor | None = None) -> HardSet:
        """The hard sets of queries q [B, D] in ``queue`` [K, D]; ``l_neg`` optionally q @ queue.T,
        ``removed`` optionally the oracle's [B, K] mask (True: not a negative of that query)."""
        count = None
        if l_neg is not None:
            l_neg = l_neg.detach()
        if removed is not None:
            l_neg = (q @ queue.T if l_neg is None else l_neg).masked_fill(removed, float("-inf"))
            count = (~removed).sum(dim=1, keepdim=True).clamp(max=N)
        index = hardest(q, queue, N, l_neg)
        if removed is not None:
            # Kept entries first: a query's hard set is then its first `count` positions.
            index = index.gather(1, removed.gather(1, index).int().argsort(dim=1, stable=True))
        return cls(index, N, count, generator)

    @property
    def batch(self) -> int:
        return self.index.shape[0]

    @property
    def device(self) -> torch.device:
        return self.index.device

    def rand(self, *shape: int) -> torch.Tensor:
        """U[0, 1) numbers of ``shape``, from the hard set's generator."""
        return draw(torch.rand, *shape, device=self.device, generator=self.generator)

    def randn(self, *shape: int) -> torch.Tensor:
        """N(0, 1) numbers of ``shape``, from the hard set's generator."""
        return draw(torch.randn, *shape, device=self.device, generator=self.generator)

    def positions(self, size: int, fewer: int = 0) -> torch.Tensor:
        """[B, size] positions drawn uniformly in [0, N - fewer), or in [0, count - fewer) per query."""
        B = self.batch
        if self.count is None:
            return draw(torch.randint, 0, self.N - fewer, (B, size), device=self.device, generator=self.generator)
        high = (self.count - fewer).clamp(min=1)  # a point that cannot be made draws 0, then is dropped
        u = self.rand(B, size)
        return torch.minimum((u * high).long(), high - 1)  # u * high may round up to high in fp32

    def rows(self, queue: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The queue entries at hard-set positions ``pos`` [B, n]: [B, n, D]."""
        return queue[self.index.gather(1, pos)]

    def cos(self, l_neg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """q . n of the entries at hard-set positions ``pos`` [B, n], read from ``l_neg`` [B, K]
        (with its gradient, where it has one): [B, n]."""
        return l_neg.gather(1, self.index.gather(1, pos))

    def made(self, x: torch.Tensor, needed: int) -> torch.Tensor:
        """``x`` (points [B, n, D] or logits [B, n]) with the points of a query that has fewer than
        ``needed`` kept entries dropped: zero points, -inf logits."""
        if self.count is None:
            return x
        short = self.count < needed  # [B, 1]
        if x.dim() == 3:
            return x.masked_fill(short[:, :, None], 0.0)
        return x.masked_fill(short, float("-inf"))


def query_dot(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q . v for each query and a constant vector per query (v [B, D], detached): [B, 1], with the
    gradient v into q. The closed forms write a point made from q as a constant times q.detach()
    this way, so that their gradient equals the explicit point's."""
    return (q * v.detach()).sum(dim=1, keepdim=True)


def mix_with_query(q: torch.Tensor, c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """q . normalize(w q + (1 - w) n) [B, n] from c = q . n [B, n] and w [B, n], for unit q and n:

        (w + (1 - w) c) / sqrt(w^2 + (1 - w)^2 + 2 w (1 - w) c),

    written so that its gradient into q is the point (the q inside it and the norm constants): the
    query-mixing (w in [0, 0.5)) and extrapolation (w = 1 - beta <= 0) kinds."""
    norm = torch.sqrt(w * w + (1 - w) * (1 - w) + 2 * w * (1 - w) * c.detach())
    return (w * query_dot(q, q) + (1 - w) * c) / norm
