"""Data: Fashion-MNIST discovery, aug+ views, deterministic and resumable order, bad images."""

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.input import data
from pretrain.run import config
from pretrain.run.errors import UserError


def test_fashion_mnist_reads_real_images():
    folder = data.locate_fashion_mnist(None)
    x, y = data.load_fashion_mnist(folder, "train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8
    assert sorted(np.unique(y).tolist()) == list(range(10))
    xt, yt = data.load_fashion_mnist(folder, "test")
    assert xt.shape == (10000, 28, 28) and len(yt) == 10000
    assert 50 < x[:100].mean() < 120  # real clothing images, not noise or zeros


def test_missing_fashion_mnist_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MOCHI_BENCH_NO_DOWNLOAD", "1")
    with pytest.raises(UserError) as e:
        data.locate_fashion_mnist(str(tmp_path / "given"))
    msg = str(e.value)
    assert "given" in msg and "dataset-fashion-mnist" in msg and "download" in msg
    assert "\n" not in msg


def test_sampler_is_seeded_sharded_and_resumable():
    full = data.ResumableSampler(100, batch_per_rank=8, rank=0, world=1, seed=3)
    full.set_epoch(2)
    order = list(full)
    assert len(order) == 96 and len(set(order)) == 96 and all(e == 2 for e, _ in order)
    again = data.ResumableSampler(100, 8, seed=3)
    again.set_epoch(2, start_step=5)
    assert list(again) == order[40:]
    other = data.ResumableSampler(100, 8, seed=3)
    other.set_epoch(3)
    assert list(other) != order
    r0, r1 = (data.ResumableSampler(100, 4, rank=r, world=2, seed=3) for r in (0, 1))
    for r in (r0, r1):
        r.set_epoch(2)
    i0, i1 = {i for _, i in r0}, {i for _, i in r1}
    assert not i0 & i1 and len(i0) == len(i1) == 48


def test_two_views_depend_only_on_seed_epoch_index():
    x, y = data.load_fashion_mnist(data.locate_fashion_mnist(None), "test")
    ds = data.TwoViews(data.ArrayImages(x[:10], y[:10]), data.aug_plus(32), seed=0)
    a = ds[(1, 4)]
    torch.manual_seed(1234)  # global RNG state must not matter
    ds[(1, 3)]
    b = ds[(1, 4)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 32, 32) and not torch.equal(a[0], a[1])  # two different views
    assert not torch.equal(ds[(2, 4)][0], a[0])


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(tmp_path / "train" / cls / f"{i}.jpg")
    (tmp_path / "train" / "a" / "1.jpg").write_bytes(b"not a jpeg")
    base = data.image_folder(str(tmp_path), None)
    ds = data.TwoViews(base, data.aug_plus(16), seed=0)
    out = [ds[(0, i)] for i in range(len(ds))]
    assert sum(o[4] for o in out) == 1
    batch = data.collate(out)
    assert batch[0].shape == (6, 3, 16, 16) and batch[4] == 1


def test_class_list_keeps_only_listed_classes(tmp_path):
    for cls in ("n1", "n2", "n3"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / cls / "x.png")
    (tmp_path / "list.txt").write_text("n3\nn1\n")
    ds = data.image_folder(str(tmp_path), str(tmp_path / "list.txt"))
    assert ds.classes == ["n1", "n3"] and len(ds) == 2
    (tmp_path / "bad.txt").write_text("n1\nn9\n")
    with pytest.raises(UserError, match="lacks 1 classes"):
        data.image_folder(str(tmp_path), str(tmp_path / "bad.txt"))


def test_imagenet100_list_ships_100_classes():
    classes = data.resolve_class_list("imagenet100.txt")
    assert len(classes) == len(set(classes)) == 100 and all(c.startswith("n") for c in classes)


def test_aug_plus_matches_moco_v2():
    t = data.aug_plus(224)
    names = [type(x).__name__ for x in t.transforms]
    assert names == ["RandomResizedCrop", "RandomApply", "RandomGrayscale", "RandomApply",
                     "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert t.transforms[0].scale == (0.2, 1.0)
    jitter = t.transforms[1].transforms[0]
    assert t.transforms[1].p == 0.8 and jitter.brightness == (0.6, 1.4) and jitter.hue == (-0.1, 0.1)
    blur = t.transforms[3].transforms[0]
    assert t.transforms[3].p == 0.5 and blur.sigma == (0.1, 2.0) and blur.kernel_size == (23, 23)


def test_too_few_images_for_a_batch():
    cfg = config.load("demo", overrides=["data.subset=100", "optim.batch_size=128"])
    with pytest.raises(UserError, match="no full batch"):
        data.train_loader(cfg)


def test_holdout_is_a_seeded_disjoint_draw_from_the_training_indices():
    kept, held = data.holdout(1000, 0.1, seed=3)
    assert len(held) == 100 and len(kept) == 900
    assert not set(kept) & set(held) and sorted(kept + held) == list(range(1000))
    assert held != list(range(100))  # a draw, not the first images
    assert data.holdout(1000, 0.1, seed=3) == (kept, held)
    assert data.holdout(1000, 0.1, seed=4)[1] != held
    assert len(data.holdout(1000, 37, seed=0)[1]) == 37  # a count
    for bad in (0, -0.1, 2.5, 1000):
        with pytest.raises(UserError, match="validation split"):
            data.holdout(1000, bad, seed=0)
