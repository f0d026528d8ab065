"""``mochi-transfer SOURCE --task TASK --data ROOT``: detection transfer through torchvision.

The torchvision path of the transfer stage: it runs wherever PyTorch does. SOURCE is a
pretraining run folder, one of this project's checkpoints or a MoCo-format checkpoint (a
ResNet-50 query encoder), or ``--random-init`` for the baseline. Each of ``--trials`` runs
(default 5, as MoCo reports) fine-tunes the whole network with its own seed and evaluates once at
the end: VOC AP50/AP/AP75 as detectron2's Pascal VOC evaluator, or COCO box and mask AP through
pycocotools. Mean and std over trials go to ``OUT/summary.json``; every trial is an MLflow child
of the pretraining run. Trials checkpoint every ``--ckpt-every`` iterations and resume exactly:
each iteration's images and flips depend only on (seed, iteration). A trial is reused (resumed, or
its result read back) only with the settings it was trained with (``transfer.trials.fingerprint``);
other settings are refused, unless ``--discard-trials``.

Tasks: the recipes of transfer/configs/ in iterations (``voc-c4``: VOC07+12 trainval -> VOC07
test, 24k iterations; ``coco-c4-1x``, ``coco-c4-2x``, ``coco-fpn-1x``: COCO 2017 Mask R-CNN), and
CPU-sized ones for the local detection set (``demo-voc``, ``demo-coco``; build it with
``mochi-transfer --make-demo-data DIR``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from pretrain.run import checkpoint, dist, rundir
from pretrain.run.errors import UserError
from pretrain.run.tracking import Tracker, open_run, transfer_stage

from . import data, metrics, trials
from .models import build
from .stages import FinetuneSettings, Task

log = logging.getLogger(__name__)


def datasets(task: Task, root: Path):
    """(train, test, class names) of a task's data under ``root``."""
    if task.data == "voc":
        names = data.voc_class_names(root, task.test.split(":")[0])
        parts = [data.VOCDetection(root, [y], s, names) for y, s in (t.split(":") for t in task.train)]
        train = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
        year, split = task.test.split(":")
        return train, data.VOCDetection(root, [year], split, names), names
    train = data.COCODetection(root / task.train[0], root / "annotations" / f"instances_{task.train[0]}.json")
    test = data.COCODetection(root / task.test, root / "annotations" / f"instances_{task.test}.json")
    return train, test, test.class_names


