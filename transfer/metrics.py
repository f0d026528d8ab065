"""Detection metrics as the transfer tables report them.

VOC: AP50, AP (mean over IoU 0.50:0.95) and AP75 exactly as detectron2's
``PascalVOCDetectionEvaluator`` computes them: per class ``voc_eval`` (py-faster-rcnn) with the
+1-pixel IoU convention, "difficult" objects neither matched nor missed, the VOC2007 11-point AP
for the 2007 test set, then the mean over all classes (a class without ground truth or without
detections counts 0). Predictions are in model coordinates (0-based); ground truth in VOC XML
coordinates (1-based), and predictions get +1 on xmin and ymin as detectron2 writes them.

COCO: box and mask AP/AP50/AP75 through pycocotools' ``COCOeval``.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool) -> float:
    """Area under the precision/recall curve: 11-point (VOC2007) or all-point interpolation."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = np.max(prec[rec >= t]) if np.sum(rec >= t) > 0 else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def voc_class_ap(dets: list[tuple[str, float, np.ndarray]], gts: dict[str, tuple[np.ndarray, np.ndarray]],
                 iou_thresh: float, use_07_metric: bool) -> float:
    """AP of one class. ``dets``: (image id, score, [x1, y1, x2, y2] in XML coordinates);
    ``gts``: image id -> (boxes [G, 4], difficult [G] bool)."""
    npos = sum(int((~d).sum()) for _, d in gts.values())
    matched = {img: np.zeros(len(b), bool) for img, (b, _) in gts.items()}
    order = sorted(range(len(dets)), key=lambda k: -dets[k][1])
    tp, fp = np.zeros(len(dets)), np.zeros(len(dets))
    for rank, k in enumerate(order):
        img, _, bb = dets[k]
        boxes, difficult = gts.get(img, (np.zeros((0, 4)), np.zeros(0, bool)))
        ovmax, jmax = -np.inf, -1
        if len(boxes):
            ixmin, iymin = np.maximum(boxes[:, 0], bb[0]), np.maximum(boxes[:, 1], bb[1])
            ixmax, iymax = np.minimum(boxes[:, 2], bb[2]), np.minimum(boxes[:, 3], bb[3])
            iw, ih = np.maximum(ixmax - ixmin + 1.0, 0.0), np.maximum(iymax - iymin + 1.0, 0.0)
            inter = iw * ih
            union = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                     + (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0) - inter)
            overlaps = inter / union
            ovmax, jmax = float(overlaps.max()), int(overlaps.argmax())
        if ovmax > iou_thresh:
            if difficult[jmax]:
                continue
            if not matched[img][jmax]:
                tp[rank], matched[img][jmax] = 1.0, True
            else:
                fp[rank] = 1.0
        else:
            fp[rank] = 1.0
    if npos == 0:
        return 0.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07_metric)


def voc_evaluate(predictions: dict[str, dict], ground_truth: dict[str, dict], num_classes: int,
                 use_07_metric: bool = True) -> dict[str, float]:
    """{"AP", "AP50", "AP75"} in percent, as detectron2's Pascal VOC evaluator.

    ``predictions[image] = {"boxes": [P, 4] model coords, "scores": [P], "labels": [P]}``;
    ``ground_truth[image] = {"boxes": [G, 4] XML coords, "labels": [G], "difficult": [G]}``.
    """
    aps: dict[int, list[float]] = {t: [] for t in range(50, 100, 5)}
    for c in range(num_classes):
        gts = {}
        for img, g in ground_truth.items():
            sel = np.asarray(g["labels"]) == c
            gts[img] = (np.asarray(g["boxes"], float).reshape(-1, 4)[sel], np.asarray(g["difficult"], bool)[sel])
        dets = []
        for img, p in predictions.items():
            boxes = np.asarray(p["boxes"], float).reshape(-1, 4).copy()
            boxes[:, :2] += 1.0  # detectron2 writes xmin + 1, ymin + 1 (inverse of its XML loading)
            for b, s, lab in zip(boxes, np.asarray(p["scores"]), np.asarray(p["labels"])):
                if lab == c:
                    dets.append((img, float(s), b))
        for t in aps:
            aps[t].append(100.0 * voc_class_ap(dets, gts, t / 100.0, use_07_metric))
    mean = {t: float(np.mean(v)) for t, v in aps.items()}
    return {"AP": float(np.mean(list(mean.values()))), "AP50": mean[50], "AP75": mean[75]}


def coco_evaluate(gt: dict, results: list[dict], iou_type: str = "bbox") -> dict[str, float]:
    """{"AP", "AP50", "AP75"} in percent from pycocotools; ``gt`` is an instances JSON dictionary,
    ``results`` COCO result entries (``bbox`` as [x, y, w, h], or ``segmentation`` RLE)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        # a copy: COCOeval turns polygon segmentations into RLE in place, which would change the
        # caller's ground truth (the test set the next trial reads)
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(float(x), 0.0) * 100.0 for x in ev.stats[:3]]
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2]}


def summarize_trials(results: list[dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """{metric: {"mean", "std"}} over trials (sample std, None for a single trial)."""
    return {k: {"mean": float(np.mean([r[k] for r in results])),
                "std": float(np.std([r[k] for r in results], ddof=1)) if len(results) > 1 else None}
            for k in results[0]}


def format_summary(summary: dict[str, dict[str, float | None]]) -> str:
    """"AP50 81.20 ± 0.30, ..." for a ``summarize_trials`` result."""
    return ", ".join(f"{k} {v['mean']:.2f}" + (f" ± {v['std']:.2f}" if v["std"] is not None else "")
                     for k, v in summary.items())


def trials_phrase(n: int) -> str:
    """"1 trial", "5 trials": how the commands' last line counts them."""
    return f"{n} trial{'' if n == 1 else 's'}"


def summary_lines(summary: dict, what: str) -> list[str]:
    """What a transfer command prints of a stage's ``summary.json``: each trial, then ``what`` (the
    task, and the path) over the trials with mean and std, then where the file is."""
    from pathlib import Path

    from pretrain.run.rundir import SUMMARY_FILE

    trials = summary["trials"]
    return ([f"trial {t}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items()) for t, res in enumerate(trials)]
            + [f"{what} over {trials_phrase(len(summary['trials']))}: {format_summary(summary['summary'])}",
               f"wrote {Path(summary['out']) / SUMMARY_FILE}"])
