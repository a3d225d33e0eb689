r"""Held-out conditions for the rung signal that goes with ``selection="auto"``: the
consensus rungs (``rung_signal="auto"``: the training loss until the finished trials show
noise, then the consensus) against the training loss at every rung (the pick unchanged,
``auto``).

Why: on the frontier's noisy conditions (seeds 0-4) the NeVe search with training-loss rungs
and the ``auto`` pick cost 18-30% less than with the consensus rungs, its mean accuracy within
0.34 points (docs/measurements.md, "Rungs on the training loss, the pick by the consensus").
The consensus rungs keep slow learners running past epoch 4; the training loss keeps fast
ones, which the memorisation guard stops early and restores to before they memorised.

Result (reported in that section): not adopted. 30%-noisy MNIST-1D lost 2.13 points and
half of digits at 30% noise cost 1.26x the consensus rungs'.

Conditions, written down and committed before the first run, never tuned on:

- ``tabular_noise20``: ``tabular5`` of ``benchmarks/tabular_compare.py`` (its MLP), 20% label
  noise, seeds 0-4;
- ``tabular_clean``: the same, clean labels, seeds 0-4 (the rule must not cost clean data);
- ``digits_half_noise30``: digits with 50% of its training data and 30% label noise, noise
  seed 5, seeds 5-7;
- ``mnist1d_noise30``: MNIST-1D with 30% label noise, noise seed 5, seeds 5-7.

Each runs ``compare`` (20 trials) with NeVe under today's rung signal (``"auto"``), ``asha``,
``asha_es`` and the frontier's variants (``asha_es:acc:retrain``,
``asha_es:acc:best_checkpoint``), then NeVe alone with ``rung_signal="train_loss"``.

Adoption rule, written down with the conditions: the training loss becomes the rung signal of
``selection="auto"`` when on each held-out condition its mean accuracy is at most 0.5 points
below the consensus rungs' and its mean cost is not higher; and on the frontier's design
conditions no condition's mean fell more than 0.3 points. The result is reported whatever it
says.

    OMP_NUM_THREADS=1 python benchmarks/rung_heldout.py                       # every condition
    OMP_NUM_THREADS=1 python benchmarks/rung_heldout.py --conditions tabular_noise20

Each condition writes ``runs/rung_heldout/<condition>.json``: ``compare``'s record, with the
training-loss NeVe search's record under ``"neve_train_loss"``. Figures are deterministic on
one machine, not across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "rung_heldout"
VARIANTS = "asha_es:acc:retrain,asha_es:acc:best_checkpoint"

# condition -> (study, data options, first seed, repeats)
CONDITIONS: dict[str, tuple[str, dict[str, Any], int, int]] = {
    "tabular_noise20": ("tabular5", {"label_noise": 0.2}, 0, 5),
    "tabular_clean": ("tabular5", {}, 0, 5),
    "digits_half_noise30": (
        "digits",
        {"train_fraction": 0.5, "label_noise": 0.3, "noise_seed": 5},
        5,
        3,
    ),
    "mnist1d_noise30": ("mnist1d", {"label_noise": 0.3, "noise_seed": 5}, 5, 3),
}


def condition_study(condition: str) -> Any:
    from neve_tune import Study, load_study

    name, options, _, _ = CONDITIONS[condition]
    if name == "tabular5":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import tabular_compare  # noqa: F401  (registers tabular5 and tabular_mlp)

        return Study(name="tabular5", data="tabular5", data_options=options, model="tabular_mlp")
    study = load_study(name)
    return study.replace(data_options={**study.data_options, **options})


def run_condition(condition: str, trials: int, out: Path) -> dict[str, Any]:
    import torch

    from neve_tune.compare import compare

    torch.set_num_threads(1)
    study = condition_study(condition)
    _, _, seed, repeats = CONDITIONS[condition]
    record = compare(
        study,
        trials=trials,
        seed=seed,
        repeats=repeats,
        rung_signal="auto",
        baseline_variants=VARIANTS,
        progress=False,
    )
    candidate = compare(
        study,
        trials=trials,
        seed=seed,
        repeats=repeats,
        searches=("neve",),
        rung_signal="train_loss",
        progress=False,
    )
    for run, fresh in zip(record["runs"], candidate["runs"], strict=True):
        run["neve_train_loss"] = fresh["neve"]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{condition}.json").write_text(json.dumps(record))
    return record


def table(record: dict[str, Any]) -> str:
    """Per search: mean (median) test accuracy, mean cost, and the paired cost ratio to the
    strongest baseline and to ``asha_es``."""
    strongest = record["strongest_baseline"]
    runs = record["runs"]
    lines = [
        f"strongest baseline: {strongest}",
        "| search | acc % mean (median) | cost | x strongest | x asha_es | worst seed vs asha_es |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("neve", "neve_train_loss", *[s for s in record["searches"] if s != "neve"]):
        acc = [100 * r[name]["test_acc"] for r in runs]
        cost = [r[name]["cost"]["epochs_equiv"] for r in runs]
        ratio = {
            b: statistics.mean(c / r[b]["cost"]["epochs_equiv"] for c, r in zip(cost, runs))
            for b in (strongest, "asha_es")
        }
        worst = min(a - 100 * r["asha_es"]["test_acc"] for a, r in zip(acc, runs))
        lines.append(
            f"| {name} | {statistics.mean(acc):.2f} ({statistics.median(acc):.2f}) | "
            f"{statistics.mean(cost):.1f} | {ratio[strongest]:.3f} | {ratio['asha_es']:.3f} | "
            f"{worst:+.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--report", action="store_true", help="print the tables of existing records")
    args = p.parse_args(argv)
    names = [c.strip() for c in args.conditions.split(",") if c.strip()]
    bad = [c for c in names if c not in CONDITIONS]
    if bad or not names:
        p.error(f"--conditions: unknown {bad or args.conditions!r}; known: {', '.join(CONDITIONS)}")
    for name in names:
        path = Path(args.out) / f"{name}.json"
        if args.report:
            record = json.loads(path.read_text())
        else:
            record = run_condition(name, args.trials, Path(args.out))
        print(f"\n## {name}\n\n{table(record)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
