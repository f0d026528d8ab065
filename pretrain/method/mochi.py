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

``Mixing`` is the setting (N, s, s') as one value, checked once where it is made; with the loss it
makes a run's ``Objective`` (``pretrain.method.objective``), which says whether that is plain MoCo.

This module imports nothing of the project so that it stays checkable beside the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Mixing:
    """The paper's MoCHi (N, s, s'): N hardest queue negatives per query, s pair-mixed and s' query-mixed
    synthetic negatives. Raises ValueError on construction for a setting that cannot be trained.

    Example:
        >>> Mixing(1024, 1024, 128).notation
        'MoCHi (1024, 1024, 128)'
        >>> Mixing(64, 0, 0).active   # N alone synthesises nothing
        False
    """

    N: int = 0
    s: int = 0
    s_prime: int = 0

    def __post_init__(self) -> None:
        for name in ("N", "s", "s_prime"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if self.s > 0 and self.N < 2:
            raise ValueError(f"s={self.s} mixes pairs of distinct hard negatives and needs N >= 2, got N={self.N}")
        if self.s_prime > 0 and self.N < 1:
            raise ValueError(f"s_prime={self.s_prime} mixes the query with hard negatives and needs N >= 1, got N=0")

    def check_queue(self, K: int) -> None:
        """Raise ValueError if the N hardest negatives cannot be taken from a queue of K entries."""
        if self.N > K:
            raise ValueError(f"N={self.N} hard negatives cannot be taken from a queue of K={K}")

    @property
    def synthetic(self) -> int:
        """Synthetic negatives per query: s + s'."""
        return self.s + self.s_prime

    @property
    def active(self) -> bool:
        """True when it synthesises something (N alone selects nothing to mix)."""
        return self.synthetic > 0

    @property
    def notation(self) -> str:
        """The paper's notation: ``MoCHi (N, s, s')``."""
        return f"MoCHi ({self.N}, {self.s}, {self.s_prime})"

    @property
    def slug(self) -> str:
        """The setting in a file or run name: ``mochi-N1024-s1024-sp128``."""
        return f"mochi-N{self.N}-s{self.s}-sp{self.s_prime}"


PLAIN = Mixing()


@torch.no_grad()
def hardest(q: torch.Tensor, queue: torch.Tensor, N: int, l_neg: torch.Tensor | None = None) -> torch.Tensor:
    """Indices [B, N] of each query's N most similar queue entries (unordered).

    q: [B, D], queue: [K, D]; l_neg: optional precomputed q @ queue.T, [B, K].
    """
    if l_neg is None:
        l_neg = q.float() @ queue.float().T
    return l_neg.topk(N, dim=1, sorted=False).indices


@torch.no_grad()
def synthesize(
    q: torch.Tensor,
    queue: torch.Tensor,
    mixing: Mixing,
    generator: torch.Generator | None = None,
    *,
    l_neg: torch.Tensor | None = None,
) -> torch.Tensor:
    """Synthetic hard negatives for each query.

    Args:
        q: [B, D] L2-normalised queries.
        queue: [K, D] L2-normalised negatives, one per row, K >= mixing.N. Never modified.
        mixing: (N, s, s'), already checked when it was made.
        generator: source of randomness (on q's device); the global one if None.
        l_neg: optional [B, K] precomputed ``q @ queue.T`` so the caller's logits are reused.

    Returns:
        [B, s + s_prime, D] unit-norm, detached, in float32: the first s from negative pairs,
        the last s_prime from the query.

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
    hard = hardest(q, queue, N, l_neg)  # [B, N] queue rows
    parts = []
    if s > 0:
        # Sample positions inside each query's hard set first and gather only the rows needed:
        # cheaper than materialising the whole [B, N, D] hard set.
        pi = torch.randint(0, N, (B, s), device=dev, generator=generator)
        pj = torch.randint(0, N - 1, (B, s), device=dev, generator=generator)
        pj = pj + (pj >= pi).long()  # uniform over the N - 1 positions other than pi
        ni = queue[hard.gather(1, pi)]  # [B, s, D]
        nj = queue[hard.gather(1, pj)]
        a = torch.rand(B, s, 1, device=dev, generator=generator)
        parts.append(F.normalize(a * ni + (1 - a) * nj, dim=-1))
    if s_prime > 0:
        pj = torch.randint(0, N, (B, s_prime), device=dev, generator=generator)
        nj = queue[hard.gather(1, pj)]
        b = 0.5 * torch.rand(B, s_prime, 1, device=dev, generator=generator)
        parts.append(F.normalize(b * q[:, None, :] + (1 - b) * nj, dim=-1))
    return torch.cat(parts, dim=1)


def synthetic_logits(q: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """q . h for each query and its own synthetic points: [B, D] x [B, S, D] -> [B, S].

    The gradient flows into q only; h is a constant.
    """
    return torch.einsum("bd,bsd->bs", q.float(), h)
