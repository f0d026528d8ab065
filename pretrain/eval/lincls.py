"""Linear classification on a frozen backbone, following MoCo's main_lincls.py.

``run(ProbeSettings(source=...))``, where the source is a pretraining run folder, one of this
project's checkpoints, or a checkpoint in MoCo's format (``pretrain.eval.backbone``).

Protocol: the query encoder without its head, BN frozen (eval mode), a new fc with N(0, 0.01)
weights is the only thing trained; SGD momentum 0.9, weight decay 0, batch 256; train views
RandomResizedCrop + flip, test views Resize + CenterCrop.

Nothing is chosen on the test split. The reported accuracy is the LAST epoch's (MoCo's main_lincls
reports the best epoch on its validation set, which is the test split: selection on test; that
number is kept in the record for comparison with published figures, never used by the tables).
Where there are several learning rates to choose among (``--fast`` by default: the preset's lr
times ``LR_FACTORS``), a validation split is held out of the TRAINING images (``data.holdout``),
one probe per candidate trains on the rest and is scored on it (``RULE``), and the probe is then
retrained on all the training images with the chosen lr and tested once. What was chosen and how
is the record's ``selection``.

``fast`` extracts centre-crop features once, caches them, and trains the classifiers on the
cache: a cheaper, weaker protocol for sweeps, labelled "fast" wherever its numbers appear.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T

from ..input import data
from ..run import checkpoint, rundir, sameness
from ..run.errors import UserError
from ..run.tracking import LINCLS, Tracker, default_uri, open_run
from .probe import LR_FACTORS, PRESETS, RULE, VAL_SPLIT, ProbeSettings  # noqa: F401
from .backbone import (Transformed, baseline_backbone, evaluated_on, features, load_backbone, read_source,
                       val_transform)

log = logging.getLogger(__name__)

SWEEP = "sweep"  # OUT/sweep: the candidates' checkpoints
# A checkpoint after the last epoch and after any epoch ending this long after the previous one: an
# ImageNet epoch saves each time, a fast probe's millisecond epochs do not wait on fsync each.
CHECKPOINT_EVERY_S = 60.0


# ---------------------------------------------------------------------------------------------
# Training the classifier
def accuracy(logits: torch.Tensor, y: torch.Tensor, ks=(1, 5)) -> list[float]:
    """Top-k accuracies (%) for each k."""
    top = logits.topk(max(ks), dim=1).indices
    hit = top == y[:, None]
    return [100.0 * hit[:, :k].any(dim=1).float().mean().item() for k in ks]


def train_transform(size: int) -> T.Compose:
    """RandomResizedCrop + flip: the training view of MoCo's main_lincls."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])


@dataclasses.dataclass
class Setting:
    """The resolved schedule of one probe."""

    lr: float
    epochs: int
    milestones: tuple[int, ...]
    gamma: float
    batch_size: int
    image_size: int
    fast: bool
    seed: int = 0
    workers: int = 4


def decay(s: Setting, epoch: int) -> float:
    """Step schedule: gamma to the number of milestones passed (the lr is ``s.lr`` times this)."""
    return s.gamma ** sum(epoch >= m for m in s.milestones)


def frozen(backbone: nn.Module, device) -> nn.Module:
    """The backbone on ``device`` in eval mode without gradients: a forward in train mode would move
    the BN running statistics."""
    backbone.to(device).eval()
    for p in backbone.parameters():
        p.requires_grad = False
    return backbone


def cached_features(backbone: nn.Module, train_ds, test_ds, s: Setting, out: Path, device) -> dict:
    """{"train": (features [n, D], labels [n]), "test": ...}: centre-crop features of both splits,
    extracted once into ``out/features.pt`` (what the fast probe trains on)."""
    cache = out / rundir.FEATURES_FILE
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    out.mkdir(parents=True, exist_ok=True)
    net = frozen(backbone, device)
    cached = {split: features(net, ds, val_transform(s.image_size), device, workers=s.workers)
              for split, ds in (("train", train_ds), ("test", test_ds))}
    checkpoint.atomic_torch_save(cache, cached)
    return cached


