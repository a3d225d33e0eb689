"""Where the memorisation guard counts prediction changes: in the training pass, or on a subset.

Runs the default digits configuration (what ``neve-tune train digits --seed S`` runs:
the study's defaults, the guard on) with ``prediction_changes="in_pass"`` (every
training example, from the training pass, no extra forward) and with
``prediction_changes="subset"`` (K training examples forwarded in eval mode after each
epoch; K = 1000, 300, or all; ``--variants ... in_pass_w5 subset1000_w5``: the guard's
moving average over 5 epochs), on clean labels, 20% and 40% symmetric label noise and 25%
of the training set, and prints, per condition and variant: stop epoch, stop reasons,
test accuracy of the restored model and cost (full-data epochs, the subset's forward
counted), mean ± std over seeds, and the paired differences against ``in_pass``.

    python benchmarks/pc_subset.py                       # 4 conditions x 5 seeds x 4 variants
    python benchmarks/pc_subset.py --table-only          # reprint from runs/pc_subset/
    python benchmarks/pc_subset.py --variants in_pass in_pass_w5 subset1000 subset1000_w5
    # the rule before studies went relative
    python benchmarks/pc_subset.py --threshold-mode absolute --threshold 1e-3
    python benchmarks/pc_subset.py --seeds 0 1 --conditions noise20 --variants in_pass subset1000

Each run is stored in runs/pc_subset/ (runs/pc_subset_<mode>_<threshold>/ with another
rule) and not repeated. One torch thread. Figures are
deterministic on one machine, not across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "pc_subset"
CONDITIONS = {
    "clean": {},
    "noise20": {"label_noise": 0.2},
    "noise40": {"label_noise": 0.4},
    "data25": {"train_fraction": 0.25},
}
# variant: (prediction_changes, pc_subset_size, pc_window)
VARIANTS = {
    "in_pass": ("in_pass", 1000, 3),
    "subset1000": ("subset", 1000, 3),
    "subset_all": ("subset", 10**9, 3),
    "subset300": ("subset", 300, 3),
    "in_pass_w5": ("in_pass", 1000, 5),
    "subset1000_w5": ("subset", 1000, 5),
}
DEFAULT_VARIANTS = ["in_pass", "subset1000", "subset_all", "subset300"]


def run(
    condition: str, variant: str, seed: int, rule: tuple[str, float] | None = None
) -> dict[str, Any]:
    """One ``neve-tune train digits`` run (``rule``: another velocity threshold mode and
    threshold than the study's); its summary."""
    from neve_tune import load_study, run_trial

    source, size, window = VARIANTS[variant]
    study = load_study("digits")
    study = study.replace(
        data_options={**study.data_options, **CONDITIONS[condition]},
        prediction_changes=source,
        pc_subset_size=size,
        pc_window=window,
    )
    config = study.config()
    if rule is not None:
        study = study.replace(threshold_mode=rule[0])
        config["threshold"] = rule[1]
    result = run_trial(study, config, seed=seed)
    return {
        "condition": condition,
        "variant": variant,
        "seed": seed,
        "rule": [study.threshold_mode, config["threshold"]],
        "stopped_by": result.stopped_by,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "test_acc": 100 * result.test_acc,
        "cost": result.cost.epochs_equiv(result.train_size),
        "train_size": result.train_size,
        "pc": [m["prediction_changes"] for m in result.history],
    }


def _ms(xs: list[float], fmt: str = ".2f", signed: bool = False) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):{'+' if signed else ''}{fmt}} ± {sd:{fmt}}"


def table(rows: list[dict[str, Any]], variants: list[str]) -> str:
    by = {(r["condition"], r["variant"], r["seed"]): r for r in rows}
    lines = [
        "| condition | variant | stop epoch | stop reasons | test acc % | cost (epochs-equiv) "
        "| Δ acc vs in_pass | Δ cost vs in_pass | Δ acc per seed |",
        "|---" * 9 + "|",
    ]
    for cond in CONDITIONS:
        for var in variants:
            mine = sorted(
                (r for r in rows if r["condition"] == cond and r["variant"] == var),
                key=lambda r: r["seed"],
            )
            if not mine:
                continue
            reasons: dict[str, int] = {}
            for r in mine:
                reasons[r["stopped_by"]] = reasons.get(r["stopped_by"], 0) + 1
            base = [by.get((cond, "in_pass", r["seed"])) for r in mine]
            pairs = [(r, b) for r, b in zip(mine, base) if b is not None]
            dacc = [r["test_acc"] - b["test_acc"] for r, b in pairs]
            dcost = [r["cost"] - b["cost"] for r, b in pairs]
            paired = var != "in_pass" and pairs
            lines.append(
                f"| {cond} | {var} | {_ms([r['epochs'] for r in mine], '.1f')} "
                f"| {', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))} "
                f"| {_ms([r['test_acc'] for r in mine])} | {_ms([r['cost'] for r in mine], '.1f')} "
                f"| {_ms(dacc, signed=True) if paired else ''} | "
                f"{_ms(dcost, '.1f', signed=True) if paired else ''} "
                f"| {' '.join(f'{d:+.2f}' for d in dacc) if paired else ''} |"
            )
    n = {len({r["seed"] for r in rows if r["condition"] == c}) for c in CONDITIONS} - {0}
    return "\n".join(lines) + f"\n(seeds per condition: {sorted(n)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS))
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=DEFAULT_VARIANTS,
        help="_w5: the guard's moving average over 5 epochs instead of 3 (default: the first four)",
    )
    p.add_argument(
        "--threshold-mode",
        choices=["absolute", "relative"],
        help="the velocity stop's rule, with --threshold (default: the study's)",
    )
    p.add_argument("--threshold", type=float, help="the velocity threshold (default: the study's)")
    p.add_argument(
        "--table-only", action="store_true", help="print the table of the stored runs only"
    )
    args = p.parse_args(argv)
    if (args.threshold_mode is None) != (args.threshold is None):
        p.error("--threshold-mode and --threshold go together")
    torch.set_num_threads(1)
    rule = None if args.threshold is None else (args.threshold_mode, args.threshold)
    out = OUT if rule is None else OUT.with_name(f"pc_subset_{rule[0]}_{rule[1]:g}")
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for seed in args.seeds:
            for cond in args.conditions:
                for var in args.variants:
                    path = out / f"{cond}_{var}_s{seed}.json"
                    if path.exists():
                        continue
                    same = (
                        out / f"{cond}_subset1000_s{seed}.json"
                    )  # all <= 1000 examples: the same run
                    if (
                        var == "subset_all"
                        and same.exists()
                        and json.loads(same.read_text())["train_size"] <= 1000
                    ):
                        path.write_text(
                            json.dumps({**json.loads(same.read_text()), "variant": var})
                        )
                        continue
                    r = run(cond, var, seed, rule)
                    path.write_text(json.dumps(r))
                    print(
                        f"{cond:8s} {var:10s} seed {seed}: {r['stopped_by']} at {r['epochs']} "
                        f"(restored {r['best_epoch']}), test {r['test_acc']:.2f} %, cost "
                        f"{r['cost']:.1f}",
                        flush=True,
                    )
    rows = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    rows = [r for r in rows if r["seed"] in args.seeds and r["condition"] in args.conditions]
    print(table(rows, [v for v in VARIANTS if v in args.variants]))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
