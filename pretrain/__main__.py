"""``mochi-pretrain [--preset NAME] [--config FILE] [section.key=value ...]``"""

from __future__ import annotations

from .run import config
from .run.cli import ArgumentParser, execute, setup_logging


def parser() -> ArgumentParser:
    """The command line of ``mochi-pretrain``."""
    p = ArgumentParser(
        prog="mochi-pretrain",
        description="MoCo v2 / MoCHi pretraining. Config = defaults <- preset <- --config file <- overrides.",
        epilog="Example: mochi-pretrain --preset demo mochi.N=64 mochi.s=64 mochi.s_prime=16 run.out=runs/x",
    )
    p.add_argument("--preset", choices=config.presets(), help="a shipped recipe (pretrain/configs/NAME.yaml)")
    p.add_argument("--config", help="a YAML file with the same sections as --show-config prints")
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. mochi.N=1024 optim.epochs=100")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse into the typed config, then train (``pretrain.train.train``)."""
    args = parser().parse_args(argv)
    cfg = config.load(args.preset, args.config, args.overrides)
    if args.show_config:
        print(config.dump(cfg), end="")
        return 0
    setup_logging()
    from .train import train

    train(cfg)
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-pretrain``)."""
    execute(main)


if __name__ == "__main__":
    entry()
