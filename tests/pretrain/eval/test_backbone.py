"""Loading backbones: checkpoint formats, safe loading, key mismatches."""

import pickle

import pytest
import torch

from pretrain.eval.backbone import load_backbone, read_source
from pretrain.method.moco import MoCo
from pretrain.run.errors import UserError


def moco_format(tmp_path, arch="resnet18", name="moco.pth.tar"):
    torch.manual_seed(0)
    model = MoCo(arch, dim=128, K=256)
    path = tmp_path / name
    torch.save({"epoch": 200, "arch": arch,
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, model


def test_moco_format_checkpoint_loads_every_backbone_weight(tmp_path):
    path, model = moco_format(tmp_path)
    sd, cfg, run_id = read_source(str(path))
    assert cfg is None and run_id is None
    net = load_backbone(sd, "resnet18", small_stem=False)
    for k, v in net.state_dict().items():
        assert torch.equal(v, model.encoder_q.state_dict()[k]), k


def test_mismatched_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    path, _ = moco_format(tmp_path)
    sd, _, _ = read_source(str(path))
    with pytest.raises(UserError) as e:
        load_backbone(sd, "resnet50", small_stem=False)
    assert "198 missing (" in str(e.value) and "wrong shape (" in str(e.value) and "resnet50" in str(e.value)
    sd["layer9.weight"] = sd.pop("layer1.0.conv1.weight")
    with pytest.raises(UserError) as e:
        load_backbone(sd, "resnet18", small_stem=False)
    msg = str(e.value)
    assert "1 missing (layer1.0.conv1.weight)" in msg and "1 unexpected (layer9.weight)" in msg


class NotATensor:
    pass


def test_checkpoint_needing_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": NotATensor()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(UserError, match="cannot be loaded without executing pickled code"):
        read_source(str(path))


def test_no_query_encoder_keys(tmp_path):
    path = tmp_path / "sup.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="no query-encoder weights"):
        read_source(str(path))
