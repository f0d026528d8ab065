"""ablations/results.py: tables and plots from a real MLflow store filled with known values."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ablations import results, spec

# linear top-1 per (cell, seed); the baseline is MoCo v2 (N = s = s' = 0)
VALUES = {
    "N0-s0-sp0": [70.0, 72.0, 71.0],
    "N128-s128-sp0": [73.0, 75.0],
    "N128-s0-sp32": [69.0],
    "N128-s128-sp32": [74.0, 74.5, 75.5],
}


def fill(uri: str, grid: spec.Grid) -> None:
    client = MlflowClient(uri)
    exp = client.create_experiment(f"grid-{grid.name}")
    for cell in grid.cells:
        for seed, top1 in enumerate(VALUES[cell.id]):
            tags = {"grid_id": grid.grid_id, "cell": cell.id, "seed": str(seed),
                    **{f"axis.{a}": str(v) for a, v in cell.values.items()}}
            pre = client.create_run(exp, tags={**tags, "stage": "pretrain"})
            client.log_metric(pre.info.run_id, "acc_moco", 0.5 + seed / 10, step=10)
            lin = client.create_run(exp, tags={**tags, "stage": "lincls"})
            client.log_metric(lin.info.run_id, "top1_best", top1, step=30)


def test_tables_and_plot_from_the_store(tmp_path):
    grid = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name=f"r{tmp_path.name[-6:]}")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill(uri, grid)
    out = tmp_path / "results"
    assert results.report(grid, tmp_path / "grid", uri, out) == 0

    csv = pd.read_csv(out / "table.csv").set_index("cell")
    assert list(csv.index) == [c.id for c in grid.cells]
    assert csv.loc["N0-s0-sp0", "linear_top1_mean"] == pytest.approx(71.0)
    assert csv.loc["N0-s0-sp0", "linear_top1_std"] == pytest.approx(1.0)  # sample std (ddof 1)
    assert csv.loc["N128-s128-sp0", "n"] == 2 and pd.isna(csv.loc["N128-s0-sp32", "linear_top1_std"])
    assert csv.loc["N0-s0-sp0", "proxy_acc_mean"] == pytest.approx(60.0)  # percent, mean of 50/60/70

    md = (out / "table.md").read_text()
    best = [ln for ln in md.splitlines() if "**" in ln]
    assert len(best) == 2  # best linear (N128-s128-sp32, 74.67) and best proxy acc. (3-seed rows tie at 60)
    assert "**74.67 ± 0.76 (n=3)**" in md and "69.00 (n=1)" in md
    assert "+3.67" in md and "-2.00" in md  # deltas of MoCHi rows to the MoCo v2 row
    assert "\\begin{tabular}" in (out / "table.tex").read_text()
    assert (out / "linear_top1.png").stat().st_size > 10000 and (out / "linear_top1.pdf").stat().st_size > 1000


def test_results_of_another_grid_are_not_overwritten(tmp_path):
    a = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name="a")
    b = spec.build(spec.load_preset("demo"), None, {}, 2, [], None, name="a")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill(uri, a)
    out = tmp_path / "results"
    assert results.report(a, tmp_path / "grid", uri, out) == 0
    before = (out / "table.md").read_text()
    with pytest.raises(Exception, match="holds results of another grid"):
        results.report(b, tmp_path / "grid", uri, out)
    assert (out / "table.md").read_text() == before
