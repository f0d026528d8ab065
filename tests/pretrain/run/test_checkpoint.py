"""Atomic checkpoints: the newest valid one survives truncation, corruption and a missing manifest."""

import torch

from pretrain.run import checkpoint


def write_three(folder):
    for step in (10, 20, 30):
        checkpoint.save(folder, step, {"w": torch.full((64,), float(step)), "step": step}, keep=5)


def test_latest_is_newest(tmp_path):
    write_three(tmp_path)
    state, path = checkpoint.load_latest(tmp_path)
    assert state["step"] == 30 and path.name == "checkpoint-000000030.pt"


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
