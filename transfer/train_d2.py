"""``mochi-transfer-d2 SOURCE --task TASK --data DIR [--gpus N] [--device cuda|cpu] [--iters N] [KEY VALUE ...]``:
the paper's transfer protocol with detectron2 (MoCo's detection recipe).

SOURCE is what ``mochi-transfer`` takes (a pretraining run folder, one of this
project's checkpoints or a MoCo-format checkpoint; ``--random-init`` for the baseline); it is
converted to detectron2's format once (``OUT/weights-d2.pkl``, as ``transfer/convert.py`` writes
it; written again only when the source's weights change, ``OUT/weights-d2.json`` says from what). Each of ``--trials`` runs (default 5, as MoCo) trains with its own seed through detectron2's
``DefaultTrainer``: training, PreciseBN, and one evaluation at the end (VOC AP50/AP/AP75 from the
Pascal VOC evaluator, COCO box and mask AP from the COCO evaluator). Every trial is an MLflow
child of the pretraining run, tagged and named as the torchvision path's trials, so the grid
tables read either; mean and std over trials go to ``OUT/summary.json``.

``--data`` is the folder holding VOC2007/ (and VOC2012/) for VOC tasks, the COCO folder holding
annotations/ and the image folders for COCO tasks; its layout is checked before anything is built.
``--gpus`` worker processes (one per GPU) train with 2 images each: batch, learning rate and
schedule scale to them from the recipe's 8 GPUs. ``--iters`` sets the number of iterations (steps
and warm-up scale with it); trailing ``KEY VALUE`` pairs are detectron2 config options applied
last, as in detectron2's and MoCo's ``train_net.py``. Trials resume from their last detectron2
checkpoint; finished trials are not run again. Either happens only with the settings the trial was
trained with (``transfer.trials.fingerprint``, in each trial's settings.json): other settings are
refused in one line, unless ``--discard-trials``. The VOC splits' annotations are checked against
the classes each split is registered with before anything trains.

Each trial runs in a process of its own: detectron2 configures its loggers per process (a console
and a ``log.txt`` handler each time ``setup_logger`` meets a new output folder), so trials that
shared one process would log every console line once per earlier trial and write into the earlier
trials' ``log.txt``. Multi-GPU trials get fresh worker processes from detectron2's ``launch``
anyway; a fresh process per trial gives one-GPU and CPU trials the same clean start.

detectron2 is not installable from PyPI for current PyTorch; build it from its source
(docs/transfer.md, "Building detectron2"). Without it this command refuses with one line; ``mochi-transfer`` is
the torchvision path that runs everywhere.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pretrain.run import rundir
from pretrain.run.checkpoint import atomic_write
from pretrain.run.cli import ArgumentParser, execute, parse_tags, setup_logging
from pretrain.run.errors import UserError
from pretrain.run.tracking import open_run, transfer_stage
from transfer import data, trials
from transfer.convert import d2_checkpoint
from transfer.metrics import format_summary, trials_phrase
from transfer.recipes import (CONFIG_DIR, DATASETS, RECIPES, check_layout, data_kind, recipe_gpus, resolve,
                              scale_for_gpus, with_iters)

log = logging.getLogger(__name__)
DEVICES = ("cuda", "cpu")
# Config keys this command sets itself: the stage's folder layout, the trial seeds, --device, SOURCE.
OWN_KEYS = {"OUTPUT_DIR": "--out", "SEED": "the trial number", "MODEL.DEVICE": "--device", "MODEL.WEIGHTS": "SOURCE"}
# The COCO evaluator's summary figures that trials report (per-class APs are left in detectron2's log).
COCO_FIGURES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LOG_EVERY = 20  # iterations between training points in MLflow (the torchvision path's period)
CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*")


def require_detectron2() -> None:
    """UserError unless detectron2 can be imported."""
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise UserError("detectron2 is not installed (build it from its source: docs/transfer.md, "
                        "'Building detectron2'); "
                        "mochi-transfer is the torchvision path that runs without it") from None


@dataclass
class D2Settings(trials.StageSettings):
    """One detectron2 transfer stage (N trials of one recipe of transfer/recipes.py on one source),
    as ``mochi-transfer-d2`` and a grid's transfer job describe it."""

    engine: ClassVar[str] = "detectron2"
    device: str = "cuda"
    gpus: int | None = None  # worker processes, one per GPU; default: the recipe's (8) on cuda, 1 on cpu
    iters: int | None = None  # default: the recipe's at this GPU count; steps and warm-up scale with it
    opts: list[str] = field(default_factory=list)  # detectron2 KEY VALUE options, applied last

    @property
    def workers(self) -> int:
        """Processes a trial trains in: ``gpus``, else the recipe's GPU count on cuda, 1 on a CPU."""
        if self.gpus is not None:
            return self.gpus
        return recipe_gpus(resolve(self.task)) if self.device == "cuda" else 1

    def check_data(self) -> None:
        """UserError naming the first path the recipe's datasets need that ``data`` lacks
        (``recipes.check_layout``): checked where the stage is asked for, before anything is built
        or submitted."""
        check_layout(self.task, self.data, self.opts)

    def check(self) -> None:
        """UserError for a task, number, device or option that cannot run (nothing is read)."""
        resolve(self.task)
        for flag, value in (("--trials", self.trials), ("--iters", self.iters), ("--gpus", self.gpus)):
            if value is not None and value < 1:
                raise UserError(f"{flag} {value}: must be >= 1")
        if self.device not in DEVICES:
            raise UserError(f"--device {self.device!r}: one of {', '.join(DEVICES)}")
        if self.device == "cpu" and self.workers > 1:
            raise UserError(f"--device cpu trains in one process; --gpus {self.gpus} counts GPUs")
        if self.source is None and not self.random_init:
            raise UserError("a transfer stage needs a source, or --random-init")
        if len(self.opts) % 2:
            raise UserError(f"detectron2 options come as KEY VALUE pairs; {self.opts[-1]!r} has no value")
        for key in self.opts[::2]:
            if not CONFIG_KEY.fullmatch(key):
                raise UserError(f"{key!r} is not a detectron2 config key (options are KEY VALUE, e.g. "
                                f"SOLVER.CHECKPOINT_PERIOD 1000)")
            if key in OWN_KEYS:
                raise UserError(f"{key} is set by train_d2.py (from {OWN_KEYS[key]}), not as an option")

    def solver(self) -> dict:
        """The recipe's SOLVER section scaled to ``workers`` GPUs, then to ``iters`` iterations."""
        cfg = scale_for_gpus(resolve(self.task), self.workers)
        return (with_iters(cfg, self.iters) if self.iters else cfg)["SOLVER"]


