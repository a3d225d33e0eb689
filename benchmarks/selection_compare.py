"""The pick, measured end to end: ``neve-tune compare`` on digits and MNIST-1D, 20 trials,
5 seeds, for NeVe's selection rules against the validation searches.

Each job is one ``compare`` call (the same as the CLI line printed with ``--commands``) in
its own process with one torch thread, and writes
``runs/selection_compare/<data>__<condition>__<variant>.json``; finished jobs are not run
again. The table pairs every NeVe variant with the baselines seed by seed: test accuracy %
of each search's final model (mean ± std, median), NeVe's difference and cost ratio.

    python benchmarks/selection_compare.py --jobs 2                  # every job below
    python benchmarks/selection_compare.py --data digits --conditions clean,noise20
    python benchmarks/selection_compare.py --table --markdown         # the README's table
    python benchmarks/selection_compare.py --commands                 # the equivalent CLI lines

Conditions: the design ones (choose on these) and the held-out ones (confirm on these),
both written here before the first measurement. Figures are deterministic on one machine,
not across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "selection_compare"
DATASETS = ("digits", "mnist1d")

# condition -> (data options, first seed); 5 seeds from it
DESIGN: dict[str, tuple[dict[str, Any], int]] = {
    "clean": ({}, 0),
    "noise20": ({"label_noise": 0.2}, 0),
    "noise40": ({"label_noise": 0.4}, 0),
    "frac25": ({"train_fraction": 0.25}, 0),
}
# held out from every choice: other splits and sampler seeds, other noise rates and noise seeds
HELDOUT: dict[str, tuple[dict[str, Any], int]] = {
    "clean_ho": ({}, 30),
    "noise30_ho": ({"label_noise": 0.3, "noise_seed": 3}, 30),
    "noise10_ho": ({"label_noise": 0.1, "noise_seed": 4}, 40),
    "frac50_ho": ({"train_fraction": 0.5}, 40),
}
CONDITIONS = {**DESIGN, **HELDOUT}

CONSENSUS = ("--rung-signal", "consensus", "--selection", "consensus")
# the rule before the consensus: rungs on the training loss, the lowest objective wins
OBJECTIVE = ("--rung-signal", "train_loss", "--selection", "objective", "--selection-subset", "0")
# variant -> (searches, CLI flags)
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "baselines": (("asha", "asha_es"), ()),
    "today": (("neve",), OBJECTIVE),
    "consensus": (("neve",), CONSENSUS),
    # the data-decided rule: consensus rungs and pick once the finished trials' fit of the
    # subset's labels says they are noisy (estimated noise >= 10%), else today's
    "auto": (("neve",), ("--rung-signal", "auto", "--selection", "auto")),
    # cheaper rungs: every search keeps 1/8 at epochs 1 and 8 (not 1/4 at 1, 4, 16)
    "baselines_rf8": (("asha", "asha_es"), ("--reduction-factor", "8")),
    "consensus_rf8": (("neve",), (*CONSENSUS, "--reduction-factor", "8")),
    "today_rf8": (("neve",), (*OBJECTIVE, "--reduction-factor", "8")),
    "auto_rf8": (
        ("neve",),
        ("--rung-signal", "auto", "--selection", "auto", "--reduction-factor", "8"),
    ),
}
# the table's rows: a NeVe variant against the baselines run with the same rungs, and the
# cheaper-rung variants also against the default baselines
PAIRS = [
    ("today", "baselines"),
    ("consensus", "baselines"),
    ("auto", "baselines"),
    ("today_rf8", "baselines_rf8"),
    ("consensus_rf8", "baselines_rf8"),
    ("auto_rf8", "baselines_rf8"),
    ("today_rf8", "baselines"),
    ("consensus_rf8", "baselines"),
    ("auto_rf8", "baselines"),
]


def cli_args(data: str, condition: str, variant: str, seeds: int, trials: int) -> list[str]:
    options, first = CONDITIONS[condition]
    flags = [
        "compare",
        data,
        "--trials",
        str(trials),
        "--seed",
        str(first),
        "--repeats",
        str(seeds),
        "--searches",
        ",".join(VARIANTS[variant][0]),
        *VARIANTS[variant][1],
    ]
    for key, value in options.items():
        flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def run_job(data: str, condition: str, variant: str, seeds: int, trials: int, out: str) -> str:
    import torch

    from neve_tune.cli import main as cli_main

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rc = cli_main([*cli_args(data, condition, variant, seeds, trials), "--json", out, "--quiet"])
    if rc:
        raise RuntimeError(f"compare {data} {condition} {variant} exited {rc}")
    record = json.loads(Path(out).read_text())
    record["job"] = {
        "data": data,
        "condition": condition,
        "variant": variant,
        "seconds": time.perf_counter() - t0,
    }
    Path(out).write_text(json.dumps(record))
    return out


def _load(folder: Path) -> dict[tuple[str, str, str], Any]:
    out = {}
    for path in folder.glob("*.json"):
        r = json.loads(path.read_text())
        if "job" in r:
            out[(r["job"]["data"], r["job"]["condition"], r["job"]["variant"])] = r
    return out


def _stats(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} ± {sd:.2f}"


def _per_seed(record: Any, search: str, key: str) -> list[float]:
    if key == "acc":
        return [100 * run[search]["test_acc"] for run in record["runs"]]
    return [run[search]["cost"]["epochs_equiv"] for run in record["runs"]]


def rows(
    results: dict[tuple[str, str, str], Any], data: str, variants: list[str]
) -> list[list[str]]:
    """One row per condition and pair (NeVe variant, baselines), paired seed by seed."""
    out = []
    for cond in CONDITIONS:
        for v, b_name in PAIRS:
            r, base = results.get((data, cond, v)), results.get((data, cond, b_name))
            if v not in variants or r is None or base is None:
                continue
            acc, cost = _per_seed(r, "neve", "acc"), _per_seed(r, "neve", "cost")
            row = [
                cond + (" (held out)" if cond in HELDOUT else ""),
                f"{v} vs {b_name}",
                f"{_stats(acc)} / {statistics.median(acc):.2f}",
            ]
            for b in ("asha", "asha_es"):
                b_acc, b_cost = _per_seed(base, b, "acc"), _per_seed(base, b, "cost")
                row += [
                    f"{_stats(b_acc)} / {statistics.median(b_acc):.2f}",
                    _stats([a - c for a, c in zip(acc, b_acc)]),
                    _stats([a / c for a, c in zip(cost, b_cost)]),
                ]
            row.append(" ".join(f"{a:.2f}" for a in acc))
            out.append(row)
    return out


HEADER = [
    "condition",
    "NeVe variant vs baselines",
    "NeVe: mean ± std / median",
    "asha",
    "NeVe − asha",
    "cost ratio vs asha",
    "asha_es",
    "NeVe − asha_es",
    "cost ratio vs asha_es",
    "NeVe per seed",
]


def table(folder: Path, variants: list[str], markdown: bool) -> str:
    results = _load(folder)
    lines = []
    for data in DATASETS:
        body = rows(results, data, variants)
        if not body:
            continue
        lines.append(f"\n**{data}**\n" if markdown else f"\n{data}")
        if markdown:
            lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
            lines += ["| " + " | ".join(r) + " |" for r in body]
        else:
            lines += ["  ".join(r) for r in body]
        lines.append(_baseline_seeds(results, data) if not markdown else "")
    return "\n".join(lines)


def _baseline_seeds(results: dict[tuple[str, str, str], Any], data: str) -> str:
    out = []
    for cond in CONDITIONS:
        for name in ("baselines", "baselines_rf8"):
            base = results.get((data, cond, name))
            for b in ("asha", "asha_es") if base else ():
                out.append(
                    f"  {cond:12s} {name:14s} {b:8s} "
                    + " ".join(f"{a:.2f}" for a in _per_seed(base, b, "acc"))
                )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", default=",".join(DATASETS))
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--variants", default="baselines,today,consensus,auto")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--table", action="store_true", help="print the table of finished jobs only")
    p.add_argument("--markdown", action="store_true")
    p.add_argument(
        "--commands", action="store_true", help="print the CLI line of each job, run nothing"
    )
    args = p.parse_args(argv)
    chosen = {
        "data": args.data.split(","),
        "conditions": args.conditions.split(","),
        "variants": args.variants.split(","),
    }
    for name, known in (("data", DATASETS), ("conditions", CONDITIONS), ("variants", VARIANTS)):
        bad = [x for x in chosen[name] if x not in known]
        if bad:
            p.error(f"unknown --{name} {bad}; known: {list(known)}")
    out = Path(args.out)
    jobs = [
        (d, c, v) for d in chosen["data"] for c in chosen["conditions"] for v in chosen["variants"]
    ]
    if args.commands:
        for d, c, v in jobs:
            print("neve-tune " + " ".join(cli_args(d, c, v, args.seeds, args.trials)))
        return 0
    if not args.table:
        out.mkdir(parents=True, exist_ok=True)
        todo = [j for j in jobs if not (out / f"{j[0]}__{j[1]}__{j[2]}.json").exists()]
        todo.sort(
            key=lambda j: (j[2] != "baselines", j[1] not in DESIGN, j[0])
        )  # slow baselines first
        print(f"{len(todo)} jobs, {args.jobs} at a time", flush=True)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {
                pool.submit(
                    run_job, *j, args.seeds, args.trials, str(out / f"{j[0]}__{j[1]}__{j[2]}.json")
                ): j
                for j in todo
            }
            for f in as_completed(futures):
                f.result()
                print("done", *futures[f], flush=True)
    print(table(out, [v for v in chosen["variants"] if v != "baselines"], args.markdown))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
