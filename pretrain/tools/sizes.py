"""What the benchmarks measure at, without torch (so their command lines parse in milliseconds):
the model and MoCHi sizes (the paper's ImageNet setting, and a small one for a CPU), their flags, and
the methods ``mochi-bench`` can time beside MoCo v2."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..method.archs import ARCHS
from ..method.mixing import Mixing
from ..run.errors import UserError


@dataclass(frozen=True)
class Size:
    """The model and MoCHi sizes a benchmark runs at."""

    arch: str
    batch: int
    image_size: int
    K: int
    mixing: Mixing

    def as_dict(self) -> dict:
        """Flat, for the JSON figures: arch, batch, image_size, K, N, s, s_prime."""
        m = self.mixing
        return {"arch": self.arch, "batch": self.batch, "image_size": self.image_size, "K": self.K, "N": m.N,
                "s": m.s, "s_prime": m.s_prime}


PAPER = Size("resnet50", 256, 224, 65536, Mixing(1024, 1024, 256))
SMALL = Size("resnet18", 32, 64, 4096, Mixing(256, 256, 64))


# The methods the benchmark can time beside MoCo v2 (the losses with their authors' defaults; SynCo's
# six kinds and the reweighted control from MoCHi's N, ``synco`` and ``reweighted`` below).
METHODS = ("mocov2", "mochi", "synco", "reweighted", "debiased", "hcl", "hcl+mochi", "ring")


def synco(mixing: Mixing) -> Mixing:
    """SynCo's six kinds from MoCHi's N at SynCo's proportions (its defaults: N 1024, 256 each of
    types 1-3, 64 each of types 4-6)."""
    N = mixing.N
    return Mixing(N, s=N // 4, s_prime=N // 4, s_noise=N // 16, s_extrap=N // 4, s_grad=N // 16, s_adv=N // 16)


def reweighted(mixing: Mixing) -> Mixing:
    """The reweighted control with MoCHi's count: s + s' copies of hard negatives' logits."""
    return Mixing(mixing.N, s_reweight=mixing.synthetic)



def add_size_args(p) -> None:
    """The model, MoCHi and precision flags both benchmarks take (defaults: PAPER and bf16 autocast +
    channels_last on a GPU; SMALL, fp32 and contiguous on a CPU)."""
    p.add_argument("--arch", help=f"backbone (default: {PAPER.arch}; --small: {SMALL.arch})")
    p.add_argument("--batch", type=int, help=f"images per step (default: {PAPER.batch}; --small: {SMALL.batch})")
    p.add_argument("--image-size", type=int, help=f"crop side in pixels (default: {PAPER.image_size}; --small: "
                                                 f"{SMALL.image_size})")
    p.add_argument("--K", type=int, help=f"queue length K (default: {PAPER.K}; --small: {SMALL.K})")
    for symbol, what in (("N", "hardest negatives mixed per query"), ("s", "negatives mixed from pairs of the N "
                         "hardest"), ("s_prime", "negatives mixed from the query and one of the N hardest")):
        p.add_argument(f"--{symbol}", type=int, help=f"MoCHi's {symbol}, {what} (default: "
                       f"{getattr(PAPER.mixing, symbol)}; --small: {getattr(SMALL.mixing, symbol)})")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on with CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last model and images (default: on with CUDA)")


def resolve_size(args, small: bool) -> Size:
    """PAPER or SMALL sizes with the flags given, checked: one error line for impossible sizes."""
    base = SMALL if small else PAPER
    pick = {k: getattr(args, k) if getattr(args, k) is not None else getattr(base, k)
            for k in ("arch", "batch", "image_size", "K")}
    for flag, key in (("--batch", "batch"), ("--image-size", "image_size"), ("--K", "K")):
        if pick[key] <= 0:
            raise UserError(f"{flag} must be > 0, got {pick[key]}")
    if pick["arch"] not in ARCHS:
        raise UserError(f"--arch {pick['arch']!r}: choose one of {', '.join(ARCHS)}")
    if pick["K"] % pick["batch"]:
        raise UserError(f"--K {pick['K']} must be a multiple of --batch {pick['batch']}")
    try:
        mixing = Mixing(*(getattr(args, k) if getattr(args, k) is not None else getattr(base.mixing, k)
                          for k in ("N", "s", "s_prime")))
        mixing.check_queue(pick["K"])
    except ValueError as e:
        raise UserError(str(e)) from None
    return Size(mixing=mixing, **pick)
