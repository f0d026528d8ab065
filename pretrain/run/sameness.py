"""What makes two runs the same: the settings that change results, as against those that change
only how or where a run runs. One rule for a pretraining run folder, a grid folder, a linear probe's
folder and a transfer trial's folder: a folder is reused (resumed, extended, re-submitted) only by
settings equal to its own on everything but ``HOW_IT_RUNS``, and a refusal names the first key that
differs with both values.

Example:
    >>> first_difference({"moco": {"K": 512}, "data.path": "/a"}, {"moco": {"K": 1024}, "data.path": "/b"})
    ('moco.K', 512, 1024)
    >>> first_difference({"data.path": "/a"}, {"data.path": "/scratch/a"}) is None   # where, not what
    True
    >>> first_difference({"seeds": 3}, {"seeds": 3, "set": {"optim.epochs": 2}})
    ('set.optim.epochs', 'absent', 2)

This module imports nothing else of the project.
"""

from __future__ import annotations

from collections.abc import Mapping

# Where the data and the outputs are, how many processes load, where a stage logs, how often it
# saves or logs, and where it stops for now: none changes what a finished run computes. Pretraining
# config keys, then the fields of a stage's settings (probe and transfer) and of a transfer trial's
# fingerprint.
HOW_IT_RUNS = frozenset({
    "data.path", "data.num_workers", "data.prefetch", "run.out", "run.device", "run.compile",
    "run.ckpt_every_minutes", "run.ckpt_every_steps", "run.keep_checkpoints", "run.log_every", "run.max_steps",
    "run.experiment", "run.tracking_uri", "run.run_name",
    "out", "workers", "data", "data_path", "data_folder", "parent_run", "run_name", "tracking_uri", "experiment",
})
# A pretraining run may resume with other monitors (``eval.*``: kNN cadence and sizes): they change
# what is measured along the way, not the weights. A grid counts them (its tables show the kNN).
MONITOR_PREFIX = "eval."
ABSENT = "absent"


def _leaves(d: Mapping, prefix: str = "") -> dict[str, object]:
    """{dotted key: value} of a nested mapping (lists and other values are leaves)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_leaves(v, f"{key}."))
        else:
            out[key] = v
    return out


def first_difference(there: Mapping, here: Mapping, ignore: frozenset[str] | set[str] = HOW_IT_RUNS,
                     ignore_prefix: str | None = None) -> tuple[str, object, object] | None:
    """(dotted key, its value there, its value here) of the first setting, in ``here``'s order, then
    ``there``'s, whose values differ, comparing nested mappings leaf by leaf; ``ABSENT`` for a key
    one side lacks. Keys in ``ignore`` and under ``ignore_prefix`` do not count. None when the two
    are the same."""
    a, b = _leaves(there), _leaves(here)
    for key in dict.fromkeys([*b, *a]):
        if key in ignore or (ignore_prefix and key.startswith(ignore_prefix)):
            continue
        if a.get(key, ABSENT) != b.get(key, ABSENT):
            return key, a.get(key, ABSENT), b.get(key, ABSENT)
    return None


def without_how_it_runs(values: Mapping[str, object]) -> dict[str, object]:
    """``values`` (config keys or a stage's fields) without those in ``HOW_IT_RUNS``."""
    return {k: v for k, v in values.items() if k not in HOW_IT_RUNS}


def differs(where: object, what: str, diff: tuple[str, object, object], remedy: str) -> str:
    """The one-line refusal of a folder holding ``what`` with other settings: the key and both values."""
    key, there, here = diff
    return f"{where} holds {what} with other settings ({key}: {there!r} there, {here!r} now); {remedy}"
