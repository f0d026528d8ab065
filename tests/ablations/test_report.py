"""ablations/report.py (with collect, summary, figures): tables and plots from a real MLflow store
filled with known values."""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ablations import report, spec, summary, tables
from pretrain.run.cli import execute
from pretrain.run.errors import UserError
from tests.conftest import REPO

# linear top-1 per (cell, seed); the baseline is MoCo v2 (N = s = s' = 0)
VALUES = {
    "N0-s0-sp0": [70.0, 72.0, 71.0],
    "N128-s128-sp0": [73.0, 75.0],
    "N128-s0-sp32": [69.0],
    "N128-s128-sp32": [74.0, 74.5, 75.5],
}


def four_cells(name: str, seeds: int | None = None) -> spec.Grid:
    """A grid of the four cells of VALUES on the demo preset."""
    preset = {**spec.load_preset("demo"), "cells": [spec.Cell(spec.typed_values(v)).values for v in (
        {"N": 0, "s": 0, "s_prime": 0}, {"N": 128, "s": 128, "s_prime": 0}, {"N": 128, "s": 0, "s_prime": 32},
        {"N": 128, "s": 128, "s_prime": 32})], "random_init": False}
    return spec.build(preset, None, {}, seeds, [], None, name=name)


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
            client.log_metric(lin.info.run_id, "top1_last", top1, step=30)


def test_tables_and_plot_from_the_store(tmp_path):
    grid = four_cells(f"r{tmp_path.name[-6:]}")
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
    assert "**74.67 ± 0.76 (n=3)**" in md and "69.00 (n=1 of 3)" in md and "74.00 ± 1.41 (n=2 of 3)" in md
    # deltas of MoCHi rows to the MoCo v2 row, on the seeds both have (N128-s0-sp32 has seed 0 only: 69 - 70)
    assert "+3.67" in md and "-1.00" in md
    assert "\\begin{tabular}" in (out / "table.tex").read_text()
    assert (out / "linear_top1.png").stat().st_size > 10000 and (out / "linear_top1.pdf").stat().st_size > 1000

    # Each run holds the value the tables show for its seed, named and scaled as they are (acc_moco 0.6 is
    # table.proxy_acc 60 %); a second report logs nothing again.
    assert report.report(grid, tmp_path / "grid", uri, out) == 0
    client = MlflowClient(uri)
    for r in client.search_runs([client.get_experiment_by_name(grid.experiment).experiment_id]):
        tags, have = r.data.tags, r.data.metrics
        seed = int(tags["seed"])
        if tags["stage"] == "lincls":
            assert have["table.linear_top1"] == VALUES[tags["cell"]][seed]
        else:
            assert have["table.proxy_acc"] == pytest.approx(100 * (0.5 + seed / 10))
        for name in (k for k in have if k.startswith("table.")):
            assert len(client.get_metric_history(r.info.run_id, name)) == 1


def test_the_terminal_table_fits_the_terminal(tmp_path, capsys, monkeypatch):
    """At COLUMNS=120 no printed line is wider: short headers with a legend under each block, one
    block per metric (the mechanism's too), no axis column the setting already says, no Markdown; a
    table that cannot fit is printed row by row. The numbers are table.csv's."""
    monkeypatch.setenv("COLUMNS", "120")
    grid = four_cells(f"w{tmp_path.name[-6:]}")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill(uri, grid)
    out = tmp_path / "results"
    assert report.report(grid, tmp_path / "grid", uri, out) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert max(map(len, lines)) <= 120, max(lines, key=len)
    assert "**" not in printed and "s_prime" not in printed
    csv = pd.read_csv(out / "table.csv").set_index("cell")
    top = next(ln for ln in lines if ln.startswith("MoCHi (128, 128, 32)"))
    assert f"{csv.loc['N128-s128-sp32', 'linear_top1_mean']:.2f} ± " in top and " * " in top + " "
    heads = [ln for ln in lines if ln.startswith("row ")]
    assert len(heads) == 3  # linear top-1; the proxy-task accuracy and the synthetic share, each its own block
    assert any(ln.startswith("  Δ: the row minus MoCo v2") for ln in lines)
    # the budget and the chance levels under the title, in every form (demo preset: 2 x 4096 / 128 steps, K 512)
    budget = "each cell pretrains a resnet18 at 32 px for 2 epoch(s) of 4,096 images at batch 128 (64 steps)"
    chance = "proxy-task accuracy 100/(K+1) (0.19% at K = 512), its InfoNCE loss ln(K+1) (6.24)"
    for text in (" ".join(printed.split()), (out / "table.md").read_text(), (out / "report.html").read_text()):
        assert budget in text and chance in text and "64 steps are far from convergence" in text
    # a table wider than the terminal: row by row, still within it
    from ablations import terminal

    wide = pd.DataFrame({"row": ["a released checkpoint " * 3, "MoCo v2"], "mean ± sd": ["70.00 ± 1.00", "71.00"],
                         "Δ [95% CI]": ["+1.00 [+0.10, +1.90]", "baseline"]})
    shown = terminal.render(wide, 60)
    assert max(map(len, shown)) <= 60 and "    Δ [95% CI]: +1.00 [+0.10, +1.90]" in shown


