"""``mochi-submit-transfer SOURCE [SOURCE ...] --task TASK=DATA [...]``: transfer jobs via submitit.

    mochi-submit-transfer runs/in1k-mochi runs/in1k-mocov2 --task voc-c4=/datasets/VOCdevkit \\
        --task coco-c4-1x=/datasets/coco --profile gpu-1
    mochi-submit-transfer runs/grids/demo/cells/*/seed0 --task demo-voc=/tmp/det/VOCdevkit --iters 300 --wait

One job per source x task, submitted as an array through the same profiles and clusters as the
grid (``--cluster auto|slurm|local|debug``); each job runs the transfer stage
(``transfer.finetune.run``) for all its trials, resumes from its checkpoints when requeued, and logs
every trial as an MLflow child of the source's pretraining run. Results land in
SOURCE/transfer-TASK/summary.json and in the grid tables (VOC and COCO columns). Everything is
checked before anything is submitted, trials already in SOURCE/transfer-TASK included: a source x
task whose trials are all done with these settings is skipped, one whose trials were trained with
other settings is refused unless ``--discard-trials`` (which discards them here, before
submitting, so a requeued job never does).
"""

from __future__ import annotations

import time
from pathlib import Path

from pretrain.run import rundir
from pretrain.run.cli import ArgumentParser, execute, setup_logging
from pretrain.run.errors import UserError
from slurm import launcher
from slurm.jobs import TransferJob
from transfer.stages import TASKS, FinetuneSettings

# What a refusal to reuse a stage's trials offers here (this command has no --out).
WAYS_ON = "pass --discard-trials to discard those trials and train them again, or move that folder"


def stages_from_args(args) -> list[FinetuneSettings]:
    """The transfer stage of each source x task; raises UserError on bad input."""
    pairs = []
    for item in args.task:
        task, eq, root = item.partition("=")
        if not eq or not root:
            raise UserError(f"--task {item!r}: give TASK=DATA_ROOT, e.g. voc-c4=/datasets/VOCdevkit")
        if task not in TASKS:
            raise UserError(f"unknown transfer task {task!r}; tasks: {', '.join(sorted(TASKS))}")
        if not Path(root).is_dir():
            raise UserError(f"--task {task}: data folder {root} does not exist")
        pairs.append((task, Path(root).resolve()))
    from transfer.weights import resnet50_state

    out = []
    for source in args.sources:
        resnet50_state(source, load=not args.random_init)  # refuse before anything is submitted
        src = Path(source).resolve()
        for task, root in pairs:
            s = FinetuneSettings(source=str(src), task=task, data=str(root), trials=args.trials, iters=args.iters,
                                 batch=args.batch, random_init=args.random_init)
            s.check_data()  # what the job would refuse first, refused here: nothing submitted
            out.append(s)
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse, check every source and task, submit one job each, optionally wait for their results."""
    p = ArgumentParser(prog="mochi-submit-transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", help="run folders, checkpoints or MoCo-format checkpoints")
    p.add_argument("--task", action="append", required=True, metavar="TASK=DATA",
                   help=f"recipe and its data root (repeatable); tasks: {', '.join(sorted(TASKS))}")
    p.add_argument("--trials", type=int, default=5, help="fine-tuning trials per source and task (default 5, "
                                                       "the paper's protocol; their mean and interval are reported)")
    p.add_argument("--iters", type=int, help="training iterations per trial (default: the task's recipe)")
    p.add_argument("--batch", type=int, help="images per iteration (default: the task's recipe)")
    p.add_argument("--random-init", action="store_true", help="the random-init baseline for each source's task")
    launcher.add_cluster_flags(p, f"{launcher.DEFAULT_PROFILE}; each job asks for the profile's eval_gpus")
    p.add_argument("--logs", default="runs/transfer-logs", help="submitit's job folder")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")
    p.add_argument("--discard-trials", action="store_true",
                   help="discard each SOURCE/transfer-TASK's trials (and summary.json) before submitting; without it, "
                        "trials trained with other settings are refused")
    args = p.parse_args(argv)
    if args.trials < 1:
        raise UserError("--trials must be >= 1")
    profile = launcher.load_profile(args.profile or launcher.DEFAULT_PROFILE)
    todo = stages_from_args(args)
    cluster = launcher.resolve_cluster(args.cluster)
    if cluster == "slurm":
        launcher.check_fits(profile, [TransferJob.tasks])
    setup_logging()
    from transfer import finetune, trials

    if args.discard_trials:
        for s in todo:
            trials.discard_trials(s.out_dir)
    todo = [s for s in todo if not all(finetune.finished(s, WAYS_ON))]
    if not todo:
        print("every source x task already has its trials, done with these settings; nothing to submit")
        return 0
    ex = launcher.make_executor(cluster, Path(args.logs), profile, name="transfer", stage=TransferJob.tasks)
    jobs = launcher.submit_all(ex, [TransferJob(s, profile.cpus_per_task) for s in todo])
    for s, job in zip(todo, jobs):
        print(f"{s.task} of {s.source}: {cluster} job {job.job_id} -> {s.out_dir / rundir.SUMMARY_FILE}")
    if not args.wait:
        return 0
    failed = 0
    for s, job in zip(todo, jobs):
        while not job.done():
            time.sleep(5)
        try:
            summary = job.result()["summary"]
            print(f"{s.task} of {s.source}: " + ", ".join(f"{k} {v['mean']:.2f}" for k, v in summary.items()))
        except Exception as e:  # noqa: BLE001 - report every job, then fail
            failed += 1
            print(f"{s.task} of {s.source}: FAILED ({str(e).strip().splitlines()[-1][:200]})")
    return 1 if failed else 0


def entry() -> None:
    """Console-script entry point (``mochi-submit-transfer``)."""
    execute(main)


if __name__ == "__main__":
    entry()
