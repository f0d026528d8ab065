"""``mochi-jpegs DIR``: write a folder of photo-like JPEGs at ImageNet's sizes (an ImageFolder with
train/ and val/), for the input-pipeline benchmark and tests; the pictures are
``pretrain.tools.jpegs.make_jpegs``."""

from __future__ import annotations

from pathlib import Path

from .run.cli import ArgumentParser, execute
from .run.errors import UserError


def parser() -> ArgumentParser:
    """The command line of ``mochi-jpegs``."""
    p = ArgumentParser(prog="mochi-jpegs", description="Write a folder of photo-like JPEGs at ImageNet's sizes.")
    p.add_argument("folder", help="where to write them (FOLDER/train/CLASS/*.jpg and FOLDER/val/CLASS/*.jpg)")
    p.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    p.add_argument("--classes", type=int, default=10, help="class folders (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated pictures")
    p.add_argument("--odd", action="store_true", help="add progressive, CMYK, grayscale, PNG and truncated files")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, refuse a folder that holds images already, write the JPEGs."""
    args = parser().parse_args(argv)
    out = Path(args.folder)
    if (out / "train").exists() and any((out / "train").iterdir()):
        raise UserError(f"{out}/train already holds files; choose an empty folder")
    from .tools.jpegs import make_jpegs

    make_jpegs(out, args.n, args.classes, args.seed, args.odd)
    files = list((out / "train").rglob("*.JPEG"))
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} images to {out}/train ({size / len(files) / 1024:.0f} KiB per file on average)")
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-jpegs``)."""
    execute(main)


if __name__ == "__main__":
    entry()
