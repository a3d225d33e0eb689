"""Per-result overhead of NeVeStopper + NeVeASHAScheduler at 1,000 and 10,000 trials,
side by side with Ray's own AsyncHyperBandScheduler on the same result stream.

No training and no Ray cluster: as in Ray's own scheduler benchmarks, fake trials (objects
with a ``trial_id``) report synthetic per-epoch results, and the driver calls the hooks the
way Tune's controller does (stopper first, then ``on_trial_result`` on the flattened
result; ``on_trial_complete`` when a trial stops; the next trial is added when one ends,
``--concurrent`` trials running at once). Each trial's results are a fixed function of its
id (a training loss decaying to its own floor, a velocity decaying to its own rate, a
searched threshold; a few trials diverge or stall), so both sides see the same stream;
a trial ends when a scheduler stops it or when its own controller ends it (``neve_stop``,
``diverged``, ``stalled``), as a NeVe trainable does.

Only the time inside the hooks is counted. Ray's ASHA computes a percentile over every
value recorded at a rung on each decision (O(n) in the trials at the rung); NeVeASHA keeps
each rung sorted (O(log n) comparisons) and writes nothing to disk. Also printed: the time
of the state callback's ``get_state`` at the end (Tune calls it when it checkpoints the
experiment, not on every result).

    .venv/bin/python benchmarks/scale_ray.py                   # ~15 s on 2 cores
    .venv/bin/python benchmarks/scale_ray.py --trials 1000 --concurrent 16
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from neve_tune.ray import NeVeASHAScheduler, NeVeStopper

STOP = TrialScheduler.STOP


def trial_results(
    index: int, max_t: int, min_epochs: int
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The (raw, flattened) results of trial ``index``, epoch by epoch, until its own
    controller ends it or ``max_t``."""
    rng = random.Random(index)
    tid = f"{index:06d}"
    threshold = math.exp(rng.uniform(math.log(1e-3), math.log(1e-1)))
    floor = rng.uniform(0.01, 1.0)
    tau = rng.uniform(2, 20)
    v0, v_rate = rng.uniform(0.2, 1.0), rng.uniform(0.05, 0.5)
    kind = rng.random()
    diverge_at = rng.randint(1, 5) if kind < 0.02 else None
    stall = 0.02 <= kind < 0.05
    for epoch in range(1, max_t + 1):
        loss = 2.3 if stall else floor + (2.3 - floor) * math.exp(-epoch / tau) + rng.gauss(0, 0.01)
        velocity = v0 * math.exp(-v_rate * epoch)
        diverged = diverge_at == epoch
        if diverged:
            loss = velocity = math.nan
        below = not diverged and epoch >= min_epochs and velocity < threshold
        stalled = stall and below
        neve_stop = below and not stall
        metrics = {
            "epoch": epoch,
            "velocity": None if diverged else velocity,
            "velocity_change": 0.0,
            "train_loss": loss,
            "lr": 0.1,
            "neve_stop": neve_stop,
            "diverged": diverged,
            "stalled": stalled,
        }
        auto = {
            "training_iteration": epoch,
            "trial_id": tid,
            "time_this_iter_s": 1.0,
            "done": False,
        }
        raw = {**metrics, **auto, "config": {"lr": 0.1, "threshold": threshold}}
        flat = {**metrics, **auto, "config/lr": 0.1, "config/threshold": threshold}
        yield raw, flat
        if diverged or stalled or neve_stop:
            return


def drive(
    n_trials: int, concurrent: int, max_t: int, hooks: dict[str, Callable], seed: int = 0
) -> tuple[int, float]:
    """Tune's call pattern over ``n_trials`` trials; returns (results, seconds in hooks)."""
    rng = random.Random(seed)
    clock = time.perf_counter
    spent = 0.0
    results = 0
    pending = iter(range(n_trials))
    running: list[tuple[SimpleNamespace, Iterator]] = []

    def start_next() -> None:
        nonlocal spent
        i = next(pending, None)
        if i is None:
            return
        trial = SimpleNamespace(trial_id=f"{i:06d}", status="PENDING")
        t0 = clock()
        hooks["add"](trial)
        spent += clock() - t0
        running.append((trial, trial_results(i, max_t, min_epochs=3)))

    for _ in range(concurrent):
        start_next()
    while running:
        k = rng.randrange(len(running))
        trial, stream = running[k]
        raw, flat = next(stream)
        own_end = (
            bool(flat["neve_stop"] or flat["diverged"] or flat["stalled"]) or flat["epoch"] >= max_t
        )
        t0 = clock()
        stop = hooks["result"](trial, raw, flat)
        if stop or own_end:
            hooks["complete"](trial, flat)
        spent += clock() - t0
        results += 1
        if stop or own_end:
            running[k] = running[-1]
            running.pop()
            start_next()
    return results, spent


