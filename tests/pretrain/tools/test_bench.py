"""The step benchmark times the training step itself, at training's statistics cadence, for both
methods side by side (its figures are held against the steps' own clock, not against a speed)."""

import json
import subprocess
import sys
import time

import pytest

from pretrain import bench
from pretrain import train as train_module
from pretrain.method.mixing import Mixing
from pretrain.run.errors import UserError
from pretrain.tools import bench as tools_bench
from tests.conftest import REPO


def test_bench_times_the_training_step_at_the_training_cadence(tmp_path, capsys, monkeypatch):
    calls = []
    real_step = train_module.step
    delay = 0.3  # MoCHi's steps are made this much slower, so its figure cannot pass for MoCo v2's

    def spy(*args, **kwargs):  # the real step, counted and timed: which mixing, whether statistics were asked
        t = time.perf_counter()
        if args[4].active:
            time.sleep(delay)
        out = real_step(*args, **kwargs)
        calls.append((args[4], kwargs["with_stats"], time.perf_counter() - t))
        return out

    monkeypatch.setattr(tools_bench, "step", spy)
    out = tmp_path / "b.json"
    code = bench.main(["--arch", "resnet18", "--batch", "8", "--image-size", "32", "--K", "64", "--N", "16",
                       "--s", "8", "--s_prime", "4", "--steps", "4", "--warmup", "2", "--variants", "eager",
                       "--stats-every", "3", "--methods", "mocov2,mochi", "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["device"].startswith("CPU") and r["N"] == 16 and r["batch"] == 8 and r["dtype"] == "fp32, contiguous"
    # 2 rounds x (MoCo v2, MoCHi) x (2 warm-up + 4 timed) steps, through train.step itself
    assert len(calls) == 2 * 2 * 6
    assert [m for m, _, _ in calls[:6]] == [Mixing()] * 6 and [m for m, _, _ in calls[6:12]] == [Mixing(16, 8, 4)] * 6
    # statistics on every 3rd step, as training logs with run.log_every = 3
    assert [due for _, due, _ in calls[:6]] == [False, False, True, False, False, True]
    # Each method's figure is its best round's 4 timed steps of 8 images over the time they took, as
    # the spy clocked them: never more (the bench's clock spans them), barely less (only the loop's
    # own work is added); warm-up steps counted, or steps instead of images, would be far off.
    row = r["results"][0]
    blocks = [calls[i:i + 6] for i in range(0, 24, 6)]  # MoCo v2, MoCHi, MoCo v2, MoCHi
    clocked = {name: max(4 * 8 / sum(dt for *_, dt in block[2:]) for block in blocks[k::2])
               for k, name in enumerate(("mocov2", "mochi"))}
    for name, rate in clocked.items():
        assert 0.9 * rate <= row[f"{name}_img_s"] <= rate, (name, row[f"{name}_img_s"], rate)
    assert row["mochi_img_s"] <= 8 / delay
    assert row["ratio"] == pytest.approx(clocked["mochi"] / clocked["mocov2"], rel=0.2) and row["ratio"] < 1
    assert row["ratios"]["MoCHi (16, 8, 4)"] == row["ratio"] and 0 < row["mixing_share"] < 1
    printed = capsys.readouterr().out
    assert "MoCHi/MoCo" in printed and r["device"] in printed and f"{row['ratio']:.3f}" in printed


def test_bench_times_every_method_beside_moco_v2(tmp_path):
    out = tmp_path / "b.json"
    assert bench.main(["--arch", "resnet18", "--batch", "8", "--image-size", "32", "--K", "64", "--N", "16", "--s", "8",
                       "--s_prime", "4", "--steps", "1", "--warmup", "0", "--variants", "eager", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["results"][0]
    r = json.loads(out.read_text())
    assert list(row["ratios"]) == ["MoCo v2", "MoCHi (16, 8, 4)",
                                   "MoCHi (16, 4, 4) + noise 1 + extrapolation 4 + gradient 1 + adversarial 1",
                                   "MoCo v2 + reweighted 12 (N 16)", "debiased (Chuang et al., tau+ 0.1)",
                                   "HCL (beta 1.0, tau+ 0.1)", "HCL (beta 1.0, tau+ 0.1) + MoCHi (16, 8, 4)",
                                   "Ring (outer 0.1, inner 0.1)"]
    # each closed form timed beside its explicit points, in one run
    assert list(r["closed_forms"]) == ["query mixing", "extrapolation", "gradient", "adversarial", "reweighted"]
    for c in r["closed_forms"].values():
        assert c["explicit_ms"] > 0 and c["closed_ms"] > 0
        assert c["ratio"] == pytest.approx(c["closed_ms"] / c["explicit_ms"])
    assert row["ratios"]["MoCo v2"] == 1.0 and all(v > 0 for v in row["ratios"].values())
    assert row["hcl+mochi_img_s"] == pytest.approx(row["ratios"]["HCL (beta 1.0, tau+ 0.1) + MoCHi (16, 8, 4)"]
                                                   * row["mocov2_img_s"])
    assert row["ring_img_s"] == pytest.approx(row["ratios"]["Ring (outer 0.1, inner 0.1)"] * row["mocov2_img_s"])


@pytest.mark.parametrize("args, message", [
    (["--methods", "mocov2,focal"], "--methods"),
    (["--K", "100", "--batch", "32"], "multiple of --batch"),
    (["--batch", "0"], "--batch must be > 0"),
    (["--image-size", "-4"], "--image-size must be > 0"),
    (["--N", "8", "--s", "-1"], "non-negative"),
    (["--steps", "0"], "--steps"),
    (["--arch", "vgg16"], "--arch 'vgg16'"),
])
def test_bench_rejects_bad_sizes_in_one_line(args, message):
    with pytest.raises(UserError, match=message):
        bench.main(["--variants", "eager", *args])
    r = subprocess.run([sys.executable, "-m", "pretrain.bench", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_pipeline_bench_measures_each_pipeline_and_training_side_by_side(tmp_path, capsys):
    from pretrain import bench_data
    from pretrain.tools.jpegs import make_jpegs

    make_jpegs(tmp_path / "jpegs", 48, classes=3)
    out = tmp_path / "p.json"
    code = bench_data.main(["--data", str(tmp_path / "jpegs"), "--pipelines", "cpu,gpu", "--arch", "resnet18",
                            "--batch", "8", "--image-size", "32", "--K", "32", "--N", "8", "--s", "8",
                            "--s_prime", "4", "--workers", "1", "--batches", "2", "--steps", "1", "--warmup", "1",
                            "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["device"].startswith("CPU") and r["files"] == 48 and r["batch"] == 8
    assert r["pipeline_img_s"]["cpu"] > 0 and r["pipeline_img_s"]["gpu"] > 0
    assert r["gpu_over_cpu"] == pytest.approx(r["pipeline_img_s"]["gpu"] / r["pipeline_img_s"]["cpu"])
    assert r["jpeg_over_synthetic"] == pytest.approx(r["jpeg_img_s"] / r["synthetic_img_s"])
    assert {"decode", "crop+resize", "jitter+gray+blur+flip"} <= set(r["gpu_profile_ms_per_batch"])
    assert r["decode_counts"]["gpu"]["cpu"] >= 24  # warm-up + 2 batches of 8 (decoded on the CPU here), + prefetched
    printed = capsys.readouterr().out
    assert "JPEG / synthetic" in printed and r["device"] in printed


def test_pipeline_bench_rejects_bad_input(tmp_path):
    from pretrain import bench_data

    with pytest.raises(UserError, match="--pipelines"):
        bench_data.main(["--pipelines", "tpu", "--data", str(tmp_path)])
    with pytest.raises(UserError, match="fewer than one batch"):
        bench_data.main(["--data", str(tmp_path), "--batch", "8", "--K", "32", "--N", "8", "--s", "8", "--s_prime", "4",
                         "--pipelines", "cpu"])
    with pytest.raises(UserError, match="cannot be taken from a queue"):
        bench_data.main(["--data", str(tmp_path), "--batch", "8", "--K", "32", "--pipelines", "cpu"])
