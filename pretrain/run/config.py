"""The pretraining config: one typed tree, loaded from a preset or YAML file plus dotted overrides.

Names follow the papers: ``moco.K``, ``moco.m``, ``moco.tau``, ``mochi.N``, ``mochi.s``,
``mochi.s_prime`` (and SynCo's ``mochi.sigma``, ``mochi.delta``, ``mochi.eta``), ``loss.tau_plus``,
``loss.beta``, ``loss.ring_outer``, ``loss.ring_inner``.
``mochi-pretrain --show-config`` prints the resolved tree.

Values enter typed: from YAML files, from ``section.key=value`` text typed on a command line
(read once, as YAML scalars, by ``parse_override``), or as Python values (``with_values``); every
leaf is checked against its declared type where it is set, and the whole tree by ``validate``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..method.archs import ARCHS
from ..method.loss import METHODS, Loss
from ..method.mixing import Mixing
from ..method.objective import Objective
from ..method.registry import PARAMS
from . import sameness, yamlfile
from .errors import UserError

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
DATASETS = ("imagefolder", "fashion-mnist")  # what data.dataset names (and a probe's dataset)
PIPELINES = ("cpu", "gpu", "dali")  # what data.pipeline names (pretrain.input.pipelines builds them)


@dataclass
class ModelCfg:
    arch: str = "resnet50"  # any torchvision ResNet by name
    small_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for 28-64 px images
    dim: int = 128  # output of the MLP head 2048-2048-128 (hidden = backbone width)
    mlp: bool = True  # MoCo v2's MLP head; False gives MoCo v1's linear fc


@dataclass
class MocoCfg:
    K: int = 65536  # queue length; a multiple of the global batch
    m: float = 0.999  # key-encoder momentum
    tau: float = 0.2  # softmax temperature (MoCo v2)
    shuffle_bn_groups: int = 8  # single device only: BN groups that emulate Shuffle BN (1 = off)
    oracle: bool = False  # the paper's class oracle: drop same-label queue entries from logits and mixing


@dataclass
class MochiCfg:
    """Hard-negative synthesis: MoCHi's N, s, s' and the family's other kinds
    (``pretrain.method.synthetic``: each kind's formula, defaults and choices), and its window."""

    N: int = 0  # hardest queue negatives per query, the sources of every kind
    s: int = 0  # MoCHi: synthetic points from pairs of hard negatives (SynCo type 3)
    s_prime: int = 0  # MoCHi: synthetic points from the query and a hard negative (SynCo type 1)
    s_noise: int = 0  # SynCo type 4: a hard negative plus N(0, sigma^2) noise
    s_extrap: int = 0  # SynCo type 2: a hard negative pushed away from the query, q + beta (n - q)
    s_grad: int = 0  # SynCo type 5: a hard negative moved toward the query, n + delta q
    s_adv: int = 0  # SynCo type 6: a hard negative moved one signed step toward it, n + eta sign(q)
    s_reweight: int = 0  # the control: copies of hard negatives' own logits (no new points)
    sigma: float = Mixing.sigma  # s_noise's standard deviation
    extrap_max: float = Mixing.extrap_max  # s_extrap's beta is drawn in [1, extrap_max)
    delta: float = Mixing.delta  # s_grad's step
    eta: float = Mixing.eta  # s_adv's step
    mix_start: int = 0  # first epoch (0-based) with synthesis; ImageNet-100 recipe: 10
    mix_stop: int = 0  # first epoch without synthesis again (0: to the end; SynCo-v2: 100)

    @property
    def mixing(self) -> Mixing:
        """The checked value the method takes; ValueError for an impossible setting."""
        return Mixing(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Mixing)})

    def synthesises_in(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) lies in the synthesis window [mix_start, mix_stop)."""
        return self.mix_start <= epoch and (self.mix_stop == 0 or epoch < self.mix_stop)


def _loss_from_section(self) -> Loss:
    """The checked loss value the training step calls; ValueError for an undefined one."""
    return Loss(self.method, **{p.name: getattr(self, p.name) for p in PARAMS})


# loss: the method (infonce: MoCo v2; debiased: Chuang et al. 2020; hcl: Robinson et al. 2021; ring:
# Wu et al. 2021) and every parameter of the registered losses at its neutral value (each one's
# range and meaning: its ``Param`` in the loss's module, ``pretrain.method.registry``).
LossCfg = dataclasses.make_dataclass(
    "LossCfg", [("method", str, field(default="infonce")),
                *((p.name, float, field(default=p.neutral)) for p in PARAMS)],
    namespace={"loss": property(_loss_from_section), "__module__": __name__})


@dataclass
class OptimCfg:
    epochs: int = 200
    batch_size: int = 256  # global batch, split over ranks
    base_lr: float = 0.03  # for a batch of 256; the lr used is base_lr * batch_size / 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine (per epoch, as MoCo) or constant

    @property
    def lr(self) -> float:
        """The peak learning rate, linearly scaled from ``base_lr`` (given for a batch of 256)."""
        return self.base_lr * self.batch_size / 256


@dataclass
class DataCfg:
    dataset: str = "imagefolder"  # imagefolder or fashion-mnist
    path: str | None = None  # ImageNet root (with train/) or Fashion-MNIST folder
    class_list: str | None = None  # file of class folder names to keep (ImageNet-100)
    image_size: int = 224
    min_scale: float = 0.2  # RandomResizedCrop scale lower bound (aug+)
    blur: bool = True  # aug+'s Gaussian blur; CIFAR-scale recipes drop it
    subset: int = 0  # use only the first n training images (0 = all)
    num_workers: int = 8  # data-loading processes per rank
    pipeline: str = "cpu"  # cpu (PIL + torchvision in workers), gpu (nvjpeg + batched aug+), dali (DALI decoder)
    dtype: str = "auto"  # gpu/dali output: float32, bfloat16, or auto (bfloat16 under CUDA autocast)
    prefetch: int = 2  # gpu/dali: batches decoded and augmented ahead of the step (0 = inline)


@dataclass
class EvalCfg:
    every: int = 0  # kNN + alignment/uniformity monitor every this many epochs and at the end (0 = off)
    knn_k: int = 200
    knn_t: float = 0.07
    knn_train_size: int = 10000  # memory-bank images from the training split (0 = all)
    heldout_size: int = 1000  # held-out (test/val split) images: kNN queries, alignment, uniformity
    analysis_N: int = 1024  # "top-N" of the hardness and class-oracle statistics, whatever mochi.N (at most K)


@dataclass
class RunCfg:
    out: str = "runs/default"  # run folder: config, metrics, checkpoints
    seed: int = 0
    device: str = "auto"  # auto, cpu or cuda
    amp: bool = True  # bf16 autocast on any device (the logits, queue and loss stay fp32)
    channels_last: bool = True  # channels_last memory format for the model and its input, on any device
    compile: bool = False  # torch.compile the encoders
    ckpt_every_minutes: float = 0.0  # extra mid-epoch checkpoints (0 = only at epoch ends)
    ckpt_every_steps: int = 0  # likewise by step count (0 = off)
    keep_checkpoints: int = 2  # newest checkpoints kept; older ones are removed
    log_every: int = 20  # steps between plain log lines / metric points
    max_steps: int = 0  # stop after this many global steps (0 = run all epochs); for smoke runs
    experiment: str = "mochi-bench"  # MLflow experiment
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite under out's parent
    run_name: str | None = None  # MLflow run name; default: derived from the config


@dataclass
class Config:
    model: ModelCfg = field(default_factory=ModelCfg)
    moco: MocoCfg = field(default_factory=MocoCfg)
    mochi: MochiCfg = field(default_factory=MochiCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    data: DataCfg = field(default_factory=DataCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    run: RunCfg = field(default_factory=RunCfg)

    @property
    def objective(self) -> Objective:
        """What the run trains: its loss and its mixing (``pretrain.method.objective``)."""
        return Objective(self.loss.loss, self.mochi.mixing)

    def to_dict(self) -> dict:
        """The tree as plain dictionaries (config.yaml, checkpoints)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, object]:
        """{"mochi.N": 1024, ...}: every leaf under its dotted key."""
        return {f"{sec}.{k}": v for sec, d in self.to_dict().items() for k, v in d.items()}

    @property
    def setting(self) -> tuple[tuple[str, object], ...]:
        """What this config trains and measures, as one typed value: every key but how it runs
        (``sameness.HOW_IT_RUNS``), its seed and the grid's analysis N, with the objective in its
        reduced form (``Objective.reduced``: HCL at beta 0 and tau+ 0, or N alone, is MoCo v2).
        Two configs with equal settings are one setting of a grid (its seeds aside)."""
        o = self.objective.reduced
        flat = {k: v for k, v in sameness.without_how_it_runs(self.flat()).items()
                if k not in ("run.seed", "eval.analysis_N")}
        flat.update({"loss.method": o.loss.method, **{f"loss.{p.name}": getattr(o.loss, p.name) for p in PARAMS},
                     **{f"mochi.{f.name}": getattr(o.mixing, f.name) for f in dataclasses.fields(o.mixing)}})
        if self.mochi.mix_stop >= self.optim.epochs:
            flat["mochi.mix_stop"] = 0  # a window that ends after the run is no window
        if not o.mixing.active:
            flat["mochi.mix_start"] = flat["mochi.mix_stop"] = 0
        return tuple(sorted(flat.items()))