def linear_probes(backbone: nn.Module | None, train, test, num_classes: int, s: Setting, lrs: tuple[float, ...],
                  out: Path, device, tracker: Tracker | None = None, state: dict | None = None) -> list[list[dict]]:
    """Train one linear classifier per lr in ``lrs`` on ``train`` for ``s.epochs`` (``s.lr`` is not
    used), scoring each on ``test`` after each epoch; returns one history per lr, each one
    {epoch, lr, train_loss, top1, top5} for each of the ``s.epochs`` (a state trained further holds
    more: they are left out).

    The classifiers train at once, as one fc of len(lrs) x num_classes outputs: the same initial
    weights, the same batches, each its own cross-entropy, and each slice's gradient scaled by its
    lr under a common step schedule, which with SGD momentum (weight decay 0) is training them apart
    (up to float rounding), at the cost of about one. ``train`` and ``test``: labelled image datasets, or with
    ``s.fast`` (features [n, D], labels [n]) pairs of ``cached_features`` (the backbone is then not
    used). Checkpoints go to ``out/checkpoints`` (``CHECKPOINT_EVERY_S``); ``state`` is the newest
    one to resume from. ``tracker`` (one lr only) gets each epoch's record.
    """
    k, c = len(lrs), num_classes
    if s.fast:
        (xtr, ytr), (xte, yte) = train, test
        feat_dim = xtr.shape[1]
    else:
        backbone = frozen(backbone, device)
        with torch.no_grad():
            feat_dim = backbone(torch.zeros(2, 3, s.image_size, s.image_size, device=device)).shape[1]
    fc = nn.Linear(feat_dim, k * c)
    torch.manual_seed(s.seed)
    fc.weight.data.copy_(torch.empty(c, feat_dim).normal_(mean=0.0, std=0.01).repeat(k, 1))
    fc.bias.data.zero_()
    fc.to(device)
    scale = torch.tensor(lrs, device=device)
    opt = torch.optim.SGD(fc.parameters(), lr=1.0, momentum=0.9, weight_decay=0.0)
    histories: list[list[dict]] = [[] for _ in lrs]
    start = 0
    if state is not None:
        fc.load_state_dict(state["fc"])
        opt.load_state_dict(state["optimizer"])
        start, histories = state["epoch"], state["histories"]
        log.info("resuming the linear probe (lr %s) at epoch %d", ", ".join(f"{lr:g}" for lr in lrs), start)

    saved_at = time.monotonic()
    for epoch in range(start, s.epochs):
        factor = decay(s, epoch)
        for g in opt.param_groups:
            g["lr"] = factor
        gen = torch.Generator().manual_seed(data.sample_seed(s.seed, epoch))
        if s.fast:
            perm = torch.randperm(len(xtr), generator=gen)
            batches = [(xtr[i].to(device), ytr[i].to(device)) for i in perm.split(s.batch_size)]
        else:
            loader = torch.utils.data.DataLoader(
                Transformed(train, train_transform(s.image_size)), batch_size=s.batch_size, shuffle=True,
                generator=gen, num_workers=s.workers, drop_last=False, worker_init_fn=data.ignore_job_signals,
            )
            batches = ((x.to(device), y.to(device)) for x, y in loader)
        fc.train()
        total, n = torch.zeros(k), 0
        for x, y in batches:
            if not s.fast:
                with torch.no_grad():
                    x = backbone(x).float()
            losses = F.cross_entropy(fc(x).view(-1, c), y.repeat_interleave(k), reduction="none").view(-1, k).mean(0)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            fc.weight.grad.view(k, c, feat_dim).mul_(scale[:, None, None])
            fc.bias.grad.view(k, c).mul_(scale[:, None])
            opt.step()
            total, n = total + losses.detach().cpu() * len(y), n + len(y)
        fc.eval()
        with torch.no_grad():
            if s.fast:
                logits, yv = fc(xte.to(device)).cpu(), yte
            else:
                fv, yv = features(backbone, test, val_transform(s.image_size), device, workers=s.workers)
                logits = fc(fv.to(device)).cpu()
        for j, lr in enumerate(lrs):
            top1, top5 = accuracy(logits.view(-1, k, c)[:, j], yv, (1, min(5, c)))
            rec = {"epoch": epoch, "lr": lr * factor, "train_loss": total[j].item() / max(n, 1), "top1": top1,
                   "top5": top5}
            histories[j].append(rec)
            log.info("lincls (lr %g) epoch %d lr %.4g loss %.4f top1 %.2f top5 %.2f", lr, epoch, rec["lr"],
                     rec["train_loss"], top1, top5)
        if tracker is not None:
            tracker.log({key: v for key, v in histories[0][-1].items() if key != "epoch"}, epoch + 1, epoch=epoch)
        if epoch + 1 == s.epochs or time.monotonic() - saved_at >= CHECKPOINT_EVERY_S:
            checkpoint.save(out / rundir.CHECKPOINTS, epoch + 1,
                            {"fc": fc.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                             "histories": histories, "lrs": list(lrs)}, keep=2)
            saved_at = time.monotonic()
    return [h[: s.epochs] for h in histories]


