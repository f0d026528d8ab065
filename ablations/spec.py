"""What a grid is: a base pretraining preset, typed overrides, a list of cells (axis values) and seeds.

Grid presets live in ``ablations/presets/NAME.yaml`` (one per paper table or figure):

    description: ...
    paper: Table 1                # what it reproduces
    base: imagenet100             # pretraining preset (pretrain/configs/)
    set: {optim.epochs: 200}      # overrides for every cell (a list of KEY=VALUE works too)
    axes: {N: [256, 512], ...}    # values per axis; --sweep crosses the named ones
    cells: [{N: 0, s: 0, s_prime: 0}, ...]   # the paper's rows, used when --sweep is not given
    seeds: 1
    lincls: {fast: true}          # the probe's settings (ProbeSettings fields; none: no probe)
    transfer: {task: voc-c4, data: /datasets/VOCdevkit}   # a transfer stage (engine: detectron2 for train_d2)
    profile: gpu-1
    table: {rows: [N, s, s_prime]}

Axis names follow the papers (N, s, s_prime, K, tau, m, epochs, mix_start, method, tau_plus, beta,
ring_outer, ring_inner; SynCo's kinds s_noise, s_extrap, s_grad, s_adv with sigma, extrap_max,
delta, eta; the control s_reweight; the window's mix_stop, ...); any dotted config key
(``optim.base_lr``) is an axis too. ``axis(name)`` is the one registry: it gives each axis one
name, its config key and its type, and every value that enters a grid (from a preset, the command
line or a saved ``grid.json``) is restored to that type through it.

A stage (``lincls``, ``transfer``) is a mapping of its settings' fields, each checked against the
field's type (``stage_settings``), or the argument list of its command (``[--fast]``, or one string
as ``--lincls`` takes it); both give the same typed settings, and the grid counts a stage by those.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import re
import shlex
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pretrain.method.objective import Objective
from pretrain.method.registry import PARAMS
from pretrain.method.synthetic import registry as synthetic
from pretrain.run import config, rundir, sameness, yamlfile
from pretrain.run.errors import UserError

PRESET_DIR = Path(__file__).resolve().parent / "presets"
# Paper symbols and other short names -> config keys.
AXES = {
    "N": "mochi.N", "s": "mochi.s", "s_prime": "mochi.s_prime", "mix_start": "mochi.mix_start",
    "mix_stop": "mochi.mix_stop",
    # the family's other kinds and their parameters (pretrain.method.synthetic.registry)
    **{k: f"mochi.{k}" for k in synthetic.COUNTS}, **{p.name: f"mochi.{p.name}" for p in synthetic.PARAMS},
    "K": "moco.K", "tau": "moco.tau", "m": "moco.m",
    "epochs": "optim.epochs", "batch_size": "optim.batch_size", "lr": "optim.base_lr",
    "arch": "model.arch", "image_size": "data.image_size",
    # the loss and every registered loss parameter (pretrain.method.registry)
    "method": "loss.method", **{p.name: f"loss.{p.name}" for p in PARAMS},
}
# How a cell name abbreviates an axis: N1024-s1024-sp128, lr0.03, hcl_b1.0_tp0.1, ring_ro0.1_ri0.1.
SHORT = {"base_lr": "lr", "method": "", **{p.name: p.short for p in (*PARAMS, *synthetic.PARAMS)},
         **{k.name: k.short for k in synthetic.KINDS.values()}}
PRESET_KEYS = {"description", "paper", "base", "set", "axes", "cells", "seeds", "lincls", "profile", "table",
               "baseline", "transfer", "random_init", "reference"}
# The preset keys that hold one scalar: its type, and that type in words (a quoted "false" is not
# false, "three" not a count).
PRESET_SCALARS = {"description": (str, "a string"), "paper": (str, "a string"), "base": (str, "a string"),
                  "seeds": (int, "an integer >= 1"), "profile": (str, "a string"),
                  "random_init": (bool, "true or false"), "baseline": ((str, bool), "a cell name or true")}
MIXING_AXES = ("N", *synthetic.COUNTS, *(p.name for p in synthetic.PARAMS))
LOSS_AXES = ("method", *(p.name for p in PARAMS))
PLAIN_LOSS = {"method": "infonce", **{p.name: p.neutral for p in PARAMS}}  # InfoNCE's values


@dataclass(frozen=True)
class Axis:
    """One axis of a grid: its name (the paper's symbol where it has one), its config key, its type."""

    name: str
    key: str

    @property
    def type(self) -> type:
        """The type every value of this axis has (the config leaf's)."""
        return config.leaf_type(self.key)

    def coerce(self, value: object) -> object:
        """``value`` as this axis holds it; UserError naming the axis for a value of the wrong type."""
        try:
            return config.coerce(self.key, value, where=f"axis {self.name}")
        except UserError:
            raise UserError(f"axis {self.name}: {value!r} is not a valid {self.type.__name__} for {self.key}") from None

    def parse(self, text: str) -> list:
        """``"256,512"`` -> [256, 512]: a comma list typed on a command line, each value typed."""
        items = [t.strip() for t in str(text).split(",")]
        if not items or any(not t for t in items):
            raise UserError(f"axis {self.name}: empty value in {text!r}; give a comma list like 256,512")
        return [self.coerce(yaml.safe_load(t)) for t in items]

    def label(self, value: object) -> str:
        """The axis and value in a cell name: ``sp128``, ``K16384``, ``lr0.03``."""
        leaf = self.name.rsplit(".", 1)[-1]
        return f"{SHORT.get(leaf, leaf)}{value}"


def axis(name: str) -> Axis:
    """The axis called ``name`` (a short name or any dotted config key), under its one name: a config
    key that has a short name is that axis (``mochi.s_prime`` is ``s_prime``). UserError for a name
    that is neither."""
    key = AXES.get(name, name)
    try:
        config.leaf_type(key)
    except UserError:
        raise UserError(f"unknown axis {name!r}; axes: {', '.join(AXES)} or any config key like optim.base_lr") from None
    canonical = next((a for a, k in AXES.items() if k == key), key)
    return Axis(canonical, key)


def parse_values(name: str, text: str) -> list:
    """``parse_values("N", "256,512")`` -> [256, 512]."""
    return axis(name).parse(text)


def typed_values(values: Mapping[str, object]) -> dict[str, object]:
    """{axis name: value} under each axis's one name, each value restored to its type."""
    out: dict[str, object] = {}
    for name, value in values.items():
        a = axis(name)
        if a.name in out:
            raise UserError(f"axis {a.name} is given twice ({name!r} and {a.name!r})")
        out[a.name] = a.coerce(value)
    return out


@dataclass
class Cell:
    """One row of a grid: typed values of its axes, in axis order."""

    values: dict[str, object]

    @property
    def id(self) -> str:
        """A name a person can read in a queue: N1024-s1024-sp128_K16384."""
        triple = [axis(a).label(self.values[a]) for a in MIXING_AXES if a in self.values]
        rest = [axis(a).label(v) for a, v in self.values.items() if a not in MIXING_AXES]
        return "_".join(filter(None, ["-".join(triple), *rest])) or "base"

    def settings(self) -> dict[str, object]:
        """{config key: value}: what this cell sets."""
        return {axis(a).key: v for a, v in self.values.items()}


@dataclass(frozen=True)
class Reference:
    """A row measured with the grid's own probe and transfer stages but not pretrained by it: the
    architecture randomly initialised (``path`` None), or a released checkpoint in MoCo's format."""

    name: str
    path: str | None = None

    @property
    def id(self) -> str:
        """The row's name in folders, MLflow tags and tables."""
        return "random-init" if self.path is None else f"released-{self.name}"

    @property
    def kind(self) -> str:
        """``random-init`` or ``released``."""
        return "random-init" if self.path is None else "released"

    @property
    def label(self) -> str:
        """How tables name the row."""
        return "random init" if self.path is None else f"released: {self.name}, evaluated here"


RANDOM_INIT = Reference("random-init")


def parse_references(items: list[str] | Mapping[str, str] | None) -> list[Reference]:
    """Released checkpoints as rows: ``NAME=PATH`` texts (command line) or a mapping {NAME: PATH}
    (preset); UserError for a malformed one or a path that does not exist."""
    if not items:
        return []
    pairs = list(items.items()) if isinstance(items, Mapping) else [str(i).partition("=")[::2] for i in items]
    out = []
    for name, path in pairs:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(name)) or not path:
            raise UserError(f"--reference {name}={path}: give NAME=PATH, NAME of letters, digits, '.', '_' or '-'")
        if not Path(path).is_file():
            raise UserError(f"--reference {name}: {path} does not exist (a checkpoint in MoCo's format)")
        out.append(Reference(str(name), str(Path(path).resolve())))
    if len({r.name for r in out}) < len(out):
        raise UserError("--reference names must differ")
    return out