def register_extra_norm_head() -> None:
    """MoCo's ROI head: detectron2's Res5ROIHeads with one more norm layer after res5."""
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    if "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY:
        return

    @ROI_HEADS_REGISTRY.register()
    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        def _build_res5_block(self, cfg):
            seq, out_channels = super()._build_res5_block(cfg)
            seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return seq, out_channels


def registered_classes(name: str, root: str | Path) -> list[str] | None:
    """The classes ``register_datasets`` gives dataset ``name`` under ``root``: VOC's 20, or the
    local set's own (``classes.txt``); None for a COCO split, which reads its own from its JSON."""
    d = DATASETS[name]
    if d.kind != "voc":
        return None
    return data.voc_class_names(root) if d.own_classes else list(data.VOC_CLASSES)


def check_classes(names: list[str], num_classes: int, root: str | Path) -> None:
    """UserError, before anything trains, unless the VOC splits among dataset ``names`` (a config's
    DATASETS.TRAIN and TEST) are registered with one class list, the model has as many classes
    (``num_classes``, MODEL.ROI_HEADS.NUM_CLASSES), and every object their annotations name is in it
    (detectron2 fails on the first that is not: for a test split, at the evaluation, after the whole
    schedule)."""
    root = Path(root)
    names = list(dict.fromkeys(names))
    lists = {n: registered_classes(n, root) for n in names}
    voc = [n for n in names if lists[n] is not None]
    if not voc:
        return
    first = voc[0]
    for n in voc[1:]:
        if lists[n] != lists[first]:
            raise UserError(f"{n} has {len(lists[n])} classes ({', '.join(lists[n][:3])}, ...), {first} "
                            f"{len(lists[first])} ({', '.join(lists[first][:3])}, ...): a model trains and "
                            f"tests on one class list")
    classes = lists[first]
    if num_classes != len(classes):
        raise UserError(f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}, but {first} has {len(classes)} classes")
    for n in voc:
        d = DATASETS[n]
        for name, where in data.voc_object_names(root / f"VOC{d.year}", d.split).items():
            if name not in classes:
                raise UserError(f"--data {root}: {where} has an object {name!r}, not one of the {len(classes)} "
                                f"classes {n} is registered with ({', '.join(classes[:3])}, ...)")


