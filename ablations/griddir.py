"""A grid's folder: what it holds (``pretrain.run.rundir`` names every file), which stages of each
cell x seed are done, the jobs submitted for them, and the lock that keeps a second ``grid.py`` out.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path

from ablations import spec
from pretrain.run import rundir
from pretrain.run.checkpoint import atomic_write
from pretrain.run.errors import UserError


def unit_key(cell: spec.Cell, seed: int) -> str:
    """How jobs.json and progress lines name one cell x seed: ``N128-s128-sp32/seed0``."""
    return f"{cell.id}/seed{seed}"


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
        text = f.read_text()
        saved = spec.from_json(text).identity()
        mine = self.grid.identity()
        if saved != mine:
            what = next(k for k in mine if saved.get(k) != mine[k])
            raise UserError(f"{self.out} holds a different grid ({what} differs: {saved.get(what)!r} there); "
                            f"choose another --out or --name")
        if json.loads(text).get("grid_id", self.grid.grid_id) != self.grid.grid_id:
            raise UserError(f"{self.out} holds this grid as an earlier version of grid.py wrote it (grid id "
                            f"{json.loads(text)['grid_id']}, now {self.grid.grid_id}); choose another --out or --name")

    def run_dir(self, cell: spec.Cell, seed: int) -> Path:
        """The run folder of one cell x seed."""
        return rundir.grid_run_dir(self.out, cell.id, seed)

    def units(self):
        """Every (cell, seed, run folder) of the grid, in grid order."""
        for cell in self.grid.cells:
            for seed in range(self.grid.seeds):
                yield cell, seed, self.run_dir(cell, seed)

    def cell(self, cell_id: str) -> spec.Cell | None:
        """The grid's cell of that id, or None."""
        return next((c for c in self.grid.cells if c.id == cell_id), None)

    def evals_done(self, run_dir: Path, seed: int) -> dict[str, bool]:
        """{stage: done} for the evaluation stages this grid runs after pretraining."""
        out = {}
        if (probe := self.grid.probe(run_dir, seed)) is not None:
            out["lincls"] = (probe.out_dir / rundir.LINCLS_FILE).is_file()
        if (transfer := self.grid.transfer_stage(run_dir)) is not None:
            out["transfer"] = (transfer.out_dir / rundir.SUMMARY_FILE).is_file()
        return out

    def stage_done(self, run_dir: Path, seed: int) -> tuple[bool, bool]:
        """(pretraining done, every evaluation stage done)."""
        return rundir.pretrain_done(run_dir), all(self.evals_done(run_dir, seed).values())

    def complete(self) -> bool:
        """True when every stage of every cell x seed is done."""
        return all(all(self.stage_done(d, seed)) for _, seed, d in self.units())

    def jobs(self) -> dict:
        """{unit key: {stage: job record}} of every job submitted so far."""
        f = self.out / rundir.JOBS_FILE
        return json.loads(f.read_text()) if f.is_file() else {}

    def save_jobs(self, jobs: dict) -> None:
        """Write jobs.json atomically."""
        atomic_write(self.out / rundir.JOBS_FILE, json.dumps(jobs, indent=1).encode())

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


def finish(gd: GridDir, uri: str) -> int:
    """Sync every run folder into MLflow, then write and print the tables and plots."""
    from ablations import report

    return report.report(gd.grid, gd.out, uri, gd.results_dir, gd.complete())
