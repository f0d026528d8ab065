"""Atomic, checksummed checkpoints; the newest valid one is found again after any crash.

A checkpoint ``checkpoint-<step>.pt`` is written to a temporary file, fsynced and renamed; then
its manifest ``checkpoint-<step>.json`` (size and SHA-256, and for a run's final checkpoint the
run's summary) is written the same way. A checkpoint
without a manifest, or whose bytes do not match it (truncated, corrupt), is skipped in favour of
the previous one.

A checkpoint holds data only (tensors, numbers, strings, lists, dicts): it is read back with
``torch.load(weights_only=True)``, and nothing in it is evaluated; the random generators' states
too (``rng_state``).

torch and numpy are imported by the functions that need them: finding a run's newest checkpoint or
its final summary reads manifests only, in commands (a grid's status, a table) that train nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
from pathlib import Path

log = logging.getLogger(__name__)
PREFIX = "checkpoint-"


def atomic_write(path: Path, data: bytes) -> None:
    """Write bytes so that ``path`` holds either its old content or all of ``data``."""
    _atomic(path, lambda f: f.write(data))


def atomic_torch_save(path: Path, obj) -> tuple[int, str]:
    """torch.save ``obj`` to ``path`` atomically; returns (bytes written, their SHA-256).

    The bytes are hashed as they stream to the file: a ResNet's checkpoint is not held in memory a
    second time, nor copied, nor read back (about a third less time per checkpoint on a CPU)."""
    import torch

    writer = _Hashing()
    _atomic(path, lambda f: torch.save(obj, writer.into(f)))
    return writer.size, writer.sha256.hexdigest()


class _Hashing:
    """A write-only file object that forwards to ``into(f)``'s file and hashes what passes."""

    def __init__(self):
        self.sha256, self.size, self._f = hashlib.sha256(), 0, None

    def into(self, f):
        self._f = f
        return self

    def write(self, b) -> int:
        self.sha256.update(b)
        self.size += len(b)
        return self._f.write(b)

    def flush(self) -> None:
        self._f.flush()


def _atomic(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it and rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(folder: Path, step: int, state: dict, keep: int = 2, summary: dict | None = None) -> Path:
    """Write ``state`` as the checkpoint of global step ``step``; keep the newest ``keep``. The final
    checkpoint of a run carries its ``summary`` in the manifest: the run is done the moment that
    manifest lands (``final_summary``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{PREFIX}{step:09d}.pt"
    size, sha256 = atomic_torch_save(path, state)
    manifest = {"bytes": size, "sha256": sha256, "step": step}
    if summary is not None:
        manifest["summary"] = summary
    atomic_write(path.with_suffix(".json"), json.dumps(manifest).encode())
    for old in candidates(folder)[keep:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def candidates(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, newest first (valid or not)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"{PREFIX}*.pt"), reverse=True)


def newer_than(folder: Path, path: Path | None) -> list[Path]:
    """The checkpoint files in ``folder`` newer than ``path`` (the one ``load_latest`` found valid),
    newest first; all of them without one. After ``load_latest``, these are the damaged ones."""
    found = candidates(folder)
    return found[:found.index(path)] if path in found else found


def final_summary(folder: Path) -> dict | None:
    """The summary that the newest checkpoint's manifest carries if it is a run's final checkpoint,
    else None. Reads only the manifest, which is written after its checkpoint's bytes."""
    for path in candidates(folder):
        try:
            return json.loads(path.with_suffix(".json").read_text()).get("summary")
        except (OSError, ValueError):  # a checkpoint whose manifest a kill prevented
            continue
    return None


def verify(path: Path) -> bytes | None:
    """The checkpoint's bytes if its manifest vouches for them, else None."""
    man = path.with_suffix(".json")
    try:
        manifest = json.loads(man.read_text())
        data = path.read_bytes()
    except (OSError, ValueError):
        return None
    if len(data) != manifest.get("bytes") or hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return None
    return data


def load_latest(folder: Path, map_location="cpu") -> tuple[dict | None, Path | None]:
    """(state, path) of the newest valid checkpoint in ``folder``, or (None, None)."""
    import torch

    for stale in Path(folder).glob(f".{PREFIX}*.tmp*"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)
    for path in candidates(folder):
        data = verify(path)
        if data is None:
            log.warning("checkpoint %s is incomplete or corrupt; trying the previous one", path)
            continue
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True), path
    return None, None


def rng_state() -> dict:
    """The state of every random generator training draws from (torch's CPU and CUDA ones, numpy's,
    Python's ``random``), as data a checkpoint holds: tensors, numbers, and Python's state as the
    list [version, [625 ints], gauss_next] of ``random.getstate()``."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state(saved) -> tuple:
    """``random.getstate()``'s tuple from the list ``rng_state`` stored; ValueError for anything else."""
    ok = isinstance(saved, list) and len(saved) == 3
    if ok:
        version, internal, gauss_next = saved
        ok = (type(version) is int and isinstance(internal, list) and all(type(x) is int for x in internal)
              and (gauss_next is None or type(gauss_next) is float))
    if not ok:
        raise ValueError(f"the checkpoint's python RNG state is not the list [version, [ints], gauss_next] "
                         f"this version writes (got {type(saved).__name__}; a checkpoint from before?)")
    return version, tuple(internal), gauss_next


def set_rng_state(state: dict) -> None:
    """Restore the generators to what ``rng_state`` captured; ValueError, before touching any of
    them, if Python's state is not the list it writes (an older checkpoint stored it as a string)."""
    import numpy as np
    import torch

    python = _python_state(state["python"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(python)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