def register_datasets(names: list[str], root: str | Path) -> None:
    """Register each dataset name the config reads under ``root`` (``--data``): VOC splits with VOC's
    20 classes, or the local set's own (``classes.txt``); COCO splits from their instances JSON.

    detectron2 registers its built-in names (``voc_2007_trainval``, ``coco_2017_train``, ...) when it
    is imported, under $DETECTRON2_DATASETS; they are registered again here so that ``--data`` alone
    says where the data is, for VOC and COCO alike.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.data.datasets.pascal_voc import register_pascal_voc

    root = Path(root)
    for name in names:
        d = DATASETS[name]
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if d.kind == "voc":
            register_pascal_voc(name, str(root / f"VOC{d.year}"), d.split, d.year, registered_classes(name, root))
        else:
            register_coco_instances(name, {}, str(root / "annotations" / f"instances_{d.split}.json"),
                                    str(root / d.split))


def d2_config(s: D2Settings, weights: str, trial: int, out: Path):
    """The frozen detectron2 config of one trial: the recipe, its solver scaled to the GPU count and
    iteration budget, the source's weights, the device, the trial's folder and seed, then ``s.opts``.
    UserError for an option detectron2 does not know or a value of the wrong type."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / RECIPES[s.task]))
    for key, value in s.solver().items():
        setattr(cfg.SOLVER, key, value)
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = s.device
    cfg.OUTPUT_DIR = str(out)
    cfg.SEED = trial
    try:
        cfg.merge_from_list(list(s.opts))
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise UserError(f"detectron2 options {' '.join(s.opts)!r}: {str(e).strip() or type(e).__name__}") from None
    cfg.freeze()
    return cfg


def flat_results(res: dict, kind: str) -> dict[str, float]:
    """An evaluator's nested results as the torchvision path names them: ``AP50``, ``AP``, ``AP75``
    for VOC; ``box_AP``, ``mask_AP``, ... (plus APs, APm, APl) for COCO. NaN where detectron2 has
    no value (no small objects in the test set, say)."""
    if kind == "voc":
        return {k: float(res["bbox"][k]) for k in ("AP", "AP50", "AP75")}
    groups = {"bbox": "box", "segm": "mask"}
    return {f"{groups[g]}_{k}": float(res[g][k]) for g in groups if g in res for k in COCO_FIGURES}


def read_result(path: Path) -> dict[str, float]:
    """A trial's ``result.json`` (null read back as NaN)."""
    return {k: float("nan") if v is None else v for k, v in json.loads(Path(path).read_text()).items()}


def _trial(cfg, root: str, tracking: dict, result_file: str) -> None:
    """One trial, in each worker process: register the data, train with detectron2's
    ``DefaultTrainer`` (PreciseBN and the one final evaluation are its hooks), and on the main
    process log to MLflow and write the evaluator's figures."""
    from detectron2.engine import DefaultTrainer, HookBase, default_setup
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
    from detectron2.utils import comm

    register_extra_norm_head()
    register_datasets(list(dict.fromkeys([*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST])), root)
    kind = DATASETS[cfg.DATASETS.TEST[0]].kind

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            if DATASETS[dataset_name].kind == "voc":
                return PascalVOCDetectionEvaluator(dataset_name)
            return COCOEvaluator(dataset_name, output_dir=output_folder or cfg.OUTPUT_DIR)

    class Track(HookBase):
        """Losses and learning rate to MLflow every LOG_EVERY iterations, named as the torchvision path's."""

        def __init__(self, tracker):
            self.tracker = tracker

        def after_step(self):
            done = self.trainer.iter + 1
            if done % LOG_EVERY and done != self.trainer.max_iter:
                return
            latest = self.trainer.storage.latest_with_smoothing_hint(LOG_EVERY)
            self.tracker.log({("loss" if k == "total_loss" else k): v for k, (v, it) in latest.items()
                              if it == self.trainer.iter and (k in ("total_loss", "lr") or k.startswith("loss_"))},
                             done)

    default_setup(cfg, None)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)  # a requeued job continues from the trial's last checkpoint
    tracker = open_run(Path(cfg.OUTPUT_DIR), **tracking, resume_step=trainer.start_iter) \
        if comm.is_main_process() else None
    if tracker is not None:
        trainer.register_hooks([Track(tracker)])
    with trials.closing(tracker):
        trainer.train()  # evaluates once, after the last iteration (its EvalHook)
        res = getattr(trainer, "_last_eval_results", None)
        if comm.is_main_process():
            if not res:
                raise RuntimeError(f"detectron2 returned no evaluation results for {cfg.DATASETS.TEST}")
            flat = flat_results(res, kind)
            tracker.log({k: v for k, v in flat.items() if math.isfinite(v)}, cfg.SOLVER.MAX_ITER)
            trials.write_json(Path(result_file), flat)


