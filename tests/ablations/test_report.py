"""ablations/report.py (with collect, summary, figures): tables and plots from a real MLflow store
filled with known values."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ablations import report, spec, summary
from pretrain.run.errors import UserError

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
    assert report.report(grid, tmp_path / "grid", uri, out) == 0

    csv = pd.read_csv(out / "table.csv").set_index("cell")
    assert list(csv.index) == [c.id for c in grid.cells]
    assert csv.loc["N0-s0-sp0", "linear_top1_mean"] == pytest.approx(71.0)
    assert csv.loc["N0-s0-sp0", "linear_top1_std"] == pytest.approx(1.0)  # sample std (ddof 1)
    assert csv.loc["N128-s128-sp0", "n"] == 2 and pd.isna(csv.loc["N128-s0-sp32", "linear_top1_std"])
    assert csv.loc["N0-s0-sp0", "proxy_acc_mean"] == pytest.approx(60.0)  # percent, mean of 50/60/70

    md = (out / "table.md").read_text()
    best = [ln for ln in md.splitlines() if "**" in ln]
    assert len(best) == 1  # best linear top-1 (N128-s128-sp32); the proxy-task column is not ranked
    assert "**74.67 ± 0.76 (n=3)**" in md and "69.00 (n=1)" in md
    assert "+3.67" in md and "-2.00" in md  # deltas of MoCHi rows to the MoCo v2 row
    assert "\\begin{tabular}" in (out / "table.tex").read_text()
    assert (out / "linear_top1.png").stat().st_size > 10000 and (out / "linear_top1.pdf").stat().st_size > 1000


def test_results_of_another_grid_are_not_overwritten(tmp_path):
    a = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name="a")
    b = spec.build(spec.load_preset("demo"), None, {}, 3, [], None, name="a")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill(uri, a)
    out = tmp_path / "results"
    assert report.report(a, tmp_path / "grid", uri, out) == 0
    before = (out / "table.md").read_text()
    with pytest.raises(UserError, match="holds results of another grid"):
        report.report(b, tmp_path / "grid", uri, out)
    assert (out / "table.md").read_text() == before


def test_heatmap_and_memory_figures_and_reference_columns(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    sweep = spec.build(spec.load_preset("demo"), ["N", "s", "s_prime"], {}, None, [], None, name="hm")
    k_grid = spec.build(spec.load_preset("demo"), ["K", "N", "s", "s_prime"],
                        {"K": [256, 512], "N": [0, 128], "s": [0], "s_prime": [0]}, None, [], None, name="mem")
    k_grid.preset = "in1k-table2"  # borrow a preset that has references, with a reference file of our own
    ref = tmp_path / "reference.yaml"
    ref.write_text("- {preset: in1k-table2, cell: {K: 512, N: 0}, metric: linear_top1, value: 70.0, std: 0.5,"
                   " source: 'a test value'}\n")
    monkeypatch.setattr(summary, "REFERENCE_FILE", ref)
    for grid in (sweep, k_grid):
        exp = client.create_experiment(f"grid-{grid.name}")
        for i, cell in enumerate(grid.cells):
            tags = {"grid_id": grid.grid_id, "cell": cell.id, "seed": "0", "stage": "lincls",
                    **{f"axis.{a}": str(v) for a, v in cell.values.items()}}
            client.log_metric(client.create_run(exp, tags=tags).info.run_id, "top1_best", 60.0 + i)
    assert report.report(sweep, tmp_path / "g1", uri, tmp_path / "r1") == 0
    assert (tmp_path / "r1" / "heatmap_N_s.png").stat().st_size > 10000
    assert not (tmp_path / "r1" / "accuracy_vs_K.png").exists()
    assert report.report(k_grid, tmp_path / "g2", uri, tmp_path / "r2") == 0
    assert (tmp_path / "r2" / "accuracy_vs_K.png").stat().st_size > 10000
    md = (tmp_path / "r2" / "table.md").read_text()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")]
    head, body = rows[0], rows[1:]
    body = [dict(zip(head, r)) for r in body]
    assert head[:4] == ["K", "N", "s", "s_prime"]  # the swept axes, in --sweep order
    row = next(r for r in body if r["K"] == "512" and r["N"] == "0")
    assert row["linear top-1 (reference)"] == "70.00 ± 0.50"
    assert row["Δ linear top-1 vs reference"] == "-8.00"  # ours 62.0 (the third cell) vs 70.0
    assert all(r["linear top-1 (reference)"] == "" for r in body if r is not row)
    assert "a test value" in (tmp_path / "r2" / "report.html").read_text()


def fill_linear(uri: str, grid: spec.Grid, values: dict) -> None:
    """One lincls run per cell x seed with the given linear top-1 values."""
    client = MlflowClient(uri)
    exp = client.create_experiment(grid.experiment)
    for cell in grid.cells:
        for seed, top1 in enumerate(values[cell.id]):
            tags = {"grid_id": grid.grid_id, "cell": cell.id, "seed": str(seed), "stage": "lincls",
                    **{f"axis.{a}": str(v) for a, v in cell.values.items()}}
            client.log_metric(client.create_run(exp, tags=tags).info.run_id, "top1_best", top1)


def test_pivot_rows_follow_the_axis_values_not_their_spelling(tmp_path):
    """s' = 0, 32, 128 in that order (grouped as strings they sorted 0, 128, 32)."""
    from ablations import tables
    from pretrain.run import rundir

    grid = spec.build(spec.load_preset("demo"), ["s_prime", "N"], {"s_prime": [128, 0, 32], "N": [64, 128]}, None, [],
                      None, name=f"p{tmp_path.name[-6:]}")
    values = {c.id: [60.0 + c.values["s_prime"] / 100 + c.values["N"] / 1000] for c in grid.cells}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill_linear(uri, grid, values)
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / rundir.GRID_FILE).write_text(grid.to_json())
    out = tmp_path / "results"
    assert tables.main([str(tmp_path / "grid"), "--tracking-uri", uri, "--results", str(out), "--rows", "s_prime",
                        "--cols", "N"]) == 0
    csv = pd.read_csv(out / "pivot_linear_top1_s_prime_by_N.csv")
    assert csv["s_prime"].tolist() == [0, 32, 128]
    assert csv.columns.tolist()[1:] == ["64", "128"]
    assert csv.iloc[1, 1].startswith("60.38 (n=1)")  # s' = 32, N = 64
    # the grid's own table keeps the grid's order and typed axis columns
    table = pd.read_csv(out / "table.csv")
    assert table["s_prime"].tolist() == [128, 128, 0, 0, 32, 32] and table["s_prime"].dtype.kind == "i"


def test_the_baseline_is_plain_moco_whatever_its_N(tmp_path):
    """N = 64 with s = s' = 0 synthesises nothing: it is MoCo v2, the row every other is compared with."""
    grid = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name=f"b{tmp_path.name[-6:]}")
    grid.cells = [spec.Cell({"N": 128, "s": 128, "s_prime": 32}), spec.Cell({"N": 64, "s": 0, "s_prime": 0})]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill_linear(uri, grid, {"N128-s128-sp32": [75.0, 76.0], "N64-s0-sp0": [70.0, 71.0]})
    out = tmp_path / "results"
    assert report.report(grid, tmp_path / "grid", uri, out) == 0
    t = pd.read_csv(out / "table.csv").set_index("cell")
    assert t.loc["N64-s0-sp0", "method"] == "MoCo v2" and bool(t.loc["N64-s0-sp0", "plain_moco"])
    assert t.loc["N128-s128-sp32", "method"] == "MoCHi (128, 128, 32)"
    md = (out / "table.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| 64 "))
    assert "baseline" in row and "+5.00" in md
