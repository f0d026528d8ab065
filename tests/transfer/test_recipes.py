"""transfer/configs and transfer/recipes.py: MoCo's detection recipes checked key by key, their
scaling to a GPU count and an iteration budget, and the data layout check, all without detectron2."""

import pytest

from pretrain.run.errors import UserError
from transfer.recipes import (DATASETS, RECIPES, check_layout, data_kind, datasets, recipe_gpus, resolve,
                              scale_for_gpus, scale_schedule, with_iters)

PAPER = [t for t in RECIPES if not t.startswith("demo")]


@pytest.mark.parametrize("task", list(RECIPES))
def test_every_recipe_carries_the_settings_torchvision_style_weights_need(task):
    cfg = resolve(task)
    m = cfg["MODEL"]
    assert m["PIXEL_MEAN"] == [123.675, 116.280, 103.530] and m["PIXEL_STD"] == [58.395, 57.120, 57.375]
    assert cfg["INPUT"]["FORMAT"] == "RGB" and m["RESNETS"]["STRIDE_IN_1X1"] is False
    assert m["BACKBONE"]["FREEZE_AT"] == 0 and m["RESNETS"]["DEPTH"] == 50
    assert cfg["TEST"]["PRECISE_BN"]["ENABLED"] is True
    assert m["RESNETS"]["NORM"] in ("naiveSyncBN", "SyncBN")


@pytest.mark.parametrize("task", PAPER)
def test_the_papers_recipes_are_16_images_on_8_gpus(task):
    cfg = resolve(task)
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == 16 and cfg["SOLVER"]["BASE_LR"] == 0.02 and recipe_gpus(cfg) == 8


def test_schedules():
    voc = resolve("voc-c4")
    assert voc["MODEL"]["ROI_HEADS"] == {"NAME": "Res5ROIHeadsExtraNorm", "NUM_CLASSES": 20}
    assert voc["SOLVER"]["MAX_ITER"] == 24000 and voc["SOLVER"]["STEPS"] == "(18000, 22000)"
    assert voc["SOLVER"]["WARMUP_ITERS"] == 100
    assert voc["DATASETS"]["TRAIN"] == "('voc_2007_trainval', 'voc_2012_trainval')"
    assert resolve("coco-c4-1x")["SOLVER"]["MAX_ITER"] == 90000 and resolve("coco-c4-2x")["SOLVER"]["MAX_ITER"] == 180000
    assert resolve("coco-c4-1x")["MODEL"]["MASK_ON"] is True
    assert resolve("coco-c4-1x")["SOLVER"]["WARMUP_ITERS"] == 1000  # detectron2's default, written out
    fpn = resolve("coco-fpn-1x")
    assert fpn["MODEL"]["ROI_HEADS"]["NAME"] == "StandardROIHeads" and fpn["MODEL"]["FPN"]["NORM"] == "SyncBN"


def test_fewer_gpus_scale_batch_and_lr_together_and_stretch_the_schedule():
    s = scale_for_gpus(resolve("voc-c4"), 2)["SOLVER"]
    assert s["IMS_PER_BATCH"] == 4 and s["BASE_LR"] == pytest.approx(0.005)
    assert s["MAX_ITER"] == 96000 and s["STEPS"] == (72000, 88000) and s["WARMUP_ITERS"] == 400
    assert scale_for_gpus(resolve("voc-c4"), 8)["SOLVER"]["STEPS"] == (18000, 22000)  # the recipe as it is
    with pytest.raises(UserError, match="unknown transfer task"):
        resolve("voc-fpn")
    with pytest.raises(UserError, match="--gpus must be >= 1"):
        scale_for_gpus(resolve("voc-c4"), 0)


@pytest.mark.parametrize("task", ["coco-c4-1x", "coco-c4-2x", "coco-fpn-1x"])
def test_coco_warm_up_stretches_with_the_gpu_count_as_vocs_does(task):
    one, two, eight = (scale_for_gpus(resolve(task), g)["SOLVER"] for g in (1, 2, 8))
    assert eight["WARMUP_ITERS"] == 1000 and two["WARMUP_ITERS"] == 4000 and one["WARMUP_ITERS"] == 8000
    # the warm-up is the same share of the schedule at every GPU count
    assert one["WARMUP_ITERS"] / one["MAX_ITER"] == pytest.approx(eight["WARMUP_ITERS"] / eight["MAX_ITER"])


