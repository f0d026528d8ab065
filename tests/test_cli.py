"""Bad input: one clear line on stderr, exit code 2, nothing written."""

import subprocess
import sys

import pytest

from pretrain import config
from pretrain.errors import UserError


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pretrain", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["mochi.N=5000"], "cannot be taken from a queue of K=512"),
        (["mochi.s=-1"], "non-negative"),
        (["mochi.N=0", "mochi.s=8", "mochi.s_prime=0"], "needs N >= 2"),
        (["moco.K=1000"], "multiple of the global batch"),
        (["optim.lr=0.1"], "unknown config key 'optim.lr'"),
        (["model.arch=vgg16"], "unknown architecture 'vgg16'"),
        (["data.dataset=imagefolder", "data.path=/nonexistent/imagenet"], "/nonexistent/imagenet is not a folder"),
        (["data.dataset=imagefolder"], "needs data.path"),
        (["mochi.N=many"], "is not a valid int"),
        (["--preset", "nope"], "invalid choice"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, needle):
    out = tmp_path / "run"
    if args[0] != "--preset":
        args = ["--preset", "demo", f"run.out={out}", *args]
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert needle in lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_different_config_in_an_existing_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(config.dump(config.load("demo", overrides=[f"run.out={out}"])))
    before = (out / "config.yaml").read_text()
    r = run_cli("--preset", "demo", f"run.out={out}", "mochi.N=64")
    assert r.returncode == 2 and "different config (mochi.N: 128 there, 64 now)" in r.stderr
    assert (out / "config.yaml").read_text() == before and sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_show_config_round_trips(tmp_path):
    r = run_cli("--preset", "imagenet100", "--show-config", "mochi.N=512")
    assert r.returncode == 0
    f = tmp_path / "c.yaml"
    f.write_text(r.stdout)
    cfg = config.load(path=str(f))
    assert cfg.mochi.N == 512 and cfg.moco.K == 16384 and cfg.data.class_list == "imagenet100.txt"


def test_override_types_and_file_layering(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mochi:\n  N: 64\noptim:\n  base_lr: 1\n")
    cfg = config.load("demo", str(f), ["mochi.s=4", "run.tracking_uri=null", "optim.weight_decay=5e-4"])
    assert cfg.optim.weight_decay == 5e-4
    assert cfg.mochi.N == 64 and cfg.mochi.s == 4 and cfg.optim.base_lr == 1.0
    assert isinstance(cfg.optim.base_lr, float) and cfg.run.tracking_uri is None
    with pytest.raises(UserError, match="run.amp: 'yes please' is not a valid bool"):
        config.load("demo", overrides=["run.amp=yes please"])
    f.write_text("mochi: [1, 2]\n")
    with pytest.raises(UserError, match="must be a mapping"):
        config.load(path=str(f))


def test_presets_are_valid_and_follow_the_recipes():
    im1k = config.load("imagenet1k")
    assert (im1k.moco.K, im1k.moco.m, im1k.moco.tau) == (65536, 0.999, 0.2)
    assert (im1k.optim.base_lr, im1k.optim.batch_size, im1k.optim.momentum, im1k.optim.weight_decay) == (0.03, 256, 0.9, 1e-4)
    assert im1k.model.arch == "resnet50" and im1k.model.dim == 128 and im1k.model.mlp
    im100 = config.load("imagenet100")
    assert im100.mochi.mix_start == 10 and im100.moco.K == 16384
    assert config.load("demo").data.dataset == "fashion-mnist"
