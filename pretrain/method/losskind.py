"""What the registry of losses (``pretrain.method.registry``) knows of a loss and of a parameter:
the types each loss module's ``KIND`` is made of. This module imports nothing else of the project.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """A loss parameter: its name (the paper's symbol, or the authors' code's), its neutral value
    (the one at which a loss that does not take it is defined), its range, its short name in a grid
    cell's name (``tp0.1``) and a line of help."""

    name: str
    neutral: float
    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    short: str = ""
    help: str = ""

    @property
    def range(self) -> str:
        """The range in words: ``in [0, 1)``, ``>= 0``."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def check(self, value: float) -> None:
        """ValueError unless ``value`` is a finite number in the range."""
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ValueError(f"{self.name} must be a finite number, got {value!r}")
        low_ok = value > self.low if self.low_open else value >= self.low
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (low_ok and high_ok):
            raise ValueError(f"{self.name} must be {self.range}, got {value}")


@dataclass(frozen=True)
class LossKind:
    """One loss, as the registry knows it. The callables take the ``Loss`` value.

    name: ``loss.method``'s value. params: the parameters it takes. label, slug: it in words and in a
    file or run name. compute(loss, logits, tau, synthetic): the mean loss of logits [B, 1 + M]
    already divided by tau, the last ``synthetic`` columns MoCHi's points. reduces(loss): the
    (method, parameters) of a simpler loss it equals at these values (debiased at tau+ 0 is InfoNCE),
    or None. kept(loss, K): how many of K queue negatives it keeps.
    """

    name: str
    params: tuple[Param, ...]
    label: Callable[[Any], str]
    slug: Callable[[Any], str]
    compute: Callable[..., Any]
    reduces: Callable[[Any], tuple[str, dict[str, float]] | None] = lambda loss: None
    kept: Callable[[Any, int], int] = lambda loss, K: K
