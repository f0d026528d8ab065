"""kNN classification on a hand-built case."""

import pytest
import torch
import torch.nn.functional as F

from pretrain import knn as knn_command
from pretrain.eval import knn


def test_knn_weighted_vote_by_hand():
    train_f = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    train_y = torch.tensor([0, 0, 1, 1])
    test_f = F.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0]]), dim=1)
    scores = knn.knn_predict(train_f, train_y, test_f, num_classes=2, k=3, T=0.07)
    assert scores.argmax(dim=1).tolist() == [0, 1]
    # Query 0's three neighbours: train 0, 1 (class 0) and 3 (class 1); weights exp(cos / T).
    sims = test_f[0] @ train_f.T
    want0 = (sims[0] / 0.07).exp() + (sims[1] / 0.07).exp()
    want1 = (sims[3] / 0.07).exp()
    assert scores[0, 0].item() == pytest.approx(want0.item(), rel=1e-5)
    assert scores[0, 1].item() == pytest.approx(want1.item(), rel=1e-5)


def test_a_moco_format_checkpoint_is_a_source_like_any_other(tmp_path, capsys):
    """mochi-knn takes what every evaluation takes: a MoCo-format checkpoint, with its architecture
    and data said on the command line, gives the kNN top-1 of that very network, and knn.json lands
    beside it."""
    import dataclasses
    import json

    from pretrain.eval.backbone import query_backbone
    from pretrain.method.moco import MoCo
    from pretrain.run import config

    torch.manual_seed(0)
    model = MoCo("resnet18", dim=128, K=256, mlp=False)
    ckpt = tmp_path / "released.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    sizes = ["--train-size", "200", "--test-size", "100"]
    assert knn_command.main([str(ckpt), "--arch", "resnet18", "--dataset", "fashion-mnist", "--image-size", "32", *sizes,
                     "--no-baseline"]) == 0
    got = json.loads((tmp_path / "knn.json").read_text())
    data_cfg = dataclasses.replace(config.DataCfg(), dataset="fashion-mnist", image_size=32)
    want = knn.evaluate(query_backbone(model), data_cfg, torch.device("cpu"), train_size=200, test_size=100)
    assert got["knn_top1"] == want and "knn_top1_random_init" not in got
    assert f"knn_top1: {want:.2f}%" in capsys.readouterr().out
