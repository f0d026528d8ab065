"""python -m pretrain: bad input gets one clear line on stderr, exit code 2, and nothing written; the
resolved config prints and reads back."""

import subprocess
import sys

import pytest

from pretrain.run import config


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pretrain", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["mochi.N=5000"], "cannot be taken from a queue of K=512"),
        (["mochi.s=-1"], "non-negative"),
        (["mochi.N=0", "mochi.s=8", "mochi.s_prime=0"], "needs N >= 2"),
        (["mochi.N=0"], "needs N >= 2, got N=0 (plain MoCo v2 is N = 0 and every count 0)"),  # the demo's s and s' stay
        (["moco.K=1000"], "multiple of the global batch"),
        (["optim.lr=0.1"], "unknown config key 'optim.lr'"),
        (["model.arch=vgg16"], "unknown architecture 'vgg16'"),
        (["data.dataset=imagefolder", "data.path=/nonexistent/imagenet"], "/nonexistent/imagenet is not a folder"),
        (["data.dataset=imagefolder"], "needs data.path"),
        (["mochi.N=many"], "is not a valid int"),
        (["--preset", "nope"], "invalid choice"),
        (["loss.method=focal"], "config key loss.method: 'focal' is not one of infonce, debiased, hcl"),
        (["loss.method=hcl", "loss.tau_plus=1.0"], "config loss: tau_plus must be in [0, 1), got 1.0"),
        (["loss.method=hcl", "loss.beta=-0.5"], "config loss: beta must be >= 0, got -0.5"),
        (["loss.tau_plus=0.1"], "tau_plus and beta belong to the debiased and hcl losses"),
        # numbers that are not numbers, or outside their range, refused before a folder or a run opens
        (["moco.tau=.nan"], "config key moco.tau: nan is not a finite number"),
        (["loss.method=hcl", "loss.beta=.nan"], "config key loss.beta: nan is not a finite number"),
        (["optim.base_lr=.inf"], "config key optim.base_lr: inf is not a finite number"),
        (["optim.momentum=-0.5"], "config key optim.momentum: must be in [0, 1), got -0.5"),
        (["loss.method=ring", "loss.ring_outer=0.001"], "Ring (outer 0.001, inner 0) keeps no queue negative of a queue of K=512"),
        (["mochi.s_prime=1000000000"], "synthetic negatives per query need"),
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



@pytest.mark.parametrize("text, why", [
    ("moco:\n\tK: 512\n", "line 2, column 1: found character '\\t' that cannot start any token"),
    ("moco:\n  K: 512\nmoco:\n  m: 0.9\n", "line 3, column 1: key 'moco' is given twice (first on line 1)"),
])
def test_a_malformed_config_file_is_one_line_naming_where(tmp_path, text, why):
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    r = run_cli("--preset", "demo", "--config", str(f), f"run.out={tmp_path / 'run'}")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"error: {f}: not valid YAML ({why})"], r.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_folder_whose_config_is_not_yaml_is_refused_untouched(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("model: [resnet18\n")
    r = run_cli("--preset", "demo", f"run.out={out}")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{out / 'config.yaml'}: not valid YAML (line 2, column 1" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]
    assert (out / "config.yaml").read_text() == "model: [resnet18\n"


def test_different_config_in_an_existing_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(config.dump(config.load("demo", overrides=[f"run.out={out}"])))
    before = (out / "config.yaml").read_text()
    r = run_cli("--preset", "demo", f"run.out={out}", "mochi.N=64")
    assert r.returncode == 2 and "holds a run with other settings (mochi.N: 128 there, 64 now)" in r.stderr
    assert (out / "config.yaml").read_text() == before and sorted(p.name for p in out.iterdir()) == ["config.yaml"]


def test_show_config_round_trips(tmp_path):
    r = run_cli("--preset", "imagenet100", "--show-config", "mochi.N=512")
    assert r.returncode == 0
    f = tmp_path / "c.yaml"
    f.write_text(r.stdout)
    cfg = config.load(path=str(f))
    assert cfg.mochi.N == 512 and cfg.moco.K == 16384 and cfg.data.class_list == "imagenet100.txt"
