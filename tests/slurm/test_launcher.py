"""slurm/launcher.py: cluster profiles, the executors they make, what SLURM says of jobs; the tests
marked slurm ask the one-machine test cluster."""

import dataclasses
import re
import subprocess
import time

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


def test_tasks_per_node_lays_out_pretraining_alone_and_a_probe_is_one_task_on_one_gpu(tmp_path):
    """tasks_per_node gives a CPU pretraining job its DDP ranks (and its preflight, which runs on the
    same layout); the probe, one process, keeps one task; nodes multiply pretraining's alone."""
    f = tmp_path / "two.yaml"
    f.write_text("nodes: 2\ntasks_per_node: 3\ncpus_per_task: 2\n")
    p = launcher.load_profile(str(f))
    assert (p.pretrain_tasks, p.ranks_per_job) == (3, 6)

    def request(stage: str, prof=p) -> launcher.Request:
        return launcher.sbatch_request(launcher.make_executor("slurm", tmp_path, prof, name="g", stage=stage))

    assert request("pretrain") == launcher.Request(nodes=2, tasks_per_node=3, cpus_per_task=2, gpus_per_node=0)
    for stage in ("probe", "eval", "spawn"):
        assert request(stage) == launcher.Request(nodes=1, tasks_per_node=1, cpus_per_task=2, gpus_per_node=0)
    gpu8 = launcher.load_profile("gpu-8")
    gpu8.eval_gpus = 4  # a probe is one process on one GPU; a data-parallel evaluation has a task per GPU
    assert request("probe", gpu8) == launcher.Request(nodes=1, tasks_per_node=1, cpus_per_task=10, gpus_per_node=1)
    assert request("eval", gpu8) == launcher.Request(nodes=1, tasks_per_node=4, cpus_per_task=10, gpus_per_node=4)
    assert gpu8.pretrain_tasks == 8 and launcher.load_profile("local-cpu").pretrain_tasks == 1
    with pytest.raises(ValueError, match="unknown stage layout 'lincls'"):
        request("lincls")


@pytest.mark.parametrize("text, message", [
    ("gpus_per_node: 8\ntasks_per_node: 4\n", "tasks_per_node 4 with gpus_per_node 8: pretraining runs one task "
                                               "(DDP rank) per GPU; set tasks_per_node to 8 or null"),
    ("tasks_per_node: 0\n", "tasks_per_node must be an integer >= 1 or null, got 0"),
    ("tasks_per_node: two\n", "tasks_per_node: 'two' is not a valid int"),
    ("mem_gb: 64G\n", "mem_gb: '64G' is not a valid float"),
    ("setup: module load cuda\n", "setup: 'module load cuda' is not a valid list"),
    ("setup: [module load cuda, 5]\n", "setup must be a list of shell lines (strings)"),
    ("eval_gpus: -1\n", "gpus_per_node and eval_gpus >= 0"),
    ("nodes: .nan\n", "nodes: nan is not a valid int"),
    ("img_per_s: .nan\n", "img_per_s: nan is not a finite number"),
    ("input_img_per_s: {jpeg: 700}\n", "input_img_per_s jpeg: 700.0: give images/s > 0 for one of cpu, gpu, dali"),
    ("input_img_per_s: {cpu: 0}\n", "input_img_per_s cpu: 0.0: give images/s > 0"),
    ("input_img_per_s: 700\n", "input_img_per_s: 700 is not a mapping"),
    ("5\n", "expected a mapping of profile keys, got 5"),
    ("extra_sbatch: {gres: 'gpu:1'}\n", "extra_sbatch sets gres, which the profile's own key gpus_per_node sets"),
    ("extra_sbatch: {ntasks-per-node: 2}\n", "extra_sbatch sets ntasks-per-node, which the profile's own key "
                                              "tasks_per_node sets per stage; set tasks_per_node instead"),
    ("extra_sbatch: {nodes: 2}\n", "extra_sbatch sets nodes, which the profile's own key nodes sets"),
    ("extra_sbatch: {gpus_per_node: 2}\n", "own key gpus_per_node"),
    ("extra_sbatch: [exclusive]\n", "extra_sbatch must be a mapping of sbatch options"),
])
def test_a_profile_laying_out_tasks_twice_or_against_its_gpus_is_refused(tmp_path, text, message):
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        launcher.load_profile(str(f))
    f.write_text("extra_sbatch: {exclusive: true, mail-type: END}\n")  # any other option passes through
    assert launcher.load_profile(str(f)).extra_sbatch == {"exclusive": True, "mail-type": "END"}


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
    """sbatch_script, sbatch_request and submitted_stderr reach into submitit's internals (its public
    API offers none of them); this holds them against the installed submitit, job by real job."""
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
    try:
        request = launcher.sbatch_request(ex)
    except (AttributeError, KeyError) as e:
        pytest.fail(moved % ("sbatch_request", e))
    assert request == launcher.Request(nodes=1, tasks_per_node=1, cpus_per_task=10, gpus_per_node=1)
    assert not list(tmp_path.iterdir()), "sbatch_script or sbatch_request submitted or wrote something"

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


