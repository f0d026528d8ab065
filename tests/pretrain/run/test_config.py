"""The typed config: overrides keep their types, files layer, presets follow the recipes."""

import pytest

from pretrain.run import config
from pretrain.run.errors import UserError


def test_override_types_and_file_layering(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mochi:\n  N: 64\noptim:\n  base_lr: 1\n")
    cfg = config.load("demo", str(f), ["mochi.s=4", "run.tracking_uri=null", "optim.weight_decay=5e-4"])
    assert cfg.optim.weight_decay == 5e-4
    assert cfg.mochi.N == 64 and cfg.mochi.s == 4 and cfg.optim.base_lr == 1.0
    assert isinstance(cfg.optim.base_lr, float) and cfg.run.tracking_uri is None
    with pytest.raises(UserError, match="run.amp: 'yes please' is not a valid bool"):
        config.load("demo", overrides=["run.amp=yes please"])
    f.write_text("mochi: [1, 2]\n")
    with pytest.raises(UserError, match="must be a mapping"):
        config.load(path=str(f))


def test_presets_are_valid_and_follow_the_recipes():
    im1k = config.load("imagenet1k")
    assert (im1k.moco.K, im1k.moco.m, im1k.moco.tau) == (65536, 0.999, 0.2)
    assert (im1k.optim.base_lr, im1k.optim.batch_size, im1k.optim.momentum, im1k.optim.weight_decay) == (0.03, 256, 0.9, 1e-4)
    assert im1k.model.arch == "resnet50" and im1k.model.dim == 128 and im1k.model.mlp
    im100 = config.load("imagenet100")
    assert im100.mochi.mix_start == 10 and im100.moco.K == 16384
    assert im1k.optim.lr == 0.03 and config.with_values(im1k, {"optim.batch_size": 512}).optim.lr == 0.06


def test_imagenet100_follows_the_sourced_moco_v2_recipe():
    # SsnL/moco_align_uniform's README: MoCo v2 on ImageNet-100 scores 77.54% at batch 128, lr 0.03,
    # and 67.52% at batch 256, lr 0.03; the preset must sit on the first, and name its source.
    im100 = config.load("imagenet100")
    assert (im100.optim.batch_size, im100.optim.lr) == (128, 0.03)
    assert "moco_align_uniform" in (config.PRESET_DIR / "imagenet100.yaml").read_text()
    assert config.load("demo").data.dataset == "fashion-mnist"


def test_values_are_set_typed_and_checked_where_they_are_set():
    base = config.load("demo")
    cfg = config.with_values(base, {"mochi.N": 64, "optim.base_lr": 1, "run.experiment": "a: b"})
    assert cfg.mochi.N == 64 and type(cfg.optim.base_lr) is float and cfg.run.experiment == "a: b"
    assert base.mochi.N == 128  # a copy: the base is untouched
    assert cfg.mochi.mixing.notation == cfg.objective.label == "MoCHi (64, 128, 32)"
    assert config.parse_override("optim.epochs=7") == ("optim.epochs", 7)
    assert config.parse_override("data.path=/x/y: z") == ("data.path", "/x/y: z")  # not a YAML mapping
    with pytest.raises(UserError, match="config key mochi.N: 'many' is not a valid int"):
        config.with_values(base, {"mochi.N": "many"})
    with pytest.raises(UserError, match="needs N >= 2"):
        config.with_values(base, {"mochi.N": 1})  # the whole tree is validated
    assert config.leaf_type("run.tracking_uri") is str and config.leaf_type("moco.tau") is float
    with pytest.raises(UserError, match="unknown config key 'mochi.X'"):
        config.leaf_type("mochi.X")


def test_demo_preset_trains_in_fp32_and_the_contiguous_format():
    """The defaults (bf16 autocast, channels_last) hold on any device; the CPU demo opts out of both."""
    assert config.Config().run.amp and config.Config().run.channels_last
    demo = config.load("demo")
    assert not demo.run.amp and not demo.run.channels_last


def test_typed_checks_lists_and_mappings_item_by_item():
    assert config.typed("x", [60, 80], tuple[int, ...]) == (60, 80)
    assert config.typed("x", ["KEY", 50], list[str]) == ["KEY", "50"]  # a name or number is its text
    assert config.typed("x", {"a": 1}, dict[str, str]) == {"a": "1"}
    assert config.typed("x", None, tuple[int, ...] | None) is None
    for value, typ, message in [("60,80", tuple[int, ...], "x: '60,80' is not a list of int"),
                                ([60, 1.5], tuple[int, ...], "x: 1.5 is not a valid int"),
                                (["a"], dict[str, str], r"x: \['a'\] is not a mapping of str to str"),
                                (None, tuple[int, ...], "x: null is not allowed")]:
        with pytest.raises(UserError, match=message):
            config.typed("x", value, typ)