def _process(_index: int, threads: int, workers: int, args: tuple) -> None:
    """The process a trial runs in (see the module's docstring): it starts detectron2's workers."""
    import torch
    from detectron2.engine import launch

    torch.set_num_threads(threads)  # the parent's budget (a grid job's cores), not every core
    setup_logging()
    launch(_trial, workers, dist_url="auto", args=args)


def current_weights(out: Path, digest: str) -> bool:
    """Whether ``OUT/weights-d2.pkl`` holds the source weights of ``digest`` (its weights-d2.json says so)."""
    record = out / rundir.D2_WEIGHTS_SOURCE
    return (out / rundir.D2_WEIGHTS_FILE).is_file() and record.is_file() and \
        json.loads(record.read_text()).get("weights_sha256") == digest


def run(s: D2Settings, discard: bool = False) -> dict:
    """Run (or resume) every trial of ``s``; returns the summary also written to ``OUT/summary.json``.
    UserError before anything is built or written for bad settings, a bad source, a data folder
    missing part of its layout or holding objects of classes its datasets are not registered with,
    detectron2 missing, an unknown option, too few GPUs, or trials in OUT trained with other
    settings; ``discard`` removes OUT's trials first instead (``trials.discard_trials``)."""
    import torch
    import torch.multiprocessing as mp

    s.check()
    out = s.out_dir
    src = trials.origin(s.source, s.random_init, out, parent_run=s.parent_run, tracking_uri=s.tracking_uri,
                        experiment=s.experiment)
    s.check_data()
    require_detectron2()
    weights = out / rundir.D2_WEIGHTS_FILE
    cfgs = [d2_config(s, "" if s.random_init else str(weights), t, rundir.trial_dir(out, t)) for t in range(s.trials)]
    workers, wanted = s.workers, recipe_gpus(resolve(s.task))
    if s.device == "cuda" and torch.cuda.device_count() < workers:
        raise UserError(f"--gpus {workers} but this machine shows {torch.cuda.device_count()} CUDA devices "
                        f"(--gpus N for fewer, --device cpu for a smoke run)")
    if workers < wanted:
        log.warning("%s on %d %s: the synchronised BN batch is %d images, not the recipe's %d; the paper's "
                    "numbers need %d GPUs (the trials are tagged gpus=%d)", s.task, workers,
                    "GPUs" if s.device == "cuda" else "CPU process", cfgs[0].SOLVER.IMS_PER_BATCH,
                    resolve(s.task)["SOLVER"]["IMS_PER_BATCH"], wanted, workers)
    sol = cfgs[0].SOLVER
    recipe = {"device": s.device, "gpus": workers, "recipe_gpus": wanted, "opts": list(s.opts),
              "ims_per_batch": sol.IMS_PER_BATCH, "base_lr": sol.BASE_LR, "max_iter": sol.MAX_ITER,
              "steps": list(sol.STEPS), "warmup_iters": sol.WARMUP_ITERS}
    fp = trials.fingerprint(s, src, recipe)
    done = [False] * s.trials if discard else trials.finished_trials(out, fp, s.trials)
    if not all(done):
        check_classes([*cfgs[0].DATASETS.TRAIN, *cfgs[0].DATASETS.TEST], cfgs[0].MODEL.ROI_HEADS.NUM_CLASSES, s.data)
    if discard:
        trials.discard_trials(out)
    out.mkdir(parents=True, exist_ok=True)
    if src.state is not None and not all(done) and not current_weights(out, src.digest):
        atomic_write(weights, pickle.dumps(d2_checkpoint(src.state)))
        trials.write_json(out / rundir.D2_WEIGHTS_SOURCE, {"source": src.source, "weights_sha256": src.digest})
    kind = data_kind(s.task, s.opts)
    results = []
    for t, cfg in enumerate(cfgs):
        trial_dir = rundir.trial_dir(out, t)
        result_file = trial_dir / rundir.RESULT_FILE
        if not done[t]:
            trials.claim(trial_dir, fp)
            sol = cfg.SOLVER
            tracking = dict(
                uri=src.uri, experiment=src.experiment, stage=transfer_stage(kind), parent=src.parent,
                name=f"transfer-d2-{s.task}_trial{t}{'_random-init' if s.random_init else ''}",
                params={"transfer.engine": s.engine, "transfer.task": s.task, "transfer.device": s.device,
                        "transfer.gpus": workers, "transfer.ims_per_batch": sol.IMS_PER_BATCH,
                        "transfer.base_lr": sol.BASE_LR, "transfer.max_iter": sol.MAX_ITER,
                        "transfer.steps": tuple(sol.STEPS), "transfer.warmup_iters": sol.WARMUP_ITERS,
                        "transfer.opts": " ".join(s.opts)},
                tags=trials.trial_tags(src, s.task, t, s.random_init, s.engine, {
                    **s.tags, "gpus": str(workers), "recipe_gpus": str(wanted), "device": s.device}),
            )
            mp.start_processes(_process, args=(torch.get_num_threads(), workers,
                                               (cfg, str(Path(s.data).resolve()), tracking, str(result_file))),
                               nprocs=1, start_method="spawn")
        results.append(read_result(result_file))
        log.info("trial %d: %s", t, ", ".join(f"{k} {v:.2f}" for k, v in results[-1].items()))
    return trials.write_summary(s, src, results, recipe)