def test_figures_show_what_the_tables_show_without_exaggerating(tmp_path, monkeypatch):
    """The score's bars start at 0 and end at 100; every seed is a dot; no interval leaves the range a
    quantity can take; rows are named as the tables name them; legends sit beside the plot; the curves
    mark where mixing starts; report.html captions say what each figure shows."""
    from ablations import figures

    kept = {}
    real = figures._save

    def keep(fig, path):  # the figure as drawn, then written as usual
        kept[path.stem] = [(ax.get_ylim(), [t.get_text() for t in ax.get_xticklabels()], ax.collections, ax.lines,
                            ax.get_legend()) for ax in fig.axes]
        return real(fig, path)

    monkeypatch.setattr(figures, "_save", keep)
    grid = four_cells(f"f{tmp_path.name[-6:]}")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill(uri, grid)
    out = tmp_path / "results"
    assert report.report(grid, tmp_path / "grid", uri, out) == 0
    (ylim, ticks, collections, lines, legend), = kept["linear_top1"]
    assert ylim == (0.0, 100.0)
    assert [t.split("\n")[0] for t in ticks] == ["MoCo v2", "MoCHi (128, 128, 0)", "MoCHi (128, 0, 32)",
                                                 "MoCHi (128, 128, 32)"]
    from matplotlib.collections import PathCollection

    dots = sum(len(c.get_offsets()) for c in collections if isinstance(c, PathCollection))
    assert dots == sum(len(v) for v in VALUES.values())  # one per seed with a value
    for line in lines:  # error bars and seed lines: inside [0, 100]
        y = line.get_ydata()
        assert min(y) >= 0 and max(y) <= 100
    # the proxy-task curve: its mixing-start marker at the demo preset's step 32 (epoch 1 of 4,096 / 128)
    (_, _, _, curve_lines, curve_legend), = kept["proxy_task_difficulty"]
    assert any(list(ln.get_xdata()) == [32, 32] for ln in curve_lines)
    assert curve_legend.get_bbox_to_anchor().x0 > 0  # anchored beside the axes, not over the data
    assert [t.get_text() for t in curve_legend.get_texts()][:1] == ["MoCo v2 (n=3)"]
    html = (out / "report.html").read_text()
    assert "Linear top-1 per row: bars from 0" in html and "<figcaption>linear_top1</figcaption>" not in html


def test_table_tex_compiles_with_pdflatex(tmp_path):
    """table.tex is a document pdflatex compiles as shipped: special characters escaped, Δ and ± as
    math, the best mean bold, no table wider than the page (no overfull box)."""
    import shutil
    import subprocess

    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed (Debian: texlive-latex-base texlive-latex-recommended; .ci/run "
                    "installs them)")
    grid = four_cells(f"x{tmp_path.name[-6:]}")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill(uri, grid)
    out = tmp_path / "results"
    assert report.report(grid, tmp_path / "grid", uri, out) == 0
    tex = (out / "table.tex").read_text()
    assert "\\textbf{74.67 $\\pm$ 0.76}" in tex and "0.000000" not in tex
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"], cwd=out,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (out / "table.pdf").stat().st_size > 10000 and "Overfull" not in r.stdout


