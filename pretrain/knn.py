"""``python -m pretrain.knn RUN_DIR``: weighted kNN top-1 (k = 200, T = 0.07) of a run's frozen
backbone, and of the same backbone randomly initialised (``pretrain.eval.knn``)."""

from __future__ import annotations

import json

from .eval import knn
from .run.cli import ArgumentParser, execute, setup_logging
from .run.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Parse, evaluate, print and write ``RUN_DIR/knn.json``."""
    p = ArgumentParser(prog="python -m pretrain.knn", description="Weighted kNN top-1 of a run's frozen backbone, and of the same backbone randomly initialised.")
    p.add_argument("run_dir", help="a pretraining run folder (run.out)")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--train-size", type=int, default=10000, help="memory-bank images (0 = the whole split)")
    p.add_argument("--test-size", type=int, default=2000, help="query images (0 = the whole split)")
    p.add_argument("--no-baseline", action="store_true", help="skip the randomly initialised backbone")
    args = p.parse_args(argv)
    if args.k <= 0 or args.temperature <= 0 or args.train_size < 0 or args.test_size < 0:
        raise UserError("--k and --temperature must be > 0, sizes >= 0")
    setup_logging()
    result = knn.run(args.run_dir, args.k, args.temperature, args.train_size, args.test_size, not args.no_baseline)
    print(json.dumps(result))
    for name, v in result.items():
        print(f"{name}: {v:.2f}%")
    return 0


if __name__ == "__main__":
    execute(main)
