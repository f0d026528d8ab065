"""slurm/launcher.py: cluster profiles and the executors they make (no scheduler needed)."""

import pytest

from pretrain.run.errors import UserError
from slurm import launcher


@pytest.mark.parametrize("name", ["local-cpu", "gpu-1", "gpu-8"])
def test_each_shipped_profile_becomes_the_sbatch_script_it_describes(tmp_path, name):
    """What the profile file says is what SLURM is asked for: resources, limits, partition, set-up lines."""
    assert name in launcher.profiles()
    p = launcher.load_profile(name)
    assert p.img_per_s > 0
    text = launcher.sbatch_script(
        launcher.make_executor("slurm", tmp_path, p, name="g-pretrain", stage="pretrain"), "python x")
    assert f"#SBATCH --time={p.timeout_min}" in text or f"#SBATCH --time={p.timeout_min // 60}:" in text
    assert f"#SBATCH --cpus-per-task={p.cpus_per_task}" in text
    assert f"#SBATCH --mem={int(p.mem_gb)}GB" in text and f"#SBATCH --nodes={p.nodes}" in text
    assert f"#SBATCH --ntasks-per-node={max(p.gpus_per_node, 1)}" in text
    assert (f"#SBATCH --gpus-per-node={p.gpus_per_node}" in text) == (p.gpus_per_node > 0)
    assert ("#SBATCH --partition=" in text) == (p.partition is not None)
    eval_text = launcher.sbatch_script(
        launcher.make_executor("slurm", tmp_path, p, name="g-lincls", stage="eval"), "python x")
    assert "#SBATCH --ntasks-per-node=1" in eval_text and "#SBATCH --nodes=1" in eval_text
    assert (f"#SBATCH --gpus-per-node={p.eval_gpus}" in eval_text) == (p.eval_gpus > 0)
    assert launcher.load_profile("local-cpu").eval_gpus == 0
    assert launcher.load_profile("gpu-8").gpus_per_job == 8


def test_a_bad_profile_names_the_key(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("partition: gpu\ngpu_per_node: 4\n")
    with pytest.raises(UserError, match="unknown key 'gpu_per_node'"):
        launcher.load_profile(str(f))
    f.write_text("timeout_min: 0\n")
    with pytest.raises(UserError, match="timeout_min must be an integer >= 1"):
        launcher.load_profile(str(f))


def test_slurm_executor_gets_one_task_per_gpu_and_a_dependency(tmp_path):
    p = launcher.load_profile("gpu-8")
    p.account, p.extra_sbatch = "proj42", {"exclusive": True}
    pre = launcher.make_executor("slurm", tmp_path, p, name="g-pretrain", stage="pretrain")
    text = launcher.sbatch_script(pre, "python x")
    assert "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --gpus-per-node=8" in text
    assert "#SBATCH --account=proj42" in text and "#SBATCH --exclusive" in text
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --signal=USR2@120" in text
    ev = launcher.make_executor("slurm", tmp_path, p, name="g-lincls", stage="eval", dependency="aftercorr:12")
    text = launcher.sbatch_script(ev, "python x")
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=1" in text
    assert "#SBATCH --dependency=aftercorr:12" in text and "#SBATCH --kill-on-invalid-dep=yes" in text


def test_auto_cluster_falls_back_to_local_without_a_controller(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "none.conf"))
    assert launcher.resolve_cluster("auto") == "local"
    with pytest.raises(UserError, match="no SLURM controller"):
        launcher.resolve_cluster("slurm")


@pytest.mark.parametrize("job_id, tasks", [
    ("12", ["12"]), ("12_3", ["12_3"]), ("12_[0-2]", ["12_0", "12_1", "12_2"]),
    ("12_[0-1,5%2]", ["12_0", "12_1", "12_5"]), ("12_[7]", ["12_7"]),
])
def test_compressed_array_ids_expand_to_their_tasks(job_id, tasks):
    assert launcher.expand_array_id(job_id) == tasks


def test_the_submitit_internals_the_launcher_relies_on_hold_in_the_installed_version(tmp_path):
    """sbatch_script and submitted_stderr reach into submitit's internals (its public API offers
    neither); this holds them against the installed submitit, job by real job."""
    import submitit

    moved = f"submitit {submitit.__version__} moved an internal that slurm/launcher.py's %s uses: %r"
    ex = launcher.make_executor("slurm", tmp_path, launcher.load_profile("gpu-1"), name="g-pretrain", stage="pretrain")
    sbatch_script, submitted_stderr = launcher.sbatch_script, launcher.submitted_stderr
    try:
        text = sbatch_script(ex, "python -m job")
    except AttributeError as e:
        pytest.fail(moved % ("sbatch_script", e))
    assert text.startswith("#!/bin/bash") and "#SBATCH --job-name=g-pretrain" in text
    assert "#SBATCH --gpus-per-node=1" in text and "python -m job" in text
    assert not list(tmp_path.iterdir()), "sbatch_script submitted or wrote something"

    local = launcher.make_executor("local", tmp_path, launcher.load_profile("local-cpu"), name="t", stage="eval")
    job = local.submit(pow, 2, 10)
    assert job.result() == 1024
    try:
        stderr = submitted_stderr(tmp_path, job.job_id)
    except AttributeError as e:
        pytest.fail(moved % ("submitted_stderr", e))
    assert stderr == job.paths.stderr and stderr.is_file(), \
        f"submitit {submitit.__version__} keeps a job's files elsewhere than submitted_stderr looks"
    assert submitted_stderr(tmp_path, "999999") is None  # no payload written: a job that can only fail