def test_results_of_another_grid_are_not_overwritten(tmp_path):
    a = four_cells("a")
    b = four_cells("a", seeds=5)  # another grid under the same name
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
                        {"K": [256, 512], "N": [0, 128], "s": [0, 128], "s_prime": [0]}, None, [], None, name="mem")
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
            client.log_metric(client.create_run(exp, tags=tags).info.run_id, "top1_last", 60.0 + i)
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
    assert row["linear top-1 (reference, mean ± sd)"] == "70.00 ± 0.50"
    assert row["Δ linear top-1 vs reference"] == "-8.00"  # ours 62.0 (the third cell) vs 70.0
    assert all(r["linear top-1 (reference, mean ± sd)"] == "" for r in body if r is not row)
    assert "a test value" in (tmp_path / "r2" / "report.html").read_text()


def fill_linear(uri: str, grid: spec.Grid, values: dict) -> None:
    """One lincls run per cell x seed with the given linear top-1 values."""
    client = MlflowClient(uri)
    exp = client.create_experiment(grid.experiment)
    for row in grid.row_ids():
        for seed, top1 in enumerate(values.get(row, [])):
            tags = {"grid_id": grid.grid_id, "cell": row, "seed": str(seed), "stage": "lincls"}
            client.log_metric(client.create_run(exp, tags=tags).info.run_id, "top1_last", top1)


def grid_folder(tmp_path, grid: spec.Grid, values: dict) -> tuple[str, object]:
    """(store, results folder) of ``grid`` written to tmp_path/grid with ``values`` as its linear top-1."""
    from pretrain.run import rundir

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill_linear(uri, grid, values)
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / rundir.GRID_FILE).write_text(grid.to_json())
    return uri, tmp_path / "results"


def test_pivot_rows_follow_the_axis_values_not_their_spelling(tmp_path):
    """s' = 0, 32, 128 in that order (grouped as strings they sorted 0, 128, 32)."""
    from ablations import tables

    grid = spec.build(spec.load_preset("demo"), ["s_prime", "N"], {"s_prime": [128, 0, 32], "N": [64, 128]}, None, [],
                      None, name=f"p{tmp_path.name[-6:]}")
    values = {c.id: [60.0 + c.values["s_prime"] / 100 + c.values["N"] / 1000] for c in grid.cells}
    uri, out = grid_folder(tmp_path, grid, values)
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
    assert t.loc["N64-s0-sp0", "setting"] == "MoCo v2" and bool(t.loc["N64-s0-sp0", "plain_moco"])
    assert t.loc["N128-s128-sp32", "setting"] == "MoCHi (128, 128, 32)"
    md = (out / "table.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| 64 "))
    assert "baseline" in row and "+5.00" in md


