"""ablations/grid.py: grid building, bad input, dry runs, and a real local grid end to end."""

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from ablations import spec
from pretrain.errors import UserError
from tests.conftest import REPO, TINY_GRID, grid_cli


def build(sweep=None, values=None, preset="demo", **kw):
    return spec.build(spec.load_preset(preset), sweep, values or {}, kw.get("seeds"), kw.get("extra", []),
                      kw.get("lincls"))


def test_demo_preset_is_the_paper_layout():
    g = build()
    assert [c.id for c in g.cells] == ["N0-s0-sp0", "N128-s128-sp0", "N128-s0-sp32", "N128-s128-sp32"]
    assert g.lincls[0] == "--fast" and g.seeds == 1 and not g.dropped
    assert g.cfg(g.cells[3], 2, REPO / "x").mochi.s_prime == 32


def test_sweep_crosses_axes_and_drops_invalid_cells_with_a_reason():
    g = build(["N", "s", "s_prime"], {"N": [0, 64], "s": [0, 32], "s_prime": [0]})
    assert [c.id for c in g.cells] == ["N0-s0-sp0", "N64-s0-sp0", "N64-s32-sp0"]
    assert g.dropped == [("N0-s32-sp0", "config mochi: s=32 mixes pairs of distinct hard negatives and needs N >= 2, "
                                        "got N=0")]
    # axes left out keep the base preset's value (the demo's s' = 32 needs N >= 1)
    assert [c.id for c in build(["N"], {"N": [0, 64]}).cells] == ["N64"]
    # N > K (the demo's K is 512)
    g = build(["N"], {"N": [256, 1024]})
    assert [c.id for c in g.cells] == ["N256"] and "1024" in g.dropped[0][1]


def test_sweep_without_values_takes_the_presets_axes():
    g = build(["N", "s", "s_prime"])
    assert len(g.cells) == 8 and {c.values["N"] for c in g.cells} == {64, 128}


def test_any_config_key_is_an_axis():
    g = build(["optim.base_lr", "K"], {"optim.base_lr": spec.parse_values("optim.base_lr", "0.03,0.06"),
                                       "K": [512]})
    assert [c.id for c in g.cells] == ["lr0.03_K512", "lr0.06_K512"]
    assert g.cfg(g.cells[1], 0, REPO / "x").optim.base_lr == 0.06


def test_grid_identity_ignores_where_it_runs():
    a, b = build(), build()
    b.profile = "gpu-8"
    assert a.grid_id == b.grid_id
    assert build(seeds=2).grid_id != a.grid_id


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
    (["--cluster", "cloud"], "--cluster 'cloud'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "grid"
    r = grid_cli("--out", str(out), *args, env={"SLURM_CONF": str(tmp_path / "no-slurm.conf")})
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not out.exists()


def test_a_folder_holding_another_grid_is_refused_untouched(tmp_path):
    out = tmp_path / "grid"
    out.mkdir()
    other = build(["N"], {"N": [64]}).to_json()
    (out / "grid.json").write_text(other)
    r = grid_cli("--out", str(out), "--cluster", "local")
    assert r.returncode == 2 and "holds a different grid" in r.stderr and r.stderr.count("\n") == 1
    assert (out / "grid.json").read_text() == other and sorted(p.name for p in out.iterdir()) == ["grid.json"]


def test_dry_run_prints_cells_and_gpu_hours_and_submits_nothing(tmp_path):
    out = tmp_path / "grid"
    r = grid_cli("--preset", "in100-table1", "--out", str(out), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "8 cells x 3 seeds" in r.stdout and "N1024-s1024-sp128" in r.stdout
    hours = float(r.stdout.split("estimated pretraining cost: ")[1].split()[0])
    # 24 jobs x 200 epochs x 126,689 images at 4,000 img/s per GPU
    assert hours == pytest.approx(24 * 200 * 126689 / 4000 / 3600, rel=0.01)
    assert "GPU-hours" in r.stdout and not out.exists()


def write_preset(tmp_path, cells, lincls=True):
    p = tmp_path / "tiny.yaml"
    p.write_text(json.dumps({"base": "demo", "cells": cells, "seeds": 1,
                             "lincls": None if not lincls else ["--fast"], "table": {"rows": ["N", "s", "s_prime"]}}))
    return p


@pytest.mark.slow
def test_local_grid_end_to_end_is_idempotent_and_tracked(tmp_path, mlflow_server):
    preset = write_preset(tmp_path, [{"N": 0, "s": 0, "s_prime": 0}, {"N": 32, "s": 16, "s_prime": 8}])
    args = ["--preset", str(preset), "--name", f"t{tmp_path.name[-6:]}", "--out", str(tmp_path / "grid"),
            "--results", str(tmp_path / "results"), "--cluster", "local", "--tracking-uri", mlflow_server, *TINY_GRID]
    r = grid_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[N32-s16-sp8/seed0] done: linear top-1" in r.stdout
    table = (tmp_path / "results" / "table.md").read_text()
    assert "N32" not in table and "| 32 | 16 |" in table.replace("  ", " ").replace("|  ", "| ")
    assert (tmp_path / "results" / "linear_top1.png").stat().st_size > 5000

    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(f"grid-{grid['name']}")
    runs = client.search_runs([exp.experiment_id], f"tags.grid_id = '{grid['grid_id']}'")
    by_stage = sorted((r.data.tags["stage"], r.data.tags.get("cell", "")) for r in runs)
    assert by_stage == [("grid", ""), ("lincls", "N0-s0-sp0"), ("lincls", "N32-s16-sp8"),
                        ("pretrain", "N0-s0-sp0"), ("pretrain", "N32-s16-sp8")]
    parent = next(r for r in runs if r.data.tags["stage"] == "grid")
    assert parent.info.status == "FINISHED"
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs if r is not parent)
    lincls = [r for r in runs if r.data.tags["stage"] == "lincls"]
    assert all(0 < r.data.metrics["top1_best"] <= 100 for r in lincls)

    again = grid_cli(*args)
    assert again.returncode == 0 and "0 to pretrain, 0 to probe, 2 done" in again.stdout
    assert len(client.search_runs([exp.experiment_id], f"tags.grid_id = '{grid['grid_id']}'")) == 5
    status = grid_cli(*args, "--status")
    assert status.returncode == 0 and status.stdout.count("done (linear top-1") == 2


def test_grid_py_help_runs_as_a_script():
    r = subprocess.run([sys.executable, "ablations/grid.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--sweep" in r.stdout and "--profile" in r.stdout
