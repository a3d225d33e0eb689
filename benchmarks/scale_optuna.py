"""NeVePruner against Optuna's own SuccessiveHalvingPruner: time per ``should_prune`` call
on a large shared study, with several worker processes at once. Prints figures; asserts
nothing.

    source .ci/postgres.sh   # or pass --storage postgresql://...
    .venv/bin/python benchmarks/scale_optuna.py --trials 1000 10000 --workers 3
    neve_pg_stop

For each study size N a study is seeded with N finished trials (``study.add_trials``:
every epoch stored as ``report_epoch`` stores it, the rung values as ``NeVePruner``
stores them, a quarter of the trials PRUNED). Then, for each pruner in turn, on that same
study, ``--workers`` fresh processes each run ``--trials-per-worker`` new trials of
``--epochs`` epochs against it: every epoch is reported with ``report_epoch`` (the same
writes for both pruners) and followed by one timed ``trial.should_prune()``, and the
pruner's own ``prune`` inside it is timed too. The new trials beat every seeded one, so
they are promoted at each rung and every epoch is timed. The pruners run in the order
A B B A and each row merges its two runs. ``should_prune`` includes Optuna's own read of the
trial; at a rung (epochs 1 and 4 here) the pruner also reads the other trials' rung
values. Columns: calls timed; ``should_prune`` mean / median / p95 in ms; the pruner's own
``prune``: mean, mean at rung epochs, mean between rungs, max.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
from optuna.distributions import FloatDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from neve_tune.optuna import NeVePruner, epoch_key, make_storage, redact_url, report_epoch  # noqa: E402

PRUNERS = ("NeVePruner", "SuccessiveHalvingPruner")
RUNG_EPOCHS = (1, 4)  # min_resource=1, reduction_factor=4


class _Timed(optuna.pruners.BasePruner):
    """Times the wrapped pruner's own ``prune`` (``should_prune`` also reads the trial)."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner, self.last = inner, 0.0

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        t0 = time.perf_counter()
        try:
            return self.inner.prune(study, trial)
        finally:
            self.last = time.perf_counter() - t0


def _pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "NeVePruner":  # no unsettled rule: only the rungs decide, as in Optuna's pruner
        return NeVePruner(
            "train_loss", min_resource=1, reduction_factor=4, unsettled_bound=float("inf")
        )
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=4)


def _epoch(rng: random.Random, e: int, lr: float) -> dict:
    velocity = lr / e * rng.uniform(0.5, 1.5)
    return {
        "epoch": e,
        "velocity": velocity,
        "train_loss": 2.3 * (1 - lr / 2) ** e,
        "lr": lr,
        "neve_stop": False,
        "diverged": False,
        "train_samples": 1000 * e,
        "epoch_time_s": 1.0,
    }


def seed(study: optuna.Study, n: int, epochs: int, seed_: int) -> None:
    rng = random.Random(seed_)
    dist = {"lr": FloatDistribution(1e-3, 1.0, log=True)}
    batch = []
    for i in range(n):
        lr = 10 ** rng.uniform(-3, 0)
        last = rng.randint(1, epochs) if i % 4 == 0 else epochs
        hist = [_epoch(rng, e, lr) for e in range(1, last + 1)]
        system = {}
        for r, e in enumerate(RUNG_EPOCHS):
            if e <= last:
                m = hist[e - 1]
                system[f"completed_rung_{r}"] = m["train_loss"]
        batch.append(
            optuna.trial.create_trial(
                state=TrialState.PRUNED if last < epochs else TrialState.COMPLETE,
                value=hist[-1]["train_loss"] if last == epochs else None,
                params={"lr": lr},
                distributions=dist,
                intermediate_values={m["epoch"]: m["velocity"] for m in hist},
                user_attrs={epoch_key(m["epoch"]): m for m in hist},
                system_attrs=system,
            )
        )
        if len(batch) == 500:
            study.add_trials(batch)
            batch = []
    if batch:
        study.add_trials(batch)


