"""The linear probe: top-k accuracy, the CLI end to end on real images with resume, its lr chosen on
images held out of the training split (never on the test split), where it writes, and a frozen
backbone that stays frozen."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from pretrain import lincls
from pretrain.eval import lincls as probe
from pretrain.eval.backbone import load_backbone, read_source
from pretrain.eval.probe import lincls_settings
from pretrain.input import data
from pretrain.run import tracking
from pretrain.run.errors import UserError
from tests.pretrain.eval.test_backbone import moco_format

TINY = ["--arch", "resnet18", "--dataset", "fashion-mnist", "--image-size", "32", "--train-size", "512",
        "--test-size", "256", "--workers", "0"]


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.1]])
    y = torch.tensor([1, 2, 2])
    top1, top2 = probe.accuracy(logits, y, (1, 2))
    assert top1 == pytest.approx(100 / 3) and top2 == pytest.approx(200 / 3)


@pytest.mark.parametrize("fast", [True, False])
def test_lincls_on_a_moco_format_checkpoint_end_to_end_and_resume(tmp_path, fast):
    path, _ = moco_format(tmp_path)
    out = tmp_path / ("fast" if fast else "full")
    # One lr: a sweep may choose another lr for 3 epochs than for 2 (that folder is then refused).
    args = [str(path), *TINY, "--out", str(out)] + (["--fast", "--lr", "0.3"] if fast else [])
    assert lincls.main(args + ["--epochs", "2"]) == 0
    r = json.loads((out / "lincls.json").read_text())
    assert r["mode"] == ("fast" if fast else "full") and r["tables_use"] == "top1_last"
    hist = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)["histories"][0]
    # The reported number is the last epoch's, not the best epoch on the test split.
    assert (r["top1_last"], r["top5_last"]) == (hist[-1]["top1"], hist[-1]["top5"]) and 10 < r["top1_last"] <= 100
    assert r["top1_best_on_test"] == max(h["top1"] for h in hist)
    metrics = {m["step"]: m for m in tracking.read_metrics(out)}
    assert metrics[2]["top1_last"] == r["top1_last"] and not any("top1_best" in m for m in metrics.values())
    if not fast:  # the full protocol trains the preset's lr (the demo preset's 10): no sweep, nothing held out
        sel = r["selection"]
        assert [c["lr"] for c in sel["candidates"]] == [10.0] and sel["lr"] == 10.0 and sel["val_images"] == 0
        assert sel["train_images"] == 512 and not (out / "sweep").exists()
    # Asking for more epochs resumes from the saved classifier instead of starting again.
    assert lincls.main(args + ["--epochs", "3"]) == 0
    hist = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)["histories"][0]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    # The same folder with other settings is refused before anything in it changes.
    before = (out / "lincls.json").read_bytes()
    with pytest.raises(UserError, match="holds a linear probe with other settings \\(lrs: "):
        lincls.main(args + ["--epochs", "3", "--lr", "0.5"])
    assert (out / "lincls.json").read_bytes() == before


def fashion_mnist_with_scrambled_test_labels(folder):
    """A Fashion-MNIST folder: the real training images and labels and test images, the test labels permuted."""
    real = data.locate_fashion_mnist(None)
    folder.mkdir()
    for split, stems in data.FASHION_MNIST_FILES.items():
        for stem in stems:
            if stem != data.FASHION_MNIST_FILES["test"][1]:
                src = data._idx_file(real, stem)
                (folder / src.name).symlink_to(src)
    _, labels = data.load_fashion_mnist(real, "test")
    scrambled = np.random.default_rng(0).permutation(labels).astype(np.uint8)
    header = bytes([0, 0, 8, 1]) + len(scrambled).to_bytes(4, "big")
    (folder / data.FASHION_MNIST_FILES["test"][1]).write_bytes(header + scrambled.tobytes())
    return folder


def test_fast_probe_chooses_its_lr_on_training_images_and_never_reads_the_test_labels(tmp_path):
    """The sweep and its choice are the same whatever the test labels say; only the reported test
    accuracy, measured once after the choice, sees them."""
    path, _ = moco_format(tmp_path)
    scrambled = fashion_mnist_with_scrambled_test_labels(tmp_path / "fmnist")
    args = [str(path), *TINY, "--fast", "--epochs", "3"]
    assert lincls.main(args + ["--out", str(tmp_path / "real")]) == 0
    assert lincls.main(args + ["--data", str(scrambled), "--out", str(tmp_path / "scrambled")]) == 0
    real, shuffled = (json.loads((tmp_path / d / "lincls.json").read_text()) for d in ("real", "scrambled"))
    assert real["selection"] == shuffled["selection"]
    assert real["top1_last"] != shuffled["top1_last"]  # the scrambled labels do reach the reported accuracy

    sel = real["selection"]
    lrs = [c["lr"] for c in sel["candidates"]]
    assert lrs == [round(10.0 * f, 12) for f in probe.LR_FACTORS] == sorted(lrs)  # the demo preset's lr 10, scaled
    best = max(sel["candidates"], key=lambda c: c["val_top1"])
    assert sel["lr"] == best["lr"] and sel["rule"] == probe.RULE and sel["epochs"] == 3
    assert len({c["val_top1"] for c in sel["candidates"]}) > 1  # the candidates do differ on validation
    # 10% of the 512 training images held out; the candidates train on the other 461; the final probe on all 512
    assert (sel["val_split"], sel["val_images"], sel["sweep_train_images"], sel["train_images"]) == (0.1, 51, 461, 512)
    params = json.loads((tmp_path / "real" / "tracking.json").read_text())["params"]
    assert float(params["lincls.lr"]) == sel["lr"]


def test_candidates_need_a_validation_split_and_exclude_a_single_lr(tmp_path):
    path, _ = moco_format(tmp_path)
    with pytest.raises(UserError, match="give --lr \\(one lr\\) or --lrs"):
        lincls_settings([str(path), "--lr", "1", "--lrs", "1,3"])
    with pytest.raises(UserError, match="--lrs"):
        lincls_settings([str(path), "--lrs", "1,x"])
    with pytest.raises(UserError, match="--lrs 0.1,1: choosing among them needs a validation split"):
        lincls.main([str(path), *TINY, "--lrs", "0.1,1", "--val-split", "0", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_lincls_on_a_checkpoint_file_of_a_run_writes_beside_the_run(tmp_path):
    from pretrain.run import checkpoint, config
    from pretrain.method.moco import from_config

    run = tmp_path / "runs" / "r"
    cfg = config.load("demo", overrides=[f"run.out={run}"])
    checkpoint.save(run / "checkpoints", 5, {"model": from_config(cfg).state_dict(), "config": cfg.to_dict(),
                                            "mlflow_run_id": None})
    src = checkpoint.candidates(run / "checkpoints")[0]
    assert lincls.main([str(src), "--fast", "--train-size", "256", "--test-size", "128", "--epochs", "1",
                        "--workers", "0"]) == 0
    assert (run / "lincls-fast" / "lincls.json").is_file()
    assert (tmp_path / "runs" / "mlflow.db").is_file() and not (run / "checkpoints" / "lincls-fast").exists()


def test_candidates_trained_at_once_match_each_trained_alone(tmp_path):
    """One stacked fc with per-slice lrs (momentum, step decay) is the same as separate probes."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 16, generator=g), torch.randint(0, 4, (300,), generator=g)
    s = probe.Setting(lr=0.0, epochs=4, milestones=(2, 3), gamma=0.1, batch_size=64, image_size=32, fast=True)
    lrs = (0.1, 1.0, 3.0)
    together = probe.linear_probes(None, (x, y), (x, y), 4, s, lrs, tmp_path / "all", torch.device("cpu"))
    fc = torch.load(sorted((tmp_path / "all" / "checkpoints").glob("*.pt"))[-1], weights_only=True)["fc"]
    for j, (lr, hist) in enumerate(zip(lrs, together)):
        alone = probe.linear_probe(None, (x, y), (x, y), 4, dataclasses.replace(s, lr=lr), tmp_path / f"{lr}",
                                   torch.device("cpu"))
        own = torch.load(sorted((tmp_path / f"{lr}" / "checkpoints").glob("*.pt"))[-1], weights_only=True)["fc"]
        assert torch.allclose(fc["weight"][4 * j : 4 * j + 4], own["weight"], rtol=1e-4, atol=1e-6)
        assert torch.allclose(fc["bias"][4 * j : 4 * j + 4], own["bias"], rtol=1e-4, atol=1e-6)
        assert [h["train_loss"] for h in hist] == pytest.approx([h["train_loss"] for h in alone], rel=1e-5)
        assert [h["lr"] for h in hist] == pytest.approx([lr, lr, lr * 0.1, lr * 0.01])


@pytest.mark.parametrize("fast", [True, False])
def test_linear_probe_leaves_the_frozen_backbone_untouched(tmp_path, fast):
    """BN running statistics included: the probe may train nothing but its fc."""
    from pretrain.run import config

    path, _ = moco_format(tmp_path)
    sd, _, _ = read_source(str(path))
    net = load_backbone(sd, "resnet18", small_stem=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ds = torch.utils.data.Subset(data.base_dataset(config.DataCfg(dataset="fashion-mnist", image_size=32), "test"),
                                 range(64))
    s = probe.Setting(lr=1.0, epochs=1, milestones=(), gamma=0.1, batch_size=32, image_size=32, fast=fast, workers=0)
    device = torch.device("cpu")
    train = probe.cached_features(net, ds, ds, s, tmp_path / "out", device)["train"] if fast else ds
    probe.linear_probe(net, train, train, 10, s, tmp_path / "out", device)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
