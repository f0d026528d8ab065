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
from pathlib import Path

from pretrain.run import rundir
from pretrain.run.checkpoint import atomic_write
from pretrain.run.cli import setup_logging
from pretrain.run.errors import UserError
from pretrain.run.tracking import open_run, transfer_stage
from transfer import data, trials
from transfer.stages import D2Settings
from transfer.weights import d2_checkpoint
from transfer.recipes import (CONFIG_DIR, DATASETS, RECIPES, data_kind, recipe_gpus, resolve)

log = logging.getLogger(__name__)
# The COCO evaluator's summary figures that trials report (per-class APs are left in detectron2's log).
COCO_FIGURES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LOG_EVERY = 20  # iterations between training points in MLflow (the torchvision path's period)


def require_detectron2() -> None:
    """UserError unless detectron2 can be imported."""
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise UserError("detectron2 is not installed (build it from its source: docs/transfer.md, "
                        "'Building detectron2'); "
                        "mochi-transfer is the torchvision path that runs without it") from None


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
