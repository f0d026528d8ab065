"""mochi-transfer-d2 (transfer/transfer_d2.py, transfer/train_d2.py): settings, refusals and result naming without detectron2 (CI never has it);
with detectron2 built from source, the whole path on a CPU for a few iterations."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from pretrain.run.errors import UserError
from tests.conftest import REPO, tiny_cfg
from tests.transfer.test_trials import moco_checkpoint
from transfer.data import make_synthetic
from transfer.stages import D2Settings, d2_settings as settings
from transfer.train_d2 import flat_results

HAS_D2 = importlib.util.find_spec("detectron2") is not None
needs_d2 = pytest.mark.skipif(not HAS_D2, reason="detectron2 is not installed (it is built from its source, "
                                                 "docs/transfer.md; CI never has it)")
# A CPU smoke run: a few iterations, PreciseBN on 2 batches, data loaded in the trial's process.
SMOKE = ["--device", "cpu", "--iters", "3", "TEST.PRECISE_BN.NUM_ITER", "2", "DATALOADER.NUM_WORKERS", "0"]


def train_d2(*args, env=None):
    return subprocess.run([sys.executable, "-m", "transfer.transfer_d2", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """The local detection set, small: 6 training and 3 test images."""
    root = tmp_path_factory.mktemp("det")
    make_synthetic(root, n_train=6, n_test=3, seed=2)
    return root


def test_settings_parse_like_train_net(tmp_path):
    run = str(tmp_path)  # a run folder: the stage writes beside the torchvision path's, under its own name
    s = settings([run, "--task", "voc-c4", "--data", "/d", "SOLVER.CHECKPOINT_PERIOD", "500", "--iters", "4800",
                  "INPUT.MIN_SIZE_TEST", "600"])
    assert (s.source, s.device, s.trials, s.iters, s.workers) == (run, "cuda", 5, 4800, 8)
    assert s.opts == ["SOLVER.CHECKPOINT_PERIOD", "500", "INPUT.MIN_SIZE_TEST", "600"]
    assert s.out_dir == tmp_path / "transfer-d2-voc-c4"
    # at 8 GPUs the recipe as MoCo runs it; the budget stretches its steps and warm-up, not its lr
    assert settings(["x", "--task", "voc-c4", "--data", "/d"]).solver() == {
        "IMS_PER_BATCH": 16, "BASE_LR": 0.02, "STEPS": (18000, 22000), "MAX_ITER": 24000, "WARMUP_ITERS": 100}
    assert s.solver() == {"IMS_PER_BATCH": 16, "BASE_LR": 0.02, "STEPS": (3600, 4400), "MAX_ITER": 4800,
                          "WARMUP_ITERS": 20}
    cpu = settings(["--random-init", "--task", "coco-c4-1x", "--data", "/d", "--device", "cpu", "--out", "o",
                    "MODEL.RPN.POST_NMS_TOPK_TEST", "100"])
    assert cpu.source is None and cpu.random_init and cpu.workers == 1  # the first KEY is not taken for SOURCE
    assert cpu.opts == ["MODEL.RPN.POST_NMS_TOPK_TEST", "100"]
    assert cpu.solver()["IMS_PER_BATCH"] == 2 and cpu.solver()["WARMUP_ITERS"] == 8000  # COCO's warm-up scales too
    assert settings(["x", "--task", "demo-voc", "--data", "/d"]).workers == 1  # the demo's own scale
    assert settings(["x", "--task", "voc-c4", "--data", "/d", "--gpus", "2"]).solver()["MAX_ITER"] == 96000


@pytest.mark.parametrize("args, message", [
    (["x", "--task", "voc-c4"], "give SOURCE (or --random-init), --task and --data"),
    (["--task", "voc-c4", "--data", "/d"], "give SOURCE (or --random-init), --task and --data"),
    (["x", "--task", "voc-c4", "--data", "/d", "SOLVER.BASE_LR"], "'SOLVER.BASE_LR' has no value"),
    (["x", "--task", "voc-c4", "--data", "/d", "solver.base_lr", "1"], "is not a detectron2 config key"),
    (["x", "--task", "voc-c4", "--data", "/d", "OUTPUT_DIR", "/tmp"], "OUTPUT_DIR is set by mochi-transfer-d2 (from --out)"),
    (["x", "--task", "voc-c4", "--data", "/d", "MODEL.WEIGHTS", "w.pkl"], "set by mochi-transfer-d2 (from SOURCE)"),
    (["x", "--task", "voc-c4", "--data", "/d", "--device", "cpu", "--gpus", "2"], "--device cpu trains in one"),
    (["x", "--task", "voc-c4", "--data", "/d", "--iters", "0"], "--iters 0: must be >= 1"),
    (["x", "--task", "voc-c4", "--data", "/d", "--gpus", "-1"], "--gpus -1: must be >= 1"),
])
def test_bad_settings_are_user_errors(args, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(args)


def test_results_are_named_as_the_torchvision_paths():
    voc = {"bbox": {"AP": 50.0, "AP50": 80.0, "AP75": 55.0}}
    assert flat_results(voc, "voc") == {"AP": 50.0, "AP50": 80.0, "AP75": 55.0}
    figures = {"AP": 40.0, "AP50": 60.0, "AP75": 42.0, "APs": 20.0, "APm": 44.0, "APl": float("nan"), "AP-cat": 3.0}
    coco = flat_results({"bbox": figures, "segm": {**figures, "AP": 35.0}}, "coco")
    assert coco["box_AP"] == 40.0 and coco["mask_AP"] == 35.0 and coco["mask_AP50"] == 60.0
    assert set(coco) == {f"{g}_{k}" for g in ("box", "mask") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    # the grid tables' VOC and COCO columns read exactly these names
    from ablations.collect import METRICS

    assert {m.mlflow for k, m in METRICS.items() if k.startswith("voc_")} <= set(flat_results(voc, "voc"))
    assert {m.mlflow for k, m in METRICS.items() if k.startswith("coco_")} <= set(coco)


def test_bad_input_is_refused_in_one_line_before_anything_is_written(det, tmp_path):
    """These refusals come before detectron2 is imported, so they hold with and without it."""
    r18 = moco_checkpoint(tmp_path / "r18.pth", "resnet18")
    out = tmp_path / "o"
    cases = [
        (["--random-init", "--task", "voc-c4", "--data", det / "VOCdevkit"],
         "VOC2012/ImageSets/Main/trainval.txt is missing, which voc_2012_trainval needs"),
        (["--random-init", "--task", "demo-voc", "--data", det], "VOC2007/ImageSets/Main/trainval.txt is missing"),
        (["--random-init", "--task", "demo-coco", "--data", det / "VOCdevkit"],
         "annotations/instances_train.json is missing"),
        (["--random-init", "--task", "demo-voc", "--data", tmp_path / "nowhere"], "does not exist"),
        ([r18, "--task", "demo-voc", "--data", det / "VOCdevkit"], "does not fit a resnet50"),
        (["--random-init", "--task", "voc-c5", "--data", det], "invalid choice"),
    ]
    for args, message in cases:
        r = train_d2(*args, "--out", out, "--device", "cpu")
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert not out.exists()


@pytest.mark.skipif(HAS_D2, reason="detectron2 is installed here; the refusal only shows without it")
def test_without_detectron2_one_line_and_exit_2(det, tmp_path):
    r = train_d2("--random-init", "--task", "demo-voc", "--data", det / "VOCdevkit", "--out", tmp_path / "o")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "detectron2 is not installed" in r.stderr and "mochi-transfer is the torchvision path" in r.stderr
    assert not (tmp_path / "o").exists()


@needs_d2
def test_recipes_load_into_detectron2_with_the_extra_norm_head(tmp_path):
    from transfer.train_d2 import d2_config, register_extra_norm_head

    register_extra_norm_head()
    s = D2Settings(source="x", task="voc-c4", data="/d", gpus=2)
    cfg = d2_config(s, "w.pkl", 3, tmp_path)
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeadsExtraNorm" and cfg.SOLVER.IMS_PER_BATCH == 4
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and tuple(cfg.SOLVER.STEPS) == (72000, 88000)
    assert cfg.SOLVER.WARMUP_ITERS == 400 and cfg.SEED == 3 and cfg.MODEL.WEIGHTS == "w.pkl"
    coco = d2_config(D2Settings(source="x", task="coco-c4-1x", data="/d", gpus=4, iters=1000,
                                opts=["SOLVER.BASE_LR", "0.004"]), "", 0, tmp_path)
    assert coco.SOLVER.WARMUP_ITERS == 11 and coco.SOLVER.MAX_ITER == 1000 and coco.SOLVER.BASE_LR == 0.004
    assert tuple(coco.DATASETS.TRAIN) == ("coco_2017_train",) and coco.MODEL.MASK_ON
    demo = d2_config(D2Settings(source=None, random_init=True, task="demo-coco", data="/d", device="cpu"), "", 0,
                     tmp_path)
    assert demo.MODEL.DEVICE == "cpu" and demo.INPUT.MASK_FORMAT == "polygon" and demo.MODEL.ROI_HEADS.NUM_CLASSES == 10
    with pytest.raises(UserError, match="Non-existent key: SOLVER.NOPE"):
        d2_config(D2Settings(source="x", task="voc-c4", data="/d", opts=["SOLVER.NOPE", "1"]), "", 0, tmp_path)


@needs_d2
def test_an_option_detectron2_does_not_know_is_refused_before_anything_is_written(det, tmp_path):
    r = train_d2("--random-init", "--task", "demo-voc", "--data", det / "VOCdevkit", "--out", tmp_path / "o",
                 *SMOKE, "SOLVER.NOPE", "1")
    assert r.returncode == 2 and "Non-existent key: SOLVER.NOPE" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def r50_run(tmp_path_factory, mlflow_server):
    """A real (one-step) ResNet-50 pretraining run folder logging to the MLflow server."""
    from pretrain.train import train

    out = tmp_path_factory.mktemp("pre") / "r50"
    train(tiny_cfg(out, "model.arch=resnet50", "model.small_stem=false", "optim.epochs=1", "run.max_steps=1",
                   f"run.tracking_uri={mlflow_server}", f"run.experiment=d2-{out.parent.name}"))
    return out


@needs_d2
@pytest.mark.slow
def test_voc_smoke_run_trains_precise_bn_evaluates_once_and_logs_children(det, r50_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    r = train_d2(r50_run, "--task", "demo-voc", "--data", det / "VOCdevkit", "--trials", "2", *SMOKE)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r50_run / "transfer-d2-demo-voc"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "detectron2" and len(summary["trials"]) == 2
    assert summary["settings"]["max_iter"] == 3 and summary["settings"]["gpus"] == 1
    assert set(summary["summary"]) == {"AP", "AP50", "AP75"} and summary["summary"]["AP50"]["std"] is not None
    assert all(0.0 <= t["AP50"] <= 100.0 for t in summary["trials"])
    assert (out / "weights-d2.pkl").is_file()
    for t in (0, 1):
        log = (out / f"trial{t}" / "log.txt").read_text()
        assert log.count("Running precise-BN for 2 iterations") == 1
        assert log.count("Start inference on 3 batches") == 1  # one evaluation: DefaultTrainer's own
        assert "Starting training from iteration 0" in log
    # each trial in its own process: no detectron2 handler left over from trial 0
    assert "trial1" not in (out / "trial0" / "log.txt").read_text()
    assert r.stdout.count("Full config saved to") == 2 and r.stdout.count("Start inference on") == 2

    client = MlflowClient(mlflow_server)
    pre_id = (r50_run / "mlflow_run_id").read_text().strip()
    exp = client.get_run(pre_id).info.experiment_id
    runs = client.search_runs([exp], "tags.stage = 'transfer-voc'")
    assert sorted(x.data.tags["trial"] for x in runs) == ["0", "1"]
    for run in runs:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == pre_id and tags["pretrain_run_id"] == pre_id
        assert tags["task"] == "demo-voc" and tags["engine"] == "detectron2" and tags["random_init"] == "False"
        assert tags["source"] == str(r50_run.resolve()) and tags["gpus"] == "1" and tags["recipe_gpus"] == "1"
        assert {"AP", "AP50", "AP75", "loss", "loss_cls", "lr"} <= set(run.data.metrics)
        assert run.info.status == "FINISHED" and run.data.params["transfer.max_iter"] == "3"
        trial = out / f"trial{tags['trial']}"
        assert run.data.metrics["AP50"] == pytest.approx(json.loads((trial / "result.json").read_text())["AP50"])
    again = train_d2(r50_run, "--task", "demo-voc", "--data", det / "VOCdevkit", "--trials", "2", *SMOKE)
    assert again.returncode == 0 and "Start inference" not in again.stdout  # finished trials are not run again
    assert json.loads((out / "summary.json").read_text())["trials"] == summary["trials"]
    assert len(client.search_runs([exp], "tags.stage = 'transfer-voc'")) == 2


@needs_d2
@pytest.mark.slow
def test_coco_smoke_run_of_the_demo_task_reports_box_and_mask_ap_as_strict_json(det, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "coco"
    r = train_d2("--random-init", "--task", "demo-coco", "--data", det / "coco", "--trials", "1", "--out", out,
                 "--tag", "cell=c1", *SMOKE, env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert r.returncode == 0, r.stderr[-3000:]
    text = (out / "summary.json").read_text()

    def refuse(const):
        raise ValueError(f"not strict JSON: {const}")

    summary = json.loads(text, parse_constant=refuse)
    figures = summary["trials"][0]
    assert {"box_AP", "box_AP50", "box_AP75", "mask_AP", "mask_AP50", "mask_AP75"} <= set(figures)
    # the set's objects are under 96 px: COCO has no APl for them, written as null
    assert figures["box_APl"] is None and figures["mask_APl"] is None
    assert not (out / "weights-d2.pkl").exists()  # a random init: detectron2's own
    client = MlflowClient(mlflow_server)
    run = client.get_run((out / "trial0" / "mlflow_run_id").read_text().strip())
    assert run.data.tags["stage"] == "transfer-coco" and run.data.tags["cell"] == "c1"
    assert run.data.tags["source"] == "random init" and "box_AP" in run.data.metrics and "mask_AP" in run.data.metrics
    assert "box_APl" not in run.data.metrics  # NaN is not logged


def test_datasets_whose_annotations_or_class_lists_disagree_are_refused_before_training(det):
    from transfer.train_d2 import check_classes

    voc = det / "VOCdevkit"
    check_classes(["mochi_demo_voc_trainval", "mochi_demo_voc_test"], 10, voc)
    with pytest.raises(UserError, match=r"voc_2007_test has 20 classes \(aeroplane, bicycle, bird, \.\.\.\), "
                                        r"mochi_demo_voc_trainval 10 \(tshirt_top"):
        check_classes(["mochi_demo_voc_trainval", "voc_2007_test"], 10, voc)
    with pytest.raises(UserError, match="MODEL.ROI_HEADS.NUM_CLASSES is 10, but voc_2007_trainval has 20 classes"):
        check_classes(["voc_2007_trainval", "voc_2007_test"], 10, voc)
    with pytest.raises(UserError, match=r"VOC2007/Annotations/\w+\.xml has an object '\w+', not one of the 20 "
                                        r"classes voc_2007_trainval is registered with"):
        check_classes(["voc_2007_trainval", "voc_2007_test"], 20, voc)


@needs_d2
def test_a_test_set_of_other_classes_is_refused_before_anything_trains(det, tmp_path):
    out = tmp_path / "o"
    r = train_d2("--random-init", "--task", "demo-voc", "--data", det / "VOCdevkit", "--out", out, *SMOKE,
                 "DATASETS.TEST", "('voc_2007_test',)")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
    assert "voc_2007_test has 20 classes" in r.stderr and not out.exists()


@needs_d2
@pytest.mark.slow
def test_a_rerun_with_other_settings_is_refused_and_the_weights_are_converted_once(det, tmp_path):
    source = moco_checkpoint(tmp_path / "moco.pth.tar", "resnet50")
    out = tmp_path / "o"
    smoke = [a for a in SMOKE if a not in ("--iters", "3")]
    base = [source, "--task", "demo-voc", "--data", det / "VOCdevkit", "--trials", "1", "--out", out, *smoke]
    first = train_d2(*base, "--iters", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "over 1 trial:" in first.stdout
    weights = out / "weights-d2.pkl"
    converted = weights.stat().st_mtime_ns
    again = train_d2(*base, "--iters", "3")  # every trial done: nothing trains, nothing is converted again
    assert again.returncode == 0 and "Start inference" not in again.stdout, again.stderr[-3000:]
    assert weights.stat().st_mtime_ns == converted
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for other, differs in ((["--iters", "4"], "max_iter: 3 there, 4 now"),
                           (["--iters", "3", "MODEL.RPN.POST_NMS_TOPK_TEST", "20"], "opts")):
        r = train_d2(*base, *other)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
        assert differs in r.stderr and "--discard-trials" in r.stderr
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing written
    fresh = train_d2(*base, "--iters", "4", "--discard-trials")
    assert fresh.returncode == 0 and "Starting training from iteration 0" in fresh.stdout, fresh.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["settings"]["max_iter"] == 4
    assert "MAX_ITER: 4" in (out / "trial0" / "config.yaml").read_text()
    assert weights.stat().st_mtime_ns == converted  # the same source: its conversion stands
