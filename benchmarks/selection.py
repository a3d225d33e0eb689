"""Replay harness: which validation-free criterion picks the trial validation would.

Per data set, condition and seed, a *pool*: ``--configs`` configurations sampled from the
study's space (Optuna's ``RandomSampler`` with the seed), each trained with
:func:`neve_tune.run_trial` (NeVe defaults, guard on) without pruning to its own stop. For
every epoch the pool keeps the history, ``zeta_drop`` (:func:`neve_tune.selection.random_label_drop`
on a fixed batch of 128 training inputs with random labels) and the predicted classes of a
fixed seeded subset of 500 training examples; then the predictions of the final (restored)
model and its test accuracy. The test accuracy is only reported: no decision reads it.
Pools are cached under ``runs/selection/`` (one JSON per pool, extended trial by trial).

The replay (benchmarks/selection_replay.py) then plays ASHA on those trials at the rungs of
:class:`neve_tune.optuna.NeVePruner` with any rung signal and final criterion, and prints
per condition: Kendall tau of each criterion with test accuracy, the pick's test accuracy,
its regret against the pool's best, and the search's cost.

    python benchmarks/selection.py --pools digits:clean,digits:noise20 --seeds 0,1,2 --jobs 2
    python benchmarks/selection.py --table            # replay every cached pool

Conditions: the design ones (choose on these) and the held-out ones (confirm on these),
both fixed here before the first measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "selection"

# data set -> bundled study
DATASETS = {"digits": "digits", "mnist1d": "mnist1d"}
# condition -> (data options, seeds). Design: choose on these.
DESIGN: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "clean": ({}, (0, 1, 2, 3, 4)),
    "noise20": ({"label_noise": 0.2}, (0, 1, 2, 3, 4)),
    "noise40": ({"label_noise": 0.4}, (0, 1, 2, 3, 4)),
    "frac25": ({"train_fraction": 0.25}, (0, 1, 2, 3, 4)),
}
# Held out from every choice: other splits and sampler seeds, other noise rates and noise seeds.
HELDOUT: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "clean_ho": ({}, (10, 11, 12)),
    "noise30_ho": ({"label_noise": 0.3, "noise_seed": 1}, (10, 11, 12)),
    "noise10_ho": ({"label_noise": 0.1, "noise_seed": 2}, (10, 11, 12)),
    "frac25_ho": ({"train_fraction": 0.25}, (10, 11, 12)),
}
CONDITIONS = {**DESIGN, **HELDOUT}
SUBSET = 500  # training examples whose predictions every trial records
ZETA_BATCH = 128  # training inputs with random labels for the susceptibility step
SIGNAL_SEED = 12345  # the subset and the random labels: the same for every trial of a pool


def pool_path(data: str, condition: str, seed: int, out: Path = OUT) -> Path:
    return out / f"{data}__{condition}__s{seed}.json"


def sample_configs(study: Any, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn by Optuna's RandomSampler(seed) from the study's space."""
    import optuna

    from neve_tune.optuna import suggest_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = s.ask()
        out.append({k: v for k, v in suggest_config(t, study).items() if k in study.search_space})
        s.tell(t, 0.0)
    return out


def signal_inputs(bundle: Any, num_classes: int) -> dict[str, Any]:
    """The fixed subset (positions, inputs, given labels) and the random-label batch."""
    import torch

    from neve_tune.data import dataset_labels

    n = len(bundle.train)
    gen = torch.Generator().manual_seed(SIGNAL_SEED)
    pos = torch.randperm(n, generator=gen)[: min(SUBSET, n)].sort().values
    zpos = torch.randperm(n, generator=gen)[: min(ZETA_BATCH, n)]
    labels = dataset_labels(bundle.train)
    return {
        "positions": pos,
        "inputs": torch.stack([torch.as_tensor(bundle.train[int(i)][0]) for i in pos]),
        "labels": labels[pos],
        "zeta_inputs": torch.stack([torch.as_tensor(bundle.train[int(i)][0]) for i in zpos]),
        "zeta_labels": torch.randint(0, num_classes, (len(zpos),), generator=gen),
    }


def _codes(t: Any) -> str:
    return "".join(chr(48 + int(c)) for c in t.tolist())  # one character per class index


def record_trial(
    study: Any, config: dict[str, Any], seed: int, bundle: Any, sig: dict[str, Any]
) -> dict[str, Any]:
    """Train one configuration without pruning; its record with the extra per-epoch signals."""
    from neve_tune import run_trial
    from neve_tune.models import create_model
    from neve_tune.selection import random_label_drop, subset_predictions

    holder: dict[str, Any] = {}

    def model_fn() -> Any:  # the study's own model (built under the trial's seed), kept at hand
        holder["model"] = create_model(
            study.model, bundle.num_classes, bundle.input_shape, **study.model_options
        )
        return holder["model"]

    extra: list[dict[str, Any]] = []

    def on_epoch(metrics: dict[str, Any]) -> None:
        model = holder["model"]
        extra.append(
            {
                "zeta_drop": random_label_drop(
                    model, sig["zeta_inputs"], sig["zeta_labels"], metrics["lr"]
                ),
                # the study's own subset when it records one (Study.selection_subset), else the
                # pool's
                "subset_pred": metrics.get("subset_pred")
                or _codes(subset_predictions(model, sig["inputs"])),
            }
        )

    r = run_trial(study, config, seed=seed, data=bundle, on_epoch=on_epoch, model_fn=model_fn)
    history = [{**m, **e} for m, e in zip(r.history, extra)]
    return {
        "config": r.config,
        "stopped_by": r.stopped_by,
        "epochs": r.epochs,
        "best_epoch": r.best_epoch,
        "objective": r.objective,
        "test_acc": r.test_acc,
        "cost": r.cost.as_dict(r.train_size),
        "final_pred": _codes(subset_predictions(holder["model"], sig["inputs"])),
        "history": history,
    }


