"""Cluster profiles, the submitit executors they make, and what SLURM says of submitted jobs.

The jobs themselves (typed payloads around the stage functions) are in ``slurm.jobs``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import yaml

from pretrain.run.errors import UserError

log = logging.getLogger(__name__)
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
CLUSTERS = ("auto", "slurm", "local", "debug")
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
    cpus_per_task: int = 2
    mem_gb: float = 4.0
    timeout_min: int = 60
    array_parallelism: int = 8  # array tasks running at once (SLURM %N); local: jobs at once
    img_per_s: float = 1.0  # ResNet-50 MoCHi images/s per GPU (per job on CPU), for estimates
    eval_gpus: int = 1  # GPUs of a linear-probe job (0 on CPU profiles)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra_sbatch: dict = field(default_factory=dict)  # any other sbatch option, e.g. {exclusive: true}
    setup: list = field(default_factory=list)  # shell lines run before the job (module load ...)

    @property
    def gpus_per_job(self) -> int:
        return self.nodes * self.gpus_per_node


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_profile(name: str) -> Profile:
    """A profile by name (slurm/profiles/NAME.yaml) or by path to a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown cluster profile {name!r}; available: {', '.join(profiles())} (or a .yaml path)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"profile {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    known = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    bad = sorted(set(tree) - known)
    if bad:
        raise UserError(f"profile {path}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(known))}")
    if tree.get("gpus_per_node", 0) == 0 and "eval_gpus" not in tree:
        tree["eval_gpus"] = 0
    prof = Profile(name=path.stem, **tree)
    for key in ("nodes", "cpus_per_task", "timeout_min", "array_parallelism"):
        if not isinstance(getattr(prof, key), int) or getattr(prof, key) < 1:
            raise UserError(f"profile {path}: {key} must be an integer >= 1, got {getattr(prof, key)!r}")
    if prof.img_per_s <= 0 or prof.mem_gb <= 0 or prof.gpus_per_node < 0:
        raise UserError(f"profile {path}: img_per_s and mem_gb must be > 0, gpus_per_node >= 0")
    return prof


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


def make_executor(cluster: str, folder: Path, profile: Profile, *, name: str, stage: str,
                  dependency: str | None = None) -> submitit.Executor:
    """An executor for ``stage``: ``pretrain``, one task per GPU on every node; ``eval``, one task per
    evaluation GPU (``eval_gpus``) on one node; ``spawn``, one task holding the evaluation GPUs and
    their cores, for a job that starts its own worker per GPU (detectron2's ``launch``)."""
    ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    gpus = profile.gpus_per_node if stage == "pretrain" else profile.eval_gpus
    nodes = profile.nodes if stage == "pretrain" else 1
    tasks, cores = (1, profile.cpus_per_task * max(gpus, 1)) if stage == "spawn" else (max(gpus, 1),
                                                                                      profile.cpus_per_task)
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
    """Rows of a '|'-separated squeue/sacct listing; [] (with a warning) if the command fails."""
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("cannot query SLURM (%s): %s", args[0], e)
        return []
    return [line.split("|") for line in r.stdout.splitlines() if line.strip()]


# What the launcher asks of submitit that its public API does not offer, each through one of its
# internals: only these two functions touch them, and tests/slurm/test_launcher.py holds them
# against the installed submitit, so an upgrade that moves them fails there, saying which.
def sbatch_script(executor: submitit.Executor, command: str) -> str:
    """The sbatch script a ``make_executor("slurm", ...)`` executor would submit to run ``command``,
    made without submitting: what SLURM is asked for (``#SBATCH`` lines, set-up lines)."""
    return executor._executor._make_submission_file_text(command, "uid")


def submitted_stderr(folder: Path, job_id: str) -> Path | None:
    """The stderr file of job ``job_id`` of an executor in ``folder`` if submitit wrote its payload
    (the submitted pickle; it is moved into place only after ``sbatch`` returned), else None: a job
    without it can only fail."""
    paths = submitit.core.utils.JobPaths(folder, job_id=job_id)
    return paths.stderr if paths.submitted_pickle.is_file() else None


def slurm_jobs(job_ids: list[str] = (), name: str | None = None, since: str | None = None) -> dict[str, SlurmJob]:
    """{job id: SlurmJob} from sacct (every job it has recorded) and squeue (fresher for live jobs),
    array tasks as 12_3, of the given ids or of every job named ``name`` (submitted after
    ``since``, an ISO date). Ids SLURM does not know are UNKNOWN."""
    if not job_ids and name is None:
        return {}
    # An array task that never started is recorded only under its array's id (12_[2-3]): ask for both.
    which = ["-j", ",".join(sorted({*job_ids, *(j.split("_")[0] for j in job_ids)}))] if job_ids else ["--name", name]
    jobs: dict[str, SlurmJob] = {}
    # By name: every state, or sacct leaves out jobs cancelled before they were eligible to start.
    window = ["-S", since or "midnight", "-E", "now", "-s", SACCT_STATES] if not job_ids else []
    for jid, state, start in _query(["sacct", "-n", "-X", "-P", "-o", "JobID,State,Start", *window, *which]):
        # "CANCELLED by 1000"; a task cancelled while pending has no start time.
        st = SlurmJob(state.split()[0] if state.strip() else "UNKNOWN", start.strip() not in ("", "None", "Unknown"))
        for task in expand_array_id(jid.strip()):
            jobs[task] = st
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