def parse_set(items: list[str] | Mapping[str, object] | None) -> dict[str, object]:
    """Overrides for every cell, typed: a mapping {key: value} (preset) or ``KEY=VALUE`` texts
    (command line, or a preset's list form)."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {k: config.coerce(k, v, where="set") for k, v in items.items()}
    return dict(config.parse_override(str(t)) for t in items)


def _stage(where: str, value) -> list[str] | dict[str, object] | None:
    """A stage from a preset or the command line: a mapping of its settings, or its argument list
    (None, False or 'none': no stage); UserError for anything else."""
    if value is None or value is False or value == "none":
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        return shlex.split(value)  # quotes keep a detectron2 value with spaces whole: "('a', 'b')"
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{where}: {value!r} is neither a mapping of its settings nor a list of its arguments")
    return [str(v) for v in value]


@dataclass
class Grid:
    """A grid of cells x seeds on one base preset, with its probe and transfer stages."""

    name: str
    base: str
    set: dict[str, object]  # typed overrides for every cell: {"optim.epochs": 3, ...}
    cells: list[Cell]
    seeds: int
    # Each stage as given: a mapping of its settings' fields, or its command's arguments; None = none.
    lincls: list[str] | dict[str, object] | None  # the linear probe (mochi-lincls)
    transfer: list[str] | dict[str, object] | None = None  # ([engine: E,] task: T, data: D, ...)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (cell id, reason)
    merged: list[tuple[str, str]] = field(default_factory=list)  # (cell id, the kept cell it trains as, in words)
    profile: str = "local-cpu"
    table_rows: list[str] = field(default_factory=list)
    paper: str = ""
    preset: str = ""  # the grid preset it came from: keys the reference numbers in results/
    references: list[Reference] = field(default_factory=list)  # rows evaluated but not pretrained here
    baseline: str | None = None  # the cell every row is compared with (default: the first plain-MoCo cell)

    def identity(self) -> dict:
        """What makes two grids the same (and a re-run idempotent): not where or how they run
        (``sameness``: ``--set run.ckpt_every_minutes=20`` or a new data.path is the same grid). A
        stage counts by the typed settings its arguments parse to (``--epochs=2`` is ``--epochs 2``)."""
        probe, transfer = self._probe_settings(STAGE_SOURCE), self._transfer_settings(STAGE_SOURCE)
        return {**self._stored(), "set": sameness.without_how_it_runs(self.set),
                "lincls": None if probe is None else stage_identity(probe),
                "transfer": None if transfer is None else {"engine": transfer.engine, **stage_identity(transfer)}}

    def _stored(self) -> dict:
        """What ``grid.json`` keeps of the identity: the stages as they were given."""
        out = {"name": self.name, "base": self.base, "set": self.set, "seeds": self.seeds,
               "lincls": self.lincls, "transfer": self.transfer, "cells": [c.values for c in self.cells]}
        if self.references:
            out["references"] = [[r.name, r.path] for r in self.references]
        return out

    def row_ids(self) -> list[str]:
        """Every row of the grid's tables, in order: the cells, then the reference rows."""
        return [c.id for c in self.cells] + [r.id for r in self.references]

    @property
    def grid_id(self) -> str:
        """The grid's name and a digest of its identity: the MLflow tag its runs carry."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"

    @property
    def experiment(self) -> str:
        """The MLflow experiment that holds the grid's runs."""
        return f"grid-{self.name}"

    def base_config(self) -> config.Config:
        """The base preset with the grid's overrides, validated (cached)."""
        return _base_config(self.base, tuple(self.set.items()))

    def cfg(self, cell: Cell, seed: int, out: Path, extra: Mapping[str, object] | None = None) -> config.Config:
        """The validated pretraining config of one cell x seed, written to ``out``: its top-N
        statistics over the grid's one ``analysis_N``."""
        return config.with_values(self.base_config(), {**cell.settings(), "eval.analysis_N": self.analysis_N,
                                                        "run.seed": seed, "run.out": str(out), **(extra or {})})

    @property
    def analysis_N(self) -> int:
        """The "N hardest" of every row's hardness and class-oracle statistics: the base's
        ``eval.analysis_N``, at most the smallest queue of the grid (a cell's own K), so that each
        row is measured over the same number of negatives whatever its mixing or K."""
        base = self.base_config()
        return min([base.eval.analysis_N, *(c.settings().get("moco.K", base.moco.K) for c in self.cells)])

    def objective(self, cell: Cell) -> Objective:
        """The loss and (N, s, s') a cell trains with (its own axes, else the base preset's)."""
        return self.cfg(cell, 0, Path("runs/x")).objective

    def probe(self, run_dir: Path, seed: int, ref: Reference | None = None):
        """The linear probe (``ProbeSettings``) of one cell x seed, or of a reference row's seed (its
        data and architecture from the grid's base), or None without a probe stage."""
        if self.lincls is None:
            return None
        source = ref.path if ref is not None and ref.path else str(run_dir)
        s = dataclasses.replace(self._probe_settings(source), seed=seed)
        if ref is not None:
            base = config.with_values(self.base_config(), {"run.seed": seed})
            d, model = base.data, base.model
            s = dataclasses.replace(
                s, arch=s.arch or model.arch, small_stem=s.small_stem or model.small_stem,
                dataset=s.dataset or d.dataset, data_path=s.data_path or d.path,
                class_list=s.class_list or d.class_list, image_size=s.image_size or d.image_size)
            if ref.path is None:  # the initialisation every cell of this seed starts from
                s = dataclasses.replace(s, source=None, random_init=True, pretrain_config=base)
        # The run folder may not exist yet: its probe's folder is placed by the rule, not by looking.
        return dataclasses.replace(s, out=s.out or str(rundir.lincls_dir(run_dir, s.fast, s.random_init)))

    def transfer_stage(self, run_dir: Path, ref: Reference | None = None):
        """The transfer stage of one cell x seed or reference row (``FinetuneSettings`` through
        torchvision, the default; ``D2Settings`` with ``--engine detectron2``), or None."""
        if self.transfer is None:
            return None
        s = self._transfer_settings(ref.path if ref is not None and ref.path else str(run_dir))
        if ref is not None and ref.path is None:
            s = dataclasses.replace(s, source=None, random_init=True)
        return dataclasses.replace(s, out=s.out or str(rundir.transfer_dir(run_dir, s.task, s.random_init, s.engine)))

    def _probe_settings(self, source: str):
        """The probe's settings on ``source`` (``ProbeSettings``), or None without a probe."""
        if self.lincls is None:
            return None
        from pretrain.eval import probe

        if isinstance(self.lincls, Mapping):
            return stage_settings(probe.ProbeSettings, self.lincls, "lincls", source=source)
        try:
            return probe.lincls_settings([source, *self.lincls])
        except UserError as e:
            raise UserError(f"--lincls {' '.join(self.lincls)!r}: {e}") from None

    def _transfer_settings(self, source: str):
        """The transfer stage's settings on ``source`` (``FinetuneSettings`` or ``D2Settings``), or
        None without a transfer stage."""
        if self.transfer is None:
            return None
        from transfer import stages

        if isinstance(self.transfer, Mapping):
            values = dict(self.transfer)
            engine = values.pop("engine", TRANSFER_ENGINES[0])
            classes = {c.engine: c for c in (stages.FinetuneSettings, stages.D2Settings)}
            if not isinstance(engine, str) or engine not in classes:
                raise UserError(f"transfer: engine {engine!r}: one of {', '.join(TRANSFER_ENGINES)}")
            return stage_settings(classes[engine], values, "transfer", source=source, also=("engine",))
        try:
            engine, argv = transfer_engine(self.transfer)
            return stages.SETTINGS[engine]([source, *argv])
        except UserError as e:
            raise UserError(f"--transfer {' '.join(self.transfer)!r}: {e} (e.g. --task voc-c4 --data "
                            f"/datasets/VOCdevkit, or --engine detectron2 --task voc-c4 --data /datasets/VOCdevkit)"
                            ) from None

    @property
    def transfer_task(self) -> str | None:
        """The transfer stage's task (``voc-c4``, ...), or None without one."""
        stage = self.transfer_stage(Path("runs/x"))
        return None if stage is None else stage.task

    def to_json(self) -> str:
        """``grid.json``: the identity plus where and how the grid runs."""
        d = self._stored()
        d.update(grid_id=self.grid_id, profile=self.profile, table_rows=self.table_rows, paper=self.paper,
                 dropped=self.dropped, merged=self.merged, preset=self.preset, baseline=self.baseline)
        return json.dumps(d, indent=1)