def new_pool(
    study: Any, bundle: Any, seed: int, configs: list[dict[str, Any]], **info: Any
) -> dict[str, Any]:
    """An empty pool of ``configs`` on ``bundle`` (its fixed subset's given labels included)."""
    sig = signal_inputs(bundle, bundle.num_classes)
    return {
        **info,
        "seed": seed,
        "data_options": dict(study.data_options),
        "num_classes": bundle.num_classes,
        "train_size": len(bundle.train),
        "subset_labels": _codes(sig["labels"]),
        "subset_positions": sig["positions"].tolist(),
        "configs": configs,
        "trials": [],
        "seconds": 0.0,
    }


def fill_pool(
    pool: dict[str, Any], study: Any, bundle: Any, upto: int, save: Any = None
) -> dict[str, Any]:
    """Record the pool's trials up to ``upto`` (those already recorded are kept)."""
    sig = signal_inputs(bundle, bundle.num_classes)
    for cfg in pool["configs"][len(pool["trials"]) : upto]:
        t0 = time.perf_counter()
        pool["trials"].append(record_trial(study, cfg, pool["seed"], bundle, sig))
        pool["seconds"] += time.perf_counter() - t0
        if save is not None:
            save(pool)
    return pool


def run_pool(data: str, condition: str, seed: int, configs: int, out: str) -> str:
    import torch

    from neve_tune import load_study
    from neve_tune._json import write_json
    from neve_tune.data import dataset_labels

    torch.set_num_threads(1)
    opts, _ = CONDITIONS[condition]
    base = load_study(DATASETS[data])
    study = base.replace(data_options={**base.data_options, **opts})
    bundle = study.load_data(seed=seed)
    path = Path(out)
    if path.exists():
        pool = json.loads(path.read_text())
    else:
        pool = new_pool(
            study,
            bundle,
            seed,
            sample_configs(study, configs, seed),
            data=data,
            condition=condition,
        )
        pool["subset_noise_rate"] = None
        if "label_noise" in opts:  # for the report only: the subset's true noise rate
            clean = dataset_labels(
                study.replace(data_options={**study.data_options, "label_noise": 0.0})
                .load_data(seed=seed)
                .train
            )[torch.tensor(pool["subset_positions"])]
            pool["subset_noise_rate"] = float(
                (clean != torch.tensor([ord(c) - 48 for c in pool["subset_labels"]])).float().mean()
            )
    fill_pool(pool, study, bundle, configs, save=lambda p: write_json(path, p))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pools", default="", help="data:condition,... to record (default: none)")
    p.add_argument("--seeds", default=None, help="seeds to record (default: the condition's own)")
    p.add_argument("--configs", type=int, default=16)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(OUT))
    p.add_argument(
        "--table", action="store_true", help="replay every cached pool and print the table"
    )
    p.add_argument(
        "--rungs", default="train_loss,velocity,consensus", help="rung signals to replay"
    )
    p.add_argument("--criteria", default=None, help="final criteria to print (default: all)")
    p.add_argument(
        "--reduction-factor",
        type=int,
        default=None,
        help="replay other rungs (default: the pruner's)",
    )
    p.add_argument(
        "--min-resource",
        type=int,
        default=None,
        help="replay another first rung (default: the pruner's)",
    )
    p.add_argument("--partial", action="store_true", help="include pools still recording")
    p.add_argument("--markdown", action="store_true", help="print the README's tables")
    p.add_argument(
        "--summary",
        default=None,
        help="conditions to summarise choices over (e.g. the design ones)",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = []
    for item in [x for x in args.pools.split(",") if x]:
        data, cond = item.split(":")
        if data not in DATASETS or cond not in CONDITIONS:
            p.error(
                f"unknown pool {item!r}; data sets {list(DATASETS)}, conditions {list(CONDITIONS)}"
            )
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(CONDITIONS[cond][1])
        todo += [(data, cond, s) for s in seeds]
    # seed by seed, so that every condition has its first seeds when time runs out
    todo.sort(
        key=lambda dcs: (
            CONDITIONS[dcs[1]][1].index(dcs[2]) if dcs[2] in CONDITIONS[dcs[1]][1] else dcs[2]
        )
    )
    if todo:
        print(f"{len(todo)} pools, {args.jobs} at a time", flush=True)
        with ProcessPoolExecutor(max_workers=args.jobs) as ex:
            futs = {
                ex.submit(run_pool, d, c, s, args.configs, str(pool_path(d, c, s, out))): (d, c, s)
                for d, c, s in todo
            }
            for f in as_completed(futs):
                f.result()
                print("done", *futs[f], flush=True)
    if args.table:
        from selection_replay import CRITERIA, print_tables

        rungs = {} if args.reduction_factor is None else {"reduction_factor": args.reduction_factor}
        if args.min_resource is not None:
            rungs["min_resource"] = args.min_resource
        crit = args.criteria.split(",") if args.criteria else CRITERIA
        if args.markdown:
            from selection_replay import print_markdown

            print_markdown(out, crit, args.rungs.split(","), **rungs)
        elif args.summary:
            from selection_replay import print_summary

            conds = (
                list(DESIGN)
                if args.summary == "design"
                else list(HELDOUT)
                if args.summary == "heldout"
                else args.summary.split(",")
            )
            print_summary(out, args.rungs.split(","), crit, conds, **rungs)
        else:
            print_tables(out, args.rungs.split(","), crit, partial=args.partial, **rungs)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