def neve_hooks(
    max_t: int, min_resource: int, rf: float
) -> tuple[dict[str, Callable], NeVeASHAScheduler]:
    stopper = NeVeStopper()
    sched = NeVeASHAScheduler(max_t=max_t, min_resource=min_resource, reduction_factor=rf)

    def result(trial: Any, raw: dict, flat: dict) -> bool:
        if stopper(trial.trial_id, raw):  # Tune asks the stopper first
            return True
        return sched.on_trial_result(None, trial, flat) == STOP

    return {
        "add": lambda trial: sched.on_trial_add(None, trial),
        "result": result,
        "complete": lambda trial, flat: sched.on_trial_complete(None, trial, flat),
    }, sched


def ray_hooks(max_t: int, min_resource: int, rf: float) -> dict[str, Callable]:
    sched = AsyncHyperBandScheduler(
        metric="train_loss", mode="min", max_t=max_t, grace_period=min_resource, reduction_factor=rf
    )
    return {
        "add": lambda trial: sched.on_trial_add(None, trial),
        "result": lambda trial, raw, flat: sched.on_trial_result(None, trial, flat) == STOP,
        "complete": lambda trial, flat: sched.on_trial_complete(None, trial, flat),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--trials", default="1000,10000", help="comma-separated trial counts (default: 1000,10000)"
    )
    ap.add_argument(
        "--concurrent", type=int, default=64, help="trials running at once (default: 64)"
    )
    ap.add_argument("--max-t", type=int, default=60, help="max epochs (default: 60)")
    ap.add_argument("--min-resource", type=int, default=1, help="first rung (default: 1)")
    ap.add_argument("--reduction-factor", type=float, default=4, help="(default: 4, as run_search)")
    args = ap.parse_args()
    counts = [int(x) for x in args.trials.split(",")]

    print(
        f"scheduler + stopper overhead per result; {args.concurrent} trials at once, "
        f"max_t={args.max_t}, "
        f"min_resource={args.min_resource}, reduction_factor={args.reduction_factor:g}; load "
        "average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'trials':>7} {'NeVe results':>12} {'us/result':>9} {'Ray results':>11} "
        f"{'us/result':>9} {'ratio':>6} "
        f"{'pruned':>7} {'converged':>9} {'get_state ms':>12}"
    )
    for n in counts:
        hooks, sched = neve_hooks(args.max_t, args.min_resource, args.reduction_factor)
        n_ours, t_ours = drive(n, args.concurrent, args.max_t, hooks)
        n_ray, t_ray = drive(
            n,
            args.concurrent,
            args.max_t,
            ray_hooks(args.max_t, args.min_resource, args.reduction_factor),
        )
        cb = sched.callback()
        t0 = time.perf_counter()
        cb.get_state()
        t_state = time.perf_counter() - t0
        ours, ray_ = 1e6 * t_ours / n_ours, 1e6 * t_ray / n_ray
        converged = sum(1 for v in sched.state_dict()["outcome"].values() if v == "converged")
        print(
            f"{n:>7} {n_ours:>12} {ours:>9.1f} {n_ray:>11} {ray_:>9.1f} {ours / ray_:>6.2f} "
            f"{sched.num_pruned:>7} {converged:>9} {1e3 * t_state:>12.1f}"
        )
    print(
        "ratio: NeVe (NeVeStopper + NeVeASHAScheduler) / Ray's AsyncHyperBandScheduler, "
        "microseconds per result in the "
        "hooks.\nresults: how many each side processed (equal when NeVe's rungs take Ray's "
        "decisions; a trial's own "
        "controller ends it on both sides);\npruned/converged: NeVe's outcomes; get_state: the "
        "state callback once, "
        "at the end."
    )


if __name__ == "__main__":
    main()
