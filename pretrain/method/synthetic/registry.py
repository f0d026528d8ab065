"""The registry of synthetic hard negatives: each kind is one module of
``pretrain.method.synthetic`` that holds its formula (``points``, and ``logits`` where q . h has a
closed form) and a ``KIND`` (``SynthKind``): its count's name, label, short name, parameters with
their defaults and ranges. The ``mochi:`` section of the config, ``Mixing``'s fields, the grid's
axes, cell names, labels and statistics all follow it.

Every kind draws from one per-query hard set, the N queue entries most similar to the query
(``HardSet``), appends its own logit columns (label 0), is detached and never enqueued, and
counts only inside the synthesis window (``mochi.mix_start``, ``mochi.mix_stop``).

The order below is the order the kinds draw their random numbers and append their columns:
MoCHi's two kinds first, as before this registry (so a MoCHi run is bit-identical for its seed),
then the kinds whose points the loss needs, then those it computes in closed form.

Example:
    >>> [k.name for k in KINDS.values()]
    ['s', 's_prime', 's_noise', 's_extrap', 's_grad', 's_adv', 's_reweight']
    >>> [p.name for p in PARAMS]
    ['sigma', 'extrap_max', 'delta', 'eta']

This module and the kind modules load without torch (they import it where points are made).
"""

from __future__ import annotations

from importlib import import_module

from ..losskind import Param
from .kind import SynthKind

KIND_MODULES = ("pair_mix", "query_mix", "noise", "extrapolate", "gradient", "adversarial", "reweight")


def _kinds() -> dict[str, SynthKind]:
    kinds = [import_module(f"{__package__}.{m}").KIND for m in KIND_MODULES]
    return {k.name: k for k in kinds}


KINDS: dict[str, SynthKind] = _kinds()
MODULES: dict[str, str] = dict(zip(KINDS, KIND_MODULES))  # count name -> module name
COUNTS: tuple[str, ...] = tuple(KINDS)
PARAMS: tuple[Param, ...] = tuple(p for k in KINDS.values() for p in k.params)
MOCHI: tuple[str, ...] = ("s", "s_prime")  # the paper's two kinds


def module(name: str):
    """The module of the kind whose count is ``name`` (imports torch where it computes)."""
    return import_module(f"{__package__}.{MODULES[name]}")
