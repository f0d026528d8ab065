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
