"""The linear probe: top-k accuracy, the CLI end to end on real images with resume, where it writes,
and a frozen backbone that stays frozen."""

import json

import pytest
import torch

from pretrain import lincls
from pretrain.eval import lincls as probe
from pretrain.eval.backbone import load_backbone, read_source
from pretrain.run.errors import UserError
from tests.pretrain.eval.test_backbone import moco_format


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.1]])
    y = torch.tensor([1, 2, 2])
    top1, top2 = probe.accuracy(logits, y, (1, 2))
    assert top1 == pytest.approx(100 / 3) and top2 == pytest.approx(200 / 3)


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
    from pretrain.run import checkpoint, config
    from pretrain.method.moco import from_config

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
    from pretrain.input import data
    from pretrain.run import config

    path, _ = moco_format(tmp_path)
    sd, _, _ = read_source(str(path))
    net = load_backbone(sd, "resnet18", small_stem=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ds = torch.utils.data.Subset(data.base_dataset(config.DataCfg(dataset="fashion-mnist", image_size=32), "test"),
                                 range(64))
    s = probe.Setting(lr=1.0, epochs=1, milestones=(), gamma=0.1, batch_size=32, image_size=32, fast=fast, workers=0)
    probe.linear_probe(net, ds, ds, 10, s, tmp_path / "out", torch.device("cpu"))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
