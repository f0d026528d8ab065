"""What a grid is: a base pretraining preset, overrides, a list of cells (axis values) and seeds.

Grid presets live in ``ablations/presets/NAME.yaml`` (one per paper table or figure):

    description: ...
    paper: Table 1                # what it reproduces
    base: imagenet100             # pretraining preset (pretrain/configs/)
    set: [optim.epochs=200]       # overrides for every cell
    axes: {N: [256, 512], ...}    # values per axis; --sweep crosses the named ones
    cells: [{N: 0, s: 0, s_prime: 0}, ...]   # the paper's rows, used when --sweep is not given
    seeds: 1
    lincls: [--fast]              # arguments of python -m pretrain.lincls (none: no probe)
    profile: gpu-1
    table: {rows: [N, s, s_prime]}

Axis names follow the paper (N, s, s_prime, K, tau, m, epochs, mix_start, ...); any dotted config
key (``optim.base_lr``) is an axis too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pretrain import config
from pretrain.errors import UserError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
AXES = {
    "N": "mochi.N", "s": "mochi.s", "s_prime": "mochi.s_prime", "mix_start": "mochi.mix_start",
    "K": "moco.K", "tau": "moco.tau", "m": "moco.m",
    "epochs": "optim.epochs", "batch_size": "optim.batch_size", "lr": "optim.base_lr",
    "arch": "model.arch", "image_size": "data.image_size",
}
SHORT = {"s_prime": "sp", "base_lr": "lr"}
PRESET_KEYS = {"description", "paper", "base", "set", "axes", "cells", "seeds", "lincls", "profile", "table",
               "baseline", "transfer"}


def config_key(axis: str) -> str:
    """Axis name -> dotted config key; raises UserError for an unknown one."""
    key = AXES.get(axis, axis)
    sec, _, leaf = key.partition(".")
    probe = config.Config()
    if not leaf or not hasattr(probe, sec) or not hasattr(getattr(probe, sec), leaf):
        raise UserError(
            f"unknown axis {axis!r}; axes: {', '.join(AXES)} or any config key like optim.base_lr"
        )
    return key


def parse_values(axis: str, text: str) -> list:
    """``"256,512"`` -> [256, 512], each checked against the config key's type."""
    key = config_key(axis)
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise UserError(f"axis {axis}: empty value in {text!r}; give a comma list like 256,512")
    values = [yaml.safe_load(t) for t in items]
    for v in values:
        check_value(axis, key, v)
    return values


def check_value(axis: str, key: str, value) -> None:
    cfg = config.Config()
    try:
        config.set_key(cfg, key, value, where=f"axis {axis}")
    except UserError:
        default = config.Config().flat()[key]
        kind = type(default).__name__ if default is not None else "value"
        raise UserError(f"axis {axis}: {value!r} is not a valid {kind} for {key}") from None


def label(axis: str, value) -> str:
    leaf = axis.rsplit(".", 1)[-1]
    return f"{SHORT.get(leaf, leaf)}{value}"


@dataclass
class Cell:
    values: dict  # axis -> value, in axis order

    @property
    def id(self) -> str:
        """A name a person can read in a queue: N1024-s1024-sp128_K16384."""
        triple = [label(a, self.values[a]) for a in ("N", "s", "s_prime") if a in self.values]
        rest = [label(a, v) for a, v in self.values.items() if a not in ("N", "s", "s_prime")]
        return "_".join(filter(None, ["-".join(triple), *rest])) or "base"

    def overrides(self) -> list[str]:
        return [f"{config_key(a)}={v}" for a, v in self.values.items()]


@dataclass
class Grid:
    name: str
    base: str
    set: list[str]
    cells: list[Cell]
    seeds: int
    lincls: list[str] | None  # arguments of python -m pretrain.lincls; None = no linear probe
    transfer: list[str] | None = None  # arguments of python -m transfer.finetune (--task, --data, ...)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (cell id, reason)
    profile: str = "local-cpu"
    table_rows: list[str] = field(default_factory=list)
    paper: str = ""
    preset: str = ""  # the grid preset it came from: keys the reference numbers in results/

    def identity(self) -> dict:
        """What makes two grids the same (and a re-run idempotent): not where or how they run."""
        return {"name": self.name, "base": self.base, "set": self.set, "seeds": self.seeds,
                "lincls": self.lincls, "transfer": self.transfer, "cells": [c.values for c in self.cells]}

    @property
    def grid_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"

    @property
    def transfer_task(self) -> str | None:
        if not self.transfer:
            return None
        argv = " ".join(self.transfer).replace("=", " ").split()
        return argv[argv.index("--task") + 1] if "--task" in argv else None

    def cfg(self, cell: Cell, seed: int, out: Path, extra: list[str] = ()) -> config.Config:
        return config.load(self.base, None, [*self.set, *cell.overrides(), f"run.seed={seed}",
                                             f"run.out={out}", *extra])

    def to_json(self) -> str:
        d = self.identity()
        d.update(grid_id=self.grid_id, profile=self.profile, table_rows=self.table_rows, paper=self.paper,
                 dropped=self.dropped, preset=self.preset)
        return json.dumps(d, indent=1)


