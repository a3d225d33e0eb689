"""Ray Tune trial throughput on this machine, and Ray's per-trial start overhead.

Runs, on one local Ray (``ray.init(num_cpus=2)``):

1. per-trial overhead: trials that report once and return, one at a time and two at a
   time (seconds per trial = what Ray adds around any trial: actor start, placement,
   result and checkpoint plumbing);
2. throughput: ``--trials`` digits trials of ``--epochs`` epochs each (threshold so low
   that none converges early, so every trial does the same work), with 1 and with 2
   concurrent trials, each with fresh trial processes (Tune's default) and with
   ``reuse_actors=True`` (what ``run_search`` uses: a fresh process spends seconds
   importing torch), next to the same trials run in-process without Ray.

Prints one table; figures depend on the machine's load (the load average is printed).

    .venv/bin/python benchmarks/ray_trials.py            # ~2-3 minutes on 2 cores
    .venv/bin/python benchmarks/ray_trials.py --trials 6 --epochs 8
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def _noop(config: dict) -> None:
    from ray import tune

    tune.report({"x": 1})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4, help="digits trials per setting (default: 4)")
    ap.add_argument("--epochs", type=int, default=5, help="epochs per digits trial (default: 5)")
    ap.add_argument(
        "--overhead-trials", type=int, default=8, help="empty trials per setting (default: 8)"
    )
    args = ap.parse_args()

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    import ray
    import torch
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from neve_tune import load_study, run_trial
    from neve_tune.ray import neve_trainable

    study = load_study("digits").replace(max_epochs=args.epochs)
    configs = [
        {"lr": 0.05, "threshold": 1e-9, "batch_size": 64, "seed": i} for i in range(args.trials)
    ]

    # in-process reference: the same trials, no Ray, one thread like a 1-CPU trial
    torch.set_num_threads(1)
    bundle = study.load_data()
    t0 = time.perf_counter()
    for c in configs:
        run_trial(study, {k: v for k, v in c.items() if k != "seed"}, seed=c["seed"], data=bundle)
    inline_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory(prefix="neve_bench_") as storage:

        def run(trainable, space, n: int, concurrent: int, reuse: bool = False) -> float:
            t = time.perf_counter()
            grid = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    num_samples=n,
                    search_alg=BasicVariantGenerator(max_concurrent=concurrent),
                    reuse_actors=reuse,
                ),
                run_config=tune.RunConfig(storage_path=storage, verbose=0),
            ).fit()
            assert not grid.errors, grid.errors
            return time.perf_counter() - t

        noop = tune.with_resources(_noop, {"cpu": 1})
        for conc in (1, 2):
            wall = run(noop, {}, args.overhead_trials, conc)
            rows.append(
                (
                    f"empty trials, {conc} at a time",
                    args.overhead_trials,
                    wall,
                    wall / args.overhead_trials,
                    None,
                )
            )
        trainable = neve_trainable(study)
        space = {
            "lr": 0.05,
            "threshold": 1e-9,
            "batch_size": 64,
            "seed": tune.grid_search(list(range(args.trials))),
        }
        for conc, reuse in ((1, False), (2, False), (1, True), (2, True)):
            wall = run(
                trainable, dict(space), 1, conc, reuse
            )  # grid over seeds: args.trials trials
            name = f"digits trials, {conc} at a time" + (", reuse_actors" if reuse else "")
            rows.append(
                (name, args.trials, wall, wall / args.trials, args.trials * args.epochs / wall)
            )
    ray.shutdown()
    rows.insert(
        0,
        (
            "digits trials, in-process (no Ray)",
            args.trials,
            inline_s,
            inline_s / args.trials,
            args.trials * args.epochs / inline_s,
        ),
    )

    load = os.getloadavg()
    print(
        f"\nray_trials: {os.cpu_count()} CPUs, load average {load[0]:.2f}, ray.init {init_s:.1f} "
        "s, "
        f"{args.epochs} epochs per digits trial"
    )
    print(
        f"{'setting':42s} {'trials':>6s} {'wall s':>8s} {'s/trial':>8s} {'trials/min':>10s} "
        f"{'epochs/s':>9s}"
    )
    for name, n, wall, per, eps in rows:
        eps_s = "-" if eps is None else f"{eps:.2f}"
        print(f"{name:42s} {n:6d} {wall:8.1f} {per:8.2f} {60 * n / wall:10.1f} {eps_s:>9s}")
    inline, empty1, empty2, ray1, ray2, reuse1, reuse2 = rows
    print(
        f"Ray per-trial start overhead: {empty1[3]:.2f} s (empty trial, one at a time), "
        f"{empty2[3]:.2f} s/trial two at a time; "
        f"Ray vs in-process, 1 at a time: +{(ray1[2] - inline[2]) / args.trials:.2f} s/trial"
    )
    print(
        f"2 concurrent trials vs 1: {ray1[2] / ray2[2]:.2f}x trial throughput (fresh actors), "
        f"{reuse1[2] / reuse2[2]:.2f}x (reuse_actors); reuse_actors vs fresh, 1 at a time: "
        f"{ray1[2] / reuse1[2]:.2f}x"
    )


if __name__ == "__main__":
    main()
