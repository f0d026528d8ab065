"""``python -m pretrain.lincls SOURCE``: the linear probe of MoCo's main_lincls.py on a frozen backbone.

SOURCE is a pretraining run folder, one of this project's checkpoints, or a checkpoint in MoCo's
format (``state_dict`` with ``module.encoder_q.*`` keys). The probe itself is
``pretrain.eval.lincls.run``; this module turns the command line into its ``ProbeSettings``.
"""

from __future__ import annotations

from .eval.lincls import PRESETS, ProbeSettings
from .eval.lincls import run as run_probe
from .method.encoders import ARCHS
from .run import config, rundir
from .run.cli import ArgumentParser, parse_tags, execute, setup_logging
from .run.errors import UserError


def parser() -> ArgumentParser:
    """The command line of ``python -m pretrain.lincls``."""
    p = ArgumentParser(prog="python -m pretrain.lincls",
                       description="Linear classification on a frozen backbone, following MoCo's main_lincls.py.")
    p.add_argument("source", help="a run folder, this project's checkpoint, or a MoCo-format checkpoint")
    p.add_argument("--preset", choices=sorted(PRESETS), help="schedule (default: the run's data: demo for "
                   "fashion-mnist, imagenet1k otherwise)")
    p.add_argument("--fast", action="store_true", help="train on cached centre-crop features (labelled 'fast')")
    p.add_argument("--arch", choices=ARCHS, metavar="ARCH", help="architecture of a MoCo-format checkpoint "
                   "(default resnet50; any torchvision ResNet/ResNeXt/Wide-ResNet)")
    p.add_argument("--small-stem", action="store_true", help="the checkpoint uses the small-image stem")
    p.add_argument("--data", choices=config.DATASETS, help="dataset (default: the run's)")
    p.add_argument("--data-path", help="dataset root (ImageNet root with train/ and val/)")
    p.add_argument("--class-list", help="class list file (e.g. imagenet100.txt)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--epochs", type=int)
    p.add_argument("--milestones", help="comma list of epochs where lr is multiplied by --gamma")
    p.add_argument("--gamma", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--train-size", type=int, default=0, help="use the first n training images (0 = all)")
    p.add_argument("--val-size", type=int, default=0, help="use the first n validation images (0 = all)")
    p.add_argument("--workers", type=int, default=ProbeSettings("").workers, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-init", action="store_true",
                   help="baseline: the same architecture randomly initialised (SOURCE gives arch and data only)")
    p.add_argument("--out", help="output folder (default: SOURCE_RUN/lincls-MODE[-random-init])")
    p.add_argument("--parent-run", help="MLflow parent run id (default: the source run's pretraining run)")
    p.add_argument("--run-name", help="MLflow run name (default: lincls-MODE_SOURCE)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="extra MLflow tag (repeatable)")
    return p


def settings(argv: list[str]) -> ProbeSettings:
    """The probe an argument list describes (UserError for a malformed one)."""
    a = parser().parse_args(argv)
    try:
        milestones = tuple(int(m) for m in a.milestones.split(",")) if a.milestones else None
    except ValueError:
        raise UserError(f"--milestones {a.milestones!r}: give a comma list of epochs, e.g. 60,80") from None
    s = ProbeSettings(
        source=a.source, preset=a.preset, fast=a.fast, arch=a.arch, small_stem=a.small_stem, dataset=a.data,
        data_path=a.data_path, class_list=a.class_list, image_size=a.image_size, lr=a.lr, epochs=a.epochs,
        milestones=milestones, gamma=a.gamma, batch_size=a.batch_size, train_size=a.train_size,
        val_size=a.val_size, workers=a.workers, seed=a.seed, random_init=a.random_init, out=a.out,
        parent_run=a.parent_run, run_name=a.run_name, tags=parse_tags(a.tag),
    )
    s.check()
    return s


def main(argv: list[str] | None = None) -> int:
    """Parse, run the probe, print its result."""
    import sys

    s = settings(sys.argv[1:] if argv is None else argv)
    setup_logging()
    result = run_probe(s)
    label = " (fast: cached centre-crop features)" if s.fast else ""
    print(f"linear top-1 {result['top1_best']:.2f} (best, epoch {result['best_epoch']}), "
          f"{result['top1_last']:.2f} (last); top-5 {result['top5_best']:.2f}{label}")
    parent = result["parent_run"]
    print(f"wrote {result['out']}/{rundir.LINCLS_FILE}" + (f"; MLflow run {result['mlflow_run_id']} (child of {parent})"
                                                  if parent else ""))
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-lincls``)."""
    execute(main)


if __name__ == "__main__":
    execute(main)