def _lincls(value) -> list[str] | None:
    if value in (None, False, "none"):
        return None
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown grid preset {name!r}; available: {', '.join(presets())} (or a .yaml path)")
    tree = yaml.safe_load(path.read_text()) or {}
    bad = sorted(set(tree) - PRESET_KEYS)
    if bad:
        raise UserError(f"grid preset {path}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(PRESET_KEYS))}")
    tree["name"] = path.stem
    return tree


def build(preset: dict, sweep: list[str] | None, values: dict[str, list], seeds: int | None,
          extra_set: list[str], lincls: list[str] | None, name: str | None = None,
          transfer: list[str] | str | None = None) -> Grid:
    """Cells from ``--sweep`` (cross product of the named axes) or the preset's cells/axes.

    Values for a swept axis come from ``values`` (command line), else the preset's ``axes``. Cells
    whose config does not validate (s > 0 with N = 0, N > K, ...) are dropped with the reason;
    a grid with no valid cell is refused.
    """
    axes_default = {a: list(v) for a, v in (preset.get("axes") or {}).items()}
    if sweep:
        for a in sweep:
            config_key(a)
        unknown = sorted(set(values) - set(sweep))
        if unknown:
            raise UserError(f"values given for {unknown[0]!r}, which is not in --sweep {','.join(sweep)}")
        table = {}
        for a in sweep:
            vals = values.get(a) or axes_default.get(a)
            if not vals:
                raise UserError(f"axis {a}: no values (give --{a} v1,v2 or --axis {a}=v1,v2; the preset has none)")
            table[a] = vals
        raw = [dict(zip(table, combo)) for combo in itertools.product(*table.values())]
    elif values:
        raise UserError(f"axis values given ({', '.join(values)}) but no --sweep naming the axes")
    elif preset.get("cells"):
        raw = [dict(c) for c in preset["cells"]]
    elif axes_default:
        raw = [dict(zip(axes_default, combo)) for combo in itertools.product(*axes_default.values())]
    else:
        raw = [{}]
    for cell in raw:
        for a, v in cell.items():
            check_value(a, config_key(a), v)
    if preset.get("baseline") and not any(all(c.get(k) == 0 for k in ("N", "s", "s_prime")) for c in raw):
        raw.insert(0, {**{k: v for k, v in (raw[0] if raw else {}).items() if k not in ("N", "s", "s_prime")},
                       "N": 0, "s": 0, "s_prime": 0})

    grid = Grid(
        name=name or preset["name"], base=preset.get("base", "demo"),
        set=[*(preset.get("set") or []), *extra_set],
        cells=[], seeds=seeds if seeds is not None else int(preset.get("seeds", 1)),
        lincls=_lincls(preset.get("lincls", []) if lincls is None else lincls),
        profile=preset.get("profile", "local-cpu"),
        table_rows=list(sweep or (preset.get("table") or {}).get("rows") or []), paper=str(preset.get("paper", "")),
        preset=preset["name"],
        transfer=_lincls(preset.get("transfer") if transfer is None else transfer),
    )
    if grid.transfer is not None and grid.transfer_task is None:
        raise UserError(f"transfer arguments {' '.join(grid.transfer)!r} name no --task (e.g. --task voc-c4 "
                        f"--data /datasets/VOCdevkit)")
    if grid.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {grid.seeds}")
    config.load(grid.base, None, grid.set)  # the base itself must be valid
    seen = set()
    for values_ in raw:
        cell = Cell(values_)
        if cell.id in seen:
            continue
        seen.add(cell.id)
        try:
            cfg = grid.cfg(cell, 0, Path("runs/x"))
        except UserError as e:
            grid.dropped.append((cell.id, str(e)))
            continue
        if grid.transfer is not None and (cfg.model.arch != "resnet50" or cfg.model.small_stem):
            grid.dropped.append((cell.id, f"the transfer stage needs a standard resnet50, the cell is a {cfg.model.arch}"))
            continue
        grid.cells.append(cell)
    if not grid.cells:
        reasons = "; ".join(f"{c}: {r}" for c, r in grid.dropped[:3])
        raise UserError(f"every cell of the grid is invalid ({reasons})")
    if not grid.table_rows:
        grid.table_rows = list(dict.fromkeys(a for c in grid.cells for a in c.values))
    return grid



def from_json(text: str) -> Grid:
    """The grid a folder's ``grid.json`` describes."""
    d = json.loads(text)
    return Grid(name=d["name"], base=d["base"], set=list(d["set"]), cells=[Cell(v) for v in d["cells"]],
                seeds=int(d["seeds"]), lincls=d["lincls"], dropped=[tuple(x) for x in d.get("dropped", [])],
                profile=d.get("profile", "local-cpu"), table_rows=list(d.get("table_rows", [])),
                paper=d.get("paper", ""), preset=d.get("preset", ""), transfer=d.get("transfer"))
