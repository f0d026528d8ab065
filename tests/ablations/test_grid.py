"""ablations/grid.py: bad input, dry runs, and a real local grid end to end."""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablations import spec
from ablations.griddir import GridDir
from pretrain.run.errors import UserError
from tests.ablations.test_spec import build
from tests.conftest import REPO, TINY_GRID, grid_cli, grid_runs


@pytest.mark.parametrize("args, message", [
    (["--sweep", "N,foo"], "unknown axis 'foo'"),
    (["--sweep", "N", "--N", "64,abc"], "'abc' is not a valid int for mochi.N"),
    (["--sweep", "N", "--N", "64,"], "empty value"),
    (["--sweep", "N", "--N", ""], "empty value"),
    (["--N", "64"], "no --sweep naming the axes"),
    (["--sweep", "N,s", "--N", "0", "--s", "64"], "every cell of the grid is invalid"),
    (["--profile", "no-such-profile"], "unknown cluster profile 'no-such-profile'"),
    (["--preset", "no-such-grid"], "unknown grid preset 'no-such-grid'"),
    (["--set", "mochi.X=1"], "unknown config key 'mochi.X'"),
    (["--cluster", "slurm"], "no SLURM controller answers"),
    (["--cluster", "cloud"], "argument --cluster: invalid choice: 'cloud'"),
    # a status or cancel from a folder the grid was never submitted to: said, with where it looked
    (["--status"], "--status: no grid in /"),
    (["--cancel"], "--cancel: no grid in /"),
    (["--cluster", "mars", "--dry-run"], "argument --cluster: invalid choice: 'mars'"),
    (["--sweep", "N,N"], "--sweep names axis N more than once"),
    (["--sweep", "N", "--N", "64", "--axis", "mochi.N=128"], "values for axis N are given twice"),
    (["--lincls", "--fast --no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--preset", "{malformed}"], "not valid YAML"),
    (["--preflight", "--no-preflight"], "--preflight runs the preflight alone and --no-preflight skips it"),
    (["--preset", "{not-a-mapping}"], "expected a mapping of preset keys"),
    (["--cluster", "local", "--profile", "{two-tasks}"], "asks for 2 DDP ranks per pretraining job (0 GPUs); "
                                                         "local runs use one process per job"),
    (["--profile", "{extra-tasks}"], "extra_sbatch sets ntasks_per_node, which the profile's own key "
                                     "tasks_per_node sets per stage"),
    # a tracking server that does not answer: refused here, not by a preflight job minutes later
    (["--cluster", "local", "--tracking-uri", "http://127.0.0.1:9"],
     "the MLflow store http://127.0.0.1:9 does not answer from this host (Connection refused)"),
    # an image folder that is not there: refused on the submitting host, before a preflight or a run
    (["--cluster", "local", "--set", "data.dataset=imagefolder", "--set", "data.path=/no/such/imagenet"],
     "data.path /no/such/imagenet (cell N0-s0-sp0) is not a folder on this host"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    (tmp_path / "malformed.yaml").write_text("base: demo\ncells: [{N: 0, s: 0\nseeds: 2\n")
    (tmp_path / "not-a-mapping.yaml").write_text("- N\n- s\n")
    (tmp_path / "two-tasks.yaml").write_text("tasks_per_node: 2\n")
    (tmp_path / "extra-tasks.yaml").write_text("extra_sbatch: {ntasks_per_node: 2}\n")
    for name in ("malformed", "not-a-mapping", "two-tasks", "extra-tasks"):
        args = [a.replace(f"{{{name}}}", str(tmp_path / f"{name}.yaml")) for a in args]
    out = tmp_path / "grid"
    r = grid_cli("--out", str(out), *args, env={"SLURM_CONF": str(tmp_path / "no-slurm.conf")})
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not out.exists()


def test_data_on_the_compute_nodes_only_is_left_to_the_preflight():
    """Node-local scratch: a profile that says so skips the submitting host's check."""
    from ablations.submit import check_data
    from slurm import launcher

    grid = build(extra=["data.dataset=imagefolder", "data.path=/scratch/imagenet"])
    with pytest.raises(UserError, match="set data_on_nodes: true in profile local-cpu"):
        check_data(grid, launcher.load_profile("local-cpu"))
    check_data(grid, launcher.Profile("nodes", data_on_nodes=True))


@pytest.mark.parametrize("engine", ["", "--engine detectron2 --device cpu "])
def test_a_transfer_stage_whose_data_lacks_its_files_is_refused_before_anything_is_submitted(tmp_path, engine):
    """The job would refuse a VOC folder without its image-set lists first: the grid does, here."""
    bare = tmp_path / "VOCdevkit"
    for d in ("Annotations", "JPEGImages"):
        (bare / "VOC2007" / d).mkdir(parents=True)
    out = tmp_path / "grid"
    r = grid_cli("--out", str(out), "--cluster", "local", "--set", "model.arch=resnet50", "--lincls", "none",
                 "--transfer", f"{engine}--task demo-voc --data {bare}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"--data {bare}: VOC2007/ImageSets/Main/trainval.txt is missing" in r.stderr and not out.exists()


def test_a_folder_holding_another_grid_is_refused_untouched(tmp_path):
    out = tmp_path / "grid"
    out.mkdir()
    other = build(["N"], {"N": [64]}).to_json()
    (out / "grid.json").write_text(other)
    r = grid_cli("--out", str(out), "--cluster", "local")
    assert r.returncode == 2 and "holds a grid with other settings (cells: [{'N': 64}] there, [{'N': 0," in r.stderr
    assert r.stderr.count("\n") == 1
    assert (out / "grid.json").read_text() == other and sorted(p.name for p in out.iterdir()) == ["grid.json"]


def test_how_a_grid_runs_is_not_what_it_is(tmp_path):
    """The manual's advice (save more often, move the data to node-local scratch) keeps a grid's folder
    and id; a setting that changes results is refused naming the key and both values."""
    def folder(*extra):
        grid = spec.build(spec.load_preset("demo"), None, {}, None, list(extra), None)
        return GridDir(tmp_path / "grid", grid, tmp_path)

    written = folder()
    written.out.mkdir()
    written.save_grid()
    again = folder("run.ckpt_every_minutes=20", "data.path=/scratch/fmnist", "data.num_workers=4")
    again.check_same()
    assert again.grid.grid_id == written.grid.grid_id
    with pytest.raises(UserError, match=r"holds a grid with other settings \(set.optim.base_lr: 'absent' there, "
                                        r"0.1 now\); choose another --out or --name"):
        folder("optim.base_lr=0.1").check_same()
    with pytest.raises(UserError, match=r"\(set.optim.epochs: 2 there, 3 now\)"):
        folder("optim.epochs=3").check_same()


def test_a_folder_is_the_same_grid_however_its_stages_arguments_were_spelled(tmp_path):
    def folder(lincls):
        return GridDir(tmp_path / "grid", spec.build(spec.load_preset("demo"), None, {}, None, [], lincls), tmp_path)

    written = folder("--fast --epochs=2")
    written.out.mkdir()
    written.save_grid()
    folder("--epochs 2 --fast").check_same()
    with pytest.raises(UserError, match=r"holds a grid with other settings \(lincls.epochs: 2 there, 3 now\)"):
        folder("--fast --epochs 3").check_same()
    # grid.json as grid.py wrote it when the id hashed the stages' argument lists: refused in one line
    d = json.loads((written.out / "grid.json").read_text())
    stored = {k: d[k] for k in ("name", "base", "set", "seeds", "lincls", "transfer", "cells", "references")}
    d["grid_id"] = f"demo-{hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()[:8]}"
    (written.out / "grid.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match=f"as an earlier version of grid.py wrote it \\(grid id {d['grid_id']}, now "
                                        f"{written.grid.grid_id}\\)") as e:
        written.check_same()
    assert "\n" not in str(e.value)


def cost_lines(stdout: str) -> dict[str, str]:
    """{row: text} of the cost block a dry run prints (pretraining, bound by, linear probes, rates)."""
    block = stdout.split(" cost (", 1)[1].splitlines()[1:]
    rows, name = {}, None
    for line in block:
        if line.startswith("  ") and line[2] != " ":
            name, text = line[2:16].strip(), line[16:]
            rows[name] = text
        elif name is not None:
            rows[name] += " " + line.strip()
    return rows


def test_dry_run_prints_cells_and_a_cost_that_names_its_bound_and_submits_nothing(tmp_path):
    """in100-table1 on gpu-1: the step alone would take 42 GPU-hours (4,000 img/s), but the presets'
    CPU JPEG pipeline delivers 691 img/s, so that binds; the probes are estimated too, and the
    figures' source is named."""
    out = tmp_path / "grid"
    r = grid_cli("--preset", "in100-table1", "--out", str(out), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "8 cells x 3 seeds" in r.stdout and "N1024-s1024-sp128" in r.stdout
    cost = cost_lines(r.stdout)
    assert r.stdout.count("estimated cost (nothing submitted; --preflight measures") == 1
    # 24 jobs x 200 epochs x 126,689 images at the 691 img/s of the cpu pipeline, not the step's 4,000
    hours = float(cost["pretraining"].split()[0])
    assert hours == pytest.approx(24 * 200 * 126689 / 691 / 3600, rel=0.01)
    assert cost["bound by"].startswith("the cpu input pipeline (691 img/s per job; the step: 4000)")
    # 24 probes of 60 epochs over 126,689 + 5,000 images, one view: 2 x 691 img/s
    probes = float(cost["linear probes"].split()[0])
    assert probes == pytest.approx(24 * 60 * (126689 + 5000) / (2 * 691) / 3600, rel=0.01)
    assert "profile gpu-1: step: compiled ResNet-50" in cost["rates"] and "docs/pipelines.md" in cost["rates"]
    assert all(len(line) <= 120 for line in r.stdout.splitlines()[-8:])
    assert "GPU-hours" in r.stdout and not out.exists()

    # the step binds where the pipeline is faster: the same grid on the gpu pipeline
    gpu = grid_cli("--preset", "in100-table1", "--out", str(out), "--set", "data.pipeline=gpu", "--dry-run")
    cost = cost_lines(gpu.stdout)
    assert cost["bound by"] == "the step (4000 img/s per job)"
    assert float(cost["pretraining"].split()[0]) == pytest.approx(24 * 200 * 126689 / 4000 / 3600, rel=0.01)

    # GPU-hours do not depend on how many GPUs a job has: on gpu-8 (8 per pretraining job, 1 per
    # probe) the pretraining and the probes cost what they cost on gpu-1
    eight = cost_lines(grid_cli("--preset", "in100-table1", "--out", str(out), "--profile", "gpu-8",
                                "--dry-run").stdout)
    assert float(eight["pretraining"].split()[0]) == pytest.approx(hours, rel=0.01)
    assert float(eight["linear probes"].split()[0]) == pytest.approx(probes, rel=0.01)


def write_preset(tmp_path, cells, lincls=True):
    p = tmp_path / "tiny.yaml"
    p.write_text(json.dumps({"base": "demo", "cells": cells, "seeds": 1,
                             "lincls": None if not lincls else ["--fast"], "table": {"rows": ["N", "s", "s_prime"]}}))
    return p


ROWS = ["N0-s0-sp0", "N32-s16-sp8", "random-init", "released-mine"]
SEEDS = 3  # a paired t test needs 3: with 2 its interval is NaN


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory, mlflow_server):
    """A real two-cell grid on 3 seeds, with a random-init row and a released checkpoint as
    reference rows, run locally through submitit and logged to the real MLflow server: made once,
    read by the tests of its group."""
    import torch

    from pretrain.method.moco import MoCo

    tmp_path = tmp_path_factory.mktemp("local-grid")
    torch.manual_seed(0)
    released = tmp_path / "released.pth.tar"  # MoCo's release format, written here
    model = MoCo("resnet18", dim=128, K=256, mlp=False)
    torch.save({"epoch": 200, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, released)
    preset = write_preset(tmp_path, [{"N": 0, "s": 0, "s_prime": 0}, {"N": 32, "s": 16, "s_prime": 8}])
    args = ["--preset", str(preset), "--name", f"t{os.getpid()}", "--out", str(tmp_path / "grid"),
            "--results", str(tmp_path / "results"), "--cluster", "local", "--tracking-uri", mlflow_server, *TINY_GRID,
            "--seeds", str(SEEDS), "--random-init", "--reference", f"mine={released}"]
    r = grid_cli(*args, env={"COLUMNS": "120"})
    assert r.returncode == 0, r.stdout + r.stderr
    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    yield tmp_path, args, r, grid
    for child in tmp_path.iterdir():  # about 0.9 GB of checkpoints, which the session's tmp would keep
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink()


@pytest.mark.slow
@pytest.mark.xdist_group("local_grid")  # one worker makes the module's grid once for both readers
def test_local_grid_end_to_end_is_idempotent_and_tracked(local_grid, mlflow_server):
    tmp_path, args, r, grid = local_grid
    assert "[N32-s16-sp8/seed0] done: linear top-1" in r.stdout
    assert max(map(len, r.stdout.splitlines())) <= 120  # fits the terminal it was told of
    assert "Warning" not in r.stderr, r.stderr
    table = (tmp_path / "results" / "table.md").read_text()
    assert "N32" not in table and "| 32 | 16 |" in table.replace("  ", " ").replace("|  ", "| ")
    # (the class-oracle share needs a queue full of labelled keys, which 8 steps do not reach)
    for name in ("linear_top1.png", "proxy_task_difficulty.png", "hardness_top1.png", "alignment_uniformity.png",
                 "report.html"):
        assert (tmp_path / "results" / name).stat().st_size > 2000, name
    assert 'src="proxy_task_difficulty.png"' in (tmp_path / "results" / "report.html").read_text()

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(f"grid-{grid['name']}")
    runs = client.search_runs([exp.experiment_id], f"tags.grid_id = '{grid['grid_id']}'")
    by_stage = sorted((r.data.tags["stage"], r.data.tags.get("cell", ""), r.data.tags.get("seed", "")) for r in runs)
    assert by_stage == sorted([("grid", "", ""), *[("lincls", row, str(s)) for row in ROWS for s in range(SEEDS)],
                               *[("pretrain", cell, str(s)) for cell in ROWS[:2] for s in range(SEEDS)]])
    parent = next(r for r in runs if r.data.tags["stage"] == "grid")
    assert parent.info.status == "FINISHED"
    # The UI opens the experiment on its runs; the parent holds the grid as submitted and its tables, report
    # and figures; each pretraining run its resolved config, the bytes of its run folder's config.yaml.
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert parent.data.params["seeds"] == str(SEEDS) and parent.data.params["cells"] == " ".join(ROWS[:2])
    assert parent.data.params["references"] == " ".join(ROWS[2:]) and parent.data.params["cluster"] == "local"
    shipped = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {f"results/{f}" for f in ("table.md", "table.csv", "table.tex", "report.html", "linear_top1.png",
                                     "source.json")} <= shipped, shipped
    pre = next(r for r in runs if r.data.tags["stage"] == "pretrain" and r.data.tags["cell"] == "N32-s16-sp8")
    got = Path(client.download_artifacts(pre.info.run_id, "config.yaml", str(tmp_path / "dl")))
    seed = pre.data.tags["seed"]
    assert got.read_bytes() == (tmp_path / "grid" / "cells" / "N32-s16-sp8" / f"seed{seed}" / "config.yaml").read_bytes()
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs if r is not parent)
    lincls = [r for r in runs if r.data.tags["stage"] == "lincls"]
    assert all(0 < r.data.metrics["top1_last"] <= 100 for r in lincls)
    # Beside the table: how each probe chose its lr, on images held out of the training split.
    probes = json.loads((tmp_path / "results" / "source.json").read_text())["linear_probe"]
    assert [(p["row"], p["mode"], p["selection"]["val_images"]) for p in probes][:2 * SEEDS] == [
        (cell, "fast", 50) for cell in ROWS[:2] for _ in range(SEEDS)]
    assert all(p["selection"]["lr"] in [c["lr"] for c in p["selection"]["candidates"]] for p in probes)

    # A pretraining job killed after its final checkpoint, before summary.json: still done, settled.
    run_dir = tmp_path / "grid" / "cells" / "N0-s0-sp0" / "seed0"
    summary = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").unlink()
    pre = next(r for r in runs if r.data.tags["stage"] == "pretrain" and r.data.tags["cell"] == "N0-s0-sp0")
    client.update_run(pre.info.run_id, status="RUNNING")
    meta = json.loads((run_dir / "tracking.json").read_text())
    (run_dir / "tracking.json").write_text(json.dumps({**meta, "status": "RUNNING"}))

    again = grid_cli(*args)
    assert again.returncode == 0 and f"0 to pretrain, 0 to evaluate, {len(ROWS) * SEEDS} done" in \
        " ".join(again.stdout.split())
    assert len(client.search_runs([exp.experiment_id], f"tags.grid_id = '{grid['grid_id']}'")) == len(runs)
    assert json.loads((run_dir / "summary.json").read_text()) == json.loads(summary)
    assert client.get_run(pre.info.run_id).info.status == "FINISHED"
    status = grid_cli(*args, "--status")
    assert status.returncode == 0 and status.stdout.count("done (linear top-1") == len(ROWS) * SEEDS

    pivot = subprocess.run([sys.executable, "ablations/tables.py", str(tmp_path / "grid"), "--results",
                            str(tmp_path / "results"), "--tracking-uri", mlflow_server, "--rows", "N",
                            "--cols", "s_prime"], cwd=REPO, capture_output=True, text=True)
    assert pivot.returncode == 0, pivot.stderr
    md = (tmp_path / "results" / "pivot_linear_top1_N_by_s_prime.md").read_text()
    assert md.count(f"(n={SEEDS})") == 2  # the cells only: reference rows have no axes


@pytest.mark.slow
@pytest.mark.xdist_group("local_grid")
def test_mlflow_ui_shows_the_grid(local_grid, mlflow_server, tmp_path):
    _, _, _, grid = local_grid
    # The REST API the UI uses: the parent and its children, with their metrics.
    def api(path, body):
        req = urllib.request.Request(f"{mlflow_server}/api/2.0/mlflow/{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    exp = api("experiments/search", {"filter": f"name = 'grid-{grid['name']}'", "max_results": 5})["experiments"][0]
    runs = api("runs/search", {"experiment_ids": [exp["experiment_id"]],
                               "filter": f"tags.grid_id = '{grid['grid_id']}'"})["runs"]
    names = sorted(r["info"]["run_name"] for r in runs)
    assert names == sorted([f"grid {grid['name']}", *[f"{row}_seed{s}_lincls" for row in ROWS for s in range(SEEDS)],
                            *[f"{cell}_seed{s}_pretrain" for cell in ROWS[:2] for s in range(SEEDS)]])
    metrics = {r["info"]["run_name"]: {m["key"] for m in r["data"].get("metrics", [])} for r in runs}
    assert "top1_last" in metrics["N32-s16-sp8_seed0_lincls"] and "acc_moco" in metrics["N32-s16-sp8_seed0_pretrain"]

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium (apt-get install chromium) for the UI screenshot")
        pytest.skip("no chromium for the UI screenshot (apt-get install chromium)")
    shot = tmp_path / "ui.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
                    "--window-size=1400,900", f"--screenshot={shot}",
                    f"{mlflow_server}/#/experiments/{exp['experiment_id']}"],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[0] == 900 and img.shape[1] == 1400
    # Not blank: many distinct colours and real contrast (a white or error page has neither).
    flat = (img[..., :3] * 255).astype("uint8").reshape(-1, 3)
    assert len({tuple(p) for p in flat[::7]}) > 50 and flat.std() > 20


def test_grid_py_help_runs_as_a_script():
    r = subprocess.run([sys.executable, "ablations/grid.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--sweep" in r.stdout and "--profile" in r.stdout


def transfer_grid(tmp_path, mlflow_server, name: str, transfer: str) -> list[str]:
    """The arguments of a local one-cell ResNet-50 grid without a probe whose transfer stage is
    ``transfer`` (``{det}`` stands for the local detection set's VOCdevkit, made here)."""
    from transfer.data import make_synthetic

    make_synthetic(tmp_path / "det", n_train=6, n_test=2, seed=4)
    preset = write_preset(tmp_path, [{"N": 32, "s": 16, "s_prime": 8}], lincls=False)
    return ["--preset", str(preset), "--name", f"{name}{os.getpid()}", "--out", str(tmp_path / "grid"),
            "--results", str(tmp_path / "results"), "--cluster", "local", "--tracking-uri", mlflow_server, *TINY_GRID,
            "--set", "model.arch=resnet50", "--lincls", "none",
            "--transfer", transfer.format(det=tmp_path / "det" / "VOCdevkit")]


def transfer_runs(tmp_path, mlflow_server) -> tuple:
    """(the grid's parent run, its transfer-voc runs) in MLflow."""
    runs = grid_runs(MlflowClient(mlflow_server), tmp_path / "grid")
    parent = next(r for r in runs if r.data.tags["stage"] == "grid")
    return parent, [r for r in runs if r.data.tags["stage"] == "transfer-voc"]


@pytest.mark.slow
def test_grid_chains_the_transfer_stage_and_tables_show_voc(tmp_path, mlflow_server):
    args = transfer_grid(tmp_path, mlflow_server, "tr", "--task demo-voc --data {det} --iters 2 --batch 2 --trials 2")
    r = grid_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = tmp_path / "grid" / "cells" / "N32-s16-sp8" / "seed0"
    summary = json.loads((run_dir / "transfer-demo-voc" / "summary.json").read_text())
    assert len(summary["trials"]) == 2
    table = (tmp_path / "results" / "table.md").read_text()
    assert "VOC AP50" in table and "VOC AP75" in table
    parent, transfer = transfer_runs(tmp_path, mlflow_server)
    assert len(transfer) == 2 and all(r.data.tags["cell"] == "N32-s16-sp8" for r in transfer)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id and "AP50" in r.data.metrics for r in transfer)
    # a resnet18 cell cannot feed the detection recipes: dropped with the reason, so the grid is refused
    bad = grid_cli(*args[:-6], "--transfer", "--task demo-voc --data /x", "--name", "other", "--out",
                   str(tmp_path / "g2"))
    assert bad.returncode == 2 and "needs a standard resnet50" in bad.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("detectron2") is None,
                    reason="detectron2 is not installed (it is built from its source, README 'Transfer'; CI never "
                           "has it)")
def test_grid_chains_the_detectron2_transfer_stage_into_the_same_columns(tmp_path, mlflow_server):
    args = transfer_grid(tmp_path, mlflow_server, "d2", "--engine detectron2 --task demo-voc --data {det} --device cpu "
                         "--iters 2 --trials 1 TEST.PRECISE_BN.NUM_ITER 1 DATALOADER.NUM_WORKERS 0")
    r = grid_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = tmp_path / "grid" / "cells" / "N32-s16-sp8" / "seed0"
    summary = json.loads((run_dir / "transfer-d2-demo-voc" / "summary.json").read_text())
    assert summary["engine"] == "detectron2" and len(summary["trials"]) == 1
    assert "VOC AP50" in (tmp_path / "results" / "table.md").read_text()
    parent, (trial,) = transfer_runs(tmp_path, mlflow_server)
    assert trial.data.tags["engine"] == "detectron2" and trial.data.tags["cell"] == "N32-s16-sp8"
    assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id and "AP50" in trial.data.metrics


@pytest.mark.slow
@pytest.mark.xdist_group("local_grid")
def test_reference_rows_run_with_the_grid_and_enter_its_statistics(local_grid, mlflow_server):
    """A random-init row and a released checkpoint, measured with the grid's own probe on 3 seeds,
    compared with the MoCo v2 row: paired for the random init, Welch for the checkpoint."""
    import pandas as pd

    tmp_path, args, r, _ = local_grid
    csv = pd.read_csv(tmp_path / "results" / "table.csv").set_index("cell")
    assert list(csv.index) == ["N0-s0-sp0", "N32-s16-sp8", "random-init", "released-mine"]
    assert (csv["n"] == 3).all() and bool(csv.loc["N0-s0-sp0", "baseline"])
    assert csv.loc["random-init", "linear_top1_test"] == "paired t"
    assert csv.loc["released-mine", "linear_top1_test"] == "Welch t"
    assert set(csv["linear_top1_verdict"]) <= {"baseline", "better", "worse", "no detectable difference"}
    # the mechanism, measured on the pretraining runs: MoCHi's synthetic points are among the hardest negatives
    assert csv.loc["N32-s16-sp8", "syn_top10_share_mean"] > 0 == csv.loc["N0-s0-sp0", "syn_top10_share_mean"]
    for seed in range(3):  # the random-init probe is of the very backbone each seed's cells start from
        run = tmp_path / "grid" / "cells" / "random-init" / f"seed{seed}" / "lincls-fast-random-init" / "lincls.json"
        assert json.loads(run.read_text())["source"] == f"random init of resnet18 (seed {seed})"
    md = (tmp_path / "results" / "table.md").read_text()
    assert "| random init " in md and "released: mine, evaluated here" in md and "What these runs show" in md
    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(f"grid-{grid['name']}")
    runs = client.search_runs([exp.experiment_id], f"tags.grid_id = '{grid['grid_id']}'")
    parent = next(r for r in runs if r.data.tags["stage"] == "grid")
    refs = [r for r in runs if r.data.tags.get("reference")]
    assert sorted((r.data.tags["cell"], r.data.tags["seed"]) for r in refs) == \
        [(c, str(s)) for c in ("random-init", "released-mine") for s in range(3)]
    assert all(r.data.tags["stage"] == "lincls" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
               for r in refs)
    assert "12/12 done" in grid_cli(*args, "--status").stdout
