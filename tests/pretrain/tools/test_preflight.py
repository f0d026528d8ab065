"""pretrain/tools/preflight.py: each check passes on a sound CPU node and fails, with its cause and
fix, on the fault it is there to catch."""

import time

import pytest
import torch

from pretrain.run import rundir
from pretrain.tools import preflight as pf
from pretrain.tools.jpegs import make_jpegs
from tests.conftest import free_port, tiny_cfg

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    """40 real JPEGs in 4 class folders (an ImageFolder like ImageNet's)."""
    root = tmp_path_factory.mktemp("jpegs")
    make_jpegs(root, 40, classes=4, seed=1)
    return root


def folder_cfg(tmp_path, root, *extra):
    return tiny_cfg(tmp_path / "run", "data.dataset=imagefolder", f"data.path={root}", "data.subset=0", *extra)


def test_every_check_passes_on_a_sound_cpu_node_and_the_report_reads_back(tmp_path):
    cfg = tiny_cfg(tmp_path / "run", "run.amp=true", "run.channels_last=true")
    s = pf.PreflightSettings([cfg], tmp_path / "pf", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                             tags={"profile": "local-cpu"})
    report = pf.run(s)
    status = {c.name: c.status for c in report.checks}
    assert status == {"data": "pass", "step": "pass", "precision": "pass", "resume": "pass", "tracking": "pass",
                      "process group": "skip", "speed": "pass"}, report.table()
    assert "bf16 autocast, channels_last vs fp32" in next(c.detail for c in report.checks if c.name == "precision")
    assert report.step_img_per_s > 0 and report.input_img_per_s > 0 and report.world == 1
    back = pf.read_report(tmp_path / "pf")
    assert back == report and back.passed and back.tags == {"profile": "local-cpu"}
    assert (tmp_path / "pf" / rundir.PREFLIGHT_FILE).is_file()
    # the resume check's checkpoint was scratch: nothing of it stays on disk
    assert not [p for p in (tmp_path / "pf").rglob("*") if p.is_file() and p.name != rundir.PREFLIGHT_FILE]


def test_a_corrupt_image_fails_the_data_line_naming_the_file(tmp_path, jpeg_root):
    bad = sorted((jpeg_root / "train").rglob("*.JPEG"))[7]
    good = bad.read_bytes()
    bad.write_bytes(good[:200])  # a download cut short
    try:
        line = pf.check_data(folder_cfg(tmp_path, jpeg_root), CPU, 64)
    finally:
        bad.write_bytes(good)
    assert line.status == "fail" and str(bad) in line.detail and "replace or remove" in line.fix


def test_a_class_missing_from_the_folder_fails_the_data_line(tmp_path, jpeg_root):
    classes = tmp_path / "classes.txt"
    have = sorted(p.name for p in (jpeg_root / "train").iterdir())
    classes.write_text("\n".join([*have, "n09999999"]) + "\n")
    line = pf.check_data(folder_cfg(tmp_path, jpeg_root, f"data.class_list={classes}"), CPU, 64)
    assert line.status == "fail" and "n09999999" in line.detail and "data.class_list" in line.fix


def test_the_device_pipeline_decodes_as_pil_does(tmp_path, jpeg_root):
    line = pf.check_data(folder_cfg(tmp_path, jpeg_root, "data.pipeline=gpu"), CPU, 64)
    assert line.status == "pass" and "data.pipeline=gpu" in line.detail and "40 training images in 4 classes" in line.detail


def test_the_data_line_counts_the_images_data_subset_trains_on(tmp_path, jpeg_root):
    line = pf.check_data(folder_cfg(tmp_path, jpeg_root, "data.subset=24", "optim.batch_size=16"), CPU, 64)
    assert line.status == "pass" and "24 of 40 training images (data.subset) in 4 classes" in line.detail
    line = pf.check_data(folder_cfg(tmp_path, jpeg_root, "data.subset=12", "optim.batch_size=16"), CPU, 64)
    assert line.status == "fail" and "12 training images make no batch of 16" in line.detail
    assert "data.subset" in line.fix


def test_an_unreachable_store_fails_the_tracking_line_within_seconds(tmp_path):
    s = pf.PreflightSettings([tiny_cfg(tmp_path / "run")], tmp_path / "pf",
                             tracking_uri=f"http://127.0.0.1:{free_port()}")
    t = time.monotonic()
    line = pf.check_tracking(s)
    assert time.monotonic() - t < 60
    assert line.status == "fail" and "not usable from" in line.detail and "--tracking-uri" in line.fix


def test_a_failed_preflight_writes_its_report_then_raises(tmp_path):
    s = pf.PreflightSettings([tiny_cfg(tmp_path / "run")], tmp_path / "pf",
                             tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(pf.PreflightFailed, match="tracking"):
        pf.run(s)
    report = pf.read_report(tmp_path / "pf")
    assert not report.passed and [c.name for c in report.failures()] == ["tracking"]
    assert next(c for c in report.checks if c.name == "speed").status == "skip"  # a broken node is not timed


def test_the_step_comparison_sees_a_resume_that_lost_the_optimiser_momentum(tmp_path):
    cfg = tiny_cfg(tmp_path / "run")
    batch = pf.comparison_batch(cfg, 0, 1, CPU, 16)
    straight = pf.run_steps(cfg, batch, CPU, 2)
    head = pf.run_steps(cfg, batch, CPU, 1)
    model, opt = pf.new_model(cfg, CPU)
    model.load_state_dict(head.model.state_dict())  # the weights only: the momentum buffers are lost
    lost = pf.run_steps(cfg, batch, CPU, 1, start=(model, opt), first=1)
    kept = pf.check_resume(cfg, batch, CPU, tmp_path / "scratch", "tiny")
    assert kept.status == "pass"
    du = float((lost.w - straight.w).norm()) / float((straight.w - head.w).norm())
    assert du > pf.FP32.update * 10


def test_distance_measures_the_difference_against_the_update():
    w0 = torch.zeros(4, dtype=torch.float64)
    ref = pf.Trace([2.0, 1.0], w0, torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), None, None)
    other = pf.Trace([2.0, 1.1], w0, torch.tensor([1.0, 0.5, 0, 0], dtype=torch.float64), None, None)
    dl, du = pf.distance(other, ref)
    assert dl == pytest.approx(0.1) and du == pytest.approx(0.5)
    assert pf._verdict("step", "x", dl, du, pf.FP32, "fix it").status == "fail"
    assert pf._verdict("step", "x", 0.0, 0.0, pf.FP32, "fix it").status == "pass"


RANK_SCRIPT = """
import sys
from pathlib import Path
from pretrain.tools import preflight as pf
from tests.conftest import tiny_cfg
out = Path(sys.argv[1])
pf.run(pf.PreflightSettings([tiny_cfg(out / "run")], out / "pf", tracking_uri=f"sqlite:///{out}/mlflow.db"))
"""


def test_two_gloo_ranks_agree_and_rank_zero_checks_alone(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(tmp_path)], cwd=REPO,
                              env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    report = pf.read_report(tmp_path / "pf")
    group = next(c for c in report.checks if c.name == "process group")
    assert report.passed and report.world == 2 and group.status == "pass" and "2 ranks over gloo" in group.detail
    assert [c.name for c in report.checks].count("step") == 1  # rank 0's alone, not one per rank
