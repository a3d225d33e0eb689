"""Optuna workers: trials per minute with 1 and 2 worker processes, and the NeVePruner's
per-call time with 1,000 trials in the study. Prints figures; asserts nothing.

    .venv/bin/python benchmarks/optuna_workers.py                       # SQLite file
    .venv/bin/python benchmarks/optuna_workers.py --storage postgresql://...  # or any RDB

Throughput: the same N configurations of the digits study (enqueued, seeded) run to
``--max-epochs`` epochs (no pruning, so both runs do identical work) by one worker
process, then by two at once (each with one torch thread). Trials per minute are
measured from the storage's own timestamps, per worker (its trials / (its last
completion - its first start)) and summed, so process start-up is excluded. That sum can
exceed N x one worker when a worker runs out of trials early (its rate is taken over its
own, shorter span; the trials differ in cost); the "wall" figure is all trials / (the
last completion - the first start), what the study as a whole got.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from neve_tune.optuna import NeVePruner, epoch_key, make_storage, redact_url, report_epoch  # noqa: E402

NEVE = [sys.executable, "-m", "neve_tune.cli"]


def _configs(n: int, seed: int) -> list[dict]:
    sampler = optuna.samplers.RandomSampler(seed=seed)
    s = optuna.create_study(sampler=sampler)
    out = []
    for _ in range(n):
        t = s.ask()
        out.append(
            {
                "lr": t.suggest_float("lr", 0.01, 0.2, log=True),
                "threshold": 1e-4,
                "batch_size": t.suggest_categorical("batch_size", [32, 64, 128]),
            }
        )
        s.tell(t, 0.0)
    return out


def throughput(
    storage_url: str, workers: int, n_trials: int, max_epochs: int, seed: int
) -> tuple[float, float, float]:
    """(trials per minute summed over workers, mean seconds per trial, wall-clock trials per
    minute)."""
    name = f"bench_{workers}w_{uuid.uuid4().hex[:6]}"
    storage = make_storage(storage_url, heartbeat_interval=None)
    study = optuna.create_study(study_name=name, storage=storage)
    for cfg in _configs(n_trials, seed):
        study.enqueue_trial(cfg)
    per_worker = n_trials // workers
    cmd = [
        *NEVE,
        "optuna",
        "worker",
        "digits",
        "--study-name",
        name,
        "--storage",
        storage_url,
        "--trials",
        str(per_worker),
        "--threads",
        "1",
        "--max-epochs",
        str(max_epochs),
        "--min-resource",
        "1000",
        "--unsettled-bound",
        "inf",
        "--no-checkpoints",
        "--quiet",
        "--heartbeat-interval",
        "30",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed: {err[-2000:]}")
    trials = [
        t
        for t in optuna.load_study(study_name=name, storage=storage).trials
        if t.state.is_finished()
    ]
    by_worker: dict[str, list] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs.get("worker", "?"), []).append(t)
    # sum of each worker's steady rate: its trials / (its last completion - its first start)
    rate = 0.0
    for ts in by_worker.values():
        span = (
            max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)
        ).total_seconds()
        rate += len(ts) / span * 60.0
    mean_s = statistics.mean(
        (t.datetime_complete - t.datetime_start).total_seconds() for t in trials
    )
    wall = (
        max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
    ).total_seconds()
    return rate, mean_s, len(trials) / wall * 60.0


def pruner_call_time(
    storage_url: str | None, n_existing: int, epochs: int, calls: int
) -> dict[str, float]:
    """Seconds per should_prune() with ``n_existing`` finished trials (each with
    ``epochs`` reported epochs, epoch user attributes and rung state) in the study."""
    storage = make_storage(storage_url, heartbeat_interval=None) if storage_url else None
    pruner = NeVePruner(min_resource=1, reduction_factor=4)
    study = optuna.create_study(
        study_name=f"prune_{uuid.uuid4().hex[:6]}", storage=storage, pruner=pruner
    )
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)}
    seeded = []
    for i in range(n_existing):
        v0 = 0.05 + 0.5 * ((i * 7919) % 1000) / 1000
        iv = {e: v0 / e for e in range(1, epochs + 1)}
        rungs = {f"completed_rung_{r}": iv[4**r] for r in range(4) if 4**r <= epochs}
        attrs = {
            epoch_key(e): {"epoch": e, "velocity": iv[e], "train_loss": 1.0 / e, "lr": 0.1}
            for e in iv
        }
        seeded.append(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=float(i),
                params={"lr": 0.01},
                distributions=dist,
                intermediate_values=iv,
                user_attrs=attrs,
                system_attrs=rungs,
            )
        )
    t0 = time.perf_counter()
    study.add_trials(seeded)
    seed_s = time.perf_counter() - t0
    between, at_rung = [], []
    done = 0
    while done < calls:
        trial = study.ask()
        for e in range(1, epochs + 1):
            report_epoch(
                trial, {"epoch": e, "velocity": 0.01 / e, "train_loss": 0.5 / e, "lr": 0.1}
            )
            t0 = time.perf_counter()
            trial.should_prune()
            dt = time.perf_counter() - t0
            (at_rung if e in (1, 4, 16, 64) else between).append(dt)
            done += 1
        study.tell(trial, 0.0)
    return {
        "seed_s": seed_s,
        "mean_ms": 1e3 * statistics.mean(between + at_rung),
        "between_rungs_ms": 1e3 * statistics.mean(between),
        "at_rung_ms": 1e3 * statistics.mean(at_rung),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--storage", help="RDB URL for the throughput runs (default: a temporary SQLite file)"
    )
    ap.add_argument("--trials", type=int, default=16, help="trials per throughput run (default 16)")
    ap.add_argument("--max-epochs", type=int, default=5, help="epochs per trial (default 5)")
    ap.add_argument(
        "--existing", type=int, default=1000, help="trials in the study for the pruner timing"
    )
    ap.add_argument("--calls", type=int, default=200, help="should_prune calls timed (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-pruner", action="store_true")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or f"sqlite:///{Path(tmp) / 'bench.db'}"
        if not args.skip_throughput:
            print(
                f"throughput: {args.trials} digits trials x {args.max_epochs} epochs, storage "
                f"{redact_url(url)}, "
                f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.1f}"
            )
            one, one_s, one_wall = throughput(url, 1, args.trials, args.max_epochs, args.seed)
            print(
                f"  1 worker : {one:6.1f} trials/min  ({one_s:.2f} s per trial; wall "
                f"{one_wall:.1f} trials/min)"
            )
            two, two_s, two_wall = throughput(url, 2, args.trials, args.max_epochs, args.seed)
            print(
                f"  2 workers: {two:6.1f} trials/min  ({two_s:.2f} s per trial; {two / one:.2f}x "
                "one worker; "
                f"wall {two_wall:.1f} trials/min, {two_wall / one_wall:.2f}x)"
            )
        if args.skip_pruner:
            return
        print(
            f"NeVePruner.prune per call, {args.existing} finished trials in the study, "
            f"{args.calls} calls:"
        )
        for label, storage in (
            ("in-memory", None),
            ("sqlite", f"sqlite:///{Path(tmp) / 'prune.db'}"),
        ):
            r = pruner_call_time(storage, args.existing, 16, args.calls)
            print(
                f"  {label:9s}: {r['mean_ms']:7.2f} ms mean  ({r['between_rungs_ms']:.2f} ms "
                "between rungs, "
                f"{r['at_rung_ms']:.2f} ms at a rung; seeding took {r['seed_s']:.1f}s)"
            )


if __name__ == "__main__":
    main()