# The run folder a stage's arguments are parsed on where no unit is meant (the grid's identity).
STAGE_SOURCE = "runs/x"
# Fields of a stage's settings that are not the grid's to say: the run folder it reads and its seed
# (each unit's), the random-init row's stand-in config, and how it runs (``sameness.HOW_IT_RUNS``:
# where it writes, reads its data and logs, how many loader processes it uses).
NOT_IDENTITY = frozenset({"source", "seed", "pretrain_config"}) | sameness.HOW_IT_RUNS


# Fields of a stage's settings that the grid sets for each unit, not a preset's stage mapping: the
# run folder it reads, its seed and folder, the reference rows' stand-ins, where it logs.
GRID_SETS = frozenset({"source", "seed", "out", "random_init", "pretrain_config", "parent_run", "run_name",
                       "tracking_uri", "experiment"})


def stage_settings(cls: type, values: Mapping[str, object], where: str, also: tuple[str, ...] = (), **fixed):
    """A stage's settings (``cls``: ``ProbeSettings``, ``FinetuneSettings``, ``D2Settings``) from a
    preset's mapping of its fields, each value checked against the field's declared type, with the
    defaults and the ``check()`` its command line has; ``fixed`` holds the fields the grid sets
    (``GRID_SETS``), ``also`` the keys the caller read itself. One-line UserError, prefixed
    ``where``, for an unknown key, a value of the wrong type, a missing field or a failed check."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in GRID_SETS}
    for key in values:
        if key not in fields:
            raise UserError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted([*fields, *also]))}")
    missing = [n for n, f in fields.items() if n not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}: give {', '.join(missing)}")
    types_ = typing.get_type_hints(cls)
    s = cls(**fixed, **{k: config.typed(f"{where} {k}", v, types_[k]) for k, v in values.items()})
    try:
        s.check()
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    return s


def stage_identity(settings) -> dict:
    """{field: value} of a stage's typed settings (``ProbeSettings``, ``FinetuneSettings``,
    ``D2Settings``) that the grid decides, for its identity: every field but ``NOT_IDENTITY``'s."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name not in NOT_IDENTITY}


