"""``mochi-convert SOURCE OUT.pkl``: a ResNet-50 query encoder in detectron2's format, for
``MODEL.WEIGHTS``; SOURCE is a pretraining run folder, one of this project's checkpoints or a
MoCo-format checkpoint. The renaming (MoCo's convert-pretrain-to-detectron2.py, without the
projection head) is ``transfer.weights``."""

from __future__ import annotations

import pickle
from pathlib import Path

from pretrain.run.checkpoint import atomic_write
from pretrain.run.cli import ArgumentParser, execute


def parser() -> ArgumentParser:
    """The command line of ``mochi-convert``."""
    p = ArgumentParser(prog="mochi-convert", description="A ResNet-50 query encoder in detectron2's format.")
    p.add_argument("source", help="run folder, this project's checkpoint, or a MoCo-format checkpoint")
    p.add_argument("out", help="output .pkl for detectron2's MODEL.WEIGHTS")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, convert, write the pickle atomically."""
    args = parser().parse_args(argv)
    from .weights import convert

    res = convert(args.source)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, pickle.dumps(res))
    print(f"wrote {out}: {len(res['model'])} ResNet-50 tensors in detectron2's naming")
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-convert``)."""
    execute(main)


if __name__ == "__main__":
    entry()
