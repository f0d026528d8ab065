"""A grid's folder: what it holds (``pretrain.run.rundir`` names every file), which stages of each
cell x seed are done, the jobs submitted for them, and the lock that keeps a second ``grid.py`` out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from dataclasses import dataclass
from pathlib import Path

from ablations import spec
from pretrain.run import rundir, sameness
from pretrain.run.checkpoint import atomic_write
from pretrain.run.errors import UserError


@dataclass(frozen=True)
class Unit:
    """One row x seed of a grid: a cell (pretrained here, then evaluated) or a reference row (only
    evaluated), and its run folder."""

    seed: int
    run_dir: Path
    cell: spec.Cell | None = None
    ref: spec.Reference | None = None

    @property
    def row(self) -> str:
        """The row's id: the cell's, or the reference row's."""
        return self.cell.id if self.cell is not None else self.ref.id

    @property
    def key(self) -> str:
        """How jobs.json and progress lines name the unit: ``N128-s128-sp32/seed0``."""
        return f"{self.row}/seed{self.seed}"

    @property
    def pretrains(self) -> bool:
        """Whether the grid pretrains this unit (a cell) or only evaluates it (a reference row)."""
        return self.cell is not None


class GridDir:
    """OUT/grid.json (identity), OUT/jobs.json (submitted jobs), OUT/cells/CELL/seedK (run folders)."""

    def __init__(self, out: Path, grid: spec.Grid, results_dir: Path):
        # Absolute: jobs run from wherever the scheduler starts them.
        self.out, self.grid, self.results_dir = Path(out).resolve(), grid, Path(results_dir)

    def check_same(self) -> None:
        """UserError if the folder holds a different grid (other cells, seeds, base or stages)."""
        f = self.out / rundir.GRID_FILE
        if not f.is_file():
            return
        saved_grid, written_id = spec.read_grid_file(f)
        diff = sameness.first_difference(saved_grid.identity(), self.grid.identity(), ignore=frozenset())
        if diff:
            raise UserError(sameness.differs(self.out, "a grid", diff, "choose another --out or --name"))
        if written_id is not None and written_id != self.grid.grid_id:
            raise UserError(f"{self.out} holds this grid as an earlier version of grid.py wrote it (grid id "
                            f"{written_id}, now {self.grid.grid_id}); choose another --out or --name")

    def run_dir(self, cell: spec.Cell, seed: int) -> Path:
        """The run folder of one cell x seed."""
        return rundir.grid_run_dir(self.out, cell.id, seed)

    def units(self) -> list[Unit]:
        """Every row x seed of the grid, in table order: the cells, then the reference rows."""
        seeds = range(self.grid.seeds)
        return ([Unit(s, self.run_dir(c, s), cell=c) for c in self.grid.cells for s in seeds]
                + [Unit(s, rundir.grid_run_dir(self.out, r.id, s), ref=r) for r in self.grid.references for s in seeds])

    def probe(self, u: Unit):
        """The unit's linear probe (``ProbeSettings``), or None."""
        return self.grid.probe(u.run_dir, u.seed, u.ref)

    def transfer(self, u: Unit):
        """The unit's transfer stage (``FinetuneSettings``), or None."""
        return self.grid.transfer_stage(u.run_dir, u.ref)

    def evals_done(self, u: Unit) -> dict[str, bool]:
        """{stage: done} for the evaluation stages this grid runs on the unit."""
        out = {}
        if (probe := self.probe(u)) is not None:
            out["lincls"] = (probe.out_dir / rundir.LINCLS_FILE).is_file()
        if (transfer := self.transfer(u)) is not None:
            out["transfer"] = (transfer.out_dir / rundir.SUMMARY_FILE).is_file()
        return out

    def probe_selections(self) -> list[dict]:
        """How each finished linear probe chose its settings, in table order: {row, seed, mode,
        selection} with the ``selection`` of its lincls.json (candidate lrs and their validation
        top-1, the chosen lr, epochs, validation size, rule). What source.json records beside the tables."""
        out = []
        for u in self.units():
            probe = self.probe(u)
            f = probe.out_dir / rundir.LINCLS_FILE if probe is not None else None
            if f is not None and f.is_file():
                r = json.loads(f.read_text())
                out.append({"row": u.row, "seed": u.seed, "mode": r["mode"], "selection": r["selection"]})
        return out

    def pretrained(self, u: Unit) -> bool:
        """Whether the unit's pretraining is done (always, for a reference row)."""
        return rundir.pretrain_done(u.run_dir) if u.pretrains else True

    def stage_done(self, u: Unit) -> tuple[bool, bool]:
        """(pretraining done, every evaluation stage done)."""
        return self.pretrained(u), all(self.evals_done(u).values())

    def complete(self) -> bool:
        """True when every stage of every row x seed is done."""
        return all(all(self.stage_done(u)) for u in self.units())

    def jobs(self) -> dict:
        """{unit key: {stage: job record}} of every job submitted so far."""
        f = self.out / rundir.JOBS_FILE
        return json.loads(f.read_text()) if f.is_file() else {}

    def save_jobs(self, jobs: dict) -> None:
        """Write jobs.json atomically."""
        atomic_write(self.out / rundir.JOBS_FILE, json.dumps(jobs, indent=1).encode())

    def submitting(self) -> list[dict]:
        """The batches whose submission began but whose job records may not have been written (a
        crash in between): [{name, stage, units, since}] (``ablations.submit.recover``)."""
        f = self.out / rundir.SUBMITTING_FILE
        return json.loads(f.read_text()) if f.is_file() else []

    def save_submitting(self, batches: list[dict]) -> None:
        """Write submitting.json atomically."""
        atomic_write(self.out / rundir.SUBMITTING_FILE, json.dumps(batches, indent=1).encode())

    def save_grid(self) -> None:
        """Write grid.json (the folder's identity) atomically."""
        atomic_write(self.out / rundir.GRID_FILE, self.grid.to_json().encode())

    @property
    def logs(self) -> Path:
        """submitit's folder: job scripts, pickles and logs."""
        return self.out / rundir.LOGS

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder for one ``grid.py``; UserError if another holds it."""
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / rundir.LOCK_FILE, "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"another grid.py is working on {self.out}; wait for it or use --status") from None
            yield

