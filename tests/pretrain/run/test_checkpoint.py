"""Atomic checkpoints: the newest valid one survives truncation, corruption and a missing manifest."""

import json
import os
import random

import numpy as np
import pytest
import torch

from pretrain.run import checkpoint


def write_three(folder):
    for step in (10, 20, 30):
        checkpoint.save(folder, step, {"w": torch.full((64,), float(step)), "step": step}, keep=5)


def test_latest_is_newest(tmp_path):
    write_three(tmp_path)
    state, path = checkpoint.load_latest(tmp_path)
    assert state["step"] == 30 and path.name == "checkpoint-000000030.pt"


def test_the_manifest_vouches_for_the_bytes_on_disk(tmp_path):
    """The size and SHA-256 hashed while the checkpoint streamed out are those of the file."""
    import hashlib

    path = checkpoint.save(tmp_path, 7, {"w": torch.randn(300_000), "step": 7})
    manifest = json.loads(path.with_suffix(".json").read_text())
    data = path.read_bytes()
    assert (manifest["bytes"], manifest["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert checkpoint.verify(path) == data and not list(tmp_path.glob(".*tmp*"))


def test_truncated_newest_falls_back(tmp_path):
    write_three(tmp_path)
    newest = checkpoint.candidates(tmp_path)[0]
    newest.write_bytes(newest.read_bytes()[:100])
    state, _ = checkpoint.load_latest(tmp_path)
    assert state["step"] == 20


def test_flipped_byte_falls_back(tmp_path):
    write_three(tmp_path)
    newest = checkpoint.candidates(tmp_path)[0]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    state, _ = checkpoint.load_latest(tmp_path)
    assert state["step"] == 20


def test_missing_manifest_means_unfinished(tmp_path):
    write_three(tmp_path)
    checkpoint.candidates(tmp_path)[0].with_suffix(".json").unlink()
    state, _ = checkpoint.load_latest(tmp_path)
    assert state["step"] == 20


def test_keep_prunes_oldest_and_stale_temporaries_go(tmp_path):
    for step in range(1, 6):
        checkpoint.save(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in checkpoint.candidates(tmp_path)] == ["checkpoint-000000005.pt", "checkpoint-000000004.pt"]
    stale = tmp_path / ".checkpoint-000000006.pt.tmp123"
    stale.write_bytes(b"half")
    checkpoint.load_latest(tmp_path)
    assert not stale.exists()


def test_empty_folder(tmp_path):
    assert checkpoint.load_latest(tmp_path / "nothing") == (None, None)


def draws():
    """The next few numbers of each generator training draws from."""
    return [random.random() for _ in range(5)], np.random.rand(5).tolist(), torch.rand(5).tolist()


def test_rng_state_survives_a_checkpoint_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second normal in Python's state
    checkpoint.save(tmp_path, 1, {"rng": checkpoint.rng_state()})
    want = draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    state, _ = checkpoint.load_latest(tmp_path)  # torch.load(weights_only=True)
    checkpoint.set_rng_state(state["rng"])
    assert draws() == want


def test_pythons_rng_state_is_data_not_code():
    python = checkpoint.rng_state()["python"]
    assert json.loads(json.dumps(python)) == python  # plain lists and numbers
    assert not isinstance(python, str)


def test_a_string_in_the_python_state_is_refused_not_run(monkeypatch):
    """The format before this one stored repr(random.getstate()) and eval()'d it back; a string there
    is now refused, even one that would evaluate to a valid state (after a side effect)."""
    monkeypatch.setenv("MOCHI_RNG_EVAL", "no")
    env = "[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close'][0].__init__.__globals__['environ']"
    crafted = f"({env}.__setitem__('MOCHI_RNG_EVAL', 'yes'), {random.getstate()!r})[1]"
    state = {**checkpoint.rng_state(), "python": crafted}
    before = random.getstate()
    with pytest.raises(ValueError, match="python RNG state"):
        checkpoint.set_rng_state(state)
    assert os.environ["MOCHI_RNG_EVAL"] == "no"
    assert random.getstate() == before
