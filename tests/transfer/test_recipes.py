"""transfer/configs: MoCo's detection recipe, checked key by key without detectron2."""

import pytest

from pretrain.run.errors import UserError
from transfer.recipes import RECIPES, resolve, scale_for_gpus


@pytest.mark.parametrize("task", list(RECIPES))
def test_every_recipe_carries_the_settings_torchvision_style_weights_need(task):
    cfg = resolve(task)
    m = cfg["MODEL"]
    assert m["PIXEL_MEAN"] == [123.675, 116.280, 103.530] and m["PIXEL_STD"] == [58.395, 57.120, 57.375]
    assert cfg["INPUT"]["FORMAT"] == "RGB" and m["RESNETS"]["STRIDE_IN_1X1"] is False
    assert m["BACKBONE"]["FREEZE_AT"] == 0 and m["RESNETS"]["DEPTH"] == 50
    assert cfg["TEST"]["PRECISE_BN"]["ENABLED"] is True
    assert m["RESNETS"]["NORM"] in ("naiveSyncBN", "SyncBN")
    assert cfg["SOLVER"]["IMS_PER_BATCH"] == 16 and cfg["SOLVER"]["BASE_LR"] == 0.02


def test_schedules():
    voc = resolve("voc-c4")
    assert voc["MODEL"]["ROI_HEADS"] == {"NAME": "Res5ROIHeadsExtraNorm", "NUM_CLASSES": 20}
    assert voc["SOLVER"]["MAX_ITER"] == 24000 and voc["SOLVER"]["STEPS"] == "(18000, 22000)"
    assert voc["DATASETS"]["TRAIN"] == "('voc_2007_trainval', 'voc_2012_trainval')"
    assert resolve("coco-c4-1x")["SOLVER"]["MAX_ITER"] == 90000 and resolve("coco-c4-2x")["SOLVER"]["MAX_ITER"] == 180000
    assert resolve("coco-c4-1x")["MODEL"]["MASK_ON"] is True
    fpn = resolve("coco-fpn-1x")
    assert fpn["MODEL"]["ROI_HEADS"]["NAME"] == "StandardROIHeads" and fpn["MODEL"]["FPN"]["NORM"] == "SyncBN"


def test_fewer_gpus_scale_batch_and_lr_together_and_stretch_the_schedule():
    s = scale_for_gpus(resolve("voc-c4"), 2)["SOLVER"]
    assert s["IMS_PER_BATCH"] == 4 and s["BASE_LR"] == pytest.approx(0.005)
    assert s["MAX_ITER"] == 96000 and s["STEPS"] == (72000, 88000) and s["WARMUP_ITERS"] == 400
    with pytest.raises(UserError, match="unknown transfer task"):
        resolve("voc-fpn")
