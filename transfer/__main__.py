"""``mochi-transfer SOURCE --task TASK --data ROOT``: detection transfer through torchvision, the
path that runs wherever PyTorch does.

SOURCE is a pretraining run folder, one of this project's checkpoints or a MoCo-format checkpoint (a
ResNet-50 query encoder), or ``--random-init`` for the baseline. Each of ``--trials`` runs (default
5, as MoCo reports) fine-tunes the whole network with its own seed and evaluates once at the end;
mean and std over trials go to ``OUT/summary.json``, every trial is an MLflow child of the
pretraining run. ``--make-demo-data DIR`` builds the local detection set (tasks ``demo-voc``,
``demo-coco``). The settings and their command line are ``transfer.stages``; the training is
``transfer.finetune``.
"""

from __future__ import annotations

import sys

from pretrain.run.cli import execute, setup_logging

from .metrics import summary_lines
from .stages import finetune_parser, finetune_settings


def main(argv: list[str] | None = None) -> int:
    """Parse, run every trial, print the summary (or build the local detection set)."""
    argv = sys.argv[1:] if argv is None else argv
    a = finetune_parser().parse_args(argv)
    if not a.make_demo_data:
        s = finetune_settings(argv)  # refused here, before torch is imported
    setup_logging()
    from . import data, finetune

    if a.make_demo_data:
        names = data.make_synthetic(a.make_demo_data)["class_names"]
        print(f"wrote {a.make_demo_data}: VOCdevkit/VOC2007 and coco/ ({len(names)} classes); "
              f"--task demo-voc --data {a.make_demo_data}/VOCdevkit or --task demo-coco --data {a.make_demo_data}/coco")
        return 0
    summary = finetune.run(s, discard=a.discard_trials)
    if not summary:
        return 0
    print("\n".join(summary_lines(summary, s.task)), flush=True)
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-transfer``)."""
    execute(main)


if __name__ == "__main__":
    entry()