def test_rows_are_compared_with_the_baseline_and_every_form_carries_the_same_numbers(tmp_path):
    """Paired tests for cells and the random-init row, Welch for a released checkpoint; Bonferroni
    within two families, the methods and the reference rows; every shown interval at its family's
    level, excluding 0 exactly where the verdict is a difference; verdicts only from 3 seeds, bold
    only where significantly better; Markdown, LaTeX, HTML and CSV show the same numbers, under
    headers that say what they are, with the families in a note under the table."""
    import re
    from html import escape

    from ablations import stats

    grid = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name=f"s{tmp_path.name[-6:]}")
    grid.cells = [spec.Cell({"N": 0, "s": 0, "s_prime": 0}), spec.Cell({"N": 128, "s": 128, "s_prime": 32}),
                  spec.Cell({"N": 128, "s": 128, "s_prime": 0})]
    grid.references = [spec.RANDOM_INIT, spec.Reference("mine", str(tmp_path / "mine.pth.tar"))]
    values = {"N0-s0-sp0": [70.0, 72.0, 71.0, 73.0],
              "N128-s128-sp32": [71.0, 73.1, 71.9, 74.2],  # +1 on every seed, give or take: paired, significant
              # +0.9 on average (differences 1.0, 0.4, 1.6, 0.6): its own 95% interval excludes 0 (p = 0.042),
              # Bonferroni over the two methods does not (p = 0.085): no detectable difference
              "N128-s128-sp0": [71.0, 72.4, 72.6, 73.6],
              "random-init": [80.0, 80.5, 79.5, 80.2],
              "released-mine": [75.0, 75.5, 74.8, 75.1]}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill_linear(uri, grid, values)
    out = tmp_path / "results"
    assert report.report(grid, tmp_path / "grid", uri, out) == 0
    csv = pd.read_csv(out / "table.csv").set_index("cell")
    assert list(csv.index) == ["N0-s0-sp0", "N128-s128-sp32", "N128-s128-sp0", "random-init", "released-mine"]
    assert csv.loc["random-init", "kind"] == "random-init" and csv.loc["released-mine", "kind"] == "released"
    assert csv.loc["N128-s128-sp32", "linear_top1_test"] == "paired t"
    assert csv.loc["random-init", "linear_top1_test"] == "paired t"
    assert csv.loc["released-mine", "linear_top1_test"] == "Welch t"
    # by hand: the same tests on the same numbers; Bonferroni over two rows in each family
    assert csv["family"].tolist() == ["baseline", "methods", "methods", "reference rows", "reference rows"]
    base = dict(enumerate(values["N0-s0-sp0"]))
    for r in ["N128-s128-sp32", "N128-s128-sp0", "random-init", "released-mine"]:
        c = stats.compare(dict(enumerate(values[r])), base, paired=r != "released-mine")
        assert csv.loc[r, "linear_top1_diff"] == pytest.approx(c.diff)
        assert csv.loc[r, "linear_top1_p"] == pytest.approx(c.p)
        assert csv.loc[r, "linear_top1_p_adj"] == pytest.approx(min(1.0, 2 * c.p))
        assert csv.loc[r, "linear_top1_family_m"] == 2 and csv.loc[r, "linear_top1_diff_level"] == pytest.approx(0.975)
        assert (csv.loc[r, "linear_top1_diff_low"], csv.loc[r, "linear_top1_diff_high"]) == \
            pytest.approx(c.interval(0.975))
        assert (csv.loc[r, "linear_top1_diff_low_unadj"], csv.loc[r, "linear_top1_diff_high_unadj"]) == \
            pytest.approx(c.interval(0.95))
        excludes = csv.loc[r, "linear_top1_diff_low"] > 0 or csv.loc[r, "linear_top1_diff_high"] < 0
        assert excludes == (csv.loc[r, "linear_top1_verdict"] in ("better", "worse"))
    assert csv.loc["N128-s128-sp32", "linear_top1_verdict"] == "better"
    assert csv.loc["N128-s128-sp0", "linear_top1_verdict"] == "no detectable difference"
    assert csv.loc["N128-s128-sp0", "linear_top1_diff_low_unadj"] > 0 > csv.loc["N128-s128-sp0", "linear_top1_diff_low"]
    assert csv.loc["random-init", "linear_top1_verdict"] == "better"
    md = (out / "table.md").read_text()
    # bold: the best of the methods significantly better than the baseline; reference rows (random init,
    # better still here) are not hypotheses about methods and are never bold
    bold = [ln for ln in md.splitlines() if "**" in ln]
    assert len(bold) == 1 and "MoCHi (128, 128, 32)" in bold[0]
    assert "released: mine, evaluated here" in md and "What these runs show" in md
    html = (out / "report.html").read_text()
    tex = (out / "table.tex").read_text()
    for r in csv.index:
        mean, low, high = csv.loc[r, ["linear_top1_mean", "linear_top1_diff_low", "linear_top1_diff_high"]]
        for text in (md, html, tex):
            assert f"{mean:.2f}" in text
            if r != "N0-s0-sp0":
                assert f"{low:+.2f}" in text and f"{high:+.2f}" in text
    row = next(ln for ln in md.splitlines() if "MoCHi (128, 128, 32)" in ln)
    p = csv.loc["N128-s128-sp32", "linear_top1_p_adj"]
    assert re.search(rf"{p:.3f} \(paired t\)", row) and "| better " in row
    # the headers say what the numbers are: a sd beside the mean, simultaneous intervals, adjusted p
    for text in (md, html):
        assert "linear top-1 (mean ± sd)" in text and "Bonferroni" in text
    assert "[simultaneous 95% CI]" in md and "[simultaneous 95% CI]" in html
    # table.tex: the compact blocks, with their legend (what Δ and p are) under each
    assert "mean $\\pm$ sd" in tex and "$\\Delta$ [95\\% CI]" in tex and "Bonferroni-adjusted" in tex
    assert not re.search(r"[^\\]%", tex)  # LaTeX: % escaped
    # the note under the table: which family each row is in, and the level of its interval
    lines = md.splitlines()
    note = lines[next(i for i, ln in enumerate(lines) if ln.startswith("|") and "released: mine" in ln) + 2]
    assert note.startswith("*Δ: the row minus the baseline") and "form a family of their own" in note
    assert "the methods (MoCHi (128, 128, 32), MoCHi (128, 128, 0); m = 2: each at 97.5%)" in note
    assert "the reference rows (random init, released: mine, evaluated here; m = 2: each at 97.5%)" in note
    assert escape(note.strip("*")) in html


