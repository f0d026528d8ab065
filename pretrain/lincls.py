"""``mochi-lincls SOURCE``: the linear probe of MoCo's main_lincls.py on a frozen backbone.

SOURCE is a pretraining run folder, one of this project's checkpoints, or a checkpoint in MoCo's
format (``state_dict`` with ``module.encoder_q.*`` keys). The probe itself is
``pretrain.eval.lincls.run``; this module turns the command line into its ``ProbeSettings``.
"""

from __future__ import annotations

from .eval.probe import LR_FACTORS, PRESETS, VAL_SPLIT, ProbeSettings, add_source_flags
from .run import rundir
from .run.cli import ArgumentParser, parse_tags, execute, setup_logging
from .run.errors import UserError


def parser() -> ArgumentParser:
    """The command line of ``mochi-lincls``."""
    p = ArgumentParser(prog="mochi-lincls",
                       description="Linear classification on a frozen backbone, following MoCo's main_lincls.py.")
    add_source_flags(p)
    p.add_argument("--preset", choices=sorted(PRESETS), help="schedule (default: the run's data: demo for "
                   "fashion-mnist, imagenet1k otherwise)")
    p.add_argument("--fast", action="store_true", help="train on cached centre-crop features (labelled 'fast')")
    p.add_argument("--lr", type=float, help="one lr, nothing chosen (default: the preset's; with --fast, chosen "
                   f"on the validation split among the preset's lr x {', '.join(f'{f:g}' for f in LR_FACTORS)})")
    p.add_argument("--lrs", help="comma list of candidate lrs, the one with the best validation top-1 is kept")
    p.add_argument("--val-split", type=float, help="held out of the training images to choose the lr on: a fraction "
                   f"in (0, 1) or a count (default {VAL_SPLIT:g} with candidates to choose among, else 0)")
    p.add_argument("--epochs", type=int, help="probe epochs (default: the preset's)")
    p.add_argument("--milestones", help="comma list of epochs where lr is multiplied by --gamma")
    p.add_argument("--gamma", type=float, help="lr factor at each milestone (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the preset's)")
    p.add_argument("--train-size", type=int, default=0, help="use the first n training images (0 = all)")
    p.add_argument("--test-size", type=int, default=0, help="use the first n test images (0 = all)")
    p.add_argument("--workers", type=int, default=ProbeSettings("").workers, help="data-loading processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the classifier's initialisation and data order")
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
    try:
        lrs = tuple(float(lr) for lr in a.lrs.split(",")) if a.lrs else None
    except ValueError:
        raise UserError(f"--lrs {a.lrs!r}: give a comma list of learning rates, e.g. 1,3,10") from None
    s = ProbeSettings(
        source=a.source, preset=a.preset, fast=a.fast, arch=a.arch, small_stem=a.small_stem, dataset=a.dataset,
        data_path=a.data, class_list=a.class_list, image_size=a.image_size, lr=a.lr, lrs=lrs,
        val_split=a.val_split, epochs=a.epochs,
        milestones=milestones, gamma=a.gamma, batch_size=a.batch_size, train_size=a.train_size,
        test_size=a.test_size, workers=a.workers, seed=a.seed, random_init=a.random_init, out=a.out,
        parent_run=a.parent_run, run_name=a.run_name, tags=parse_tags(a.tag),
    )
    s.check()
    return s


def main(argv: list[str] | None = None) -> int:
    """Parse, run the probe, print its result."""
    import sys

    s = settings(sys.argv[1:] if argv is None else argv)
    setup_logging()
    from .eval.lincls import run as run_probe  # torch: after the command line is checked

    result = run_probe(s)
    sel = result["selection"]
    label = " (fast: cached centre-crop features)" if s.fast else ""
    chosen = (f"chosen among {len(sel['candidates'])} on {sel['val_images']} validation images held out of the "
              f"training split" if sel["val_images"] else "not chosen")
    print(f"linear top-1 {result['top1_last']:.2f}, top-5 {result['top5_last']:.2f} at the last epoch{label}; "
          f"lr {sel['lr']:g} ({chosen}). The best epoch on the test split, MoCo main_lincls's number, "
          f"not used by the tables: {result['top1_best_on_test']:.2f} (epoch {result['best_epoch_on_test']})")
    parent = result["parent_run"]
    print(f"wrote {result['out']}/{rundir.LINCLS_FILE}" + (f"; MLflow run {result['mlflow_run_id']} (child of {parent})"
                                                  if parent else ""))
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-lincls``)."""
    execute(main)


if __name__ == "__main__":
    execute(main)
