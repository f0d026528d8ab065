"""transfer/trials.py: what both transfer paths share (source, tags, strict JSON summaries)."""

import json

import pytest
import torch
import torchvision

from pretrain.run import rundir
from pretrain.run.errors import UserError
from transfer import trials


def test_summaries_are_strict_json_with_null_for_nan(tmp_path):
    value = {"trials": [{"box_APl": float("nan"), "AP": 1.5}], "summary": {"AP": {"mean": 1.5, "std": None},
                                                                         "x": [float("inf"), 2.0, (float("-inf"),)]}}
    trials.write_json(tmp_path / "s.json", value)
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and "Infinity" not in text

    def refuse(const):  # what a strict parser (JavaScript's JSON.parse, jq) does with a bare NaN
        raise ValueError(const)

    back = json.loads(text, parse_constant=refuse)
    assert back["trials"] == [{"box_APl": None, "AP": 1.5}] and back["summary"]["x"] == [None, 2.0, [None]]
    assert back["summary"]["AP"] == {"mean": 1.5, "std": None}


def moco_checkpoint(path, arch: str):
    """A query encoder in MoCo's release format (random weights)."""
    net = getattr(torchvision.models, arch)()
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def test_origin_and_tags_of_a_moco_checkpoint_and_of_a_random_init(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ckpt = moco_checkpoint(tmp_path / "moco.pth.tar", "resnet50")
    out = rundir.transfer_dir(tmp_path, "voc-c4", engine="detectron2")
    assert out.name == "transfer-d2-voc-c4" and rundir.transfer_dir(tmp_path, "voc-c4").name == "transfer-voc-c4"
    o = trials.origin(str(ckpt), False, out)
    assert o.state is not None and "layer4.2.conv3.weight" in o.state and o.source == str(ckpt.resolve())
    assert o.parent is None and o.experiment == "mochi-bench" and o.uri == f"sqlite:///{tmp_path}/mlflow.db"
    tags = trials.trial_tags(o, "voc-c4", 3, False, "detectron2", {"gpus": "1"})
    assert tags == {"task": "voc-c4", "trial": "3", "random_init": "False", "source": str(ckpt.resolve()),
                    "engine": "detectron2", "gpus": "1"}
    r = trials.origin(None, True, out, parent_run="abc", tracking_uri="http://x:5000", experiment="e")
    assert r.state is None and r.source == "random init"
    assert (r.parent, r.uri, r.experiment) == ("abc", "http://x:5000", "e")
    with pytest.raises(UserError, match="does not fit a resnet50"):
        trials.origin(str(moco_checkpoint(tmp_path / "r18.pth", "resnet18")), False, out)