# The transfer stage's engines: mochi-transfer (torchvision, the default) and mochi-transfer-d2 (detectron2).
TRANSFER_ENGINES = ("torchvision", "detectron2")


def transfer_engine(argv: list[str]) -> tuple[str, list[str]]:
    """(engine, the other arguments) of a transfer stage's argument list: ``--engine detectron2``
    (or ``--engine=...``) anywhere in it; torchvision (``mochi-transfer``) without one."""
    engine, rest, it = "torchvision", [], iter(argv)
    for a in it:
        if a == "--engine":
            engine = next(it, "")
        elif a.startswith("--engine="):
            engine = a.split("=", 1)[1]
        else:
            rest.append(a)
    if engine not in TRANSFER_ENGINES:
        raise UserError(f"--engine {engine!r}: one of {', '.join(TRANSFER_ENGINES)}")
    return engine, rest


@functools.lru_cache(maxsize=16)
def _base_config(base: str, items: tuple) -> config.Config:
    return config.load(base, None, values=items)


def presets() -> list[str]:
    """Names of the shipped grid presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> dict:
    """A grid preset by name or path, as its YAML tree; UserError for a missing, malformed or unknown-keyed one."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown grid preset {name!r}; available: {', '.join(presets())} (or a .yaml path)")
    tree = yamlfile.read(path, f"grid preset {path}") or {}
    if not isinstance(tree, dict):
        raise UserError(f"grid preset {path}: expected a mapping of preset keys, got {type(tree).__name__}")
    bad = sorted(set(tree) - PRESET_KEYS)
    if bad:
        raise UserError(f"grid preset {path}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(PRESET_KEYS))}")
    for key, kind in (("cells", list), ("axes", dict)):
        if tree.get(key) is not None and not isinstance(tree[key], kind):
            raise UserError(f"grid preset {path}: {key} must be a {kind.__name__}")
    for key, (kind, words) in PRESET_SCALARS.items():
        if key in tree and not (isinstance(tree[key], kind) and (kind is not int or not isinstance(tree[key], bool))):
            raise UserError(f"grid preset {path}: {key} must be {words}, got {tree[key]!r}")
    if "seeds" in tree and tree["seeds"] < 1:
        raise UserError(f"grid preset {path}: seeds must be an integer >= 1, got {tree['seeds']!r}")
    if any(not isinstance(c, dict) for c in tree.get("cells") or []):
        raise UserError(f"grid preset {path}: each cell must be a mapping of axis values, like {{N: 0, s: 0}}")
    tree["name"] = path.stem
    return tree