def test_an_iteration_budget_stretches_steps_and_warm_up_but_not_batch_or_lr():
    s = with_iters(scale_for_gpus(resolve("voc-c4"), 1), 4800)["SOLVER"]
    assert s["MAX_ITER"] == 4800 and s["STEPS"] == (3600, 4400) and s["WARMUP_ITERS"] == 20
    assert s["IMS_PER_BATCH"] == 2 and s["BASE_LR"] == pytest.approx(0.0025)
    # a smoke budget keeps what detectron2's scheduler accepts: 0 < s1 < s2 < ... < MAX_ITER, warm-up >= 1
    assert with_iters(resolve("voc-c4"), 4)["SOLVER"]["STEPS"] == (3,)
    assert with_iters(resolve("voc-c4"), 1)["SOLVER"] == {**resolve("voc-c4")["SOLVER"], "MAX_ITER": 1, "STEPS": (),
                                                         "WARMUP_ITERS": 1}
    assert scale_schedule(10, 100, (50, 51, 52), 10) == ((5,), 1)  # steps that collide keep the first
    with pytest.raises(UserError, match="--iters must be >= 1"):
        with_iters(resolve("voc-c4"), 0)


def test_demo_recipes_are_mocos_recipes_at_a_cpus_size_on_their_own_data():
    for task, kind in (("demo-voc", "voc"), ("demo-coco", "coco")):
        cfg = resolve(task)
        assert recipe_gpus(cfg) == 1 and cfg["SOLVER"]["BASE_LR"] == pytest.approx(0.02 * 2 / 16)
        assert cfg["MODEL"]["ROI_HEADS"] == {"NAME": "Res5ROIHeadsExtraNorm", "NUM_CLASSES": 10,
                                             "BATCH_SIZE_PER_IMAGE": 16}
        assert cfg["INPUT"]["MIN_SIZE_TEST"] == 128 and cfg["MODEL"]["RPN"]["POST_NMS_TOPK_TEST"] == 50
        train, test = datasets(task)
        assert data_kind(task) == kind and all(n.startswith("mochi_demo_") for n in train + test)
        assert all(DATASETS[n].kind == kind for n in train + test)
    assert resolve("demo-coco")["MODEL"]["MASK_ON"] is True
    assert resolve("demo-coco").get("INPUT", {}).get("MASK_FORMAT", "polygon") == "polygon"  # the set's polygons


def test_the_layout_check_names_the_first_missing_path(tmp_path):
    with pytest.raises(UserError, match=r"VOC2007/ImageSets/Main/trainval.txt is missing, which voc_2007_trainval "
                                        r"needs \(for voc-c4, --data is the folder holding VOC2007/"):
        check_layout("voc-c4", tmp_path)
    for rel in ("VOC2007/ImageSets/Main/trainval.txt", "VOC2007/ImageSets/Main/test.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    (tmp_path / "VOC2007" / "Annotations").mkdir()
    with pytest.raises(UserError, match="VOC2007/JPEGImages is missing"):
        check_layout("voc-c4", tmp_path)
    (tmp_path / "VOC2007" / "JPEGImages").mkdir()
    with pytest.raises(UserError, match="VOC2012/ImageSets/Main/trainval.txt is missing, which voc_2012_trainval"):
        check_layout("voc-c4", tmp_path)
    # detectron2 options choose other datasets: VOC07 alone is then enough
    check_layout("voc-c4", tmp_path, ["DATASETS.TRAIN", "('voc_2007_trainval',)"])
    with pytest.raises(UserError, match="unknown dataset 'voc_2042_x'"):
        check_layout("voc-c4", tmp_path, ["DATASETS.TRAIN", "('voc_2042_x',)"])
    with pytest.raises(UserError, match="give a tuple of dataset names"):
        check_layout("voc-c4", tmp_path, ["DATASETS.TEST", "voc_2007_test"])
    with pytest.raises(UserError, match="mix VOC and COCO"):
        check_layout("voc-c4", tmp_path, ["DATASETS.TEST", "('coco_2017_val',)"])
    with pytest.raises(UserError, match=r"annotations/instances_train2017.json is missing.*the COCO folder holding"):
        check_layout("coco-c4-1x", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        check_layout("coco-c4-1x", tmp_path / "nowhere")


def test_the_local_detection_set_has_the_layout_its_demo_recipes_need(tmp_path):
    from transfer.data import make_synthetic

    make_synthetic(tmp_path, n_train=2, n_test=1, seed=0)
    check_layout("demo-voc", tmp_path / "VOCdevkit")
    check_layout("demo-coco", tmp_path / "coco")
    # its own classes are part of the layout: without classes.txt it would be read as VOC's 20
    (tmp_path / "VOCdevkit" / "classes.txt").unlink()
    with pytest.raises(UserError, match="classes.txt is missing, which mochi_demo_voc_trainval needs"):
        check_layout("demo-voc", tmp_path / "VOCdevkit")
    with pytest.raises(UserError, match="VOC2007/ImageSets/Main/trainval.txt is missing"):
        check_layout("voc-c4", tmp_path / "coco")  # the COCO folder given to a VOC task
