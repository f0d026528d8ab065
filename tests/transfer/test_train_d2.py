"""transfer/train_d2.py: the detectron2 path refuses cleanly without detectron2 (CI never has it)."""

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import REPO

HAS_D2 = importlib.util.find_spec("detectron2") is not None


def train_d2(*args):
    return subprocess.run([sys.executable, "transfer/train_d2.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(HAS_D2, reason="detectron2 is installed here; the refusal only shows without it")
def test_without_detectron2_one_line_and_exit_2(tmp_path):
    (tmp_path / "w.pkl").write_bytes(b"x")
    r = train_d2("--task", "voc-c4", "--weights", tmp_path / "w.pkl", "--data", tmp_path, "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "detectron2 is not installed" in r.stderr and "transfer.finetune" in r.stderr


def test_missing_weights_or_data_are_refused_first(tmp_path):
    r = train_d2("--task", "voc-c4", "--weights", tmp_path / "none.pkl", "--data", tmp_path, "--out", tmp_path / "o")
    assert r.returncode == 2 and "--weights" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not HAS_D2, reason="detectron2 is not installed (it is built from source; CI never has it)")
def test_recipes_load_into_detectron2_with_the_extra_norm_head(tmp_path):
    from transfer.train_d2 import d2_config, register_extra_norm_head

    register_extra_norm_head()
    cfg = d2_config("voc-c4", "w.pkl", 2, tmp_path, 0)
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" and cfg.SOLVER.IMS_PER_BATCH == 4
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and tuple(cfg.SOLVER.STEPS) == (72000, 88000)
