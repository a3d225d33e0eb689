r"""What the memorisation guard sees when it stops: the evidence at each stop of the library's
guard, replayed on the records of ``benchmarks/guard_replay.py`` (runs recorded without a
stop), for the stops that help (noisy labels, kept model at least as good as the guard off)
and the stops that cut a learner (more than ``--cut`` points below the guard off).

Per stop, from the training pass only (no rule reads the test accuracy; it only sorts the
stops into the two groups):

- ``unfit/N``: the share of training labels the model did not fit at the minimum's epoch;
- ``PCmin/N``: the prediction-change moving average at the minimum, per training example;
- ``drop/epoch``: how fast ``unfit`` fell from the minimum to the stop, per epoch, relative;
- ``PC/drop``: prediction changes from the minimum to the stop per label newly fitted;
- ``loss stop/min``, ``loss min/first``: the training loss at the stop over the minimum's,
  and at the minimum over the first epoch's;
- ``LR decays``: how many times the velocity's plateau rule lowered the LR before the stop.

A feature separates the two groups if the cuts lie outside the helpful stops' range.

    python benchmarks/guard_evidence.py            # the records of guard_average.py first

Figures are deterministic on one machine, not across machines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECORDS = (
    "runs/guard_avg,runs/guard_avg_heldout,runs/guard_avg_clean,runs/guard,runs/guard_heldout2"
)
FEATURES = (
    "unfit/N",
    "PCmin/N",
    "drop/epoch",
    "PC/drop",
    "loss stop/min",
    "loss min/first",
    "LR decays",
)


def evidence(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The guard's stop in one record with its evidence and its cost against the guard off
    (None when the guard does not end the run)."""
    from guard_replay import GUARDS, replay

    stop, kept, why = replay(rec, GUARDS["default"])
    if why != "prediction_changes":
        return None
    rows, n = rec["rows"], rec["num_train"]
    off = rows[replay(rec, None)[1] - 1]["test_acc"]
    unfit_min, unfit_stop = (n * (1 - rows[e - 1]["train_acc"]) for e in (kept, stop))
    changes = sum(r["prediction_changes"] for r in rows[kept:stop])
    window = [rows[i]["prediction_changes"] for i in range(kept - 3, kept)]
    loss_min = rows[kept - 1]["train_loss"]
    kept_acc = rows[kept - 1].get("avg_acc") or rows[kept - 1]["test_acc"]  # mean restore
    return {
        "run": f"{rec['domain']} noise {rec['noise']} LR x{rec['lr_scale']} seed {rec['seed']}",
        "noise": rec["noise"],
        "points": 100 * (kept_acc - off),
        "unfit/N": unfit_min / n,
        "PCmin/N": sum(window) / len(window) / n,
        "drop/epoch": (unfit_min - unfit_stop) / unfit_min / (stop - kept),
        "PC/drop": changes / max(unfit_min - unfit_stop, 1.0),
        "loss stop/min": rows[stop - 1]["train_loss"] / loss_min,
        "loss min/first": loss_min / rows[0]["train_loss"],
        "LR decays": sum(b["lr"] < a["lr"] for a, b in zip(rows[: stop - 1], rows[1:stop])),
    }


def collect(folders: list[Path]) -> list[dict[str, Any]]:
    """Every run once (the first folder that holds it), with the guard's stop."""
    seen, out = set(), []
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            rec = json.loads(path.read_text())
            key = (rec["domain"], rec["noise"], rec["lr_scale"], rec["seed"])
            if key in seen:
                continue
            seen.add(key)
            e = evidence(rec)
            if e is not None:
                out.append(e)
    return out


def report(stops: list[dict[str, Any]], cut: float) -> str:
    helpful = [s for s in stops if s["noise"] > 0 and s["points"] >= 0]
    cuts = sorted((s for s in stops if s["points"] < -cut), key=lambda s: s["points"])
    lines = [
        f"{len(stops)} guard stops; {len(helpful)} help on noisy labels; {len(cuts)} cut "
        f"more than {cut:g} points:"
    ]
    lines += [f"  {s['run']}: {s['points']:+.2f}" for s in cuts]
    for f in FEATURES:
        xs = sorted(s[f] for s in helpful)
        inside = sum(xs[0] <= s[f] <= xs[-1] for s in cuts)
        lines.append(
            f"{f:15s} helpful {xs[0]:.3f}-{xs[-1]:.3f} (10-90% {xs[len(xs) // 10]:.3f}-"
            f"{xs[(9 * len(xs)) // 10]:.3f}); cuts "
            + ", ".join(f"{s[f]:.3f}" for s in cuts)
            + f"; {inside}/{len(cuts)} inside"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # the records with the window mean first: a run is read from the first folder holding it
    p.add_argument("--records", default=RECORDS)
    p.add_argument("--cut", type=float, default=5.0, help="points below the guard off")
    args = p.parse_args(argv)
    folders = [ROOT / x.strip() for x in args.records.split(",") if x.strip()]
    print(report(collect(folders), args.cut))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
