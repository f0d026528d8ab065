"""``python transfer/train_d2.py --task voc-c4 --weights OUT.pkl --data /datasets --gpus 8``: the
paper's transfer protocol with detectron2 (MoCo's detection recipe).

detectron2 is not installable from PyPI for current PyTorch; build it from its source (README,
"Transfer"). Without it this command refuses with one line; ``python -m transfer.finetune`` is
the torchvision path that runs everywhere. ``--weights`` comes from ``python transfer/convert.py``.
Each of ``--trials`` runs (default 5, as MoCo) trains with its own seed; mean and std of the
evaluator's AP figures go to ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pretrain.run.checkpoint import atomic_write
from pretrain.run.cli import ArgumentParser, execute
from pretrain.run.errors import UserError
from transfer.metrics import format_summary, summarize_trials
from transfer.recipes import CONFIG_DIR, RECIPES, resolve, scale_for_gpus


def require_detectron2() -> None:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        raise UserError("detectron2 is not installed (build it from its source: README, 'Transfer'); "
                        "python -m transfer.finetune is the torchvision path that runs without it") from None


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


def d2_config(task: str, weights: str, gpus: int, out: Path, seed: int):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / RECIPES[task]))
    solver = scale_for_gpus(resolve(task), gpus)["SOLVER"]
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR = solver["IMS_PER_BATCH"], solver["BASE_LR"]
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = solver["MAX_ITER"], solver["STEPS"]
    cfg.SOLVER.WARMUP_ITERS = solver.get("WARMUP_ITERS", cfg.SOLVER.WARMUP_ITERS)
    cfg.MODEL.WEIGHTS = weights
    cfg.OUTPUT_DIR = str(out)
    cfg.SEED = seed
    cfg.freeze()
    return cfg


def train_one(cfg) -> dict:
    """One trial: detectron2's DefaultTrainer with the VOC or COCO evaluator; returns its AP figures."""
    from detectron2.engine import DefaultTrainer, default_setup
    from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

    register_extra_norm_head()

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            if "voc" in dataset_name:
                return PascalVOCDetectionEvaluator(dataset_name)
            return COCOEvaluator(dataset_name, output_dir=output_folder or cfg.OUTPUT_DIR)

    default_setup(cfg, None)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)  # a requeued job continues from OUTPUT_DIR's last checkpoint
    trainer.train()
    res = Trainer.test(cfg, trainer.model)
    flat = {}
    for group, values in res.items():  # {"bbox": {"AP": .., "AP50": ..}, "segm": {...}}
        for k, v in values.items():
            flat[f"{'box' if group == 'bbox' else 'mask'}_{k}" if "coco" in cfg.DATASETS.TEST[0] else k] = float(v)
    return flat


def _trial(cfg, result_file: str) -> None:
    """One trial in each launched process; the main process writes the result."""
    from detectron2.utils import comm

    res = train_one(cfg)
    if comm.is_main_process():
        atomic_write(Path(result_file), json.dumps(res).encode())


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python transfer/train_d2.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=sorted(RECIPES))
    p.add_argument("--weights", required=True, help="detectron2 .pkl from transfer/convert.py")
    p.add_argument("--data", required=True, help="folder holding VOC2007/, VOC2012/ or coco/ (DETECTRON2_DATASETS)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs on this machine; batch, lr and schedule scale to them")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not Path(args.weights).is_file():
        raise UserError(f"--weights {args.weights} does not exist (make it with transfer/convert.py)")
    if not Path(args.data).is_dir():
        raise UserError(f"--data {args.data} does not exist")
    require_detectron2()
    os.environ["DETECTRON2_DATASETS"] = str(Path(args.data).resolve())
    from detectron2.engine import launch

    out = Path(args.out)
    results = []
    for t in range(args.trials):
        trial = out / f"trial{t}"
        done = trial / "result.json"
        if not done.is_file():
            cfg = d2_config(args.task, args.weights, args.gpus, trial, t)
            launch(_trial, args.gpus, dist_url="auto", args=(cfg, str(done)))
        results.append(json.loads(done.read_text()))
    summary = summarize_trials(results)
    atomic_write(out / "summary.json", json.dumps({"task": args.task, "trials": results, "summary": summary,
                                                   "weights": args.weights, "path": "detectron2"}, indent=1).encode())
    print(f"{args.task} (detectron2) over {len(results)} trials: {format_summary(summary)}")
    return 0


if __name__ == "__main__":
    execute(main)