def presets() -> list[str]:
    """Names of the shipped pretraining presets (``pretrain/configs/NAME.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def leaf_type(dotted: str) -> type:
    """The declared type of a config leaf (``int`` for ``"mochi.N"``; ``str`` for ``str | None``);
    UserError for an unknown key."""
    section = _section_type(dotted, "config key")
    typ = typing.get_type_hints(section)[dotted.partition(".")[2]]
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        typ = next(a for a in typing.get_args(typ) if a is not type(None))
    return typ


def _section_type(dotted: str, where: str) -> type:
    sec, _, key = dotted.partition(".")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if sec not in fields or not key:
        raise UserError(f"{where}: unknown config key {dotted!r}; keys look like mochi.N (see --show-config)")
    section = fields[sec].default_factory
    names = {f.name for f in dataclasses.fields(section)}
    if key not in names:
        raise UserError(f"{where}: unknown config key {dotted!r}; {sec} has: {', '.join(sorted(names))}")
    return section


def coerce(dotted: str, value: object, where: str = "override") -> object:
    """``value`` as config leaf ``dotted`` holds it (int -> float widening, YAML's 5e-4 string ->
    float); UserError naming the key, the value and the type for anything else."""
    section = _section_type(dotted, where)
    return typed(f"config key {dotted}", value, typing.get_type_hints(section)[dotted.partition(".")[2]])


def typed(label: str, value: object, typ: object) -> object:
    """``value`` as a field declared ``typ`` holds it: a scalar with int -> float widening (and
    YAML's 5e-4 string -> float), ``X | None``, and a list for ``tuple[X, ...]`` or ``list[X]``, a
    mapping for ``dict[K, V]``, item by item; UserError ``LABEL: VALUE is not a valid TYPE`` else, and
    for a float that is NaN or infinite."""
    allow_none = False
    if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        allow_none = len(args) < len(typing.get_args(typ))
        typ = args[0]
    if value is None:
        if allow_none:
            return None
        raise UserError(f"{label}: null is not allowed, expected {getattr(typ, '__name__', typ)}")
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{label}: {value!r} is not a list of {args[0].__name__}")
        return origin(typed(label, v, args[0]) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{label}: {value!r} is not a mapping of {args[0].__name__} to {args[1].__name__}")
        return {typed(label, k, args[0]): typed(label, v, args[1]) for k, v in value.items()}
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):
        try:  # PyYAML (YAML 1.1) reads 5e-4 as a string
            value = float(value)
        except ValueError:
            pass
    if typ is float and isinstance(value, float) and not math.isfinite(value):
        # NaN passes every range check (each comparison is False) and would train a NaN model
        raise UserError(f"{label}: {value!r} is not a finite number")
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if typ in (int, float) and isinstance(value, bool) or not isinstance(value, typ):
        raise UserError(f"{label}: {value!r} is not a valid {typ.__name__}")
    return value


def _apply(cfg: Config, tree: dict, where: str) -> None:
    if not isinstance(tree, dict):
        raise UserError(f"{where}: expected a mapping of config sections, got {type(tree).__name__}")
    sections = {f.name for f in dataclasses.fields(Config)}
    for sec, body in tree.items():
        if sec not in sections:
            raise UserError(f"{where}: unknown config section {sec!r}; allowed: {', '.join(sorted(sections))}")
        if not isinstance(body, dict):
            raise UserError(f"{where}: section {sec!r} must be a mapping")
        for key, value in body.items():
            set_key(cfg, f"{sec}.{key}", value, where)


def set_key(cfg: Config, dotted: str, value: object, where: str = "override") -> None:
    """Set one leaf, e.g. ``set_key(cfg, "mochi.N", 1024)``, checking key and type."""
    sec, _, key = dotted.partition(".")
    setattr(getattr(cfg, sec), key, coerce(dotted, value, where))


def parse_override(text: str) -> tuple[str, object]:
    """Text typed on a command line as (key, value): the value read once as a YAML scalar and checked
    against the key's type; a path or name is the text itself.

    Example:
        >>> parse_override("mochi.N=1024")
        ('mochi.N', 1024)
        >>> parse_override("run.out=runs/N: 64")
        ('run.out', 'runs/N: 64')
    """
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise UserError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    key = key.strip()
    if value is not None and leaf_type(key) is str:
        value = raw.strip()  # a path or name is the text itself, even where YAML would see a mapping
    return key, coerce(key, value)


def with_values(cfg: Config, values: Mapping[str, object] | Iterable[tuple[str, object]],
                where: str = "override") -> Config:
    """A validated copy of ``cfg`` with typed leaves set, e.g. ``{"mochi.N": 1024, "run.seed": 2}``."""
    out = copy.deepcopy(cfg)
    _set_all(out, values, where)
    validate(out)
    return out


def _set_all(cfg: Config, values: Mapping[str, object] | Iterable[tuple[str, object]], where: str) -> None:
    for key, value in (values.items() if isinstance(values, Mapping) else values):
        set_key(cfg, key, value, where)


def load(preset: str | None = None, path: str | None = None, overrides: Iterable[str] = (),
         values: Mapping[str, object] | Iterable[tuple[str, object]] = ()) -> Config:
    """Defaults <- preset <- YAML file <- ``section.key=value`` overrides <- typed ``values``, then
    validated."""
    cfg = Config()
    sources: list[tuple[str, Path]] = []
    if preset is not None:
        p = PRESET_DIR / f"{preset}.yaml"
        if not p.is_file():
            raise UserError(f"unknown preset {preset!r}; available: {', '.join(presets())}")
        sources.append((f"preset {preset}", p))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {path} does not exist")
        sources.append((str(p), p))
    for where, p in sources:
        _apply(cfg, yamlfile.read(p, where) or {}, where)
    for text in overrides:
        set_key(cfg, *parse_override(text))
    _set_all(cfg, values, "override")
    validate(cfg)
    return cfg


def from_dict(tree: dict) -> Config:
    """Rebuild a Config saved with ``to_dict`` (checkpoints, config.yaml)."""
    cfg = Config()
    _apply(cfg, tree, "saved config")
    return cfg


# The synthetic points of one step, [batch per rank, s + s', dim] fp32, may take at most this much:
# the paper's largest setting (s = s' = 1024 at batch 256, dim 128) takes 0.25 GiB.
MAX_SYNTHETIC_BYTES = 16 * 2**30


def validate(cfg: Config, world_size: int = 1) -> None:
    """Raise UserError naming the key, the value and what is allowed."""
    if cfg.model.arch not in ARCHS:
        raise UserError(f"config key model.arch: unknown architecture {cfg.model.arch!r}; choose one of {', '.join(ARCHS)}")
    positive = {
        "model.dim": cfg.model.dim,
        "moco.K": cfg.moco.K,
        "moco.shuffle_bn_groups": cfg.moco.shuffle_bn_groups,
        "optim.epochs": cfg.optim.epochs,
        "optim.batch_size": cfg.optim.batch_size,
        "data.image_size": cfg.data.image_size,
        "run.keep_checkpoints": cfg.run.keep_checkpoints,
        "run.log_every": cfg.run.log_every,
        "eval.knn_k": cfg.eval.knn_k,
        "eval.knn_t": cfg.eval.knn_t,
        "eval.heldout_size": cfg.eval.heldout_size,
        "eval.analysis_N": cfg.eval.analysis_N,
    }
    for key, v in positive.items():
        if v <= 0:
            raise UserError(f"config key {key}: must be > 0, got {v}")
    non_negative = {
        "mochi.mix_start": cfg.mochi.mix_start,
        "mochi.mix_stop": cfg.mochi.mix_stop,
        "data.subset": cfg.data.subset,
        "data.num_workers": cfg.data.num_workers,
        "data.prefetch": cfg.data.prefetch,
        "run.ckpt_every_minutes": cfg.run.ckpt_every_minutes,
        "run.ckpt_every_steps": cfg.run.ckpt_every_steps,
        "run.max_steps": cfg.run.max_steps,
        "optim.weight_decay": cfg.optim.weight_decay,
        "eval.every": cfg.eval.every,
        "eval.knn_train_size": cfg.eval.knn_train_size,
    }
    for key, v in non_negative.items():
        if v < 0:
            raise UserError(f"config key {key}: must be >= 0, got {v}")
    if not 0.0 <= cfg.moco.m < 1.0:
        raise UserError(f"config key moco.m: must be in [0, 1), got {cfg.moco.m}")
    if not 0.0 <= cfg.optim.momentum < 1.0:
        raise UserError(f"config key optim.momentum: must be in [0, 1), got {cfg.optim.momentum}")
    if cfg.moco.tau <= 0:
        raise UserError(f"config key moco.tau: must be > 0, got {cfg.moco.tau}")
    if cfg.optim.base_lr <= 0:
        raise UserError(f"config key optim.base_lr: must be > 0, got {cfg.optim.base_lr}")
    if not 0.0 < cfg.data.min_scale <= 1.0:
        raise UserError(f"config key data.min_scale: must be in (0, 1], got {cfg.data.min_scale}")
    choices = {
        "optim.schedule": (cfg.optim.schedule, ("cosine", "constant")),
        "data.dataset": (cfg.data.dataset, DATASETS),
        "run.device": (cfg.run.device, ("auto", "cpu", "cuda")),
        "data.pipeline": (cfg.data.pipeline, PIPELINES),
        "data.dtype": (cfg.data.dtype, ("auto", "float32", "bfloat16")),
        "loss.method": (cfg.loss.method, METHODS),
    }
    for key, (v, allowed) in choices.items():
        if v not in allowed:
            raise UserError(f"config key {key}: {v!r} is not one of {', '.join(allowed)}")
    try:
        cfg.mochi.mixing.check_queue(cfg.moco.K)
    except ValueError as e:
        raise UserError(f"config mochi: {e}") from None
    if cfg.mochi.mix_stop and cfg.mochi.mix_stop <= cfg.mochi.mix_start:
        raise UserError(f"config mochi: mix_stop={cfg.mochi.mix_stop} must come after mix_start="
                        f"{cfg.mochi.mix_start} (0: synthesis to the end)")
    try:
        loss = cfg.loss.loss
    except ValueError as e:
        raise UserError(f"config loss: {e}") from None
    if loss.ring_size(cfg.moco.K) < 1:
        raise UserError(f"config loss: {loss.label} keeps no queue negative of a queue of K={cfg.moco.K}; "
                        f"widen it or lengthen the queue")
    per_rank = max(1, cfg.optim.batch_size // world_size)
    synthetic_bytes = per_rank * cfg.mochi.mixing.synthetic * cfg.model.dim * 4
    if synthetic_bytes > MAX_SYNTHETIC_BYTES:
        raise UserError(f"config mochi: {cfg.mochi.mixing.synthetic} synthetic negatives per query "
                        f"need {synthetic_bytes / 2**30:.0f} GiB for a batch of {per_rank} (at most "
                        f"{MAX_SYNTHETIC_BYTES // 2**30} GiB); the paper uses at most a few thousand")
    if cfg.optim.batch_size % world_size:
        raise UserError(
            f"config key optim.batch_size: the global batch {cfg.optim.batch_size} "
            f"does not split evenly over {world_size} ranks"
        )
    if cfg.moco.K % cfg.optim.batch_size:
        raise UserError(
            f"config key moco.K: K={cfg.moco.K} must be a multiple of the global batch "
            f"optim.batch_size={cfg.optim.batch_size}, so the queue is refilled in whole batches"
        )


def dump(cfg: Config) -> str:
    """The config as the YAML that ``--config`` reads back."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
