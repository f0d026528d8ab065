"""``mochi-grid``: ablation grids of MoCHi pretraining + linear probes through submitit.

    mochi-grid                                   # the embedded demo grid, locally, on CPU
    mochi-grid --sweep N,s,s_prime --N 64,128 --s 0,128 --s_prime 0,32
    mochi-grid --preset in100-table1 --profile gpu-1 --set data.path=/data/imagenet
    mochi-grid --preset in100-table1 --dry-run   # the cells and estimated GPU-hours
    mochi-grid --preset in100-table1 --preflight # prove the cluster runs it; measured cost
    mochi-grid --preset in100-table1 --status    # queued / running (epoch) / done / failed
    mochi-grid --preset in100-table1 --cancel

Each cell x seed is a run folder ``OUT/cells/CELL/seedK``. On SLURM its pretraining runs in a job
array and its linear probe in a second array that starts when the corresponding pretraining task
ends (``aftercorr``); locally both run in one job, ``array_parallelism`` jobs at a time. A preflight
job (``ablations.preflight``) runs first on the grid's profile, the pretraining array waiting on it
(``afterok``); ``--no-preflight`` skips it. Running the
same command again skips finished cells and resumes unfinished ones; a folder holding a different
grid is refused. MLflow: one parent run per grid, one child per cell x seed x stage.

This module is the command line: what a grid is lives in ``spec``, its folder in ``griddir``,
submission in ``submit``, ``--dry-run``/``--status``/``--cancel`` in ``status``, tables in ``report``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ablations import spec, status, terminal
from ablations.griddir import GridDir
from ablations.submit import check_cluster, check_data, check_transfer_gpus, preflight_only, submit
from pretrain.method.synthetic import registry as synthetic
from pretrain.run import rundir
from pretrain.run.cli import ArgumentParser, execute, setup_logging
from pretrain.run.errors import UserError
from pretrain.run.tracking import default_uri, unreachable
from slurm import launcher

SHORT_AXES = ("N", *synthetic.COUNTS, "K", "tau", "m", "epochs", "mix_start", "mix_stop")


def parser() -> ArgumentParser:
    """The command line of ``mochi-grid``."""
    p = ArgumentParser(prog="mochi-grid", description=__doc__.split("\n\n")[0],
                       epilog="Axis values: --N 256,512 style options or --axis KEY=V1,V2 for any config key.")
    p.add_argument("--preset", default="demo", help=f"grid preset: {', '.join(spec.presets())} or a .yaml path "
                                                    "(default: demo)")
    p.add_argument("--sweep", help="comma list of axes to cross, e.g. N,s,s_prime (default: the preset's cells)")
    for a in SHORT_AXES:
        p.add_argument(f"--{a}", dest=f"axis_{a}", metavar="V1,V2", help=f"values of {a} ({spec.AXES[a]})")
    p.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2", help="values of any axis")
    p.add_argument("--seeds", type=int, help="seeds per cell (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every cell")
    p.add_argument("--lincls", help="arguments of mochi-lincls for each cell, or 'none'")
    p.add_argument("--transfer", help="arguments of mochi-transfer for each cell (e.g. '--task voc-c4 "
                                      "--data /datasets/VOCdevkit'), or with --engine detectron2 of "
                                      "mochi-transfer-d2 (e.g. '--engine detectron2 --task voc-c4 --data "
                                      "/datasets/VOCdevkit --gpus 8'), or 'none'")
    p.add_argument("--random-init", action=argparse.BooleanOptionalAction,
                   help="a reference row: the probe (and transfer) of the randomly initialised backbone each seed's "
                        "cells start from (default: the preset's; on for demo)")
    p.add_argument("--reference", action="append", default=[], metavar="NAME=PATH",
                   help="a reference row: a released checkpoint in MoCo's format, evaluated with the grid's probe "
                        "and transfer stages (repeatable)")
    p.add_argument("--baseline", metavar="CELL", help="the cell every row is compared with (default: the first "
                                                      "plain MoCo v2 cell)")
    launcher.add_cluster_flags(p, "the preset's")
    p.add_argument("--name", help="grid name (default: the preset's name)")
    p.add_argument("--out", help="grid folder (default: runs/grids/NAME)")
    p.add_argument("--results", help="where tables and plots go (default: results/NAME)")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite runs/mlflow.db "
                                          "beside the grid folders)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the cells and estimated GPU-hours; submit nothing")
    mode.add_argument("--status", action="store_true", help="show each cell's state (writes the tables once all are done)")
    mode.add_argument("--cancel", action="store_true", help="stop this grid's queued and running jobs")
    mode.add_argument("--preflight", action="store_true",
                      help="run only the preflight (data, step on the device vs the CPU, precision, process group, "
                           "resume, tracking, speed) on the grid's profile; print its lines and the projected cost")
    p.add_argument("--no-preflight", dest="check", action="store_false",
                   help="submit without the preflight job that otherwise runs ahead of the pretraining array")
    p.add_argument("--wait", action="store_true", help="on SLURM: wait for every job, then write the tables")
    return p


def axis_values(args) -> dict[str, list]:
    """{axis: typed values} from the ``--N 256,512``-style options and ``--axis KEY=V1,V2``."""
    values: dict[str, list] = {}
    items = [(a, getattr(args, f"axis_{a}")) for a in SHORT_AXES if getattr(args, f"axis_{a}") is not None]
    for item in args.axis:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise UserError(f"--axis {item!r} is not of the form KEY=V1,V2")
        items.append((key, text))
    for key, text in items:
        a = spec.axis(key)
        if a.name in values:
            raise UserError(f"values for axis {a.name} are given twice")
        values[a.name] = a.parse(text)
    return values


def grid_from_args(args) -> spec.Grid:
    """The grid the command line describes (preset, sweep, values, seeds, overrides, stages)."""
    preset = spec.load_preset(args.preset)
    sweep = [a.strip() for a in args.sweep.split(",")] if args.sweep else None
    if sweep is not None and not all(sweep):
        raise UserError(f"--sweep {args.sweep!r}: empty axis name")
    return spec.build(preset, sweep, axis_values(args), args.seeds, list(args.set),
                      None if args.lincls is None else args.lincls, args.name, args.transfer, args.random_init,
                      list(args.reference), args.baseline)


def main(argv: list[str] | None = None) -> int:
    """Parse, build the grid, check its folder, then dry-run, show status, cancel or submit."""
    args = parser().parse_args(argv)
    if args.preflight and not args.check:
        raise UserError("--preflight runs the preflight alone and --no-preflight skips it: give one of them")
    grid = grid_from_args(args)
    profile = launcher.load_profile(args.profile or grid.profile)
    cluster = args.cluster
    out = Path(args.out or rundir.GRIDS / grid.name)
    gd = GridDir(out, grid, Path(args.results or Path("results") / grid.name))
    gd.check_same()
    # Default store: runs/mlflow.db, the one `make demo` and `make ui` use; beside --out otherwise.
    uri = args.tracking_uri or default_uri(out.parent if args.out is None else out)
    setup_logging()
    if args.dry_run:
        status.dry_run(gd, profile)
        return 0
    if args.status:
        return status.status(gd, uri)
    if args.cancel:
        return status.cancel(gd)
    cluster = launcher.resolve_cluster(cluster)
    if args.cluster != "debug" and cluster == "local" and profile.ranks_per_job > 1:
        raise UserError(f"profile {profile.name} asks for {profile.ranks_per_job} DDP ranks per pretraining job "
                        f"({profile.gpus_per_job} GPUs); local runs use one process per job (use --cluster slurm)")
    check_transfer_gpus(grid, profile, cluster)
    check_cluster(grid, profile, cluster)
    check_data(grid, profile)
    if (cause := unreachable(uri)) is not None:  # every job logs there, and the preflight checks it on a node
        raise UserError(f"the MLflow store {uri} does not answer from this host ({cause}); start it (e.g. "
                        f"mlflow server), or give --tracking-uri a store that answers")
    if args.cluster == "auto" and cluster == "slurm":  # said before anything reaches the cluster
        conf = os.environ.get("SLURM_CONF", "the default")
        terminal.say(f"--cluster auto: a SLURM controller answers (SLURM_CONF={conf}), "
                     f"so the jobs go to SLURM as profile {profile.name}; --cluster local runs them on this machine, "
                     f"--dry-run lists them first", flush=True)
    with gd.lock():
        if args.preflight:
            return preflight_only(gd, profile, cluster, uri)
        return submit(gd, profile, cluster, uri, args.wait, args.check)


def entry() -> None:
    """Console-script entry point (``mochi-grid``)."""
    execute(main)


if __name__ == "__main__":
    entry()
