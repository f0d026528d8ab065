"""What both transfer paths (torchvision's ``finetune`` and detectron2's ``train_d2``) share around
their trials: where the weights come from and where the trials log, the trials' MLflow tags, the
settings each trial was trained with (compared before a trial is reused), how a trial's MLflow run is
closed, and the stage's summary file.

Both paths tag their trial runs alike (stage ``transfer-voc`` / ``transfer-coco``, ``task``,
``trial``, ``source``, ``random_init``, ``engine``) and name their metrics alike, so a grid's VOC and
COCO columns fill from either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain.run import rundir, sameness
from pretrain.run.checkpoint import atomic_write
from pretrain.run.errors import UserError
from pretrain.run.tracking import default_uri

from .weights import resnet50_state
from .metrics import summarize_trials
from .stages import StageSettings

log = logging.getLogger(__name__)
TRIAL_NAME = re.compile(r"trial[0-9]+")  # the folders rundir.trial_dir names
# What a refusal to reuse a stage's trials offers, on both paths' command lines.
WAYS_ON = "pass a new --out, or --discard-trials to discard the folder's trials and train them again"


@dataclass(frozen=True)
class Origin:
    """The weights a transfer stage starts from and where its trials log."""

    state: dict | None  # torchvision ResNet-50 state dict; None for a random init
    source: str  # the ``source`` tag: the resolved source path, or "random init"
    pretrain_run: str | None  # the source's pretraining MLflow run (the ``pretrain_run_id`` tag)
    parent: str | None  # the MLflow run the trials are children of
    uri: str
    experiment: str
    digest: str | None = None  # ``weights_digest`` of ``state``: what a trial starts from, whatever file held it


def origin(source: str | None, random_init: bool, out: Path, *, parent_run: str | None = None,
           tracking_uri: str | None = None, experiment: str | None = None) -> Origin:
    """Read and check SOURCE (UserError unless a standard ResNet-50 query encoder; with
    ``random_init`` only its architecture is checked) and decide where the trials log: the given
    store and experiment, else the source run's, else a store beside ``out``."""
    state, cfg, run_id = resnet50_state(source, load=not random_init) if source is not None else (None, None, None)
    src = Path(source) if source is not None else None
    home = rundir.run_home(src) if src is not None else Path(out)
    return Origin(
        state=state, source=str(src.resolve()) if src is not None else "random init", pretrain_run=run_id,
        parent=parent_run or run_id,
        uri=tracking_uri or (cfg.run.tracking_uri if cfg else None) or default_uri(home if cfg else Path(out)),
        experiment=experiment or (cfg.run.experiment if cfg else "mochi-bench"), digest=weights_digest(state),
    )


def weights_digest(state: dict | None) -> str | None:
    """SHA-256 over a state dict's names and tensor bytes, in name order; None for a random init."""
    if state is None:
        return None
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def fingerprint(s: StageSettings, src: Origin, recipe: dict) -> dict:
    """What decides a trial's result, as JSON values: the task, the data folder, the source's
    weights (their digest, not the file they were read from) or the random init, and ``recipe``,
    the engine's effective schedule and options (the summary's ``settings``). Left out, as they
    change no trial: where the stage writes and logs, its tags, parent run and number of trials. The
    data folder is recorded but not compared (``sameness.HOW_IT_RUNS``: data moved to node-local
    scratch is the same data)."""
    return strict({"task": s.task, "data_folder": str(Path(s.data).resolve()), "random_init": s.random_init,
                   "weights_sha256": src.digest, **recipe})


def finished_trials(out: Path, fp: dict, trials: int, ways: str = WAYS_ON) -> list[bool]:
    """Whether each of trials 0..trials-1 of the stage at ``out`` is finished (its result.json).
    UserError, naming the first differing setting and ending with ``ways`` (the command's ways on),
    for a trial trained with a fingerprint other than ``fp`` or one with no record of its settings:
    reusing it would report old trials under new settings. Reads only."""
    done = []
    for t in range(trials):
        d = rundir.trial_dir(out, t)
        saved = d / rundir.SETTINGS_FILE
        if saved.is_file():
            diff = sameness.first_difference(json.loads(saved.read_text()), fp)
            if diff:
                key, there, here = diff
                raise UserError(f"{d} was trained with other settings ({key}: {there!r} there, {here!r} now); {ways}")
        elif d.is_dir() and any(d.iterdir()):
            raise UserError(f"{d} holds a trial with no record of its settings ({rundir.SETTINGS_FILE}); {ways}")
        done.append((d / rundir.RESULT_FILE).is_file())
    return done


def claim(trial_dir: Path, fp: dict) -> None:
    """Record ``fp`` in a trial's folder before the trial trains there (``finished_trials`` reads it)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    write_json(trial_dir / rundir.SETTINGS_FILE, fp)


def discard_trials(out: Path) -> None:
    """Remove the stage's trial folders (``trialK/``) and the summary they made; nothing else of
    ``out`` (the converted weights stay; the trials' MLflow runs stay in the store)."""
    gone = [d for d in sorted(Path(out).glob("trial*")) if d.is_dir() and TRIAL_NAME.fullmatch(d.name)]
    for d in gone:
        shutil.rmtree(d)
    (Path(out) / rundir.SUMMARY_FILE).unlink(missing_ok=True)
    if gone:
        log.info("discarded %d trials of %s (--discard-trials)", len(gone), out)


@contextlib.contextmanager
def closing(tracker):
    """Close a trial's MLflow run (``tracker``, or None off the main rank) however the block ends:
    FINISHED, KILLED when interrupted (SIGINT, SIGTERM, a requeue's SystemExit; as pretraining
    closes its runs) or FAILED. Inside, SIGTERM raises SystemExit in this process, so the block
    unwinds; processes forked inside (data-loader workers) ignore it and end with this one."""
    owner, old = os.getpid(), None

    def stop(signum, _frame):
        if os.getpid() == owner:
            raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, stop)
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        if tracker is not None:
            tracker.finish(status)


def trial_tags(o: Origin, task: str, trial: int, random_init: bool, engine: str, extra: dict[str, str]) -> dict:
    """The MLflow tags of one trial's run, the same for both engines."""
    tags = {"task": task, "trial": str(trial), "random_init": str(random_init), "source": o.source,
            "engine": engine, **extra}
    if o.pretrain_run:
        tags["pretrain_run_id"] = o.pretrain_run
    return tags


def strict(value):
    """``value`` with every NaN or infinite float replaced by None (JSON's null), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_json(path: Path, value) -> None:
    """``value`` as strict JSON (null for NaN, which json.dumps would write as a bare NaN), atomically."""
    atomic_write(Path(path), json.dumps(strict(value), indent=1, allow_nan=False).encode())


def write_summary(s: StageSettings, src: Origin, results: list[dict], settings: dict) -> dict:
    """The stage's summary (each trial's figures, their mean and std, the source and the settings
    it trained with), written to ``OUT/summary.json`` as strict JSON; returns it."""
    summary = {"task": s.task, "engine": s.engine, "trials": results, "summary": summarize_trials(results),
               "random_init": s.random_init, "source": src.source, "settings": settings, "out": str(s.out_dir)}
    write_json(s.out_dir / rundir.SUMMARY_FILE, summary)
    return summary