def build(preset: dict, sweep: list[str] | None, values: dict[str, list], seeds: int | None,
          extra_set: list[str] | Mapping[str, object], lincls: list[str] | str | Mapping | None,
          name: str | None = None, transfer: list[str] | str | Mapping | None = None, random_init: bool | None = None,
          references: list[str] | None = None, baseline: str | None = None) -> Grid:
    """Cells from ``--sweep`` (cross product of the named axes) or the preset's cells/axes.

    Values for a swept axis come from ``values`` (command line), else the preset's ``axes``. Cells
    whose config does not validate (s > 0 with N = 0, N > K, ...) are dropped with the reason;
    a grid with no valid cell is refused. Reference rows: the random-init row (``random_init``,
    else the preset's), then the released checkpoints (the preset's, then ``references``).
    ``baseline`` names the cell the tables compare every row with (else the preset's, else the
    first plain-MoCo cell).
    """
    axes_default = {axis(a).name: [axis(a).coerce(v) for v in (vals if isinstance(vals, list) else [vals])]
                    for a, vals in (preset.get("axes") or {}).items()}
    values = {axis(a).name: v for a, v in values.items()}
    if sweep:
        sweep = [axis(a).name for a in sweep]
        repeated = sorted({a for a in sweep if sweep.count(a) > 1})
        if repeated:
            raise UserError(f"--sweep names axis {repeated[0]} more than once")
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
    raw = [typed_values(c) for c in raw]

    grid = Grid(
        name=name or preset["name"], base=preset.get("base", "demo"),
        set={**parse_set(preset.get("set")), **parse_set(extra_set)},
        cells=[], seeds=seeds if seeds is not None else int(preset.get("seeds", 1)),
        lincls=_stage("lincls", preset.get("lincls", []) if lincls is None else lincls),
        profile=preset.get("profile", "local-cpu"),
        table_rows=[axis(a).name for a in (sweep or (preset.get("table") or {}).get("rows") or [])],
        paper=str(preset.get("paper", "")), preset=preset["name"],
        transfer=_stage("transfer", preset.get("transfer") if transfer is None else transfer),
        references=([RANDOM_INIT] if (preset.get("random_init", False) if random_init is None else random_init)
                    else []) + parse_references(preset.get("reference")) + parse_references(references),
        baseline=baseline or (preset["baseline"] if isinstance(preset.get("baseline"), str) else None),
    )
    if grid.seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {grid.seeds}")
    grid.base_config()  # the base itself must be valid
    grid.probe(Path("runs/x"), 0)  # and the stages' arguments must parse
    grid.transfer_stage(Path("runs/x"))
    if preset.get("baseline") is True and not any(_is_plain_moco(grid, c) for c in raw):
        raw.insert(0, _plain_moco_like(grid, raw[0] if raw else {}))
    seen, settings = set(), {}
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
        if cfg.setting in settings:  # the same objective under another name: one cell, said so
            kept, mine = settings[cfg.setting], cfg.objective.label
            theirs = grid.objective(kept).label
            grid.merged.append((cell.id, f"{mine} is {theirs} ({kept.id})" if mine != theirs
                                else f"the same setting as {kept.id} ({theirs})"))
            continue
        settings[cfg.setting] = cell
        grid.cells.append(cell)
    if not grid.cells:
        reasons = "; ".join(f"{c}: {r}" for c, r in grid.dropped[:3])
        raise UserError(f"every cell of the grid is invalid ({reasons})")
    if not grid.table_rows:
        grid.table_rows = list(dict.fromkeys(a for c in grid.cells for a in c.values))
    if grid.baseline is not None and grid.baseline not in {c.id for c in grid.cells}:
        raise UserError(f"--baseline {grid.baseline!r} is not a cell of the grid ({', '.join(c.id for c in grid.cells)})")
    if grid.references and grid.lincls is None and grid.transfer is None:
        raise UserError("reference rows need a probe or a transfer stage to measure them (--lincls or --transfer)")
    return grid