def test_voc_columns_fill_from_either_engine_and_fewer_gpus_are_noted(tmp_path, capsys):
    """Trials of the torchvision and the detectron2 path carry the same stage, tags and metric names;
    a detectron2 row trained on fewer GPUs than its recipe gets a note in the report."""
    grid = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name=f"t{tmp_path.name[-6:]}")
    grid.cells = [spec.Cell({"N": 0, "s": 0, "s_prime": 0}), spec.Cell({"N": 128, "s": 128, "s_prime": 32})]
    grid.references = []
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment(grid.experiment)
    ap50 = {("N0-s0-sp0", "torchvision"): [80.0, 81.0], ("N128-s128-sp32", "detectron2"): [82.0, 84.0]}
    for (cell, engine), values in ap50.items():
        for trial, v in enumerate(values):
            tags = {"grid_id": grid.grid_id, "cell": cell, "seed": "0", "stage": "transfer-voc", "task": "voc-c4",
                    "trial": str(trial), "engine": engine}
            if engine == "detectron2":
                tags.update(gpus="1", recipe_gpus="8")
            run = client.create_run(exp, tags=tags).info.run_id
            for name, value in (("AP50", v), ("AP", v - 30), ("AP75", v - 20)):
                client.log_metric(run, name, value, step=24000)
    out = tmp_path / "results"
    assert report.report(grid, tmp_path / "grid", uri, out) == 0
    csv = pd.read_csv(out / "table.csv").set_index("cell")
    assert csv.loc["N0-s0-sp0", "voc_AP50_mean"] == pytest.approx(80.5)
    assert csv.loc["N128-s128-sp32", "voc_AP50_mean"] == pytest.approx(83.0)
    assert csv.loc["N128-s128-sp32", "voc_AP75_mean"] == pytest.approx(63.0)
    note = ("N128-s128-sp32 (voc-c4, seeds 0): trained on 1 GPU(s) where the recipe needs 8; the synchronised BN "
            "batch was 2 images, not 16")
    assert note in (out / "table.md").read_text() and note in (out / "report.html").read_text()
    assert f"note: Transfer on fewer GPUs: {note}" in " ".join(capsys.readouterr().out.split())  # wrapped
    assert "N0-s0-sp0 (voc-c4" not in (out / "table.md").read_text()  # the torchvision row: BN over its batch


def test_the_reference_numbers_are_package_data():
    """ablations/reference.yaml is an input: it lives in the package, is listed as its package data
    (so a wheel carries it) and parses, every entry with a source; results/ keeps outputs only."""
    import fnmatch
    from pathlib import Path

    import ablations

    tomllib = pytest.importorskip("tomllib")
    package = Path(ablations.__file__).resolve().parent
    assert summary.REFERENCE_FILE.parent == package and summary.REFERENCE_FILE.is_file()
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["ablations"]
    assert any(fnmatch.fnmatch(summary.REFERENCE_FILE.relative_to(package).as_posix(), p) for p in patterns)
    entries = summary.load_reference()
    assert entries and all(e["source"] for e in entries)
    assert not (package.parent / "results" / "reference.yaml").exists()