def worker(
    url: str, name: str, pruner: str, trials: int, epochs: int, seed_: int, out: mp.Queue
) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(seed_)
    timed = _Timed(_pruner(pruner))
    study = optuna.load_study(
        study_name=name,
        storage=make_storage(url, heartbeat_interval=None),
        pruner=timed,
        sampler=optuna.samplers.RandomSampler(seed=seed_),
    )
    times: list[tuple[int, float, float]] = []
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
        state, value = TrialState.COMPLETE, None
        for e in range(1, epochs + 1):
            m = {
                **_epoch(rng, e, lr),
                "velocity": 1e-4 / e,
                "train_loss": 1e-2 / e,
            }  # best so far: promoted
            report_epoch(trial, m)
            t0 = time.perf_counter()
            pruned = trial.should_prune()
            times.append((e, time.perf_counter() - t0, timed.last))
            value = m["train_loss"]
            if pruned:
                state = TrialState.PRUNED
                break
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    out.put(times)


def run_workers(url: str, name: str, pruner: str, workers: int, trials: int, epochs: int) -> list:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(url, name, pruner, trials, epochs, 100 + w, out))
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    times = [x for _ in procs for x in out.get()]
    for p in procs:
        p.join()
    return times


def summary(n: int, pruner: str, times: list) -> str:
    total = sorted(t * 1e3 for _, t, _ in times)
    own = sorted(p * 1e3 for _, _, p in times)
    at = [p * 1e3 for e, _, p in times if e in RUNG_EPOCHS]
    off = [p * 1e3 for e, _, p in times if e not in RUNG_EPOCHS]
    return (
        f"{n:>7} {pruner:<24} {len(total):>5} {statistics.fmean(total):>8.2f} "
        f"{statistics.median(total):>7.2f} "
        f"{total[int(0.95 * (len(total) - 1))]:>7.2f} {statistics.fmean(own):>8.2f} "
        f"{statistics.fmean(at) if at else float('nan'):>8.2f} "
        f"{statistics.fmean(off) if off else float('nan'):>8.2f} {own[-1]:>7.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--storage",
        default=os.environ.get("NEVE_TEST_POSTGRES_URL"),
        help="RDB URL (default: $NEVE_TEST_POSTGRES_URL, set by `source .ci/postgres.sh`)",
    )
    ap.add_argument(
        "--trials", type=int, nargs="+", default=[1000], help="seeded finished trials per study"
    )
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--trials-per-worker", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args(argv)
    if not args.storage:
        ap.error("--storage is required (or source .ci/postgres.sh first)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"storage {redact_url(args.storage)}, {args.workers} worker processes x "
        f"{args.trials_per_worker} trials x "
        f"up to {args.epochs} epochs; rungs at epochs {RUNG_EPOCHS}"
    )
    print(f"{'':>7} {'':<24} {'':>5} {'should_prune() ms':^24} {'the pruner own prune() ms':^35}")
    print(
        f"{'trials':>7} {'pruner':<24} {'calls':>5} {'mean':>8} {'median':>7} {'p95':>7} "
        f"{'mean':>8} "
        f"{'at rung':>8} {'between':>8} {'max':>7}"
    )
    for n in args.trials:
        name = f"scale_{n}_{uuid.uuid4().hex[:6]}"
        storage = make_storage(args.storage, heartbeat_interval=None)
        study = optuna.create_study(study_name=name, storage=storage)
        t0 = time.perf_counter()
        seed(study, n, args.epochs, seed_=n)
        print(f"{n:>7} (seeded in {time.perf_counter() - t0:.0f} s)", flush=True)
        times: dict[str, list] = {p: [] for p in PRUNERS}
        for pruner in (
            *PRUNERS,
            *reversed(PRUNERS),
        ):  # A B B A: the study grows and the server warms up
            times[pruner] += run_workers(
                args.storage, name, pruner, args.workers, args.trials_per_worker, args.epochs
            )
        for pruner in PRUNERS:
            print(summary(n, pruner, times[pruner]), flush=True)
        optuna.delete_study(study_name=name, storage=storage)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
