"""mochi-submit-transfer (slurm/submit_transfer.py): bad input refused before anything is
submitted; real jobs on the SLURM cluster."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import torchvision

from tests.conftest import REPO
from transfer.data import make_synthetic


def submit(*args, env=None):
    import os

    return subprocess.run([sys.executable, "slurm/submit_transfer.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    for arch in ("resnet50", "resnet18"):
        torch.manual_seed(0)
        sd = getattr(torchvision.models, arch)().state_dict()
        torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}}, d / f"{arch}.pth")
    make_synthetic(d / "det", n_train=6, n_test=2, seed=2)
    return d


@pytest.mark.parametrize("args, message", [
    (["--task", "voc-c4=/no/such/VOCdevkit"], "data folder /no/such/VOCdevkit does not exist"),
    (["--task", "voc-fpn=/tmp"], "unknown transfer task 'voc-fpn'"),
    (["--task", "voc-c4"], "give TASK=DATA_ROOT"),
    (["--task", "demo-voc={det}", "--profile", "nope"], "unknown cluster profile"),
    # a VOC folder without its image-set lists: the job would refuse it first; nothing is submitted
    (["--task", "voc-c4={bare}"], "VOC2007/ImageSets/Main/trainval.txt is missing, which voc-c4 needs"),
    (["--task", "demo-coco={det}"], "annotations/instances_train.json is missing, which demo-coco needs"),
])
def test_bad_input_submits_nothing(sources, tmp_path, args, message):
    bare = tmp_path / "bare" / "VOCdevkit"
    for d in ("Annotations", "JPEGImages"):
        (bare / "VOC2007" / d).mkdir(parents=True)
    args = [a.replace("{det}", str(sources / "det" / "VOCdevkit")).replace("{bare}", str(bare)) for a in args]
    r = submit(sources / "resnet50.pth", *args, "--logs", tmp_path / "logs", env={"SLURM_CONF": "/nonexistent"})
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "logs").exists()


def test_a_resnet18_is_refused(sources, tmp_path):
    r = submit(sources / "resnet18.pth", "--task", f"demo-voc={sources / 'det' / 'VOCdevkit'}", "--logs",
               tmp_path / "logs", env={"SLURM_CONF": "/nonexistent"})
    assert r.returncode == 2 and "does not fit a resnet50" in r.stderr and not (tmp_path / "logs").exists()
    assert r.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.slurm
def test_transfer_jobs_run_on_slurm(sources, tmp_path, slurm_conf):
    src = tmp_path / "r50.pth"
    src.write_bytes((sources / "resnet50.pth").read_bytes())
    r = submit(src, "--task", f"demo-voc={sources / 'det' / 'VOCdevkit'}", "--trials", "1", "--iters", "2",
               "--batch", "2", "--cluster", "slurm", "--profile", "local-cpu", "--logs", tmp_path / "logs", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "slurm job" in r.stdout and "demo-voc of" in r.stdout and "AP50" in r.stdout
    summary = json.loads((tmp_path / "transfer-demo-voc" / "summary.json").read_text())
    assert summary["task"] == "demo-voc" and len(summary["trials"]) == 1
    same = [src, "--task", f"demo-voc={sources / 'det' / 'VOCdevkit'}", "--trials", "1", "--batch", "2", "--cluster",
            "slurm", "--profile", "local-cpu", "--logs", tmp_path / "logs"]
    again = submit(*same, "--iters", "2")
    assert again.returncode == 0 and "nothing to submit" in again.stdout
    other = submit(*same, "--iters", "3")  # the old trial is not reported under the new settings
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "iters: 2 there, 3 now" in other.stderr and "--discard-trials" in other.stderr
    assert json.loads((tmp_path / "transfer-demo-voc" / "summary.json").read_text()) == summary


def test_trials_trained_with_other_settings_are_refused_before_anything_is_submitted(sources, tmp_path):
    from transfer import trials
    from transfer.stages import FinetuneSettings

    src, det = tmp_path / "r50.pth", sources / "det" / "VOCdevkit"
    src.write_bytes((sources / "resnet50.pth").read_bytes())
    old = FinetuneSettings(source=str(src), task="demo-voc", data=str(det), trials=1, iters=2)
    trials.claim(old.out_dir / "trial0", trials.fingerprint(old, trials.origin(str(src), False, old.out_dir),
                                                             dataclasses.asdict(old.recipe())))
    r = submit(src, "--task", f"demo-voc={det}", "--trials", "1", "--iters", "3", "--logs", tmp_path / "logs",
               env={"SLURM_CONF": "/nonexistent"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "trial0 was trained with other settings (iters: 2 there, 3 now)" in r.stderr and "--discard-trials" in r.stderr
    assert not (tmp_path / "logs").exists() and (old.out_dir / "trial0" / "settings.json").is_file()


@pytest.mark.slurm
@pytest.mark.parametrize("profile, message", [
    ("cpus_per_task: 64\n", "an evaluation job asks for 64 CPUs per node"),  # caught before sbatch
    ("constraint: no-such-feature\n", "sbatch: error: Batch job submission failed: Invalid feature specification"),
])
def test_a_profile_the_cluster_refuses_submits_nothing(sources, tmp_path, slurm_conf, profile, message):
    mine = tmp_path / "mine.yaml"
    mine.write_text(profile)
    r = submit(sources / "resnet50.pth", "--task", f"demo-voc={sources / 'det' / 'VOCdevkit'}", "--cluster", "slurm",
               "--profile", mine, "--logs", tmp_path / "logs")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stdout + r.stderr
