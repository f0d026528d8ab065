"""mochi-convert (transfer/convert.py, transfer/weights.py): every ResNet-50 weight lands under its detectron2 name (no detectron2 needed)."""

import pickle
import subprocess
import sys

import numpy as np
import torch
import torchvision

from tests.conftest import REPO

BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}  # detectron2's res2..res5 block counts for ResNet-50
NORM = ("weight", "bias", "running_mean", "running_var")


def d2_expected() -> set[str]:
    """detectron2's ResNet-50 parameter names, written out from its BottleneckBlock/BasicStem layout."""
    names = {"stem.conv1.weight"} | {f"stem.conv1.norm.{n}" for n in NORM}
    for stage, blocks in BLOCKS.items():
        for b in range(blocks):
            for c in (1, 2, 3):
                names |= {f"res{stage}.{b}.conv{c}.weight"} | {f"res{stage}.{b}.conv{c}.norm.{n}" for n in NORM}
        names |= {f"res{stage}.0.shortcut.weight"} | {f"res{stage}.0.shortcut.norm.{n}" for n in NORM}
    return names


def moco_checkpoint(path, arch="resnet50"):
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)()
    net.fc = torch.nn.Sequential(torch.nn.Linear(net.fc.in_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    sd = {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"module.encoder_k.{k}": v + 1 for k, v in net.state_dict().items()})
    sd["module.queue"] = torch.randn(8, 4)
    torch.save({"state_dict": sd, "epoch": 200, "arch": arch}, path)
    return net


def convert(*args):
    return subprocess.run([sys.executable, "-m", "transfer.convert", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True)


def test_moco_checkpoint_converts_to_detectron2_names_and_shapes(tmp_path):
    net = moco_checkpoint(tmp_path / "moco.pth.tar")
    r = convert(tmp_path / "moco.pth.tar", tmp_path / "d2.pkl")
    assert r.returncode == 0, r.stderr
    res = pickle.loads((tmp_path / "d2.pkl").read_bytes())
    assert res["__author__"] == "MOCO" and res["matching_heuristics"] is True
    model = res["model"]
    assert set(model) == d2_expected()
    src = net.state_dict()
    pairs = {
        "stem.conv1.weight": "conv1.weight", "stem.conv1.norm.running_var": "bn1.running_var",
        "res2.0.conv1.weight": "layer1.0.conv1.weight", "res2.0.shortcut.weight": "layer1.0.downsample.0.weight",
        "res3.1.conv2.norm.bias": "layer2.1.bn2.bias", "res4.5.conv3.weight": "layer3.5.conv3.weight",
        "res5.0.shortcut.norm.running_mean": "layer4.0.downsample.1.running_mean",
        "res5.2.conv3.norm.weight": "layer4.2.bn3.weight",
    }
    for d2, tv in pairs.items():
        assert isinstance(model[d2], np.ndarray) and np.array_equal(model[d2], src[tv].numpy()), d2
    for k, v in src.items():  # every backbone tensor arrives with its shape (query encoder, not key)
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            assert any(model[d].shape == tuple(v.shape) and np.array_equal(model[d], v.numpy()) for d in model), k


def test_not_a_resnet50_query_encoder_is_refused_in_one_line(tmp_path):
    moco_checkpoint(tmp_path / "r18.pth.tar", "resnet18")
    r = convert(tmp_path / "r18.pth.tar", tmp_path / "out.pkl")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not fit a resnet50" in r.stderr
    torch.save({"state_dict": {"module.encoder_k.conv1.weight": torch.zeros(1)}}, tmp_path / "k.pth")
    r = convert(tmp_path / "k.pth", tmp_path / "out.pkl")
    assert r.returncode == 2 and "no query-encoder weights" in r.stderr
    assert not (tmp_path / "out.pkl").exists()
