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


def test_voc_xml_carries_pose_and_truncated_for_detectron2s_evaluator(synthetic):
    import xml.etree.ElementTree as ET

    root, names = synthetic
    base = root / "VOCdevkit" / "VOC2007"
    assert (root / "VOCdevkit" / "classes.txt").read_text().split() == names  # its own classes, not VOC's
    for img_id in (base / "ImageSets" / "Main" / "test.txt").read_text().split():
        # the fields detectron2's voc_eval.parse_rec reads, each one of every object
        for obj in ET.parse(base / "Annotations" / f"{img_id}.xml").findall("object"):
            assert obj.find("name").text in names and obj.find("pose").text == "Unspecified"
            assert int(obj.find("truncated").text) == 0 and int(obj.find("difficult").text) == 0
            assert [int(obj.find("bndbox").find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]


def test_coco_masks_are_polygons_whose_raster_is_the_box_extent(synthetic):
    import json

    from pycocotools import mask as mask_util

    root, _ = synthetic
    gt = json.loads((root / "coco" / "annotations" / "instances_train.json").read_text())
    for a in gt["annotations"]:
        # polygons (a list of [x, y, ...]), what detectron2 reads with INPUT.MASK_FORMAT polygon, not RLE
        assert isinstance(a["segmentation"], list) and len(a["segmentation"]) == 1
        assert len(a["segmentation"][0]) >= 8 and len(a["segmentation"][0]) % 2 == 0
        m = mask_util.decode(mask_util.frPyObjects(a["segmentation"], 128, 128))[..., 0]
        ys, xs = np.nonzero(m)
        assert int(m.sum()) == a["area"]
        assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == a["bbox"]


def test_silhouette_polygon_rasterises_to_exactly_its_mask():
    from pycocotools import mask as mask_util
    from scipy import ndimage

    from transfer.data import silhouette

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(3, 30, size=2)
        m = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        filled, poly = silhouette(m)
        if not filled.any():
            assert poly == [] and not m.any()
            continue
        raster = mask_util.decode(mask_util.frPyObjects([poly], int(h), int(w)))[..., 0].astype(bool)
        assert np.array_equal(raster, filled)
        # the largest 4-connected part of m, each of its rows filled from its first to its last pixel
        parts, n = ndimage.label(m)
        biggest = parts == 1 + int(np.argmax([(parts == k).sum() for k in range(1, n + 1)]))
        for row, part in zip(filled, biggest):
            xs = np.nonzero(part)[0]
            want = np.zeros_like(row)
            if len(xs):
                want[xs.min():xs.max() + 1] = True
            assert np.array_equal(row, want)
    ring = np.ones((5, 5), bool)
    ring[2, 2] = False
    assert silhouette(ring)[0].all()  # a hole is filled: COCO polygons cannot hold one