def parser() -> ArgumentParser:
    """The command line of ``mochi-transfer-d2``."""
    p = ArgumentParser(prog="mochi-transfer-d2", description=__doc__.split("\n\n")[0])
    p.add_argument("source", nargs="?", help="run folder, this project's checkpoint, or a MoCo-format checkpoint")
    p.add_argument("--task", choices=sorted(RECIPES), help="recipe (transfer/configs/)")
    p.add_argument("--data", help="the folder holding VOC2007/ and VOC2012/ (VOC tasks), or the COCO folder holding "
                                  "annotations/ and the image folders (COCO tasks)")
    p.add_argument("--device", choices=DEVICES, default="cuda", help="cuda (default) or cpu (a smoke run)")
    p.add_argument("--gpus", type=int, help="worker processes, one per GPU (default: the recipe's 8 on cuda, 1 on "
                                            "cpu); batch, lr and schedule scale to them")
    p.add_argument("--iters", type=int, help="iterations (default: the recipe's at this GPU count); steps and "
                                             "warm-up scale with it")
    p.add_argument("--trials", type=int, default=5, help="fine-tuning runs with seeds 0..n-1 (default 5, as MoCo)")
    p.add_argument("--random-init", action="store_true", help="baseline: detectron2's random initialisation")
    p.add_argument("--out", help="output folder (default: SOURCE_RUN/transfer-d2-TASK[-random-init])")
    p.add_argument("--discard-trials", action="store_true",
                   help="remove the output folder's trials (and summary.json) first, to train them again with "
                        "these settings; without it, trials trained with other settings are refused")
    p.add_argument("--parent-run", help="MLflow parent run id (default: the source run's pretraining run)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow tag (repeatable)")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE",
                   help="detectron2 config options, applied last (e.g. SOLVER.CHECKPOINT_PERIOD 1000)")
    return p


def settings(argv: list[str]) -> D2Settings:
    """The detectron2 transfer stage an argument list describes (UserError for a malformed one)."""
    # intermixed: KEY VALUE pairs after the flags, SOURCE before them, as train_net.py users write them
    a = parser().parse_intermixed_args(argv)
    if a.source is not None and CONFIG_KEY.fullmatch(a.source) and not Path(a.source).exists():
        a.source, a.opts = None, [a.source, *a.opts]  # --random-init without SOURCE: the first word was a KEY
    if not a.task or not a.data or (a.source is None and not a.random_init):
        raise UserError("give SOURCE (or --random-init), --task and --data")
    s = D2Settings(source=a.source, task=a.task, data=a.data, trials=a.trials, device=a.device, gpus=a.gpus,
                   iters=a.iters, opts=list(a.opts), random_init=a.random_init, out=a.out, parent_run=a.parent_run,
                   tags=parse_tags(a.tag))
    s.check()
    return s


def main(argv: list[str] | None = None) -> int:
    """Parse, run every trial, print the summary."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    s = settings(argv)
    setup_logging()
    summary = run(s, discard=parser().parse_intermixed_args(argv).discard_trials)
    for t, res in enumerate(summary["trials"]):
        print(f"trial {t}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()), flush=True)
    print(f"{s.task} (detectron2) over {trials_phrase(len(summary['trials']))}: {format_summary(summary['summary'])}")
    print(f"wrote {Path(summary['out']) / rundir.SUMMARY_FILE}")
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-transfer-d2``)."""
    execute(main)


if __name__ == "__main__":
    entry()
