"""mochi-transfer (transfer/__main__.py, transfer/finetune.py): the torchvision path on the local detection set (tiny budgets), and bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from tests.conftest import REPO
from transfer.data import make_synthetic
from transfer.models import build


def finetune(*args):
    return subprocess.run([sys.executable, "-m", "transfer", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def det_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    make_synthetic(root, n_train=8, n_test=3, seed=1)
    return root


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """A ResNet-50 query encoder in MoCo's checkpoint format (random weights: the plumbing, not the AP)."""
    path = tmp_path_factory.mktemp("ckpt") / "moco_r50.pth.tar"
    torch.manual_seed(0)
    net = torchvision.models.resnet50()
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}}, path)
    return path, net


@pytest.mark.parametrize("kind, mask", [("c4", False), ("c4", True), ("fpn", True)])
def test_models_carry_the_pretrained_backbone_and_train(r50, kind, mask):
    _, net = r50
    model = build(kind, 10, net.state_dict(), mask=mask, min_size=96, max_size=96, rois_per_image=16,
                  test_proposals=20)
    body = model.backbone.body
    conv1 = body[0] if kind == "c4" else body.conv1
    assert torch.equal(conv1.weight, net.conv1.weight)
    if kind == "c4":  # res5 (+ the extra norm) lives in the RoI head, shared by box and mask branches
        head = model.roi_heads.box_head
        assert torch.equal(head.res5.res5[2].conv3.weight, net.layer4[2].conv3.weight)
        assert isinstance(head.res5.norm, torch.nn.BatchNorm2d)
        if mask:
            assert model.roi_heads.mask_head.res5 is head.res5
    model.train()
    target = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([3]),
              "masks": torch.zeros(1, 96, 96, dtype=torch.uint8)}
    losses = model([torch.rand(3, 96, 96)], [target])
    assert ("loss_mask" in losses) == mask and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert conv1.weight.grad is not None  # FREEZE_AT 0: the stem trains too


@pytest.mark.slow
@pytest.mark.parametrize("task, sub, metric", [("demo-voc", "VOCdevkit", "AP50"), ("demo-coco", "coco", "mask_AP")])
def test_trials_run_evaluate_and_summarise(det_root, r50, tmp_path, task, sub, metric):
    out = tmp_path / "out"
    args = [r50[0], "--task", task, "--data", det_root / sub, "--iters", 2, "--batch", 2, "--trials", 2,
            "--ckpt-every", 1, "--out", out]
    r = finetune(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["trials"]) == 2 and summary["summary"][metric]["std"] is not None
    assert summary["engine"] == "torchvision"
    tags = json.loads((out / "trial1" / "tracking.json").read_text())["tags"]
    assert tags["engine"] == "torchvision" and tags["trial"] == "1"
    assert tags["stage"] == ("transfer-voc" if sub == "VOCdevkit" else "transfer-coco")
    assert all(0.0 <= t[metric] <= 100.0 for t in summary["trials"])
    assert (out / "trial1" / "checkpoints").is_dir() and (out / "trial0" / "metrics.jsonl").is_file()
    again = finetune(*args)  # finished trials are not run again
    assert again.returncode == 0 and json.loads((out / "summary.json").read_text())["trials"] == summary["trials"]


def test_bad_input_is_one_line_exit_2(det_root, r50, tmp_path):
    r18 = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}},
               r18)
    cases = [
        ([r50[0], "--task", "voc-fpn", "--data", det_root], "invalid choice"),
        ([r50[0], "--task", "demo-voc", "--data", tmp_path / "nowhere"], "does not exist"),
        ([r50[0], "--task", "demo-voc", "--data", tmp_path], "VOC2007/ImageSets/Main/trainval.txt is missing, which demo-voc needs"),
        ([r18, "--task", "demo-voc", "--data", det_root / "VOCdevkit"], "does not fit a resnet50"),
    ]
    for args, message in cases:
        r = finetune(*args, "--out", tmp_path / "o")
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_rank_ddp_trains_identical_replicas(det_root, r50, tmp_path):
    # torchrun with 2 CPU ranks (gloo): each rank draws its half of the batch; run_trial all-gathers a
    # parameter checksum after training and fails if the replicas differ. SyncBN needs GPUs, so CPU
    # ranks keep their own BN statistics.
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "transfer", str(r50[0]), "--task", "demo-voc", "--data",
                        str(det_root / "VOCdevkit"), "--iters", "2", "--batch", "2", "--trials", "1", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ,
                       "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("demo-voc over 1 trial:") == 1  # only rank 0 reports
    assert len(json.loads((out / "summary.json").read_text())["trials"]) == 1


@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_not_reported_under_the_new_ones(det_root, r50, tmp_path):
    out = tmp_path / "out"
    args = [r50[0], "--task", "demo-voc", "--data", det_root / "VOCdevkit", "--batch", 1, "--trials", 1, "--out", out]
    assert finetune(*args, "--iters", 1).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for other, differs in ((["--iters", 2], "iters: 1 there, 2 now"), (["--iters", 1, "--random-init"], "random_init")):
        r = finetune(*args, *other)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
        assert differs in r.stderr and "--out" in r.stderr and "--discard-trials" in r.stderr
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    more = finetune(*args, "--iters", 1, "--trials", 2, "--ckpt-every", 7)  # same settings: trial0 is reused
    assert more.returncode == 0 and "over 2 trials" in more.stdout, more.stderr[-2000:]
    assert (out / "trial0" / "result.json").read_bytes() == before[out / "trial0" / "result.json"]
    fresh = finetune(*args, "--iters", 2, "--discard-trials")
    assert fresh.returncode == 0 and "over 1 trial:" in fresh.stdout, fresh.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["iters"] == 2 and len(summary["trials"]) == 1 and not (out / "trial1").exists()
    assert json.loads((out / "trial0" / "settings.json").read_text())["iters"] == 2
