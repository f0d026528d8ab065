"""slurm/jobs.py: each transfer engine's stage gets its own job, laid out as its processes need."""

from pretrain.eval import lincls
from slurm import jobs, launcher
from transfer import finetune, train_d2
from transfer.stages import D2Settings, FinetuneSettings


def test_a_transfer_stage_gets_the_job_of_its_engine(tmp_path, monkeypatch):
    tv = jobs.transfer_job(FinetuneSettings(source="r", task="voc-c4", data="/d"), cores=4)
    d2 = jobs.transfer_job(D2Settings(source="r", task="voc-c4", data="/d", gpus=8), cores=4)
    # each job hands its settings to its engine's stage function (imported in the job, not at submission)
    monkeypatch.setattr(finetune, "run", lambda s: ("torchvision", s))
    monkeypatch.setattr(train_d2, "run", lambda s: ("detectron2", s))
    assert type(tv) is jobs.TransferJob and tv.run(tv.settings) == ("torchvision", tv.settings) and tv.tasks == "eval"
    assert type(d2) is jobs.D2TransferJob and d2.run(d2.settings) == ("detectron2", d2.settings) and d2.cores == 4
    assert tv.stage == d2.stage == "transfer"  # the same column of jobs.json and --status
    # detectron2 starts its own worker per GPU: one SLURM task holding the 8 GPUs and their cores
    p = launcher.load_profile("gpu-8")
    p.eval_gpus = 8
    text = launcher.sbatch_script(
        launcher.make_executor("slurm", tmp_path, p, name="g-transfer", stage=d2.tasks), "python x")
    assert "#SBATCH --ntasks-per-node=1" in text and "#SBATCH --gpus-per-node=8" in text
    assert f"#SBATCH --cpus-per-task={8 * p.cpus_per_task}" in text
    text = launcher.sbatch_script(
        launcher.make_executor("slurm", tmp_path, p, name="g-transfer", stage=tv.tasks), "python x")
    assert "#SBATCH --ntasks-per-node=8" in text and f"#SBATCH --cpus-per-task={p.cpus_per_task}" in text


def test_a_probe_job_runs_on_global_rank_zero_alone(monkeypatch):
    """A probe is one process: should its job have several tasks, the others return at once."""
    calls = []

    class Probe(jobs.LinclsJob):
        run = staticmethod(lambda settings: calls.append(settings) or {"top1": 1.0})

    settings = lincls.ProbeSettings(source="/r")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert Probe(settings)() == {} and calls == []
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert Probe(settings)() == {"top1": 1.0} and len(calls) == 1
    assert jobs.LinclsJob.tasks == "probe" and jobs.PretrainJob.tasks == jobs.PreflightJob.tasks == "pretrain"
