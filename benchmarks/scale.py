"""Scale by simulation: both halves of the cluster-scale benchmark in one command.

- ``ray``: NeVeStopper + NeVeASHAScheduler against Ray's AsyncHyperBandScheduler on the same
  synthetic result stream, 1,000 and 10,000 trials, time per result (``scale_ray.py``);
- ``optuna``: NeVePruner against Optuna's SuccessiveHalvingPruner on the same PostgreSQL
  study of 1,000 and 10,000 trials with several worker processes, time per call
  (``scale_optuna.py``; needs ``--storage postgresql://...`` or ``NEVE_TEST_POSTGRES_URL``).

    python benchmarks/scale.py                       # ray, then optuna (1,000 and 10,000 trials)
    python benchmarks/scale.py ray --trials 1000     # one half; the rest is passed through
    python benchmarks/scale.py optuna --storage postgresql://user:pw@localhost/db --trials 1000

Each half prints its own table; see the docstrings of the two scripts for what is timed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = {
    "ray": (HERE / "scale_ray.py", []),
    "optuna": (HERE / "scale_optuna.py", ["--trials", "1000", "10000"]),
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] not in PARTS:
        print(f"scale.py: unknown part {argv[0]!r}; parts: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    runs = (
        [(argv[0], argv[1:])] if argv else [(name, default) for name, (_, default) in PARTS.items()]
    )
    status = 0
    for name, args in runs:
        print(f"== {name} ==", flush=True)
        status |= subprocess.call([sys.executable, str(PARTS[name][0]), *args])
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
