"""``mochi-pipeline show``: a picture of one batch as each input pipeline makes it."""

from __future__ import annotations

from .run import config
from .run.config import PIPELINES
from .run.cli import ArgumentParser, execute, setup_logging
from .run.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Parse, build the config, write the picture."""
    p = ArgumentParser(prog="mochi-pipeline", description="Look at what the input pipelines produce.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("show", help="write a picture of one batch: source, then both views of each pipeline")
    s.add_argument("--out", default="results/pipeline_batch.png", help="the picture (PNG)")
    s.add_argument("--n", type=int, default=8, help="images (rows)")
    s.add_argument("--pipelines", default="cpu,gpu", help="comma list of cpu, gpu, dali")
    s.add_argument("--preset", choices=config.presets(), help="the pretraining preset whose data and augmentation "
                                                             "to show (as mochi-pretrain --preset)")
    s.add_argument("--config", help="a YAML file with the sections of mochi-pretrain --show-config")
    s.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. data.image_size=64")
    args = p.parse_args(argv)
    names = [x for x in args.pipelines.split(",") if x]
    if not names or not set(names) <= set(PIPELINES):
        raise UserError(f"--pipelines: {args.pipelines!r}; use a comma list of {', '.join(PIPELINES)}")
    if args.n <= 0:
        raise UserError(f"--n must be > 0, got {args.n}")
    setup_logging()
    cfg = config.load(args.preset, args.config, args.overrides)
    from .run.dist import pick_device
    from .tools.show import show

    path = show(cfg, names, args.n, args.out, pick_device(cfg.run.device))
    print(f"wrote {path}")
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-pipeline``)."""
    execute(main)


if __name__ == "__main__":
    entry()
