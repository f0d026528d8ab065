"""transfer/trials.py: what both transfer paths share (source, tags, strict JSON summaries)."""

import json

import pytest
import torch
import torchvision

from pretrain.run import rundir
from pretrain.run.errors import UserError
from transfer import trials


def test_summaries_are_strict_json_with_null_for_nan(tmp_path):
    value = {"trials": [{"box_APl": float("nan"), "AP": 1.5}], "summary": {"AP": {"mean": 1.5, "std": None},
                                                                         "x": [float("inf"), 2.0, (float("-inf"),)]}}
    trials.write_json(tmp_path / "s.json", value)
    text = (tmp_path / "s.json").read_text()
    assert "NaN" not in text and "Infinity" not in text

    def refuse(const):  # what a strict parser (JavaScript's JSON.parse, jq) does with a bare NaN
        raise ValueError(const)

    back = json.loads(text, parse_constant=refuse)
    assert back["trials"] == [{"box_APl": None, "AP": 1.5}] and back["summary"]["x"] == [None, 2.0, [None]]
    assert back["summary"]["AP"] == {"mean": 1.5, "std": None}


def moco_checkpoint(path, arch: str):
    """A query encoder in MoCo's release format (random weights)."""
    net = getattr(torchvision.models, arch)()
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def test_origin_and_tags_of_a_moco_checkpoint_and_of_a_random_init(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ckpt = moco_checkpoint(tmp_path / "moco.pth.tar", "resnet50")
    out = rundir.transfer_dir(tmp_path, "voc-c4", engine="detectron2")
    assert out.name == "transfer-d2-voc-c4" and rundir.transfer_dir(tmp_path, "voc-c4").name == "transfer-voc-c4"
    o = trials.origin(str(ckpt), False, out)
    assert o.state is not None and "layer4.2.conv3.weight" in o.state and o.source == str(ckpt.resolve())
    assert o.parent is None and o.experiment == "mochi-bench" and o.uri == f"sqlite:///{tmp_path}/mlflow.db"
    tags = trials.trial_tags(o, "voc-c4", 3, False, "detectron2", {"gpus": "1"})
    assert tags == {"task": "voc-c4", "trial": "3", "random_init": "False", "source": str(ckpt.resolve()),
                    "engine": "detectron2", "gpus": "1"}
    r = trials.origin(None, True, out, parent_run="abc", tracking_uri="http://x:5000", experiment="e")
    assert r.state is None and r.source == "random init"
    assert (r.parent, r.uri, r.experiment) == ("abc", "http://x:5000", "e")
    with pytest.raises(UserError, match="does not fit a resnet50"):
        trials.origin(str(moco_checkpoint(tmp_path / "r18.pth", "resnet18")), False, out)


def test_a_trial_is_reused_only_with_the_fingerprint_it_was_trained_with(tmp_path):
    from transfer.stages import FinetuneSettings

    ckpt = moco_checkpoint(tmp_path / "moco.pth.tar", "resnet50")
    out = tmp_path / "stage"
    s = FinetuneSettings(source=str(ckpt), task="demo-voc", data=str(tmp_path), out=str(out), trials=2)
    src = trials.origin(s.source, False, out)
    fp = trials.fingerprint(s, src, {"iters": 20, "steps": (10, 15)})
    assert fp["steps"] == [10, 15] and fp["weights_sha256"] == trials.weights_digest(src.state)
    assert fp["data_folder"] == str(tmp_path.resolve()) and fp["task"] == "demo-voc" and fp["random_init"] is False
    # where it writes and logs, its tags and its number of trials change no trial
    other = FinetuneSettings(source=str(ckpt), task="demo-voc", data=str(tmp_path), out="elsewhere", trials=5,
                             tags={"slurm_job_id": "7"}, tracking_uri="http://x:5000", parent_run="p")
    assert trials.fingerprint(other, trials.origin(str(ckpt), False, out), {"iters": 20, "steps": (10, 15)}) == fp
    assert trials.finished_trials(out, fp, 2) == [False, False] and not out.exists()  # reads only
    trials.claim(rundir.trial_dir(out, 0), fp)
    trials.write_json(rundir.trial_dir(out, 0) / rundir.RESULT_FILE, {"AP50": 1.0})
    assert trials.finished_trials(out, fp, 2) == [True, False]
    with pytest.raises(UserError, match=r"trial0 was trained with other settings \(iters: 20 there, 40 now\); "
                                        r"pass a new --out, or --discard-trials"):
        trials.finished_trials(out, {**fp, "iters": 40}, 2)
    ours = trials.origin(str(moco_checkpoint(tmp_path / "other.pth.tar", "resnet50")), False, out)
    with pytest.raises(UserError, match="weights_sha256"):  # the same settings from other weights
        trials.finished_trials(out, trials.fingerprint(s, ours, {"iters": 20, "steps": (10, 15)}), 1)
    (rundir.trial_dir(out, 1) / "checkpoints").mkdir(parents=True)  # a trial of an older version: no record
    with pytest.raises(UserError, match="trial1 holds a trial with no record of its settings"):
        trials.finished_trials(out, fp, 2)


def test_discarding_trials_removes_them_and_their_summary_only(tmp_path):
    out = tmp_path / "stage"
    for t in (0, 1, 12):
        trials.claim(rundir.trial_dir(out, t), {"iters": 20})
    for keep in ("weights-d2.pkl", "weights-d2.json", "trials.txt", "mlflow.db"):
        (out / keep).write_text("x")
    (out / "trial_notes").mkdir()
    (out / rundir.SUMMARY_FILE).write_text("{}")
    trials.discard_trials(out)
    assert sorted(p.name for p in out.iterdir()) == ["mlflow.db", "trial_notes", "trials.txt", "weights-d2.json",
                                                    "weights-d2.pkl"]


CLOSING = """
import os, signal, sys
from pathlib import Path
from pretrain.run.tracking import open_run
from transfer import trials

out, how = Path(sys.argv[1]), sys.argv[2]
tracker = open_run(out, uri=f"sqlite:///{out}/mlflow.db", experiment="e", name="t", stage="transfer-voc",
                   params={}, tags={})
with trials.closing(tracker):
    if how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    elif how == "error":
        raise RuntimeError("boom")
"""


@pytest.mark.parametrize("how, status, code", [("ok", "FINISHED", 0), ("sigterm", "KILLED", 128 + 15),
                                               ("error", "FAILED", 1)])
def test_a_trials_run_is_closed_killed_on_sigterm_failed_on_an_error(tmp_path, how, status, code):
    import subprocess
    import sys

    from pretrain.run.tracking import mlflow_client
    from tests.conftest import REPO

    r = subprocess.run([sys.executable, "-c", CLOSING, str(tmp_path), how], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == code, r.stderr[-2000:]
    meta = json.loads((tmp_path / rundir.TRACKING_FILE).read_text())
    assert meta["status"] == status
    run_id = (tmp_path / rundir.RUN_ID_FILE).read_text().strip()
    assert mlflow_client(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).info.status == status
