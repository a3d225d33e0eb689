r"""Where NeVe's cost against the strongest validation baseline comes from, read from the
frontier's records (``benchmarks/frontier.py``; nothing is run).

A search's cost in full-data epochs is its training samples plus a third of its forward-only
samples, over the training set's size (:meth:`neve_tune.records.Cost.epochs_equiv`). The
ratio of NeVe's cost to a baseline's, per seed, is the product of three factors:

- **epochs**: the epochs the trials trained (every trial, to its stop or its rung), and a
  retrained winner's, NeVe's over the baseline's: the schedule and the stops;
- **samples per epoch**: NeVe trains on all the training data, a validation search on the
  ``1 - val_fraction`` it does not hold out (a retrain on all of it): ``1 / 0.9`` at the
  studies' ``val_fraction=0.1``, the price of keeping every labelled example for training;
- **forward passes**: one plus the forward-only samples (NeVe's probe and selection subset,
  the baseline's validation passes) over three times the training samples, NeVe's over the
  baseline's.

Each factor is given as the geometric mean over seeds, so the three multiply to the
geometric mean of the cost ratio (the frontier's tables quote the arithmetic mean, also
shown). Then, per segment of the epoch axis (the rungs at reduction factor 4: epoch 1,
2-4, 5-16, 17-60, and a retrain), the mean epochs each search trained there.

    python benchmarks/cost_split.py                     # NeVe against the strongest baseline
    python benchmarks/cost_split.py --against asha_es   # or any point of the frontier page
    python benchmarks/cost_split.py --markdown

Figures are deterministic on one machine, not across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "runs" / "frontier"
FRONTIER = ROOT / "docs" / "results" / "frontier" / "frontier.json"
SEGMENTS = ("1-1", "2-4", "5-16", "17-60", "retrain")


def _retrain_epochs(search: Mapping[str, Any]) -> int:
    return int((search.get("retrain") or {}).get("epochs") or 0)


def _epochs(search: Mapping[str, Any]) -> int:
    """Every epoch the search trained: its trials' (by rung segment) and a retrain's."""
    return sum(search["epochs_by_rung"].values()) + _retrain_epochs(search)


def _forward_factor(cost: Mapping[str, float]) -> float:
    fwd = cost["probe_samples"] + cost["eval_samples"]
    return 1.0 + fwd / 3.0 / cost["train_samples"]


def split(neve: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float]:
    """One seed's cost ratio (NeVe over ``base``) and its three factors, which multiply to it."""
    n, b = neve["cost"], base["cost"]
    epochs = _epochs(neve) / _epochs(base)
    samples = n["train_samples"] / b["train_samples"]
    return {
        "cost": n["epochs_equiv"] / b["epochs_equiv"],
        "epochs": epochs,
        "samples_per_epoch": samples / epochs,
        "forward": _forward_factor(n) / _forward_factor(b),
    }


def segments(search: Mapping[str, Any]) -> dict[str, int]:
    """Epochs trained per segment of the epoch axis, and a retrain's."""
    by = dict(search["epochs_by_rung"])
    return {s: int(by.get(s, 0)) if s != "retrain" else _retrain_epochs(search) for s in SEGMENTS}


def condition_split(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict[str, Any]:
    """A condition's factors over its seeds (``pairs``: each seed's NeVe search and the
    search it is set against)."""
    per_seed = [split(neve, base) for neve, base in pairs]
    out: dict[str, Any] = {"seeds": len(pairs)}
    out["cost_mean"] = statistics.mean(s["cost"] for s in per_seed)
    for key in ("cost", "epochs", "samples_per_epoch", "forward"):
        out[key] = statistics.geometric_mean(s[key] for s in per_seed)
    for name, i in (("neve", 0), ("against", 1)):
        segs = [segments(pair[i]) for pair in pairs]
        out[f"{name}_segments"] = {s: statistics.mean(x[s] for x in segs) for s in SEGMENTS}
    return out


def load(records: Path, frontier: Path, against: str | None) -> dict[str, dict[str, Any]]:
    """Per condition of the frontier page, the default NeVe search's split against
    ``against`` (None: the condition's strongest baseline), a point name of the page: a
    search of the default group's records, or ``"<search> <group>"`` from that group's record
    of the same seed (``"asha_es:acc:best_checkpoint es_patience5"``)."""
    from frontier_report import load_records

    conditions = json.loads(frontier.read_text())["conditions"]
    found = load_records(records)
    out = {}
    for cond, entry in conditions.items():
        seeds = sorted(s for (c, g, s) in found if (c, g) == (cond, "default"))
        if not seeds:
            continue
        name = against or entry["strongest_baseline"]
        search, _, group = name.partition(" ")
        group = group or "default"
        pairs = []
        for seed in seeds:
            other = found.get((cond, group, seed), {}).get("runs", [{}])[0]
            if search not in other:
                raise SystemExit(f"--against: {name!r} is not in every record of {cond}")
            pairs.append((found[(cond, "default", seed)]["runs"][0]["neve"], other[search]))
        out[cond] = {"against": name, **condition_split(pairs)}
    return out


def table(splits: Mapping[str, Mapping[str, Any]], markdown: bool = False) -> str:
    head = (
        "condition",
        "against",
        "cost (mean)",
        "cost (geo)",
        "epochs",
        "samples/epoch",
        "forward",
        "NeVe epochs by segment",
        "its epochs by segment",
    )
    rows = []
    for cond, s in splits.items():
        segs = [
            " ".join(f"{k}:{s[who][k]:.1f}" for k in SEGMENTS if s[who][k])
            for who in ("neve_segments", "against_segments")
        ]
        rows.append(
            (
                cond,
                s["against"],
                f"{s['cost_mean']:.3f}",
                f"{s['cost']:.3f}",
                f"{s['epochs']:.3f}",
                f"{s['samples_per_epoch']:.3f}",
                f"{s['forward']:.3f}",
                *segs,
            )
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    return "\n".join("  ".join(r) for r in [head, *rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--records", default=str(RECORDS), help="the frontier's records")
    p.add_argument("--frontier", default=str(FRONTIER), help="the frontier's JSON")
    p.add_argument("--against", help="a search in the records (default: the strongest)")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    splits = load(Path(args.records), Path(args.frontier), args.against)
    if not splits:
        raise SystemExit(f"no frontier records under {args.records}: run benchmarks/frontier.py")
    print(table(splits, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
