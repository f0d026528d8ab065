"""The contrastive loss a run trains with, as one value: ``Loss(method, tau_plus, beta, ring_outer, ring_inner)``.

- ``infonce``: MoCo v2's InfoNCE (``pretrain.method.infonce``), the default;
- ``debiased``: Chuang et al. 2020 with class prior ``tau_plus`` (``pretrain.method.debiased``); not
  lightly's ``DCLLoss``, which is the decoupled loss of Yeh et al., another method;
- ``hcl``: Robinson et al. 2021, the debiased estimator with negatives weighted by exp(``beta`` l)
  (``pretrain.method.hcl``);
- ``ring``: Wu et al. 2021, InfoNCE over the queue negatives inside a ring of each query's
  similarities, the top ``ring_outer`` fraction without its own top ``ring_inner`` fraction
  (``pretrain.method.ring``).

Checked once, where it is made. Everything about a method (its parameters, their ranges, its label,
what it reduces to, its formula and the choices its authors' code makes) is in its own module,
registered in ``pretrain.method.registry``; this value's fields are the registry's parameters. It
needs no torch, so that settings load in a command that trains nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .losskind import LossKind
from .registry import KINDS, METHODS, PARAMS

if TYPE_CHECKING:
    import torch

__all__ = ["INFONCE", "METHODS", "Loss"]

# The value's fields: the method, then every registered parameter at its neutral value.
_Fields = dataclasses.make_dataclass(
    "_Fields", [("method", str, dataclasses.field(default="infonce")),
                *((p.name, float, dataclasses.field(default=p.neutral)) for p in PARAMS)], frozen=True)


@dataclass(frozen=True)
class Loss(_Fields):
    """A contrastive loss with its parameters (paper symbols: tau_plus, beta; Ring's bounds as the
    authors' code names them, thres_outer and thres_inner); ValueError on construction for one that
    is not defined (unknown method, a parameter outside its range or not finite, or a parameter the
    method does not take set away from its neutral value). ring_outer = 1 and ring_inner = 0, the
    defaults, are the whole queue: no ring.

    Example:
        >>> Loss("hcl", 0.1, 0.0).reduced == Loss("debiased", 0.1)   # HCL at beta 0 is the debiased loss
        True
        >>> Loss("debiased", 0.0).reduced == INFONCE
        True
    """

    def __post_init__(self) -> None:
        if self.method not in KINDS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        for p in PARAMS:
            p.check(getattr(self, p.name))
        kind = self.kind
        foreign = [p for p in PARAMS if p not in kind.params and getattr(self, p.name) != p.neutral]
        if foreign:
            owners = [k for k in KINDS.values() if foreign[0] in k.params]
            names = [p.name for p in PARAMS if p not in kind.params and any(p in k.params for k in owners)]
            whose = f"the {' and '.join(k.name for k in owners)} loss{'es' if len(owners) > 1 else ''}"
            if len(names) > 1:
                raise ValueError(f"{' and '.join(names)} belong to {whose}; {self.method} takes neither")
            p = foreign[0]
            # (the other loss at the parameter's neutral value is this one: say so)
            at_neutral = [(k.name, k.reduces(dataclasses.replace(self, method=k.name, **{p.name: p.neutral})))
                          for k in owners]
            simpler = [name for name, step in at_neutral if step is not None and step[0] == self.method]
            if simpler:
                raise ValueError(f"{p.name} belongs to {whose}; the {self.method} loss is {simpler[0]} with "
                                 f"{p.name} = {p.neutral:g}")
            raise ValueError(f"{p.name} belongs to {whose}; {self.method} does not take it")

    @property
    def kind(self) -> LossKind:
        """The method's entry in the registry."""
        return KINDS[self.method]

    @property
    def reduced(self) -> Loss:
        """The simplest loss equal to this one: its method's reductions followed to the end (HCL at
        beta 0 and tau+ 0 is InfoNCE). Two settings whose reduced losses are equal train alike."""
        loss = self
        while (step := loss.kind.reduces(loss)) is not None:
            loss = Loss(step[0], **step[1])
        return loss

    def ring_size(self, K: int) -> int:
        """How many of a query's K queue negatives the loss keeps (all but the ring loss keep K)."""
        return self.kind.kept(self, K)

    @property
    def is_infonce(self) -> bool:
        """True for MoCo v2's own loss (not for a loss that only reduces to it: see ``reduced``)."""
        return self.method == "infonce"

    @property
    def label(self) -> str:
        """The loss in words: ``InfoNCE``, ``debiased (Chuang et al., tau+ 0.1)``, ``HCL (beta 1.0, tau+ 0.1)``,
        ``Ring (outer 0.1, inner 0.1)``."""
        return self.kind.label(self)

    @property
    def slug(self) -> str:
        """The loss in a file or run name: ``infonce``, ``debiased-tp0.1``, ``hcl-b1-tp0.1``, ``ring-o0.1-i0.1``."""
        return self.kind.slug(self)

    def __call__(self, logits: torch.Tensor, tau: float, synthetic: int = 0) -> torch.Tensor:
        """The mean loss of ``logits`` [B, 1 + M] (already divided by ``tau``, positive in column 0);
        the last ``synthetic`` columns are MoCHi's points, which only the ring loss tells apart."""
        return self.kind.compute(self, logits, tau, synthetic)


INFONCE = Loss()