def test_source_json_records_how_each_probe_chose_its_lr(tmp_path):
    """Beside the tables, source.json carries each probe's candidate lrs with their validation top-1,
    the chosen lr, the epochs and the validation size, as the probe itself recorded them."""
    import dataclasses
    import json

    from ablations.griddir import GridDir
    from pretrain.eval import lincls

    grid = spec.build(spec.load_preset("demo"), None, {}, 1, [], "--fast --train-size=256 --test-size=128 "
                      "--epochs=1 --workers=0", name=f"src{tmp_path.name[-6:]}")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill_linear(uri, grid, {"N0-s0-sp0": [70.0]})
    gd = GridDir(tmp_path / "grid", grid, tmp_path / "results")
    u = next(u for u in gd.units() if u.row == "random-init")
    r = lincls.run(dataclasses.replace(gd.probe(u), tracking_uri=uri, experiment=grid.experiment,
                                       tags={"grid_id": grid.grid_id, "cell": u.row, "seed": "0"}))
    assert report.report(grid, tmp_path / "grid", uri, tmp_path / "results") == 0
    probes = json.loads((tmp_path / "results" / "source.json").read_text())["linear_probe"]
    assert probes == [{"row": "random-init", "seed": 0, "mode": "fast", "selection": r["selection"]}]
    sel = probes[0]["selection"]
    assert [c["lr"] for c in sel["candidates"]] == [round(10.0 * f, 12) for f in lincls.LR_FACTORS]
    assert all("val_top1" in c for c in sel["candidates"]) and sel["lr"] == lincls.choose(sel["candidates"])["lr"]
    assert (sel["epochs"], sel["val_images"], sel["rule"]) == (1, 26, lincls.RULE)


