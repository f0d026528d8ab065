"""The step benchmark runs and reports both methods side by side (its figures are not asserted)."""

import json

import pytest

from pretrain import bench


def test_bench_writes_both_methods_and_the_device(tmp_path, capsys):
    out = tmp_path / "b.json"
    code = bench.main(["--arch", "resnet18", "--batch", "8", "--image-size", "32", "--K", "64", "--N", "16",
                       "--s", "8", "--s-prime", "4", "--steps", "1", "--warmup", "0", "--variants", "eager",
                       "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["device"].startswith("CPU") and r["N"] == 16 and r["batch"] == 8
    row = r["results"][0]
    assert row["variant"] == "eager" and row["mocov2_img_s"] > 0 and row["mochi_img_s"] > 0
    assert row["ratio"] == pytest.approx(row["mochi_img_s"] / row["mocov2_img_s"])
    assert "MoCHi/MoCo" in capsys.readouterr().out


def test_bench_rejects_bad_sizes():
    from pretrain.errors import UserError

    with pytest.raises(UserError, match="multiple of --batch"):
        bench.main(["--K", "100", "--batch", "32"])


def test_pipeline_bench_measures_each_pipeline_and_training_side_by_side(tmp_path, capsys):
    from pretrain import bench_data
    from pretrain.jpegs import make_jpegs

    make_jpegs(tmp_path / "jpegs", 48, classes=3)
    out = tmp_path / "p.json"
    code = bench_data.main(["--data", str(tmp_path / "jpegs"), "--pipelines", "cpu,gpu", "--arch", "resnet18",
                            "--batch", "8", "--image-size", "32", "--K", "32", "--N", "8", "--s", "8",
                            "--s-prime", "4", "--workers", "1", "--batches", "2", "--steps", "1", "--warmup", "1",
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
    from pretrain.errors import UserError

    with pytest.raises(UserError, match="--pipelines"):
        bench_data.main(["--pipelines", "tpu", "--data", str(tmp_path)])
    with pytest.raises(UserError, match="fewer than one batch"):
        bench_data.main(["--data", str(tmp_path), "--batch", "8", "--K", "32", "--N", "8", "--s", "8", "--s-prime", "4",
                         "--pipelines", "cpu"])
    with pytest.raises(UserError, match="cannot be taken from a queue"):
        bench_data.main(["--data", str(tmp_path), "--batch", "8", "--K", "32", "--pipelines", "cpu"])