def linear_probe(backbone: nn.Module | None, train, test, num_classes: int, s: Setting, out: Path, device,
                 tracker: Tracker | None = None, state: dict | None = None) -> list[dict]:
    """``linear_probes`` with the one lr ``s.lr``: its history."""
    return linear_probes(backbone, train, test, num_classes, s, (s.lr,), out, device, tracker, state)[0]


def sweep(backbone: nn.Module | None, train, val, num_classes: int, s: Setting, lrs: tuple[float, ...], out: Path,
          device) -> list[dict]:
    """[{lr, val_top1, val_top5}]: one probe per candidate lr trained on ``train`` and scored at its
    last epoch on ``val`` (both carved from the training images), all at once
    (``linear_probes``), checkpointing (and resuming) in ``out/sweep``."""
    state, _ = checkpoint.load_latest(out / SWEEP / rundir.CHECKPOINTS)
    histories = linear_probes(backbone, train, val, num_classes, s, lrs, out / SWEEP, device, state=state)
    return [{"lr": lr, "val_top1": h[-1]["top1"], "val_top5": h[-1]["top5"]} for lr, h in zip(lrs, histories)]


def choose(scores: list[dict]) -> dict:
    """The candidate ``RULE`` picks from ``sweep``'s scores."""
    return max(scores, key=lambda c: (c["val_top1"], -c["lr"]))


