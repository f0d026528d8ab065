"""The contrastive loss a run trains with, as one value: ``Loss(method, tau_plus, beta)``.

- ``infonce``: MoCo v2's InfoNCE (``pretrain.method.infonce``), the default;
- ``debiased``: Chuang et al. 2020 with class prior ``tau_plus`` (``pretrain.method.debiased``); not
  lightly's ``DCLLoss``, which is the decoupled loss of Yeh et al., another method;
- ``hcl``: Robinson et al. 2021, the debiased estimator with negatives weighted by exp(``beta`` l)
  (``pretrain.method.hcl``).

Checked once, where it is made; each method's formula and the choices its authors' code makes are
in its own module. This module imports nothing else of the project.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .debiased import debiased
from .hcl import hcl
from .infonce import infonce

METHODS = ("infonce", "debiased", "hcl")


@dataclass(frozen=True)
class Loss:
    """A contrastive loss with its parameters (paper symbols: tau_plus, beta); ValueError on
    construction for one that is not defined (unknown method, tau_plus outside [0, 1), beta < 0,
    or a parameter the method does not have)."""

    method: str = "infonce"
    tau_plus: float = 0.0
    beta: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0.0 <= self.tau_plus < 1.0:
            raise ValueError(f"tau_plus must be in [0, 1), got {self.tau_plus}")
        if self.beta < 0.0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.method == "infonce" and (self.tau_plus or self.beta):
            raise ValueError("tau_plus and beta belong to the debiased and hcl losses; infonce takes neither")
        if self.method == "debiased" and self.beta:
            raise ValueError("beta belongs to the hcl loss; the debiased loss is hcl with beta = 0")

    @property
    def is_infonce(self) -> bool:
        """True for MoCo v2's own loss."""
        return self.method == "infonce"

    @property
    def label(self) -> str:
        """The loss in words: ``InfoNCE``, ``debiased (Chuang et al., tau+ 0.1)``, ``HCL (beta 1.0, tau+ 0.1)``."""
        if self.method == "debiased":  # the authors named: "DCL" also names Yeh et al.'s decoupled loss
            return f"debiased (Chuang et al., tau+ {self.tau_plus:g})"
        if self.method == "hcl":
            return f"HCL (beta {self.beta:.1f}, tau+ {self.tau_plus:g})"
        return "InfoNCE"

    @property
    def slug(self) -> str:
        """The loss in a file or run name: ``infonce``, ``debiased-tp0.1``, ``hcl-b1-tp0.1``."""
        if self.method == "debiased":
            return f"debiased-tp{self.tau_plus:g}"
        if self.method == "hcl":
            return f"hcl-b{self.beta:g}-tp{self.tau_plus:g}"
        return "infonce"

    def __call__(self, logits: torch.Tensor, tau: float) -> torch.Tensor:
        """The mean loss of ``logits`` [B, 1 + M] (already divided by ``tau``, positive in column 0)."""
        if self.method == "debiased":
            return debiased(logits, tau, self.tau_plus)
        if self.method == "hcl":
            return hcl(logits, tau, self.tau_plus, self.beta)
        return infonce(logits)


INFONCE = Loss()