def test_every_table_records_where_it_comes_from(tmp_path):
    """Beside the tables: the commit, date, host, machine and package versions (source.json), named
    in the tables' notes; no absolute path (the grid folder is relative to the results folder)."""
    import json
    import subprocess
    from importlib import metadata

    grid = spec.build(spec.load_preset("demo"), None, {}, 1, [], None, name=f"pv{tmp_path.name[-6:]}")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill_linear(uri, grid, {"N0-s0-sp0": [70.0]})
    assert report.report(grid, tmp_path / "runs" / "grid", uri, tmp_path / "results") == 0
    src = json.loads((tmp_path / "results" / "source.json").read_text())
    made = src["provenance"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert made["commit"] == head and isinstance(made["uncommitted_changes"], bool)
    assert made["packages"]["torch"] == metadata.version("torch") and made["packages"]["pandas"] == metadata.version(
        "pandas")
    assert made["date"][:4].isdigit() and made["host"] and made["python"]
    assert src["grid_dir"] == "../runs/grid" and not any(str(tmp_path) in str(v) for k, v in src.items()
                                                        if k not in ("tracking_uri", "provenance"))
    assert f"made with commit {head[:10]}" in (tmp_path / "results" / "table.md").read_text()
    assert f"made with commit {head[:10]}" in (tmp_path / "results" / "report.html").read_text()


@pytest.mark.parametrize("args, needle", [
    (["--rows", "bogus"], "unknown axis 'bogus'"),
    (["--rows", "s_prime", "--cols", "tau_plus"], "--rows/--cols: 'tau_plus' is not an axis of grid"),
    (["--baseline", "N9-s9-sp9"], "--baseline 'N9-s9-sp9' is not a cell of grid"),
])
def test_tables_refuse_bad_arguments_before_writing_anything(tmp_path, capsys, args, needle):
    from pretrain.run import rundir

    grid = spec.build(spec.load_preset("demo"), ["s_prime"], {"s_prime": [0, 32]}, None, [], None,
                      name=f"x{tmp_path.name[-6:]}")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill_linear(uri, grid, {c.id: [60.0] for c in grid.cells})
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / rundir.GRID_FILE).write_text(grid.to_json())
    out = tmp_path / "results"
    out.mkdir()
    (out / "table.md").write_text("a table published earlier")
    capsys.readouterr()  # (the store's creation logs)
    with pytest.raises(SystemExit) as stop:
        execute(tables.main, [str(tmp_path / "grid"), "--tracking-uri", uri, "--results", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["table.md"] and (out / "table.md").read_text() == "a table published earlier"


def test_a_grid_json_cut_short_is_one_line(tmp_path, capsys):
    from pretrain.run import rundir

    grid = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name=f"c{tmp_path.name[-6:]}")
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / rundir.GRID_FILE).write_text(grid.to_json()[:40])
    with pytest.raises(SystemExit) as stop:
        execute(tables.main, [str(tmp_path / "grid"), "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "grid.json: not a grid.json this version can read" in err[0], err
    assert not (tmp_path / "results").exists()


def test_settings_that_share_N_s_s_prime_never_share_a_table_or_figure_cell(tmp_path, capsys):
    """The demo's MoCo v2 and HCL rows are both at N = s = s' = 0: the README's pivot by N, s x s'
    splits them by the loss axes (not one row of six "seeds"), and the N x s heatmap puts MoCo v2 at
    (0, 0) of MoCHi's panels and HCL in none of them."""
    from ablations import figures, tables

    grid = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name=f"m{tmp_path.name[-6:]}")
    grid.cells += [spec.Cell(spec.typed_values(v)) for v in ({"N": 64, "s": 128, "s_prime": 0},
                                                             {"N": 64, "s": 128, "s_prime": 32})]
    grid.references = []
    values = {"N0-s0-sp0": [78.0, 78.5, 79.0], "N0-s0-sp0_hcl_tp0.1_b1.0": [80.0, 80.5, 81.0],
              "N128-s128-sp0": [77.0], "N128-s128-sp32": [76.0], "N64-s128-sp0": [75.0], "N64-s128-sp32": [74.0]}
    assert set(values) == {c.id for c in grid.cells}
    uri, out = grid_folder(tmp_path, grid, values)
    assert tables.main([str(tmp_path / "grid"), "--tracking-uri", uri, "--results", str(out), "--rows", "N,s",
                        "--cols", "s_prime"]) == 0
    assert "rows split by method, tau_plus, beta as well" in capsys.readouterr().out
    csv = pd.read_csv(out / "pivot_linear_top1_N-s_by_s_prime.csv")
    assert csv.columns.tolist() == ["N", "s", "method", "tau_plus", "beta", "0", "32"]
    at_zero = csv[(csv["N"] == 0) & (csv["s"] == 0)].set_index("method")["0"]
    assert at_zero["infonce"].startswith("78.50 ± 0.50 (n=3)") and at_zero["hcl"].startswith("80.50 ± 0.50 (n=3)")
    assert "(n=6)" not in csv.to_string()
    with pytest.raises(UserError, match="different settings in one table cell"):  # the rule itself
        seeds = pd.read_csv(out / "per_seed.csv")
        tables.pivot(seeds, ["N", "s"], ["s_prime"], "linear_top1")

    panels = dict(figures.heatmap_panels(pd.read_csv(out / "table.csv")))
    assert list(panels) == ["MoCHi, s' = 0 (MoCo v2 at N = s = 0)", "MoCHi, s' = 32 (MoCo v2 at N = s = 0)"]
    for p in panels.values():
        assert p.loc[0, 0] == pytest.approx(78.5)  # MoCo v2's mean, not HCL's 80.5
        assert p.loc[64, 128] < 76 and p.loc[128, 128] >= 76


def test_a_seed_whose_probe_is_not_a_number_is_named_in_the_table(tmp_path):
    """A NaN linear top-1 (a probe that diverged) leaves that seed out of the mean, and the table
    says so where the number is: 'n=2 of 3' and which seed, not a silent n = 2."""
    grid = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name=f"n{tmp_path.name[-6:]}")
    grid.cells, grid.references = grid.cells[:2], []
    values = {"N0-s0-sp0": [70.0, float("nan"), 71.0], "N128-s128-sp0": [72.0, 73.0, 74.0]}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill_linear(uri, grid, values)
    out = tmp_path / "results"
    assert report.report(grid, tmp_path / "grid", uri, out) == 0
    md = (out / "table.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| 0 "))
    assert "70.50 ± 0.71 (n=2 of 3)" in row
    assert "Missing: N0-s0-sp0: linear top-1 from 2 of 3 seeds; seed 1 has no finite value" in md
    assert "(n=3)" in next(ln for ln in md.splitlines() if ln.startswith("| 128 "))