def run(s: ProbeSettings) -> dict:
    """Train (or resume, or extend) the probe ``s`` describes; returns its result record, also
    written to ``OUT/lincls.json``. UserError for bad settings, before anything is written."""
    if s.source is not None:
        sd, cfg, parent_id = read_source(s.source)
        src = Path(s.source)
    elif s.random_init and s.pretrain_config is not None:
        sd, cfg, parent_id, src = None, s.pretrain_config, None, None
    else:
        raise UserError("a probe needs a source, or random_init with the pretraining config it stands for")
    data_cfg, arch, small_stem = evaluated_on(cfg, s.arch, s.small_stem, s.dataset, s.data_path, s.class_list,
                                              s.image_size)
    preset = s.preset_for(data_cfg.dataset, data_cfg.class_list)
    pre = PRESETS[preset]
    lrs = s.candidates(pre["lr"])
    val_split = s.val_split if s.val_split is not None else VAL_SPLIT if len(lrs) > 1 else 0.0
    sched = Setting(
        lr=lrs[0], epochs=s.epochs or pre["epochs"],
        milestones=tuple(s.milestones) if s.milestones is not None else pre["milestones"],
        gamma=s.gamma or pre["gamma"], batch_size=s.batch_size or pre["batch_size"],
        image_size=data_cfg.image_size, fast=s.fast, seed=s.seed, workers=s.workers,
    )
    if min(lrs) <= 0 or sched.epochs <= 0 or sched.batch_size <= 0 or not 0 < sched.gamma <= 1 or s.workers < 0:
        raise UserError("--lr/--lrs, --epochs and --batch-size must be > 0, --gamma in (0, 1], --workers >= 0")
    if len(lrs) > 1 and not val_split:
        raise UserError(f"--lrs {','.join(f'{lr:g}' for lr in lrs)}: choosing among them needs a validation split "
                        f"held out of the training images (--val-split > 0, e.g. {VAL_SPLIT})")

    if s.random_init:
        backbone = baseline_backbone(cfg, arch, small_stem, s.seed)
    else:
        backbone = load_backbone(sd, arch, small_stem)
    train_ds = data.base_dataset(data_cfg, "train")
    test_ds = data.base_dataset(data_cfg, "test")
    num_classes = len(test_ds.classes)
    if s.train_size:
        train_ds = torch.utils.data.Subset(train_ds, range(min(s.train_size, len(train_ds))))
    if s.test_size:
        test_ds = torch.utils.data.Subset(test_ds, range(min(s.test_size, len(test_ds))))
    kept, held = data.holdout(len(train_ds), val_split, s.seed) if val_split else (list(range(len(train_ds))), [])

    suffix = "-random-init" if s.random_init else ""
    out = s.out_dir
    home = rundir.run_home(src) if src is not None else out
    source = str(src.resolve()) if src is not None else f"random init of {arch} (seed {s.seed})"
    # A folder holds one probe: resuming it (or extending its epochs) is fine, reusing it with other
    # settings would mix two probes in one history.
    identity = {**{k: v for k, v in dataclasses.asdict(sched).items() if k not in ("workers", "epochs", "lr")},
                "lrs": list(lrs), "val_split": val_split,
                "milestones": list(sched.milestones), "preset": preset, "arch": arch, "small_stem": small_stem,
                "dataset": data_cfg.dataset, "data_path": data_cfg.path, "class_list": data_cfg.class_list,
                "train_size": s.train_size, "test_size": s.test_size, "random_init": s.random_init,
                "source": source}
    saved = out / rundir.SETTINGS_FILE
    if saved.is_file():
        diff = sameness.first_difference(json.loads(saved.read_text()), identity)
        if diff:
            raise UserError(sameness.differs(out, "a linear probe", diff, "pass --out for a new folder"))
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(saved, json.dumps(identity, indent=1).encode())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    if s.fast:
        cached = cached_features(backbone, train_ds, test_ds, sched, out, device)
        x, y = cached["train"]
        train, test = cached["train"], cached["test"]
        fit, val = (x[kept], y[kept]), (x[held], y[held])
    else:
        train, test = train_ds, test_ds
        fit, val = torch.utils.data.Subset(train_ds, kept), torch.utils.data.Subset(train_ds, held)
    # The choice reads the training images only; the test split is read once, by the final probe.
    scores = sweep(backbone, fit, val, num_classes, sched, lrs, out, device) if held else [{"lr": lrs[0]}]
    chosen = choose(scores) if held else scores[0]
    sched = dataclasses.replace(sched, lr=chosen["lr"])
    if held and len(lrs) > 1 and chosen["lr"] in (lrs[0], lrs[-1]):
        log.warning("the lr chosen on the validation split, %g, is at the edge of the candidates %s: widen --lrs",
                    chosen["lr"], list(lrs))
    selection = {
        "rule": RULE if held else "one lr given or preset: nothing chosen", "candidates": scores,
        "lr": chosen["lr"], "epochs": sched.epochs, "milestones": list(sched.milestones), "val_split": val_split,
        "val_images": len(held), "sweep_train_images": len(kept) if held else 0, "train_images": len(train_ds),
        "seed": s.seed,
        "final": f"trained with lr {chosen['lr']:g} on all {len(train_ds)} training images"
                 f"{' (the validation ones included)' if held else ''}; reported: top-1/top-5 on "
                 f"{len(test_ds)} test images at its last epoch",
    }

    state, _ = checkpoint.load_latest(out / rundir.CHECKPOINTS)
    if state is not None and state["lrs"] != [sched.lr]:
        raise UserError(f"{out} holds a probe trained with lr {state['lrs'][0]:g}; with {sched.epochs} epochs the "
                        f"validation split chooses lr {sched.lr:g}; pass --out for a new folder")
    # Our runs log beside their run folder (runs/mlflow.db); external checkpoints beside the output.
    uri = s.tracking_uri or (cfg.run.tracking_uri if cfg else None) or default_uri(home if cfg else out)
    tags = {"mode": s.mode, "source": source, "random_init": str(s.random_init)}
    if parent_id:
        tags["pretrain_run_id"] = parent_id
    params = {**{f"lincls.{k}": v for k, v in dataclasses.asdict(sched).items()}, "lincls.preset": preset,
              "lincls.lrs": list(lrs), "lincls.val_split": val_split, "arch": arch}
    tracker = open_run(out, uri=uri, experiment=s.experiment or (cfg.run.experiment if cfg else "mochi-bench"),
                       name=s.run_name or f"lincls-{s.mode}{suffix}_{src.name if src else arch}", stage=LINCLS,
                       params=params,
                       tags={**tags, **s.tags}, parent=s.parent_run or parent_id,
                       resume_step=state["epoch"] if state else 0)  # points past the checkpoint come again
    history = linear_probe(backbone, train, test, num_classes, sched, out, device, tracker, state)
    best, last = max(history, key=lambda r: r["top1"]), history[-1]
    result = {
        "mode": s.mode, "top1_last": last["top1"], "top5_last": last["top5"], "epochs": sched.epochs,
        "tables_use": "top1_last",
        # MoCo main_lincls's number, the best epoch on the test split: for comparison with published figures.
        "top1_best_on_test": best["top1"], "best_epoch_on_test": best["epoch"],
        "selection": selection, "preset": preset, "source": source, "random_init": s.random_init, "out": str(out),
        "mlflow_run_id": tracker.run_id, "parent_run": s.parent_run or parent_id,
    }
    checkpoint.atomic_write(out / rundir.LINCLS_FILE, json.dumps(result, indent=2).encode())
    tracker.log({"top1_last": last["top1"], "top5_last": last["top5"],
                 **({"val_top1": chosen["val_top1"]} if held else {})}, sched.epochs)
    tracker.finish()
    return result
