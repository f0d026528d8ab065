"""What a run trains: its loss and its MoCHi mixing, as one value, and the one place that says
whether that is plain MoCo v2 and how tables, tags and run names call it.

This module imports nothing else of the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .loss import Loss
from .mixing import Mixing


@dataclass(frozen=True)
class Objective:
    """A loss (InfoNCE, debiased, HCL, Ring) with a mixing (MoCHi's N, s, s', or none).

    Example:
        >>> Objective(Loss("hcl", 0.1, 1.0), Mixing(1024, 1024, 128)).label
        'HCL (beta 1.0, tau+ 0.1) + MoCHi (1024, 1024, 128)'
        >>> Objective(mixing=Mixing(64, 0, 0)).is_plain_moco   # N alone synthesises nothing
        True
    """

    loss: Loss = field(default_factory=Loss)
    mixing: Mixing = field(default_factory=Mixing)

    @property
    def reduced(self) -> Objective:
        """The simplest objective that trains alike: the loss's reductions (``Loss.reduced``) and no
        mixing where nothing is synthesised (N alone selects nothing to mix). Two settings whose
        reduced objectives are equal are one setting.

        Example:
            >>> Objective(Loss("debiased", 0.0), Mixing(64, 0, 0)).reduced == Objective()
            True
        """
        return Objective(self.loss.reduced, self.mixing.reduced)

    @property
    def is_plain_moco(self) -> bool:
        """True when the step is exactly MoCo v2's: InfoNCE or a loss that reduces to it (debiased at
        tau+ 0, ...), and no synthetic negatives (whatever N)."""
        return self.reduced == Objective()

    @property
    def method(self) -> str:
        """The ``method`` tag of a run: mocov2, mochi, synthetic (a kind beyond MoCHi's), debiased,
        hcl, ring, or one of the last three + mochi or + synthetic."""
        if self.loss.is_infonce:
            return self.mixing.method if self.mixing.active else "mocov2"
        return self.loss.method + (f"+{self.mixing.method}" if self.mixing.active else "")

    @property
    def label(self) -> str:
        """How tables and figures name it: ``MoCo v2``, ``MoCHi (N, s, s')``, ``HCL (beta 1.0, tau+ 0.1)``,
        a loss + MoCHi, and ``MoCo v2 + extrapolation 256 (N 1024)`` for the family's other kinds."""
        if not self.mixing.active:
            return "MoCo v2" if self.loss.is_infonce else self.loss.label
        base = "" if self.loss.is_infonce and self.mixing.has_mochi else ("MoCo v2" if self.loss.is_infonce
                                                                           else self.loss.label) + " + "
        return base + self.mixing.notation

    @property
    def slug(self) -> str:
        """It in a file or run name: ``mocov2``, ``mochi-N1024-s1024-sp128``, ``hcl-b1-tp0.1``, ..."""
        if self.loss.is_infonce:
            return self.mixing.slug if self.mixing.active else "mocov2"
        return self.loss.slug + (f"_{self.mixing.slug}" if self.mixing.active else "")
