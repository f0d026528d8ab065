"""``mochi-transfer-d2 SOURCE --task TASK --data DIR [--gpus N] [--device cuda|cpu] [--iters N] [KEY VALUE ...]``:
the paper's transfer protocol with detectron2 (MoCo's detection recipe), each of ``--trials`` runs
through detectron2's ``DefaultTrainer``; mean and std over trials go to ``OUT/summary.json``.

detectron2 is not installable from PyPI for current PyTorch; build it from its source
(docs/transfer.md, "Building detectron2"). Without it this command refuses with one line;
``mochi-transfer`` is the torchvision path that runs everywhere. The settings and their command line
are ``transfer.stages``; the training is ``transfer.train_d2``.
"""

from __future__ import annotations

import sys

from pretrain.run.cli import execute, setup_logging

from .metrics import summary_lines
from .stages import d2_parser, d2_settings


def main(argv: list[str] | None = None) -> int:
    """Parse, run every trial, print the summary."""
    argv = sys.argv[1:] if argv is None else argv
    s = d2_settings(argv)
    setup_logging()
    from .train_d2 import run

    summary = run(s, discard=d2_parser().parse_intermixed_args(argv).discard_trials)
    print("\n".join(summary_lines(summary, f"{s.task} (detectron2)")), flush=True)
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-transfer-d2``)."""
    execute(main)


if __name__ == "__main__":
    entry()
