"""``mochi-bench``: training-step throughput, MoCo v2 vs MoCHi (and SynCo, the reweighted control, the
debiased, HCL and Ring losses), side by side in one run, eager and compiled; prints each method's
ratio to MoCo v2 and each closed form's to its explicit points with
the device named and writes ``results/bench_step.json``. The measuring is ``pretrain.tools.bench``.
"""

from __future__ import annotations

from .run.cli import ArgumentParser, execute
from .run.config import RunCfg
from .run.errors import UserError
from .tools.sizes import METHODS, SMALL, add_size_args, resolve_size


def parser() -> ArgumentParser:
    """The command line of ``mochi-bench``."""
    p = ArgumentParser(prog="mochi-bench",
                       description="Training-step throughput: MoCo v2 vs MoCHi, side by side in one run.")
    add_size_args(p)
    p.add_argument("--small", action="store_true", help=f"small sizes for a CPU: {SMALL.as_dict()}")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per method and variant")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    p.add_argument("--variants", default="eager,compiled", help="comma list of eager, compiled")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of {', '.join(METHODS)}: each timed beside MoCo v2 (debiased, "
                        f"Chuang et al.'s, HCL with tau+ 0.1, beta 1.0, and Ring with its MoCo config's "
                        f"outer 0.1, inner 0.1)")
    p.add_argument("--shuffle-bn-groups", type=int, default=8,
                   help="shuffle-BN groups of the key encoder on one device (moco.shuffle_bn_groups)")
    p.add_argument("--stats-every", type=int, default=RunCfg().log_every,
                   help="compute the step statistics every this many steps, as training does every run.log_every "
                        "(default: its default)")
    p.add_argument("--json", default="results/bench_step.json", help="where to write the figures")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse and check, then measure, print the table and write the JSON."""
    args = parser().parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if not set(variants) <= {"eager", "compiled"} or not variants:
        raise UserError(f"--variants: {args.variants!r}; use eager, compiled or both")
    methods = [m for m in args.methods.split(",") if m]
    if not methods or not set(methods) <= set(METHODS):
        raise UserError(f"--methods: {args.methods!r}; use a comma list of {', '.join(METHODS)}")
    if args.steps <= 0 or args.warmup < 0 or args.shuffle_bn_groups <= 0 or args.stats_every <= 0:
        raise UserError("--steps, --shuffle-bn-groups and --stats-every must be > 0 and --warmup >= 0")
    import torch

    from .tools.bench import measure, precision, write_json

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = resolve_size(args, args.small or dev.type == "cpu")
    amp, channels_last = precision(args, dev)
    r = measure(size, dev, variants, args.steps, args.warmup, amp, channels_last, args.shuffle_bn_groups,
                args.stats_every, methods)
    m = size.mixing
    print(f"device: {r['device']}  torch {r['torch']}  {r['dtype']}  {r['date']}")
    print(f"{size.arch}, batch {size.batch}, {size.image_size} px, K {size.K}, MoCHi (N, s, s') = "
          f"({m.N}, {m.s}, {m.s_prime}); statistics every {r['stats_every']} steps, as training")
    w = max(len(label) for row in r["results"] for label in row["ratios"])
    print(f"{'variant':<10} {'method':<{w}} {'img/s':>9} {'vs MoCo v2':>11}")
    for row in r["results"]:
        for label, ratio in row["ratios"].items():
            print(f"{row['variant']:<10} {label:<{w}} {ratio * row['mocov2_img_s']:>9.1f} {ratio:>11.3f}")
        if "mixing_share" in row:
            print(f"{row['variant']:<10} MoCHi/MoCo {row['ratio']:.3f}; mixing share of a MoCHi step "
                  f"{100 * row['mixing_share']:.2f}%")
    print(f"mixing alone: {r['mixing_ms']:.3f} ms per step")
    print(f"closed forms (q . h and its backward, {max(1, m.s_prime)} points per query), beside the explicit points:")
    for label, c in r["closed_forms"].items():
        print(f"  {label:<16} explicit {c['explicit_ms']:.3f} ms  closed {c['closed_ms']:.3f} ms  "
              f"ratio {c['ratio']:.3f}")
    if (out := write_json(args.json, r)) is not None:
        print(f"wrote {out}")
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-bench``)."""
    execute(main)


if __name__ == "__main__":
    entry()
