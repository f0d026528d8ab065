"""ablations/submit.py: checks made before a grid submits anything."""

import pytest

from ablations import spec
from ablations.griddir import GridDir
from ablations.submit import check_transfer_gpus, unit_jobs
from pretrain.run.errors import UserError
from slurm import launcher


def grid(transfer: str) -> spec.Grid:
    return spec.build(spec.load_preset("demo"), None, {}, 1, ["model.arch=resnet50"], "none", transfer=transfer)


def test_a_detectron2_stage_needing_more_gpus_than_the_profile_gives_is_refused_on_slurm():
    gpu1 = launcher.load_profile("gpu-1")
    d2 = grid("--engine detectron2 --task voc-c4 --data /d")  # the recipe's 8 GPUs
    with pytest.raises(UserError, match="trains on 8 GPUs but profile gpu-1 gives an evaluation job 1 "
                                        r"\(eval_gpus\); give --gpus 1 in --transfer"):
        check_transfer_gpus(d2, gpu1, "slurm")
    check_transfer_gpus(grid("--engine detectron2 --task voc-c4 --data /d --gpus 1"), gpu1, "slurm")
    check_transfer_gpus(grid("--engine detectron2 --task demo-voc --data /d --device cpu"),
                        launcher.load_profile("local-cpu"), "slurm")
    check_transfer_gpus(grid("--task voc-c4 --data /d"), gpu1, "slurm")  # torchvision: DDP tasks, as before
    check_transfer_gpus(d2, gpu1, "local")  # a local job sees this machine's GPUs; the stage checks them itself


def test_every_run_of_a_row_is_tagged_with_the_rows_setting_in_words(tmp_path):
    """The MLflow runs of a row (pretraining, probe) say in words what it trained: ``loss.method=debiased``
    is Chuang et al.'s debiased loss (not lightly's DCLLoss, the decoupled loss of Yeh et al.)."""
    g = spec.build(spec.load_preset("hardneg-in100"), None, {}, 1, [], None)
    gd = GridDir(tmp_path / "grid", g, tmp_path / "results")
    u = next(u for u in gd.units() if u.row == "N0-s0-sp0_debiased_tp0.1")
    pre, evals = unit_jobs(gd, u, "sqlite:///unused.db", None)
    assert pre.tags["setting"] == evals["lincls"].settings.tags["setting"] == "debiased (Chuang et al., tau+ 0.1)"
    assert pre.cfg.flat()["loss.method"] == "debiased"  # the config value (a param) stays
    ref = spec.build(spec.load_preset("demo"), None, {}, 1, [], None)
    gd = GridDir(tmp_path / "demo", ref, tmp_path / "results")
    u = next(u for u in gd.units() if u.ref is not None)
    assert unit_jobs(gd, u, "sqlite:///unused.db", None)[1]["lincls"].settings.tags["setting"] == "random init"
