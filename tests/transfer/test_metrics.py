"""transfer/metrics.py against hand-computed cases (detectron2's VOC rules, pycocotools' COCO AP)."""

import numpy as np
import pytest

from transfer.metrics import coco_evaluate, voc_ap, voc_class_ap, voc_evaluate


def gt(boxes, labels, difficult=None):
    return {"boxes": np.array(boxes, float), "labels": np.array(labels),
            "difficult": np.array(difficult if difficult is not None else [False] * len(labels))}


def as_pred(boxes, labels, scores=None):
    b = np.array(boxes, float)
    b[:, :2] -= 1.0  # model coordinates: detectron2 adds 1 to xmin, ymin before comparing with the XML
    return {"boxes": b, "labels": np.array(labels), "scores": np.array(scores or [1.0] * len(labels))}


def test_perfect_predictions_score_100_and_classes_without_ground_truth_count_0():
    g = {"a": gt([[10, 10, 50, 60], [70, 20, 90, 40]], [0, 1])}
    p = {"a": as_pred([[10, 10, 50, 60], [70, 20, 90, 40]], [0, 1])}
    assert voc_evaluate(p, g, num_classes=2) == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    assert voc_evaluate(p, g, num_classes=4)["AP50"] == pytest.approx(50.0)  # detectron2 averages all classes


def test_precision_recall_by_hand():
    # 2 ground-truth boxes; detections by score: TP, FP, TP -> rec .5 .5 1, prec 1 .5 .667
    gts = {"a": (np.array([[0, 0, 9, 9], [20, 20, 29, 29]], float), np.zeros(2, bool))}
    dets = [("a", 0.9, np.array([0, 0, 9, 9.0])), ("a", 0.8, np.array([50, 50, 59, 59.0])),
            ("a", 0.7, np.array([20, 20, 29, 29.0]))]
    assert voc_class_ap(dets, gts, 0.5, use_07_metric=True) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)
    assert voc_class_ap(dets, gts, 0.5, use_07_metric=False) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), True) == pytest.approx(1.0)


def test_difficult_objects_are_neither_matched_nor_missed_and_duplicates_are_false_positives():
    gts = {"a": (np.array([[0, 0, 9, 9], [20, 20, 29, 29]], float), np.array([False, True]))}
    on_difficult_first = [("a", 0.9, np.array([20, 20, 29, 29.0])), ("a", 0.8, np.array([0, 0, 9, 9.0]))]
    assert voc_class_ap(on_difficult_first, gts, 0.5, True) == pytest.approx(1.0)
    duplicate = [("a", 0.9, np.array([0, 0, 9, 9.0])), ("a", 0.8, np.array([0, 0, 9, 9.0]))]
    gts1 = {"a": (np.array([[0, 0, 9, 9]], float), np.array([False]))}
    # rec 1 1, prec 1 .5 -> still 1.0 under 11-point max-interpolation; the duplicate is counted as FP
    assert voc_class_ap(duplicate, gts1, 0.5, True) == pytest.approx(1.0)
    assert voc_class_ap(duplicate[::-1][:1] + [("a", 0.95, np.array([40, 40, 49, 49.0]))], gts1, 0.5, False) \
        == pytest.approx(0.5)  # an FP above the TP halves the precision at full recall


def test_iou_uses_detectron2s_plus_one_pixel_convention():
    # XML box [1,1,10,10] is 10x10 px; the prediction [0,0,8,8] becomes [1,1,9,9] (9x9): IoU 81/100 = 0.81
    g = {"a": gt([[1, 1, 10, 10]], [0])}
    p = {"a": {"boxes": np.array([[0.0, 0.0, 9.0, 9.0]]), "labels": np.array([0]), "scores": np.array([1.0])}}
    r = voc_evaluate(p, g, num_classes=1)
    assert r["AP50"] == pytest.approx(100.0) and r["AP75"] == pytest.approx(100.0)
    assert r["AP"] == pytest.approx(70.0)  # matched at IoU 0.50 ... 0.80, missed at 0.85 ... 0.95


def coco_gt(boxes, masks=None):
    anns = []
    for i, (x, y, w, h) in enumerate(boxes):
        ann = {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
        if masks is not None:
            ann["segmentation"] = masks[i]
        anns.append(ann)
    return {"images": [{"id": 1, "width": 64, "height": 64}], "categories": [{"id": 1, "name": "item"}],
            "annotations": anns}


def test_coco_box_ap_by_hand():
    g = coco_gt([[0, 0, 10, 10], [30, 30, 20, 10]])
    perfect = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in g["annotations"]]
    assert coco_evaluate(g, perfect) == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    g1 = coco_gt([[0, 0, 10, 10]])
    # IoU 83/100: a match at thresholds 0.50 ... 0.80 (7 of 10)
    r = coco_evaluate(g1, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 8.3], "score": 0.9}])
    assert r["AP50"] == pytest.approx(100.0) and r["AP75"] == pytest.approx(100.0)
    assert r["AP"] == pytest.approx(70.0)


def test_coco_mask_ap():
    from pycocotools import mask as mask_util

    m = np.zeros((64, 64), np.uint8, order="F")
    m[5:25, 5:15] = 1
    rle = mask_util.encode(m)
    rle["counts"] = rle["counts"].decode()
    g = coco_gt([[5, 5, 10, 20]], [rle])
    r = coco_evaluate(g, [{"image_id": 1, "category_id": 1, "segmentation": rle, "score": 0.8}], "segm")
    assert r == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})
    half = m.copy()
    half[15:25] = 0  # IoU 0.5 exactly is not above 0.55: matched only at 0.50
    rle2 = mask_util.encode(np.asfortranarray(half))
    rle2["counts"] = rle2["counts"].decode()
    r = coco_evaluate(g, [{"image_id": 1, "category_id": 1, "segmentation": rle2, "score": 0.8}], "segm")
    assert r["AP50"] == pytest.approx(100.0) and r["AP75"] == 0.0 and r["AP"] == pytest.approx(10.0)


def test_coco_evaluation_leaves_polygon_ground_truth_as_it_was():
    import copy

    poly = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]
    gt = {"images": [{"id": 1, "width": 64, "height": 64}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0, "segmentation": poly}]}
    before = copy.deepcopy(gt)
    from pycocotools import mask as mask_util

    rle = mask_util.merge(mask_util.frPyObjects(poly, 64, 64))
    res = [{"image_id": 1, "category_id": 1, "score": 1.0, "segmentation": rle}]
    assert coco_evaluate(gt, res, "segm")["AP"] == pytest.approx(100.0)
    assert gt == before  # the next trial reads the same ground truth
