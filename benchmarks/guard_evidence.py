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

``--veto`` replays a candidate that needs evidence from outside the run (designed after the
token cuts had been read, so these records cannot confirm it): a search's estimate of the
label noise, here one minus the median training fit at the kept epoch of the other runs of the
same domain and noise (leave one out), and no guard stop while the run's unfit share at the
minimum exceeds that estimate by more than the margin. Per (domain, noise) where a stop moves:
the mean and worst difference from the guard off and the mean stop epoch, default -> veto.

    python benchmarks/guard_evidence.py            # the records of guard_average.py first
    python benchmarks/guard_evidence.py --veto 0.1,0.2

``--estimate guard`` replays a second estimate, one that memorisation does not lower: the
median unfit share at the restored epoch of the other runs of the same domain and noise that
the guard itself ended (a guard stop restores weights from before memorisation); with no such
run there is no estimate and no veto. It was designed on the design records
(``runs/guard_avg``, ``runs/guard_avg_clean``, ``runs/guard``; margins 0.05, 0.1, 0.2 read,
0.1 chosen). Written down before its held-out run: on the held-out records
(``runs/guard_avg_heldout``, ``runs/guard_heldout2``, leaving out every run the design
records hold, each run's estimate from held-out runs only), margin 0.1, it is kept as the
candidate if (1) on clean labels no domain's worst run against the guard off falls below the
default guard's worst, nor its mean more than 0.1 points below the default's, and (2) under
noise no (domain, noise) mean falls more than 0.5 points below the default's.

    python benchmarks/guard_evidence.py --veto 0.1 --estimate guard \
        --records runs/guard_avg_heldout,runs/guard_heldout2 \
        --exclude runs/guard_avg,runs/guard_avg_clean,runs/guard

Figures are deterministic on one machine, not across machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def load(folders: list[Path]) -> dict[tuple, dict[str, Any]]:
    """Every run once, by (domain, noise, LR scale, seed): the first folder holding it."""
    recs: dict[tuple, dict[str, Any]] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            rec = json.loads(path.read_text())
            recs.setdefault((rec["domain"], rec["noise"], rec["lr_scale"], rec["seed"]), rec)
    return recs


def collect(recs: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run's guard stop with its evidence (runs the guard does not end left out)."""
    return [e for rec in recs.values() if (e := evidence(rec)) is not None]


def _kept_acc(rec: dict[str, Any], outcome: tuple[int, int, str]) -> float:
    """The kept model's test accuracy: the window mean after a guard stop where recorded."""
    row = rec["rows"][outcome[1] - 1]
    mean = row.get("avg_acc") if outcome[2] == "prediction_changes" else None
    return row["test_acc"] if mean is None else mean


def noise_estimates(
    recs: dict[tuple, dict[str, Any]], default: dict[tuple, tuple[int, int, str]], kind: str
) -> dict[tuple, float]:
    """Per run, the label noise its search would estimate from the other runs of the same
    domain and noise (leave one out), given each run's ``default`` guard outcome: ``"kept"``,
    one minus their median training fit at the default guard's kept epoch; ``"guard"``, the
    median unfit share at the restored epoch of those the guard ended (1.0, no veto, when
    none did)."""
    unfit = {k: 1 - recs[k]["rows"][o[1] - 1]["train_acc"] for k, o in default.items()}
    out = {}
    for k in recs:
        others = [j for j in recs if j[:2] == k[:2] and j != k]
        if kind == "guard":
            others = [j for j in others if default[j][2] == "prediction_changes"]
        out[k] = statistics.median(unfit[j] for j in others) if others else 1.0
    return out


def vetoed(estimate: float, margin: float) -> Any:
    """The library's guard, its stops allowed only where the unfit share at the minimum is
    at most ``estimate + margin``; a vetoed stop waits for a new minimum that passes."""
    from guard_replay import _misfit

    from neve_tune.guard import MemorisationGuard

    def guard(rows: list[dict[str, Any]], n: int) -> tuple[int, int] | None:
        g = MemorisationGuard(3, 3)
        for r in rows:
            unfit = round(_misfit(r, n))
            fired = g.update(r["epoch"], r["prediction_changes"], unfit, train_loss=r["train_loss"])
            if fired and 1 - rows[g.best_epoch - 1]["train_acc"] <= estimate + margin:
                return r["epoch"], g.best_epoch
        return None

    return guard


def veto_report(recs: dict[tuple, dict[str, Any]], margins: list[float], kind: str = "kept") -> str:
    """Per margin and (domain, noise) where a stop moves: the default guard against the veto."""
    from guard_replay import GUARDS, replay

    default = {k: replay(r, GUARDS["default"]) for k, r in recs.items()}
    off = {k: r["rows"][replay(r, None)[1] - 1]["test_acc"] for k, r in recs.items()}
    estimates = noise_estimates(recs, default, kind)
    m = statistics.mean
    lines = []
    for margin in margins:
        groups: dict[tuple, list[tuple[float, float, int, int]]] = {}
        for k, rec in recs.items():
            new = replay(rec, vetoed(estimates[k], margin))
            row = (_kept_acc(rec, default[k]) - off[k], _kept_acc(rec, new) - off[k])
            groups.setdefault(k[:2], []).append((100 * row[0], 100 * row[1], default[k][0], new[0]))
        lines.append(f"veto margin {margin:g}:")
        for (domain, noise), v in sorted(groups.items()):
            base, veto, stop, stop_veto = (list(c) for c in zip(*v))
            if stop == stop_veto:
                continue
            lines.append(
                f"  {domain} noise {noise:g} ({len(v)} runs): default {m(base):+.2f} (worst "
                f"{min(base):+.2f}, stop {m(stop):.1f}) -> veto {m(veto):+.2f} (worst "
                f"{min(veto):+.2f}, stop {m(stop_veto):.1f})"
            )
    return "\n".join(lines)


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


def _folders(spec: str) -> list[Path]:
    return [ROOT / x.strip() for x in spec.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # the records with the window mean first: a run is read from the first folder holding it
    p.add_argument("--records", default=RECORDS)
    p.add_argument("--cut", type=float, default=5.0, help="points below the guard off")
    p.add_argument("--veto", default=None, help="margins of the veto candidate, e.g. 0.1,0.2")
    p.add_argument("--estimate", choices=("kept", "guard"), default="kept")
    p.add_argument("--exclude", default="", help="leave out the runs these folders hold")
    args = p.parse_args(argv)
    recs = load(_folders(args.records))
    for key in load(_folders(args.exclude)):
        recs.pop(key, None)
    if args.veto:
        print(veto_report(recs, [float(x) for x in args.veto.split(",")], args.estimate))
    else:
        print(report(collect(recs), args.cut))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
