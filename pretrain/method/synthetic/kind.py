"""What the registry of synthetic negatives (``pretrain.method.synthetic.registry``) knows of a kind:
the type each kind module's ``KIND`` is. This module imports nothing else of the project but the
parameter type the losses use too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..losskind import Param


@dataclass(frozen=True)
class SynthKind:
    """One kind of synthetic hard negative, as the registry knows it.

    name: its count's setting (``mochi.<name>``), the paper's symbol where it has one (``s``,
        ``s_prime``). label: it in words (``extrapolation``). short: it in a cell or run name
        (``sx`` in ``sx256``). stat: its key in the logged statistics (``syn_<stat>_cos``).
    synco: its type number in SynCo (Giakoumoglou & Stathaki 2024), or None for a kind SynCo has not.
    params: its settings beyond the count (``mochi.<param>``), each ``Param``'s ``neutral`` being
        the value a setting takes when unset (SynCo's default). sources: how many hard negatives one
        point is made from (a point a query cannot make, under the class oracle, drops out).
    closed_form: the loss computes q . h from q . n (and what the module's ``logits`` names) without
        the point h; the module's ``points`` is its definition and the tests hold them equal.
    """

    name: str
    label: str
    short: str
    stat: str
    synco: int | None = None
    params: tuple[Param, ...] = ()
    sources: int = 1
    closed_form: bool = False
