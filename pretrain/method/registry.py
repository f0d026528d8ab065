"""The registry of contrastive losses: each loss is one module of ``pretrain.method`` that holds its
formula and a ``KIND`` (``LossKind``): its parameters with their neutral values and ranges, its
label and short name, what it reduces to at neutral values, and how many queue negatives it keeps.
``Loss`` (the value a run trains with), the ``loss:`` section of the config, the grid's loss axes,
cell names, labels and "is this plain MoCo v2" are all derived from it.

A fifth loss is its module (formula + ``KIND``), its name in ``LOSS_MODULES``, and its mirrored test.

Example:
    >>> [k.name for k in KINDS.values()]
    ['infonce', 'debiased', 'hcl', 'ring']
    >>> [p.name for p in PARAMS]
    ['tau_plus', 'beta', 'ring_outer', 'ring_inner']

This module and the loss modules load without torch (they import it where a loss is computed).
"""

from __future__ import annotations

from importlib import import_module

from .losskind import LossKind, Param

# The modules of pretrain.method that each define one loss (``KIND``), in the order their
# parameters are listed (the positional order of ``Loss``'s fields).
LOSS_MODULES = ("infonce", "debiased", "hcl", "ring")


def _kinds() -> dict[str, LossKind]:
    kinds = [import_module(f"{__package__}.{m}").KIND for m in LOSS_MODULES]
    return {k.name: k for k in kinds}


KINDS: dict[str, LossKind] = _kinds()
METHODS: tuple[str, ...] = tuple(KINDS)
# Every loss parameter once, in the order the losses introduce them.
PARAMS: tuple[Param, ...] = tuple({p.name: p for k in KINDS.values() for p in k.params}.values())
