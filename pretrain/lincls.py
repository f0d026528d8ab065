"""``mochi-lincls SOURCE``: the linear probe of MoCo's main_lincls.py on a frozen backbone.

SOURCE is a pretraining run folder, one of this project's checkpoints, or a checkpoint in MoCo's
format (``state_dict`` with ``module.encoder_q.*`` keys). The probe itself is
``pretrain.eval.lincls.run``; its settings and their command line are ``pretrain.eval.probe``.
"""

from __future__ import annotations

from .eval.probe import lincls_settings
from .run import rundir
from .run.cli import execute, setup_logging


def main(argv: list[str] | None = None) -> int:
    """Parse, run the probe, print its result."""
    import sys

    s = lincls_settings(sys.argv[1:] if argv is None else argv)
    setup_logging()
    from .eval.lincls import run as run_probe  # torch: after the command line is checked

    result = run_probe(s)
    sel = result["selection"]
    label = " (fast: cached centre-crop features)" if s.fast else ""
    chosen = (f"chosen among {len(sel['candidates'])} on {sel['val_images']} validation images held out of the "
              f"training split" if sel["val_images"] else "not chosen")
    print(f"linear top-1 {result['top1_last']:.2f}, top-5 {result['top5_last']:.2f} at the last epoch{label}; "
          f"lr {sel['lr']:g} ({chosen}). The best epoch on the test split, MoCo main_lincls's number, "
          f"not used by the tables: {result['top1_best_on_test']:.2f} (epoch {result['best_epoch_on_test']})")
    parent = result["parent_run"]
    print(f"wrote {result['out']}/{rundir.LINCLS_FILE}" + (f"; MLflow run {result['mlflow_run_id']} (child of {parent})"
                                                  if parent else ""))
    return 0


def entry() -> None:
    """Console-script entry point (``mochi-lincls``)."""
    execute(main)


if __name__ == "__main__":
    execute(main)
