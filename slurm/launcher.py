"""Cluster profiles, the submitit executors they make, and what SLURM says of submitted jobs.

The jobs themselves (typed payloads around the stage functions) are in ``slurm.jobs``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import subprocess
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from pretrain.run import config, yamlfile
from pretrain.run.errors import UserError

log = logging.getLogger(__name__)
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
CLUSTERS = ("auto", "slurm", "local", "debug")
# The profile of a command that submits jobs when neither the command line nor a preset names one.
DEFAULT_PROFILE = "gpu-1"
# Relative speed of a MoCHi step against ResNet-50, for --dry-run estimates only.
ARCH_SPEED = {"resnet18": 2.6, "resnet34": 1.5, "resnet50": 1.0, "resnet101": 0.58, "resnet152": 0.41}


@dataclass
class Profile:
    """Where and how jobs run: one YAML file in slurm/profiles/."""

    name: str
    description: str = ""
    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0  # pretraining runs one task (one DDP rank) per GPU
    tasks_per_node: int | None = None  # pretraining's DDP ranks per node; null: one per GPU, one on CPU
    cpus_per_task: int = 2
    mem_gb: float = 4.0
    timeout_min: int = 60
    array_parallelism: int = 8  # array tasks running at once (SLURM %N); local: jobs at once
    img_per_s: float = 1.0  # ResNet-50 MoCHi images/s per GPU (per job on CPU), the step alone, for estimates
    # two-view images/s per GPU (per job on CPU) each input pipeline (data.pipeline) delivers on these
    # nodes: a run goes at the slower of the step and its pipeline; a pipeline not listed is not a bound
    input_img_per_s: dict[str, float] = field(default_factory=dict)
    rates_source: str | None = None  # where img_per_s and input_img_per_s come from (device, date, page)
    eval_gpus: int = 1  # GPUs of a linear-probe job (0 on CPU profiles)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra_sbatch: dict = field(default_factory=dict)  # any other sbatch option, e.g. {exclusive: true}
    setup: list = field(default_factory=list)  # shell lines run before the job (module load ...)
    # data.path exists only on the compute nodes (node-local scratch): not checked on the
    # submitting host (the preflight checks it on a node)
    data_on_nodes: bool = False

    @property
    def gpus_per_job(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def pretrain_tasks(self) -> int:
        """Tasks (DDP ranks) on each node of a pretraining job: ``tasks_per_node``, else one per GPU,
        one on a CPU profile."""
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def ranks_per_job(self) -> int:
        """The DDP ranks of one pretraining job, over all its nodes."""
        return self.nodes * self.pretrain_tasks


# sbatch options a profile sets through its own keys, per stage: extra_sbatch may not set them too
# (it goes into every stage's sbatch, where it would give a single-process probe a pretraining's tasks).
OWN_KEYS = {"nodes": "nodes", "ntasks": "tasks_per_node", "ntasks_per_node": "tasks_per_node",
            "tasks_per_node": "tasks_per_node", "gpus": "gpus_per_node", "gpus_per_node": "gpus_per_node",
            "gres": "gpus_per_node", "gpus_per_task": "gpus_per_node", "mem_per_gpu": "mem_gb", "mem_per_cpu": "mem_gb",
            "cpus_per_task": "cpus_per_task", "mem": "mem_gb", "time": "timeout_min", "partition": "partition",
            "account": "account", "qos": "qos", "constraint": "constraint"}


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name: str) -> Profile:
    """A profile by name (slurm/profiles/NAME.yaml) or by path to a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown cluster profile {name!r}; available: {', '.join(profiles())} (or a .yaml path)")
    tree = yamlfile.read(path, f"profile {path}") or {}
    if not isinstance(tree, dict):
        raise UserError(f"profile {path}: expected a mapping of profile keys, got {tree!r}")
    known = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    bad = sorted(set(tree) - known)
    if bad:
        raise UserError(f"profile {path}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(Profile)
    # every value as its field declares it (64G is not a float, a setup string is not a list of lines)
    tree = {k: v if k == "extra_sbatch" else config.typed(f"profile {path}: {k}", v, hints[k]) for k, v in tree.items()}
    if not all(isinstance(line, str) for line in tree.get("setup", [])):
        raise UserError(f"profile {path}: setup must be a list of shell lines (strings)")
    if tree.get("gpus_per_node", 0) == 0 and "eval_gpus" not in tree:
        tree["eval_gpus"] = 0
    prof = Profile(name=path.stem, **tree)
    for key in ("nodes", "cpus_per_task", "timeout_min", "array_parallelism"):
        if getattr(prof, key) < 1:
            raise UserError(f"profile {path}: {key} must be an integer >= 1, got {getattr(prof, key)!r}")
    pipelines = config.PIPELINES
    for pipe, rate in prof.input_img_per_s.items():
        if pipe not in pipelines or rate <= 0:
            raise UserError(f"profile {path}: input_img_per_s {pipe}: {rate}: give images/s > 0 for one of "
                            f"{', '.join(pipelines)}")
    if prof.img_per_s <= 0 or prof.mem_gb <= 0 or prof.gpus_per_node < 0 or prof.eval_gpus < 0:
        raise UserError(f"profile {path}: img_per_s and mem_gb must be > 0, gpus_per_node and eval_gpus >= 0")
    tasks = prof.tasks_per_node
    if tasks is not None and tasks < 1:
        raise UserError(f"profile {path}: tasks_per_node must be an integer >= 1 or null, got {tasks!r}")
    if tasks is not None and prof.gpus_per_node and tasks != prof.gpus_per_node:
        raise UserError(f"profile {path}: tasks_per_node {tasks} with gpus_per_node {prof.gpus_per_node}: pretraining "
                        f"runs one task (DDP rank) per GPU; set tasks_per_node to {prof.gpus_per_node} or null")
    if not isinstance(prof.extra_sbatch, dict):
        raise UserError(f"profile {path}: extra_sbatch must be a mapping of sbatch options, got {prof.extra_sbatch!r}")
    for key in prof.extra_sbatch:
        if (own := OWN_KEYS.get(str(key).replace("-", "_"))) is not None:
            raise UserError(f"profile {path}: extra_sbatch sets {key}, which the profile's own key {own} sets per "
                            f"stage; set {own} instead")
    return prof


def add_cluster_flags(p, profile_default: str) -> None:
    """``--cluster`` and ``--profile``, as every command that submits jobs takes them."""
    p.add_argument("--cluster", default="auto", choices=CLUSTERS, metavar="CLUSTER",
                   help="slurm, local (submitit's processes on this machine), debug (in this process) or auto "
                        "(default: slurm where a controller answers `scontrol ping`, else local)")
    p.add_argument("--profile", help=f"cluster profile: {', '.join(profiles())} or a .yaml path "
                                     f"(default: {profile_default})")


def controller_up() -> bool:
    """True when a SLURM controller answers ``scontrol ping`` (through $SLURM_CONF if set)."""
    conf = os.environ.get("SLURM_CONF")
    known = [conf] if conf else ["/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/run/slurm/conf/slurm.conf"]
    if not any(Path(c).is_file() for c in known):
        return False  # scontrol would wait ~20 s for a configless controller that is not there
    try:
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "UP" in r.stdout


def resolve_cluster(choice: str) -> str:
    """auto -> slurm where a controller answers, else local; slurm without one is a user error."""
    if choice not in CLUSTERS:
        raise UserError(f"--cluster {choice!r}: choose one of {', '.join(CLUSTERS)}")
    if choice == "auto":
        return "slurm" if controller_up() else "local"
    if choice == "slurm" and not controller_up():
        raise UserError(
            "--cluster slurm: no SLURM controller answers `scontrol ping` (is SLURM_CONF set? "
            "for a one-machine cluster: bash slurm/cluster.sh start)"
        )
    return choice


@dataclass(frozen=True)
class Node:
    """One node of a partition, as sinfo lists it."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int


def gres_gpus(gres: str) -> int:
    """The GPUs in a sinfo GRES field: ``gpu:a100:4(S:0-1),shard:8`` has 4, ``(null)`` none."""
    total = 0
    for entry in re.sub(r"\([^)]*\)", "", gres).split(","):  # (S:0,1): the sockets they sit on
        kind, *rest = entry.strip().split(":")
        if kind == "gpu":
            total += int(rest[-1]) if rest and rest[-1].isdigit() else 1
    return total


def partitions() -> tuple[dict[str, list[Node]], str | None]:
    """{partition: its nodes} as sinfo lists them, and the cluster's default partition (None if none)."""
    parts: dict[str, list[Node]] = {}
    default = None
    for part, cpus, mem, gres, node in _query(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%N"]):
        if part.endswith("*"):  # sinfo marks the default partition
            part = default = part[:-1]
        parts.setdefault(part, []).append(Node(node, int(cpus), int(mem), gres_gpus(gres)))
    return parts, default


# How check_fits names a stage's jobs, and the profile key that sets their GPUs (make_executor's stages).
STAGE_JOBS = {"pretrain": ("a pretraining job", "gpus_per_node"), "eval": ("an evaluation job", "eval_gpus"),
              "probe": ("a linear-probe job", "eval_gpus"), "spawn": ("an evaluation job", "eval_gpus")}


def check_fits(profile: Profile, stages: Iterable[str]) -> None:
    """UserError, before anything is submitted or written, when the SLURM cluster cannot run the
    profile's jobs of ``stages`` (``make_executor``'s): its partition (the cluster's default where
    ``partition`` is null) does not exist, or no node of it holds what one job asks of each of its
    nodes (the CPUs of all its tasks, ``mem_gb``, its GPUs), or fewer than ``nodes`` nodes do. sbatch
    accepts such a job and it pends forever. Accounts, qos and constraints are left to sbatch."""
    parts, default = partitions()
    if not parts:
        log.warning("sinfo lists no partition; profile %s is not checked against the cluster", profile.name)
        return
    where = f"profile {profile.name}"
    known = ", ".join(sorted(parts))
    name = profile.partition or default
    if name is None:
        raise UserError(f"{where}: partition is null and the cluster has no default partition; set partition to one "
                        f"of {known}")
    if name not in parts:
        raise UserError(f"{where}: partition {name!r} does not exist on this cluster; partitions: {known}")
    nodes = parts[name]
    mem_mb = int(profile.mem_gb) * 1024  # what submitit asks for: --mem=<int>GB
    for stage in stages:
        what, gpu_key = STAGE_JOBS[stage]
        # The executor itself says what is asked: nothing is written, the folder is never made.
        r = sbatch_request(make_executor("slurm", Path(os.devnull), profile, name="check", stage=stage))
        cpus = r.tasks_per_node * r.cpus_per_task
        if cpus > (most := max(n.cpus for n in nodes)):
            raise UserError(f"{where}: {what} asks for {cpus} CPUs per node (cpus_per_task {r.cpus_per_task} x "
                            f"{r.tasks_per_node} task{'s' * (r.tasks_per_node > 1)}), but the largest node in "
                            f"partition {name} has {most}")
        if mem_mb > (most := max(n.mem_mb for n in nodes)):
            raise UserError(f"{where}: {what} asks for mem_gb {profile.mem_gb:g} ({mem_mb} MB per node), but the "
                            f"largest node in partition {name} has {most} MB")
        if r.gpus_per_node > (most := max(n.gpus for n in nodes)):
            raise UserError(f"{where}: {what} asks for {r.gpus_per_node} GPUs per node ({gpu_key}), but the node "
                            f"with the most in partition {name} has {most}")
        fits = [n for n in nodes if n.cpus >= cpus and n.mem_mb >= mem_mb and n.gpus >= r.gpus_per_node]
        if len(fits) < r.nodes:
            raise UserError(f"{where}: {what} asks for {r.nodes} nodes (nodes) of {cpus} CPUs, {mem_mb} MB and "
                            f"{r.gpus_per_node} GPUs, but partition {name} has {len(fits)} such nodes")


def make_executor(cluster: str, folder: Path, profile: Profile, *, name: str, stage: str,
                  dependency: str | None = None) -> submitit.Executor:
    """An executor for ``stage``, by how its job uses tasks: ``pretrain``, data parallel,
    ``pretrain_tasks`` tasks (DDP ranks) on each of ``nodes`` nodes, one GPU per task on a GPU
    profile; ``eval``, data parallel on one node, one task per evaluation GPU (``eval_gpus``);
    ``probe``, one process: one task, on one of the evaluation GPUs; ``spawn``, one task holding the
    evaluation GPUs and their cores, for a job that starts its own worker per GPU (detectron2's
    ``launch``)."""
    if stage not in STAGE_JOBS:
        raise ValueError(f"unknown stage layout {stage!r}; one of {', '.join(STAGE_JOBS)}")
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    gpus = {"pretrain": profile.gpus_per_node, "probe": min(profile.eval_gpus, 1)}.get(stage, profile.eval_gpus)
    nodes = profile.nodes if stage == "pretrain" else 1
    tasks, cores = {"pretrain": (profile.pretrain_tasks, profile.cpus_per_task), "probe": (1, profile.cpus_per_task),
                    "spawn": (1, profile.cpus_per_task * max(gpus, 1))}.get(stage, (max(gpus, 1), profile.cpus_per_task))
    params: dict = dict(
        name=name, timeout_min=profile.timeout_min, nodes=nodes, tasks_per_node=tasks,
        cpus_per_task=cores, mem_gb=profile.mem_gb,
    )
    if gpus:  # a CPU job asks for no GPU resource at all (clusters without GRES refuse --gpus-per-node=0)
        params["gpus_per_node"] = gpus
    if cluster == "slurm":
        extra = dict(profile.extra_sbatch)
        if dependency:
            # A failed pretraining job cancels its evaluation instead of leaving it pending forever.
            extra.update(dependency=dependency, kill_on_invalid_dep="yes")
        params.update(
            slurm_array_parallelism=profile.array_parallelism, slurm_additional_parameters=extra,
            slurm_setup=list(profile.setup), slurm_signal_delay_s=120,
        )
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(profile, key):
                params[f"slurm_{key}"] = getattr(profile, key)
    elif cluster == "local":
        params = dict(name=name, timeout_min=profile.timeout_min, tasks_per_node=1,
                      gpus_per_node=min(gpus, 1), local_setup=list(profile.setup))
    ex.update_parameters(**params)
    return ex


ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


@dataclass(frozen=True)
class SlurmJob:
    """What SLURM says of one job (or array task): its state, and whether it ever started."""

    state: str
    started: bool = True

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.state in ACTIVE


UNKNOWN = SlurmJob("UNKNOWN", started=False)
SACCT_STATES = "BF,CA,CD,DL,F,NF,OOM,PD,PR,R,RQ,RS,RV,S,TO"  # every job state sacct filters on


def expand_array_id(job_id: str) -> list[str]:
    """sacct's and squeue's compressed array notation as task ids: ``12_[0-2,5%2]`` is 12_0, 12_1,
    12_2 and 12_5 (``%2`` is the throttle); any other id is itself."""
    base, sep, rest = job_id.partition("_[")
    if not sep:
        return [job_id]
    out = []
    for part in rest.rstrip("]").split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _query(args: list[str]) -> list[list[str]]:
    """Rows of a '|'-separated sinfo/squeue/sacct listing; [] (with a warning) if the command fails."""
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("cannot query SLURM (%s): %s", args[0], e)
        return []
    return [line.split("|") for line in r.stdout.splitlines() if line.strip()]


# What the launcher asks of submitit that its public API does not offer, each through one of its
# internals: only these three functions touch them, and tests/slurm/test_launcher.py holds them
# against the installed submitit, so an upgrade that moves them fails there, saying which.
def sbatch_script(executor: submitit.Executor, command: str) -> str:
    """The sbatch script a ``make_executor("slurm", ...)`` executor would submit to run ``command``,
    made without submitting: what SLURM is asked for (``#SBATCH`` lines, set-up lines)."""
    return executor._executor._make_submission_file_text(command, "uid")


@dataclass(frozen=True)
class Request:
    """What each job of a SLURM executor asks for on every one of its nodes."""

    nodes: int
    tasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int


def sbatch_request(executor: submitit.Executor) -> Request:
    """The nodes, tasks, cores and GPUs a ``make_executor("slurm", ...)`` executor asks SLURM for."""
    p = executor._executor.parameters
    return Request(p["nodes"], p["ntasks_per_node"], p["cpus_per_task"], p.get("gpus_per_node", 0))


def submitted_stderr(folder: Path, job_id: str) -> Path | None:
    """The stderr file of job ``job_id`` of an executor in ``folder`` if submitit wrote its payload
    (the submitted pickle; it is moved into place only after ``sbatch`` returned), else None: a job
    without it can only fail."""
    paths = submitit.core.utils.JobPaths(folder, job_id=job_id)
    return paths.stderr if paths.submitted_pickle.is_file() else None


class SbatchRefused(UserError):
    """sbatch refused a submission (an unknown partition, account, qos or feature, a bad option):
    its first line of complaint."""


def submit_all(executor: submitit.Executor, payloads: list) -> list:
    """Submit ``payloads`` as one batch (a job array on SLURM when more than one) and return their
    submitit jobs. A refusal by sbatch is SbatchRefused with sbatch's own first line; nothing of the
    batch then reached SLURM (one sbatch call submits it all)."""
    try:
        # submitit prints sbatch's complaint before raising it: it is said once, in the error.
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            jobs = [executor.submit(p) for p in payloads]
    except submitit.core.utils.FailedJobError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise SbatchRefused(lines[0] if lines else "sbatch refused the submission") from None
    return jobs


def sacct_jobs(rows: list[list[str]]) -> dict[str, SlurmJob]:
    """{job id: SlurmJob} of ``sacct -P -o JobID,State,Start`` rows, array tasks as 12_3. A task's
    own row wins over its array's summary row (12_[1-3%2], the array's remainder: it names tasks
    that have rows of their own too, which ran or even completed); that row fills only the tasks
    without one, which never started."""
    own: dict[str, SlurmJob] = {}
    summary: dict[str, SlurmJob] = {}
    for jid, state, start in rows:
        # "CANCELLED by 1000"; a task cancelled while pending has no start time.
        st = SlurmJob(state.split()[0] if state.strip() else "UNKNOWN", start.strip() not in ("", "None", "Unknown"))
        tasks = expand_array_id(jid.strip())
        for task in tasks:
            (own if tasks == [jid.strip()] else summary)[task] = st
    return {**summary, **own}


def slurm_jobs(job_ids: list[str] = (), name: str | None = None, since: str | None = None) -> dict[str, SlurmJob]:
    """{job id: SlurmJob} from sacct (every job it has recorded) and squeue (fresher for live jobs),
    array tasks as 12_3, of the given ids or of every job named ``name`` (submitted after
    ``since``, an ISO date). Ids SLURM does not know are UNKNOWN."""
    if not job_ids and name is None:
        return {}
    # An array task that never started is recorded only under its array's id (12_[2-3]): ask for both.
    which = ["-j", ",".join(sorted({*job_ids, *(j.split("_")[0] for j in job_ids)}))] if job_ids else ["--name", name]
    # By name: every state, or sacct leaves out jobs cancelled before they were eligible to start.
    window = ["-S", since or "midnight", "-E", "now", "-s", SACCT_STATES] if not job_ids else []
    jobs = sacct_jobs(_query(["sacct", "-n", "-X", "-P", "-o", "JobID,State,Start", *window, *which]))
    for jid, state in _query(["squeue", "-h", "-r", "-o", "%i|%T", *which]):
        jobs[jid.strip()] = SlurmJob(state.strip(), started=state.strip() not in ("PENDING", "CONFIGURING")
                                     or jobs.get(jid.strip(), UNKNOWN).started)
    return {j: jobs.get(j, UNKNOWN) for j in job_ids} if job_ids else jobs


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: SLURM state} of the given jobs (``slurm_jobs``)."""
    return {j: st.state for j, st in slurm_jobs(job_ids).items()}


def local_state(pid: str) -> str:
    """RUNNING while the local job's controller process lives, else ENDED."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return "ENDED"
    except PermissionError:
        return "RUNNING"
    try:  # a finished child of this very process lingers as a zombie until reaped
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return "ENDED"
    except OSError:
        pass
    return "RUNNING"
