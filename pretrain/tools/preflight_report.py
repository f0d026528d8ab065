"""What a preflight job is given and what it reports (``pretrain.tools.preflight`` runs the checks).

The submitting side reads and writes these (a grid's dry run shows the last report's speed, a grid
refuses to start after a failed one) without importing torch; the checks themselves need it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..run import config, rundir

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Tolerance:
    """How far two runs of the same steps may be apart: ``loss``, the largest relative difference
    of a step's loss; ``update``, ||w_a - w_b|| / ||w_b - w_0|| over the query encoder's weights (the
    difference relative to what the steps changed)."""

    loss: float
    update: float


FP32 = Tolerance(loss=1e-4, update=1e-3)
BF16 = Tolerance(loss=5e-2, update=1.0)


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: str  # pass, fail or skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        """``PASS  data  ...`` with the fix after a failure."""
        fix = f"; fix: {self.fix}" if self.status == FAIL and self.fix else ""
        return f"{self.status.upper():4}  {self.name:<13} {self.detail}{fix}"


@dataclass
class PreflightSettings:
    """What one preflight job checks: ``configs`` (the grid's distinct pretraining configs; the first
    is the one whose speed is measured), ``out_dir`` (its report and scratch checkpoints), and the MLflow
    store, experiment, parent run and tags of its tracking check."""

    configs: list[config.Config]
    out_dir: Path
    tracking_uri: str | None = None
    experiment: str = "mochi-bench"
    parent_run: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    steps: int = 2  # steps of each comparison
    compare_batch: int = 32  # images per step in the comparisons (at most the batch per rank)
    sample: int = 32  # images decoded by the data check
    speed_steps: int = 5  # timed steps (after 2 of warm-up) and timed input batches


@dataclass
class Report:
    """A preflight's outcome: its lines, where it ran, and the speeds it measured (global img/s,
    over every rank; None where not measured)."""

    checks: list[Check]
    device: str
    host: str
    world: int
    date: str
    step_img_per_s: float | None = None
    input_img_per_s: float | None = None
    arch: str = ""
    image_size: int = 0
    tolerances: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)  # the settings' tags (a grid's id and profile)

    @property
    def passed(self) -> bool:
        """No line failed."""
        return all(c.status != FAIL for c in self.checks)

    def failures(self) -> list[Check]:
        """The failed lines, in order."""
        return [c for c in self.checks if c.status == FAIL]

    def to_json(self) -> str:
        """The report as ``preflight.json`` holds it."""
        return json.dumps({**dataclasses.asdict(self), "passed": self.passed}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Report":
        """A report read back from ``preflight.json``."""
        d = json.loads(text)
        d.pop("passed", None)
        d["checks"] = [Check(**c) for c in d["checks"]]
        return cls(**d)

    def table(self) -> str:
        """The lines, under a header naming the device, the host and the ranks."""
        head = f"preflight on {self.device} ({self.host}, {self.world} rank{'s' * (self.world > 1)}, {self.date})"
        return "\n".join([head, *(c.line() for c in self.checks)])


def read_report(folder: Path) -> Report | None:
    """The report in ``folder``, or None if there is none (or it cannot be read)."""
    f = Path(folder) / rundir.PREFLIGHT_FILE
    try:
        return Report.from_json(f.read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


class PreflightFailed(RuntimeError):
    """Raised by a job whose preflight failed, after its report is written: the scheduler marks the
    job failed, so arrays that wait on it (afterok) never start."""
