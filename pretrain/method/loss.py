"""The contrastive loss a run trains with, as one value: ``Loss(method, tau_plus, beta, ring_outer, ring_inner)``.

- ``infonce``: MoCo v2's InfoNCE (``pretrain.method.infonce``), the default;
- ``debiased``: Chuang et al. 2020 with class prior ``tau_plus`` (``pretrain.method.debiased``); not
  lightly's ``DCLLoss``, which is the decoupled loss of Yeh et al., another method;
- ``hcl``: Robinson et al. 2021, the debiased estimator with negatives weighted by exp(``beta`` l)
  (``pretrain.method.hcl``);
- ``ring``: Wu et al. 2021, InfoNCE over the queue negatives inside a ring of each query's
  similarities, the top ``ring_outer`` fraction without its own top ``ring_inner`` fraction
  (``pretrain.method.ring``).

Checked once, where it is made; each method's formula and the choices its authors' code makes are
in its own module, imported when a loss is first computed: the value itself needs no torch, so that
settings load in a command that trains nothing. This module imports nothing else of the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

METHODS = ("infonce", "debiased", "hcl", "ring")


@dataclass(frozen=True)
class Loss:
    """A contrastive loss with its parameters (paper symbols: tau_plus, beta; Ring's bounds as the
    authors' code names them, thres_outer and thres_inner); ValueError on construction for one that
    is not defined (unknown method, tau_plus outside [0, 1), beta < 0, ring_outer outside (0, 1],
    ring_inner outside [0, 1), or a parameter the method does not have). ring_outer = 1 and
    ring_inner = 0, the defaults, are the whole queue: no ring."""

    method: str = "infonce"
    tau_plus: float = 0.0
    beta: float = 0.0
    ring_outer: float = 1.0
    ring_inner: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        for name in ("tau_plus", "beta", "ring_outer", "ring_inner"):
            if not math.isfinite(getattr(self, name)):  # NaN would pass every range check below
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)!r}")
        if not 0.0 <= self.tau_plus < 1.0:
            raise ValueError(f"tau_plus must be in [0, 1), got {self.tau_plus}")
        if self.beta < 0.0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0.0 < self.ring_outer <= 1.0:
            raise ValueError(f"ring_outer must be in (0, 1], got {self.ring_outer}")
        if not 0.0 <= self.ring_inner < 1.0:
            raise ValueError(f"ring_inner must be in [0, 1), got {self.ring_inner}")
        if self.method in ("infonce", "ring") and (self.tau_plus or self.beta):
            raise ValueError(f"tau_plus and beta belong to the debiased and hcl losses; {self.method} takes neither")
        if self.method != "ring" and (self.ring_outer != 1.0 or self.ring_inner != 0.0):
            raise ValueError(f"ring_outer and ring_inner belong to the ring loss; {self.method} takes neither")
        if self.method == "debiased" and self.beta:
            raise ValueError("beta belongs to the hcl loss; the debiased loss is hcl with beta = 0")

    def ring_size(self, K: int) -> int:
        """How many of a query's K queue negatives the ring keeps (``pretrain.method.ring``'s counts:
        the outer ball floor(ring_outer K) without its top floor(ring_inner floor(ring_outer K))); K
        for the other losses."""
        if self.method != "ring":
            return K
        outer = math.floor(self.ring_outer * K)
        return outer - math.floor(self.ring_inner * outer)

    @property
    def is_infonce(self) -> bool:
        """True for MoCo v2's own loss."""
        return self.method == "infonce"

    @property
    def label(self) -> str:
        """The loss in words: ``InfoNCE``, ``debiased (Chuang et al., tau+ 0.1)``, ``HCL (beta 1.0, tau+ 0.1)``,
        ``Ring (outer 0.1, inner 0.1)``."""
        if self.method == "debiased":  # the authors named: "DCL" also names Yeh et al.'s decoupled loss
            return f"debiased (Chuang et al., tau+ {self.tau_plus:g})"
        if self.method == "hcl":
            return f"HCL (beta {self.beta:.1f}, tau+ {self.tau_plus:g})"
        if self.method == "ring":
            return f"Ring (outer {self.ring_outer:g}, inner {self.ring_inner:g})"
        return "InfoNCE"

    @property
    def slug(self) -> str:
        """The loss in a file or run name: ``infonce``, ``debiased-tp0.1``, ``hcl-b1-tp0.1``, ``ring-o0.1-i0.1``."""
        if self.method == "debiased":
            return f"debiased-tp{self.tau_plus:g}"
        if self.method == "hcl":
            return f"hcl-b{self.beta:g}-tp{self.tau_plus:g}"
        if self.method == "ring":
            return f"ring-o{self.ring_outer:g}-i{self.ring_inner:g}"
        return "infonce"

    def __call__(self, logits: torch.Tensor, tau: float, synthetic: int = 0) -> torch.Tensor:
        """The mean loss of ``logits`` [B, 1 + M] (already divided by ``tau``, positive in column 0);
        the last ``synthetic`` columns are MoCHi's points, which only the ring loss tells apart."""
        if self.method == "debiased":
            from .debiased import debiased

            return debiased(logits, tau, self.tau_plus)
        if self.method == "hcl":
            from .hcl import hcl

            return hcl(logits, tau, self.tau_plus, self.beta)
        if self.method == "ring":
            from .ring import ring

            return ring(logits, self.ring_outer, self.ring_inner, synthetic)
        from .infonce import infonce

        return infonce(logits)


INFONCE = Loss()
