"""``mochi-knn SOURCE``: weighted kNN top-1 (k=200, T=0.07) of a frozen backbone and of the same
backbone randomly initialised; SOURCE is a run folder, this project's checkpoint or a MoCo-format
one. Prints the figures and writes ``knn.json`` in SOURCE's run folder; the evaluation is
``pretrain.eval.knn.run``."""

from __future__ import annotations

import json

from .eval.probe import add_source_flags
from .run.cli import ArgumentParser, execute, setup_logging
from .run.errors import UserError


def parser() -> ArgumentParser:
    """The command line of ``mochi-knn``."""
    p = ArgumentParser(prog="mochi-knn", description="Weighted kNN top-1 of a frozen backbone, and of the same "
                                                     "backbone randomly initialised.")
    add_source_flags(p)
    p.add_argument("--k", type=int, default=200, help="neighbours that vote (default 200, as InstDisc and MoCo)")
    p.add_argument("--temperature", type=float, default=0.07,
                   help="temperature of the votes' weights exp(cos / T) (default 0.07)")
    p.add_argument("--train-size", type=int, default=10000, help="memory-bank images (0 = the whole split)")
    p.add_argument("--test-size", type=int, default=2000, help="query images (0 = the whole split)")
    p.add_argument("--no-baseline", action="store_true", help="skip the randomly initialised backbone")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, evaluate, print and write ``knn.json`` in SOURCE's run folder."""
    args = parser().parse_args(argv)
    if args.k <= 0 or args.temperature <= 0 or args.train_size < 0 or args.test_size < 0:
        raise UserError("--k and --temperature must be > 0, sizes >= 0")
    setup_logging()
    from .eval.knn import run

    result = run(args.source, args.k, args.temperature, args.train_size, args.test_size, not args.no_baseline,
                 arch=args.arch, small_stem=args.small_stem, dataset=args.dataset, data_path=args.data,
                 class_list=args.class_list, image_size=args.image_size)
    print(json.dumps(result))
    for name, v in result.items():
        print(f"{name}: {v:.2f}%")
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-knn``)."""
    execute(main)


if __name__ == "__main__":
    entry()
