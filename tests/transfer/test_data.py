"""transfer/data.py: the locally built detection set, read back through the VOC and COCO readers."""

import numpy as np
import pytest

from pretrain.run.errors import UserError
from transfer.data import COCODetection, VOCDetection, make_synthetic
from transfer.metrics import coco_evaluate, voc_evaluate


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    return root, make_synthetic(root, n_train=12, n_test=6, seed=3)["class_names"]


def test_voc_and_coco_readers_agree_on_real_fashion_mnist_objects(synthetic):
    root, names = synthetic
    assert len(names) == 10 and names[0] == "tshirt_top"
    voc = VOCDetection(root / "VOCdevkit", ["2007"], "trainval", names)
    coco = COCODetection(root / "coco" / "train", root / "coco" / "annotations" / "instances_train.json")
    assert len(voc) == len(coco) == 12
    n_objects = 0
    for k in range(len(voc)):
        img_v, tv = voc[k]
        img_c, tc = coco[k]
        assert img_v.shape == img_c.shape == (3, 128, 128) and 0 <= img_v.min() and img_v.max() <= 1
        assert 1 <= len(tv["boxes"]) <= 3 and tv["labels"].tolist() == tc["labels"].tolist()
        assert tv["labels"].min() >= 1  # 0 is the background class
        # VOC model coordinates (XML xmin-1, ymin-1, xmax, ymax) are COCO's x, y, x+w, y+h
        assert np.array_equal(tv["boxes"].numpy(), tc["boxes"].numpy())
        for box, mask in zip(tc["boxes"], tc["masks"]):  # the box is the mask's tight extent
            ys, xs = np.nonzero(mask.numpy())
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.int().tolist()
        n_objects += len(tv["boxes"])
    assert n_objects >= 18


def test_ground_truth_scored_as_predictions_is_perfect(synthetic):
    root, names = synthetic
    voc = VOCDetection(root / "VOCdevkit", ["2007"], "test", names)
    gts, preds = {}, {}
    for k in range(len(voc)):
        _, t = voc[k]
        gts[t["image_id"]] = voc.annotation(k)
        preds[t["image_id"]] = {"boxes": t["boxes"].numpy(), "labels": t["labels"].numpy() - 1,
                                "scores": np.ones(len(t["boxes"]))}
    present = len({int(c) for g in gts.values() for c in g["labels"]})
    r = voc_evaluate(preds, gts, num_classes=len(names))
    assert r["AP50"] == pytest.approx(100.0 * present / len(names))  # absent classes count 0, as detectron2

    import json
    gt = json.loads((root / "coco" / "annotations" / "instances_val.json").read_text())
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
           for a in gt["annotations"]]
    assert coco_evaluate(gt, res) == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})


def test_missing_dataset_folders_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="VOC 2012 trainval: .* does not exist"):
        VOCDetection(tmp_path, ["2012"], "trainval", ["a"])
    with pytest.raises(UserError, match="COCO images folder"):
        COCODetection(tmp_path / "nope", tmp_path / "x.json")
