"""``python transfer/submit.py ...``: the old path of ``python slurm/submit_transfer.py ...``, which
submits transfer jobs. Submission belongs to slurm/ (transfer/ imports nothing above it), so this
script only hands its arguments over, in a new process."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    script = Path(__file__).resolve().parent.parent / "slurm" / "submit_transfer.py"
    os.execv(sys.executable, [sys.executable, str(script), *sys.argv[1:]])