def test_a_cell_with_a_kind_beyond_mochi_s_is_in_no_heatmap_panel():
    """MoCHi (128, 128, 0) and the same N, s, s' with 64 extrapolated points are two settings at one
    (N, s) of the N x s heatmap: the panel shows MoCHi's, not the mean of the two."""
    from ablations import figures

    rows = [("MoCo v2", 0, 0, 0, False, False, 70.0), ("MoCHi", 128, 128, 0, True, False, 72.0),
            ("MoCHi", 64, 128, 0, True, False, 71.0), ("MoCHi", 128, 64, 0, True, False, 73.0),
            ("MoCHi + extrapolation", 128, 128, 0, True, True, 90.0)]
    summary = pd.DataFrame([{"kind": "cell", "loss": "InfoNCE", "setting": r[0], "N": r[1], "s": r[2], "s_prime": r[3],
                             "mixes": r[4], "other_kinds": r[5], "linear_top1_mean": r[6]} for r in rows])
    (title, panel), = figures.heatmap_panels(summary)
    assert panel.loc[128, 128] == 72.0 and panel.loc[0, 0] == 70.0


def test_a_method_is_compared_with_its_reweighted_control_where_the_grid_has_one(tmp_path, capsys):
    """MoCHi (128, 128, 32) and the same N with 160 copies of hard negatives' logits: the tables give
    the row minus its control, paired on seeds, Bonferroni over the rows that have one, in every form,
    and say in words whether the points add anything. A row with no control in the grid gets none."""
    from ablations import blocks, controls, stats

    grid = spec.build(spec.load_preset("demo"), None, {}, None, [], None, name=f"c{tmp_path.name[-6:]}")
    grid.cells = [spec.Cell(spec.typed_values(v)) for v in (
        {"N": 0, "s": 0, "s_prime": 0}, {"N": 128, "s": 128, "s_prime": 32}, {"N": 128, "s": 128, "s_prime": 0},
        {"N": 128, "s": 0, "s_prime": 0, "s_reweight": 160})]
    grid.references = []
    assert controls.controls(grid) == {"N128-s128-sp32": "N128-s0-sp0-sr160"}  # (128, 128, 0) has none here
    values = {"N0-s0-sp0": [70.0, 72.0, 71.0, 73.0], "N128-s128-sp32": [71.0, 73.1, 71.9, 74.2],
              "N128-s128-sp0": [71.0, 72.4, 72.6, 73.6], "N128-s0-sp0-sr160": [71.1, 72.9, 72.0, 74.0]}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fill_linear(uri, grid, values)
    out = tmp_path / "results"
    assert report.report(grid, tmp_path / "grid", uri, out) == 0
    csv = pd.read_csv(out / "table.csv").set_index("cell")
    c = stats.compare(dict(enumerate(values["N128-s128-sp32"])), dict(enumerate(values["N128-s0-sp0-sr160"])))
    row = csv.loc["N128-s128-sp32"]
    assert row["control"] == "N128-s0-sp0-sr160" and row["linear_top1_ctrl_family_m"] == 1
    assert row["linear_top1_ctrl_diff"] == pytest.approx(c.diff) and row["linear_top1_ctrl_test"] == "paired t"
    assert (row["linear_top1_ctrl_low"], row["linear_top1_ctrl_high"]) == pytest.approx(c.interval(0.95))
    assert row["linear_top1_ctrl_verdict"] == "no detectable difference"
    assert pd.isna(csv.loc["N128-s128-sp0", "linear_top1_ctrl_diff"]) and pd.isna(csv.loc["N0-s0-sp0", "control"])
    shown = f"{c.diff:+.2f} [{c.interval(0.95)[0]:+.2f}, {c.interval(0.95)[1]:+.2f}]"
    md, tex = (out / "table.md").read_text(), (out / "table.tex").read_text()
    assert "Δ vs its reweighted control [simultaneous 95% CI]" in md and shown in md
    assert shown.replace("[", "{[}").replace("]", "{]}") in tex or shown in tex
    assert "MoCHi (128, 128, 32) does not differ detectably from MoCo v2 + reweighted 160 (N 128)" in md
    block = next(b for b in blocks.blocks(pd.read_csv(out / "table.csv"), [], ["linear_top1"], [], [], "demo", 4))
    assert "Δ control [95% CI]" in block.table and any(line.startswith("Δ control:") for line in block.legend)
