"""kNN and the linear probe: hand-built cases, checkpoint formats, safe loading, resume."""

import json
import pickle

import pytest
import torch
import torch.nn.functional as F

from pretrain import knn, lincls
from pretrain.errors import UserError
from pretrain.moco import MoCo


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


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.1]])
    y = torch.tensor([1, 2, 2])
    top1, top2 = lincls.accuracy(logits, y, (1, 2))
    assert top1 == pytest.approx(100 / 3) and top2 == pytest.approx(200 / 3)


def moco_format(tmp_path, arch="resnet18", name="moco.pth.tar"):
    torch.manual_seed(0)
    model = MoCo(arch, dim=128, K=256)
    path = tmp_path / name
    torch.save({"epoch": 200, "arch": arch,
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path, model


def test_moco_format_checkpoint_loads_every_backbone_weight(tmp_path):
    path, model = moco_format(tmp_path)
    sd, cfg, run_id = lincls.read_source(str(path))
    assert cfg is None and run_id is None
    net = lincls.load_backbone(sd, "resnet18", small_stem=False)
    for k, v in net.state_dict().items():
        assert torch.equal(v, model.encoder_q.state_dict()[k]), k


def test_mismatched_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    path, _ = moco_format(tmp_path)
    sd, _, _ = lincls.read_source(str(path))
    with pytest.raises(UserError) as e:
        lincls.load_backbone(sd, "resnet50", small_stem=False)
    assert "198 missing (" in str(e.value) and "wrong shape (" in str(e.value) and "resnet50" in str(e.value)
    sd["layer9.weight"] = sd.pop("layer1.0.conv1.weight")
    with pytest.raises(UserError) as e:
        lincls.load_backbone(sd, "resnet18", small_stem=False)
    msg = str(e.value)
    assert "1 missing (layer1.0.conv1.weight)" in msg and "1 unexpected (layer9.weight)" in msg


class NotATensor:
    pass


def test_checkpoint_needing_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": NotATensor()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(UserError, match="cannot be loaded without executing pickled code"):
        lincls.read_source(str(path))


def test_no_query_encoder_keys(tmp_path):
    path = tmp_path / "sup.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(UserError, match="no query-encoder weights"):
        lincls.read_source(str(path))


@pytest.mark.parametrize("fast", [True, False])
def test_lincls_on_a_moco_format_checkpoint_end_to_end_and_resume(tmp_path, fast):
    path, _ = moco_format(tmp_path)
    out = tmp_path / ("fast" if fast else "full")
    args = [str(path), "--arch", "resnet18", "--data", "fashion-mnist", "--image-size", "32",
            "--train-size", "512", "--val-size", "256", "--workers", "0", "--out", str(out)]
    args += ["--fast"] if fast else []
    assert lincls.main(args + ["--epochs", "2"]) == 0
    r = json.loads((out / "lincls.json").read_text())
    assert r["mode"] == ("fast" if fast else "full") and r["tables_use"] == "best"
    assert 10 < r["top1_best"] <= 100 and r["top1_best"] >= r["top1_last"] and r["top5_best"] >= r["top1_best"]
    # Asking for more epochs resumes from the saved classifier instead of starting again.
    assert lincls.main(args + ["--epochs", "3"]) == 0
    hist = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    # The same folder with other settings is refused before anything in it changes.
    before = (out / "lincls.json").read_bytes()
    with pytest.raises(UserError, match="holds a linear probe with other settings \\(lr: "):
        lincls.main(args + ["--epochs", "3", "--lr", "0.5"])
    assert (out / "lincls.json").read_bytes() == before


def test_lincls_on_a_checkpoint_file_of_a_run_writes_beside_the_run(tmp_path):
    from pretrain import checkpoint, config
    from pretrain.moco import from_config

    run = tmp_path / "runs" / "r"
    cfg = config.load("demo", overrides=[f"run.out={run}"])
    checkpoint.save(run / "checkpoints", 5, {"model": from_config(cfg).state_dict(), "config": cfg.to_dict(),
                                            "mlflow_run_id": None})
    src = checkpoint.candidates(run / "checkpoints")[0]
    assert lincls.main([str(src), "--fast", "--train-size", "256", "--val-size", "128", "--epochs", "1",
                        "--workers", "0"]) == 0
    assert (run / "lincls-fast" / "lincls.json").is_file()
    assert (tmp_path / "runs" / "mlflow.db").is_file() and not (run / "checkpoints" / "lincls-fast").exists()


@pytest.mark.parametrize("fast", [True, False])
def test_linear_probe_leaves_the_frozen_backbone_untouched(tmp_path, fast):
    """BN running statistics included: the probe may train nothing but its fc."""
    from pretrain import config, data

    path, _ = moco_format(tmp_path)
    sd, _, _ = lincls.read_source(str(path))
    net = lincls.load_backbone(sd, "resnet18", small_stem=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ds = torch.utils.data.Subset(data.base_dataset(config.DataCfg(dataset="fashion-mnist", image_size=32), "test"),
                                 range(64))
    s = lincls.Setting(lr=1.0, epochs=1, milestones=(), gamma=0.1, batch_size=32, image_size=32, fast=fast, workers=0)
    lincls.linear_probe(net, ds, ds, 10, s, tmp_path / "out", torch.device("cpu"))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