# sacct -n -X -P -o JobID,State,Start of a 4-task array (%2) on the test cluster, cancelled after its
# task 0 had completed and while task 1 ran: SLURM's summary row for the rest of the array names
# task 1 too, and comes after the tasks' own rows.
SACCT_CANCELLED_ARRAY = """27_0|COMPLETED|2026-12-02T20:02:44
27_1|CANCELLED by 0|2026-12-02T20:02:56
27_[1-3%2]|CANCELLED by 0|None
"""


@pytest.mark.parametrize("order", [1, -1])
def test_array_tasks_own_sacct_rows_win_over_the_array_summary_row(order):
    rows = [line.split("|") for line in SACCT_CANCELLED_ARRAY.splitlines()][::order]
    assert launcher.sacct_jobs(rows) == {
        "27_0": launcher.SlurmJob("COMPLETED"), "27_1": launcher.SlurmJob("CANCELLED"),
        "27_2": launcher.SlurmJob("CANCELLED", started=False), "27_3": launcher.SlurmJob("CANCELLED", started=False),
    }


@pytest.mark.slurm
def test_a_cancelled_array_keeps_what_each_of_its_tasks_did(slurm_conf):
    """The summary row sacct writes for a cancelled array's remainder does not hide that task 0
    completed and task 1 ran."""
    def sh(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()

    def wait(pred, what: str):
        deadline = time.monotonic() + 180
        while not pred():
            assert time.monotonic() < deadline, f"{what} did not happen within 180 s"
            time.sleep(1)

    jid = sh("sbatch", "--parsable", "--hold", "-J", "mochi-test-array", "-o", "/dev/null", "-c", "1",
             "--array=0-3%2", "--wrap", "sleep $((SLURM_ARRAY_TASK_ID ? 60 : 1))")
    tasks = [f"{jid}_{i}" for i in range(4)]
    try:
        sh("scontrol", "release", tasks[0])
        wait(lambda: launcher.slurm_jobs(tasks[:1])[tasks[0]].state == "COMPLETED", "task 0 to complete")
        sh("scontrol", "release", tasks[1])

        # Cancelled as soon as it runs: the array's summary row still names it then.
        wait(lambda: launcher.slurm_jobs(tasks[1:2])[tasks[1]].state == "RUNNING", "task 1 to start")
    finally:
        sh("scancel", jid)

    def sacct(task: str) -> str:  # slurmdbd records a task's own row a moment after squeue shows it
        return sh("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", task)

    wait(lambda: f"{tasks[1]}|CANCELLED" in sacct(tasks[1]) and not sh("squeue", "-h", "-j", jid),
         "the array to leave the queue")
    jobs = launcher.slurm_jobs(tasks)
    assert jobs[tasks[0]] == launcher.SlurmJob("COMPLETED")
    assert jobs[tasks[1]] == launcher.SlurmJob("CANCELLED")
    assert jobs[tasks[2]] == jobs[tasks[3]] == launcher.SlurmJob("CANCELLED", started=False)


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4),
                                        ("gpu:a100:2(S:0,1),gpu:v100:1,shard:8", 3), ("gpu", 1)])
def test_gpus_of_a_sinfo_gres_field(gres, gpus):
    assert launcher.gres_gpus(gres) == gpus


@pytest.mark.slurm
@pytest.mark.parametrize("keys, message", [
    ({"partition": "nosuchpart"}, "partition 'nosuchpart' does not exist on this cluster; partitions: debug"),
    ({"cpus_per_task": 64}, "a pretraining job asks for 64 CPUs per node (cpus_per_task 64 x 1 task), but the "
                            "largest node in partition debug has 2"),
    ({"mem_gb": 100}, "mem_gb 100 (102400 MB per node), but the largest node in partition debug has 22057 MB"),
    ({"gpus_per_node": 1}, "asks for 1 GPUs per node (gpus_per_node), but the node with the most in partition "
                           "debug has 0"),
    ({"nodes": 2}, "asks for 2 nodes (nodes)"),
])
def test_a_profile_the_cluster_cannot_hold_is_refused_naming_its_key(slurm_conf, keys, message):
    """Against the test cluster: one node `vm`, 2 CPUs, 22057 MB, no GPUs, default partition debug."""
    p = dataclasses.replace(launcher.load_profile("local-cpu"), **keys)
    with pytest.raises(UserError) as e:
        launcher.check_fits(p, ["pretrain", "eval"])
    assert str(e.value).startswith("profile local-cpu: ") and message in str(e.value)


@pytest.mark.slurm
def test_a_profile_the_cluster_holds_passes_on_its_default_partition(slurm_conf):
    p = launcher.load_profile("local-cpu")
    assert p.partition is None
    launcher.check_fits(p, ["pretrain", "eval", "spawn"])