def flip(img: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Horizontal flip of an image and its boxes (and masks)."""
    w = img.shape[-1]
    t = dict(target)
    b = target["boxes"].clone()
    b[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    t["boxes"] = b
    if "masks" in t:
        t["masks"] = t["masks"].flip(-1)
    return img.flip(-1), t


def lr_at(task: Task, lr: float, it: int) -> float:
    """Linear warm-up from 0.001 x, then x0.1 at each step (detectron2's WarmupMultiStepLR)."""
    factor = 0.1 ** sum(it >= s for s in task.steps)
    if it < task.warmup:
        alpha = it / task.warmup
        factor *= 0.001 * (1 - alpha) + alpha
    return lr * factor


@torch.no_grad()
def evaluate(model, task: Task, test, names: list[str], device) -> dict[str, float]:
    """VOC AP50/AP/AP75 or COCO box (and mask) AP of ``model`` on the test set, in percent."""
    model.eval()
    if task.data == "voc":
        preds, gts = {}, {}
        for k in range(len(test)):
            img, t = test[k]
            out = model([img.to(device)])[0]
            preds[t["image_id"]] = {"boxes": out["boxes"].cpu().numpy(), "scores": out["scores"].cpu().numpy(),
                                    "labels": out["labels"].cpu().numpy() - 1}
            gts[t["image_id"]] = test.annotation(k)
        year = task.test.split(":")[0]
        return metrics.voc_evaluate(preds, gts, len(names), use_07_metric=year == "2007")
    from pycocotools import mask as mask_util

    boxes, segms = [], []
    for k in range(len(test)):
        img, t = test[k]
        out = model([img.to(device)])[0]
        for j in range(len(out["scores"])):
            x1, y1, x2, y2 = out["boxes"][j].tolist()
            entry = {"image_id": t["image_id"], "category_id": test.cat_ids[int(out["labels"][j]) - 1],
                     "score": float(out["scores"][j])}
            boxes.append({**entry, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            if "masks" in out:
                rle = mask_util.encode(np.asfortranarray((out["masks"][j, 0] > 0.5).cpu().numpy().astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                segms.append({**entry, "segmentation": rle})
    res = {f"box_{k}": v for k, v in metrics.coco_evaluate(test.gt, boxes, "bbox").items()}
    if task.mask:
        res.update({f"mask_{k}": v for k, v in metrics.coco_evaluate(test.gt, segms, "segm").items()})
    return res


def run_trial(task: Task, state, train, test, names, out: Path, seed: int, tracker: Tracker | None,
              info: dist.DistInfo, ckpt_every: int) -> dict:
    """Fine-tune and evaluate one trial; resumes from ``out/checkpoints``; returns its metrics.

    Under DDP each rank draws ``task.batch / world`` images per iteration (seeded by seed, iteration
    and rank), BatchNorm becomes SyncBatchNorm (on GPUs), and rank 0 checkpoints and evaluates.
    """
    result_file = out / rundir.RESULT_FILE
    if result_file.is_file():
        return json.loads(result_file.read_text())
    device = info.device
    torch.manual_seed(seed)
    model = build(task.kind, len(names), state, mask=task.mask, min_size=task.min_size, max_size=task.max_size,
                  rois_per_image=task.rois_per_image, test_proposals=task.test_proposals,
                  # SyncBatchNorm runs only on GPU modules; CPU DDP (gloo, for tests) keeps per-rank BN.
                  sync_bn=info.world > 1 and device.type == "cuda").to(device)
    net = model
    if info.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=task.lr, momentum=0.9, weight_decay=1e-4)
    saved, _ = checkpoint.load_latest(out / rundir.CHECKPOINTS)
    start = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["iteration"]
        log.info("trial %s resumes at iteration %d", out.name, start)
    model.train()
    for it in range(start, task.iters):
        rng = np.random.default_rng([seed, it, info.rank])
        batch = []
        for k in rng.integers(len(train), size=task.batch // info.world):
            img, t = train[int(k)]
            if rng.random() < 0.5:
                img, t = flip(img, t)
            batch.append((img.to(device), {k2: v.to(device) for k2, v in t.items() if torch.is_tensor(v)}))
        for g in opt.param_groups:
            g["lr"] = lr_at(task, task.lr, it)
        torch.manual_seed(int(rng.integers(2**31)))  # RoI / anchor sampling inside torchvision
        losses = net([b[0] for b in batch], [b[1] for b in batch])
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss is {float(loss)} at iteration {it}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tracker is not None and ((it + 1) % 20 == 0 or it + 1 == task.iters):
            tracker.log({"loss": float(loss), **{k: float(v) for k, v in losses.items()},
                         "lr": opt.param_groups[0]["lr"]}, it + 1)
        if info.main and ((it + 1) % ckpt_every == 0 or it + 1 == task.iters):
            checkpoint.save(out / rundir.CHECKPOINTS, it + 1,
                            {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it + 1}, keep=1)
    if info.world > 1:
        # DDP keeps replicas identical; a divergence here would mean the ranks trained different models.
        total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
        sums = [torch.zeros_like(total) for _ in range(info.world)]
        torch.distributed.all_gather(sums, total)
        if any(not torch.equal(x, sums[0]) for x in sums):
            raise RuntimeError(f"DDP replicas diverged: parameter sums {[float(x) for x in sums]}")
    if info.main:
        res = evaluate(model, task, test, names, device)
        checkpoint.atomic_write(result_file, json.dumps(res).encode())
        if tracker is not None:
            tracker.log(res, task.iters)
    dist.barrier()
    return json.loads(result_file.read_text())


def finished(s: FinetuneSettings, ways: str = trials.WAYS_ON) -> list[bool]:
    """Whether each trial of ``s`` is finished in its folder, without training or writing anything;
    UserError for a bad source or for trials there trained with other settings (ending ``ways``)."""
    src = trials.origin(s.source, s.random_init, s.out_dir)
    return trials.finished_trials(s.out_dir, trials.fingerprint(s, src, dataclasses.asdict(s.recipe())), s.trials,
                                  ways)


def run(s: FinetuneSettings, discard: bool = False) -> dict:
    """Run (or resume) every trial of ``s``; returns the summary also written to ``OUT/summary.json``
    (on the main rank; other ranks return an empty dict). UserError before anything runs for a bad
    task, source or data folder, or for trials in OUT trained with other settings; ``discard``
    removes OUT's trials first instead (``trials.discard_trials``)."""
    task = s.recipe()
    if s.source is None and not s.random_init:
        raise UserError("a transfer stage needs a source, or --random-init")
    out = s.out_dir
    src = trials.origin(s.source, s.random_init, out, parent_run=s.parent_run, tracking_uri=s.tracking_uri,
                        experiment=s.experiment)
    s.check_data()
    root = Path(s.data)
    train, test, names = datasets(task, root)
    recipe = dataclasses.asdict(task)
    fp = trials.fingerprint(s, src, recipe)
    info = dist.init("auto")
    if task.batch % info.world:
        raise UserError(f"batch {task.batch} does not split over {info.world} ranks")
    if not discard:
        trials.finished_trials(out, fp, s.trials)
    dist.barrier()  # every rank has read the folder before the main one changes it
    if info.main:
        if discard:
            trials.discard_trials(out)
        out.mkdir(parents=True, exist_ok=True)
        for t in range(s.trials):
            trials.claim(rundir.trial_dir(out, t), fp)
    dist.barrier()
    results = []
    for t in range(s.trials):
        trial_dir = rundir.trial_dir(out, t)
        run_tags = trials.trial_tags(src, s.task, t, s.random_init, s.engine, s.tags)
        params = {f"transfer.{k}": v for k, v in recipe.items()}
        saved, _ = checkpoint.load_latest(trial_dir / rundir.CHECKPOINTS)
        tracker = open_run(trial_dir, uri=src.uri, experiment=src.experiment,
                           name=f"transfer-{s.task}_trial{t}{'_random-init' if s.random_init else ''}",
                           stage=transfer_stage(task.data), params=params, tags=run_tags,
                           parent=src.parent, resume_step=saved["iteration"] if saved else None) \
            if info.main else None
        with trials.closing(tracker):
            res = run_trial(task, src.state, train, test, names, trial_dir, t, tracker, info, s.ckpt_every)
        results.append(res)
        if info.main:
            log.info("trial %d: %s", t, ", ".join(f"{k} {v:.2f}" for k, v in res.items()))
    if not info.main:
        return {}
    return trials.write_summary(s, src, results, recipe)
