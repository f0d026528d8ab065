"""The synthesis setting, MoCHi's (N, s, s') and the family's other counts, as one value, checked
once where it is made.

The kinds and their formulas are in ``pretrain.method.synthetic`` (one module each, listed by its
registry); the draws in ``pretrain.method.mochi``. This module needs neither torch nor the rest of
the project: a command that only reads settings (a grid's dry run, a table, ``--help``) loads it in
milliseconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .synthetic.registry import COUNTS, KINDS, MOCHI, PARAMS


@dataclass(frozen=True)
class Mixing:
    """The paper's MoCHi (N, s, s'): N hardest queue negatives per query, s pair-mixed and s'
    query-mixed synthetic negatives; and the counts of the family's other kinds drawn from the same
    N (SynCo's: s_noise, s_extrap, s_grad, s_adv; the reweighted control s_reweight) with their
    parameters (sigma, extrap_max, delta, eta). Its fields are the registry's counts and parameters,
    in its order. Raises ValueError on construction for a setting that cannot be trained.

    Example:
        >>> Mixing(1024, 1024, 128).notation
        'MoCHi (1024, 1024, 128)'
        >>> Mixing(1024, s_extrap=256).notation
        'extrapolation 256 (N 1024)'
        >>> Mixing(64, 0, 0).active   # N alone synthesises nothing
        False
    """

    N: int = 0
    s: int = 0
    s_prime: int = 0
    s_noise: int = 0
    s_extrap: int = 0
    s_grad: int = 0
    s_adv: int = 0
    s_reweight: int = 0
    sigma: float = KINDS["s_noise"].params[0].neutral
    extrap_max: float = KINDS["s_extrap"].params[0].neutral
    delta: float = KINDS["s_grad"].params[0].neutral
    eta: float = KINDS["s_adv"].params[0].neutral

    def __post_init__(self) -> None:
        for name in ("N", *COUNTS):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        for p in PARAMS:
            p.check(getattr(self, p.name))
        plain = " (plain MoCo v2 is N = 0 and every count 0)" if self.N == 0 else ""
        for name, n in self.counts.items():
            need = KINDS[name].sources
            if n > 0 and self.N < need:
                what = "mixes pairs of distinct hard negatives" if need == 2 else "is made from the N hardest negatives"
                raise ValueError(f"{name}={n} {what} and needs N >= {need}, got N={self.N}{plain}")

    def check_queue(self, K: int) -> None:
        """Raise ValueError if the N hardest negatives cannot be taken from a queue of K entries."""
        if self.N > K:
            raise ValueError(f"N={self.N} hard negatives cannot be taken from a queue of K={K}")

    @property
    def counts(self) -> dict[str, int]:
        """Every kind's count, in the registry's order (the order of the logit columns)."""
        return {name: getattr(self, name) for name in COUNTS}

    @property
    def synthetic(self) -> int:
        """Synthetic negatives per query: the sum of the counts (s + s' for MoCHi)."""
        return sum(self.counts.values())

    @property
    def active(self) -> bool:
        """True when it synthesises something (N alone selects nothing to mix)."""
        return self.synthetic > 0

    @property
    def has_mochi(self) -> bool:
        """True when it makes MoCHi's own points (s or s' > 0)."""
        return any(self.counts[k] for k in MOCHI)

    @property
    def others(self) -> dict[str, int]:
        """The counts of the kinds beyond MoCHi's that it makes (> 0), in the registry's order."""
        return {k: n for k, n in self.counts.items() if n and k not in MOCHI}

    def _params_of(self, name: str, form: str) -> str:
        return "".join(form.format(p=p, v=getattr(self, p.name)) for p in KINDS[name].params
                       if getattr(self, p.name) != p.neutral)

    @property
    def notation(self) -> str:
        """The paper's notation ``MoCHi (N, s, s')``, then the family's other kinds with their counts
        (and a parameter away from its default): ``MoCHi (1024, 256, 256) + noise 64 (sigma 0.1)``;
        ``extrapolation 256 (N 1024)`` without MoCHi's kinds."""
        others = [f"{KINDS[k].label} {n}{self._params_of(k, ' ({p.name} {v:g})')}" for k, n in self.others.items()]
        if self.has_mochi or not others:
            return " + ".join([f"MoCHi ({self.N}, {self.s}, {self.s_prime})", *others])
        return f"{' + '.join(others)} (N {self.N})"

    @property
    def slug(self) -> str:
        """The setting in a file or run name: ``mochi-N1024-s1024-sp128``, ``-sx256`` etc. after it
        for the other kinds (``-sn64-sig0.1`` with a parameter away from its default);
        ``syn-N1024-sx256`` without MoCHi's kinds."""
        others = "".join(f"-{KINDS[k].short}{n}{self._params_of(k, '-{p.short}{v:g}')}" for k, n in self.others.items())
        if self.has_mochi or not others:
            return f"mochi-N{self.N}-s{self.s}-sp{self.s_prime}{others}"
        return f"syn-N{self.N}{others}"

    @property
    def method(self) -> str:
        """``mochi`` when it makes MoCHi's kinds only, ``synthetic`` when it makes others."""
        return "synthetic" if self.others else "mochi"

    @property
    def reduced(self) -> Mixing:
        """The simplest setting that trains alike: PLAIN when nothing is synthesised, else every
        parameter of a kind it does not make at its default."""
        if not self.active:
            return PLAIN
        unused = {p.name: p.neutral for k, p in ((k, p) for k in COUNTS for p in KINDS[k].params) if not self.counts[k]}
        return dataclasses.replace(self, **unused)


PLAIN = Mixing()