def _is_plain_moco(grid: Grid, values: dict[str, object]) -> bool:
    """Whether a cell's objective is plain MoCo v2 (``Objective.is_plain_moco``, the one rule); a
    cell whose config does not validate is not (it will be dropped)."""
    try:
        return grid.objective(Cell(values)).is_plain_moco
    except UserError:
        return False


def _plain_moco_like(grid: Grid, like: dict[str, object]) -> dict[str, object]:
    """The values of a plain MoCo v2 cell with ``like``'s other axes (K, epochs, ...): (N, s, s') =
    (0, 0, 0) and every other count 0 that ``like`` or the base sets, and InfoNCE where ``like``
    names a loss or the base's is another."""
    base_objective = grid.base_config().objective
    values = ({k: v for k, v in like.items() if k not in (*MIXING_AXES, *LOSS_AXES)} | {"N": 0, "s": 0, "s_prime": 0}
              | {k: 0 for k, n in base_objective.mixing.counts.items() if k in like or n})
    base = base_objective.loss
    if any(k in like for k in LOSS_AXES) or not base.is_infonce:
        # A parameter is named only where the cell or the base sets it: other cells keep their ids.
        values |= {k: v for k, v in PLAIN_LOSS.items() if k == "method" or k in like or getattr(base, k) != v}
    return typed_values(values)


