"""Which row of a grid is another's reweighted control: the rule, defined once.

The reweighted control (``pretrain/method/synthetic/reweight.py``) appends copies of hard negatives'
own logits and makes no new point. A cell that makes new synthetic points has a control when the
grid also holds the cell that trains exactly as it does (``Config.setting``: the loss, N, the
window, K, the schedule, ...) except that all its synthetic negatives are such copies: the same N,
``s_reweight`` equal to its count of synthetic points, every other count 0. The row minus its
control then tells "new points" from "more weight on the hardest negatives".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ablations import spec
from pretrain.method.mixing import Mixing
from pretrain.run import config

RUN = Path("runs/x")  # a run folder for the configs compared here (where a run writes is not what it trains)


def control_mixing(m: Mixing) -> Mixing | None:
    """The mixing of ``m``'s reweighted control: N and as many copies as ``m`` has synthetic points;
    None for a mixing that makes no new point (none at all, or copies only)."""
    if not any(n for k, n in m.counts.items() if k != "s_reweight"):
        return None
    return Mixing(m.N, s_reweight=m.synthetic)


def controls(grid: spec.Grid) -> dict[str, str]:
    """{cell id: the id of its reweighted control}, for the grid's cells that have one in the grid."""
    cfgs = {c.id: grid.cfg(c, 0, RUN) for c in grid.cells}
    by_setting = {cfg.setting: cid for cid, cfg in cfgs.items()}
    out = {}
    for cid, cfg in cfgs.items():
        m = control_mixing(cfg.objective.mixing)
        if m is None:
            continue
        control = config.with_values(cfg, {f"mochi.{f.name}": getattr(m, f.name) for f in dataclasses.fields(m)})
        if (found := by_setting.get(control.setting)) is not None:
            out[cid] = found
    return out
