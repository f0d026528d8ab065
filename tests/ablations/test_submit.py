"""ablations/submit.py: checks made before a grid submits anything."""

import pytest

from ablations import spec
from ablations.griddir import GridDir
from ablations.submit import check_transfer_gpus, unit_jobs
from pretrain.run.errors import UserError
from slurm import launcher


def grid(transfer: str) -> spec.Grid:
    return spec.build(spec.load_preset("demo"), None, {}, 1, ["model.arch=resnet50"], "none", transfer=transfer)


def verdict(transfer: str, profile: str, cluster: str) -> str:
    """``check_transfer_gpus``'s answer for a grid with ``--transfer TRANSFER``: its error, or "accepted"."""
    try:
        check_transfer_gpus(grid(transfer), launcher.load_profile(profile), cluster)
    except UserError as e:
        return str(e)
    return "accepted"


D2 = "--engine detectron2 --task voc-c4 --data /d"  # the recipe's 8 GPUs
REFUSED = "the detectron2 transfer stage trains on "


# Each accepted case has a refused twin that differs in the one thing it exercises.
@pytest.mark.parametrize("transfer, profile, cluster, expected", [
    (D2, "gpu-1", "slurm", REFUSED + "8 GPUs but profile gpu-1 gives an evaluation job 1 (eval_gpus); "
                           "give --gpus 1 in --transfer, or a profile with eval_gpus: 8"),
    (f"{D2} --gpus 1", "gpu-1", "slurm", "accepted"),  # --gpus fits eval_gpus ...
    (f"{D2} --gpus 2", "gpu-1", "slurm", REFUSED + "2 GPUs but profile gpu-1 gives an evaluation job 1"),  # ... more do not
    ("--engine detectron2 --task demo-voc --data /d --device cpu", "local-cpu", "slurm", "accepted"),  # a CPU stage needs none
    ("--engine detectron2 --task demo-voc --data /d", "local-cpu", "slurm",
     REFUSED + "1 GPUs but profile local-cpu gives an evaluation job 0"),  # the same on cuda does
    ("--task voc-c4 --data /d", "gpu-1", "slurm", "accepted"),  # torchvision: DDP tasks, as many as the job has
    (D2, "gpu-1", "local", "accepted"),  # a local job sees this machine's GPUs; the stage checks them itself
])
def test_a_detectron2_stage_needing_more_gpus_than_the_profile_gives_is_refused_on_slurm(transfer, profile, cluster,
                                                                                         expected):
    got = verdict(transfer, profile, cluster)
    assert got.startswith(expected), got


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
