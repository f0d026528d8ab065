"""MoCHi's setting (N, s, s') as one value, checked once where it is made.

The mixing itself is in ``pretrain.method.mochi``. This module needs neither torch nor the rest of
the project: a command that only reads settings (a grid's dry run, a table, ``--help``) loads it in
milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass


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
            raise ValueError(f"s={self.s} mixes pairs of distinct hard negatives and needs N >= 2, got N={self.N}"
                             + (" (plain MoCo v2 is N = s = s_prime = 0)" if self.N == 0 else ""))
        if self.s_prime > 0 and self.N < 1:
            raise ValueError(f"s_prime={self.s_prime} mixes the query with hard negatives and needs N >= 1, got N=0 "
                             f"(plain MoCo v2 is N = s = s_prime = 0)")

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