def read_grid_file(path: Path) -> tuple[Grid, str | None]:
    """The grid a folder's ``grid.json`` at ``path`` describes, and the grid id it was written with
    (an earlier version of grid.py may have computed another); UserError in one line for a file that
    cannot be read or is not one (cut short, edited, from another program)."""
    try:
        d = json.loads(Path(path).read_text())
        return from_dict(d), d.get("grid_id")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: not a grid.json this version can read ({e.__class__.__name__}: "
                        f"{' '.join(str(e).split())[:160]}); was it cut short or edited?") from None


def from_json(text: str) -> Grid:
    """The grid a folder's ``grid.json`` describes, every value restored to its type."""
    return from_dict(json.loads(text))


def from_dict(d: dict) -> Grid:
    """The grid of ``grid.json``'s parsed content (``from_json``)."""
    cells = [Cell(typed_values(v)) for v in d["cells"]]
    return Grid(name=d["name"], base=d["base"], set=parse_set(d["set"]), cells=cells,
                seeds=int(d["seeds"]), lincls=d["lincls"], dropped=[tuple(x) for x in d.get("dropped", [])],
                merged=[tuple(x) for x in d.get("merged", [])],
                profile=d.get("profile", "local-cpu"), table_rows=[axis(a).name for a in d.get("table_rows", [])],
                paper=d.get("paper", ""), preset=d.get("preset", ""), transfer=d.get("transfer"),
                references=[Reference(n, p) for n, p in d.get("references", [])], baseline=d.get("baseline"))
