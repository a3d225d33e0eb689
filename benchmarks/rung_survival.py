"""Whether the first rungs of a NeVe search keep the configuration that wins: per rung
signal and rung schedule, how often the pool's winner survives each rung.

A pool (benchmarks/selection.py) holds configurations sampled from the study's space,
each trained to its own NeVe stop without pruning, with its per-epoch history. The
*winner* is the finished trial with the highest test accuracy: the configuration that
wins with full training (the test accuracy scores the rule; no rule reads it). Each search
is replayed on the pool in its order (:func:`selection_replay.replay_search`: the pruner's
rules, successive halving at ``min_resource * reduction_factor ** k``), and per rung we
count whether the winner was still running when that rung's epoch passed (a trial that
stopped on its own before a rung survived it). Also reported: how many trials finished
(the pick's choice) and the search's cost in epochs.

Conditions, written before the first run:

- design (choose on these): digits and MNIST-1D, ``clean`` and ``noise20``, seeds 0-2,
  16 configurations per pool;
- held out (confirm on these): digits ``clean_ho`` and ``noise30_ho`` (other splits,
  sampler seeds, noise rate and noise seed), seeds 10-12, 16 configurations.

Candidates: the rung signals ``train_loss`` (``NeVePruner()``'s default), ``velocity``,
``consensus``, ``tse`` (the sum of training losses to the rung), each with the first rung
at epoch 1 (today), 2 or 4, reduction factor 4. Target: the winner survives the first
rung in at least 90% of pools per condition, with at least 3 finished trials to pick from
(the consensus needs three voters for a majority that is not a tie). Added after the design
table was read: ``near kept``, whether some configuration within half a point of the
winner finished (the argmax is a coin toss between configurations one test image apart),
and ``--reduction-factor`` 2 and 3.

    python benchmarks/selection.py --pools digits:clean,digits:noise20,mnist1d:clean,\\
        mnist1d:noise20 --seeds 0,1,2 --configs 16 --jobs 2
    python benchmarks/selection.py --pools digits:clean_ho,digits:noise30_ho --configs 16
    python benchmarks/rung_survival.py                 # the table, from the recorded pools
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import selection_replay as replay  # noqa: E402  (the benchmarks folder is put on the path above)

OUT = ROOT / "runs" / "selection"
DESIGN = [(d, c, s) for d in ("digits", "mnist1d") for c in ("clean", "noise20") for s in (0, 1, 2)]
HELDOUT = [("digits", c, s) for c in ("clean_ho", "noise30_ho") for s in (10, 11, 12)]
SIGNALS = ("train_loss", "velocity", "consensus", "tse")
FIRST_RUNGS = (1, 2, 4)
REDUCTION_FACTOR = 4


#: a configuration "near the winner": within this much test accuracy of it (half a point:
#: 1.8 digits test images, 5 MNIST-1D signals), where the argmax is a coin toss between ties
NEAR = 0.005


def near_winners(pool: dict[str, Any]) -> list[int]:
    """The finished trials within :data:`NEAR` of the best finished test accuracy."""
    done = [i for i, t in enumerate(pool["trials"]) if replay._finished(t)]
    if not done:
        return []
    best = max(pool["trials"][i]["test_acc"] for i in done)
    return [i for i in done if pool["trials"][i]["test_acc"] >= best - NEAR]


def winner(pool: dict[str, Any]) -> int | None:
    """The finished trial with the highest test accuracy (None: none finished)."""
    done = [i for i, t in enumerate(pool["trials"]) if replay._finished(t)]
    return max(done, key=lambda i: pool["trials"][i]["test_acc"]) if done else None


def survival(
    pool: dict[str, Any], signal: str, first_rung: int, rf: int = REDUCTION_FACTOR
) -> dict[str, Any]:
    """Whether the winner passed rungs 1 and 2 of one replayed search (reduction factor
    ``rf``); finished trials; cost (epochs run, all trials)."""
    rungs = {**replay.pruner_rungs(), "min_resource": first_rung, "reduction_factor": rf}
    decisions = replay.replay_search(pool, signal, **rungs)
    w = winner(pool)
    trials = pool["trials"]
    done = [
        i
        for i, d in enumerate(decisions)
        if d["state"] == "COMPLETE" and replay._finished(trials[i])
    ]
    out: dict[str, Any] = {"finished": len(done), "epochs": sum(d["epochs"] for d in decisions)}
    near = near_winners(pool)
    out["near_kept"] = any(
        decisions[i]["state"] == "COMPLETE" and replay._finished(trials[i]) for i in near
    )
    for k in (1, 2):
        epoch = first_rung * rf ** (k - 1)
        if w is None:
            out[f"rung{k}"] = None
        else:
            d = decisions[w]
            out[f"rung{k}"] = d["state"] == "COMPLETE" or d["epochs"] > epoch
    return out


def table(
    pools: list[tuple[str, str, int]],
    out: Path,
    rf: int = REDUCTION_FACTOR,
    first_rungs: tuple[int, ...] = FIRST_RUNGS,
) -> str:
    """Per condition and candidate: winner survival at rungs 1 and 2, finished trials
    (mean, min), epochs run (mean)."""
    lines = [
        f"reduction factor {rf}",
        f"{'condition':<22} {'signal':<11} {'first':>5} {'rung1':>6} {'rung2':>6} "
        f"{'finished':>9} {'min':>4} {'epochs':>7} {'near kept':>9}  pools",
    ]
    by_cond: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for data, cond, seed in pools:
        path = out / f"{data}__{cond}__s{seed}.json"
        if path.exists():
            by_cond.setdefault((data, cond), []).append(json.loads(path.read_text()))
    for (data, cond), recs in sorted(by_cond.items()):
        for signal in SIGNALS:
            for first in first_rungs:
                rows = [survival(p, signal, first, rf) for p in recs]
                r1 = [r["rung1"] for r in rows if r["rung1"] is not None]
                r2 = [r["rung2"] for r in rows if r["rung2"] is not None]
                fin = [r["finished"] for r in rows]
                lines.append(
                    f"{data + ':' + cond:<22} {signal:<11} {first:>5} "
                    f"{sum(r1) / max(len(r1), 1):6.0%} {sum(r2) / max(len(r2), 1):6.0%} "
                    f"{sum(fin) / len(fin):9.1f} {min(fin):>4} "
                    f"{sum(r['epochs'] for r in rows) / len(rows):7.0f} "
                    f"{sum(r['near_kept'] for r in rows) / len(rows):9.0%}  {len(recs)}"
                )
        lines.append("")
    return "\n".join(lines)


def winner_ranks(pool: dict[str, Any], epoch: int) -> dict[str, int | None]:
    """Where the winner stands among all the pool's trials at ``epoch`` (1: the best), by each
    rung signal read as its rung ranks it: ``train_loss`` and ``velocity`` low first,
    ``consensus`` most agreement first; a trial that stopped earlier counts with its last
    epoch. Also the best rank of a near-winner under the consensus (``consensus_near``)."""
    from neve_tune.selection import consensus_scores

    w = winner(pool)
    if w is None:
        return {}
    trials = pool["trials"]
    at = [t["history"][min(epoch, len(t["history"])) - 1] for t in trials]
    order = {
        "train_loss": sorted(range(len(at)), key=lambda i: at[i]["train_loss"]),
        "velocity": sorted(range(len(at)), key=lambda i: at[i]["velocity"]),
    }
    if all(isinstance(m.get("subset_pred"), str) for m in at):
        scores = consensus_scores({i: m["subset_pred"] for i, m in enumerate(at)})
        order["consensus"] = sorted(scores, key=lambda i: scores[i])
    ranks: dict[str, int | None] = {k: o.index(w) + 1 for k, o in order.items()}
    if "consensus" in order:
        ranks["consensus_near"] = min(order["consensus"].index(i) + 1 for i in near_winners(pool))
    return ranks


def ranks_table(pools: list[tuple[str, str, int]], out: Path, epochs: tuple[int, ...]) -> str:
    """Per pool: the winner's configuration, its margin over the next finished trial, and its
    rank at each of ``epochs`` under each rung signal (a rung at reduction factor 4 keeps
    the best quarter: ranks 1-4 of 16)."""
    lines = []
    for data, cond, seed in pools:
        path = out / f"{data}__{cond}__s{seed}.json"
        if not path.exists():
            continue
        pool = json.loads(path.read_text())
        w = winner(pool)
        if w is None:
            continue
        trials = pool["trials"]
        accs = sorted((t["test_acc"] for t in trials if replay._finished(t)), reverse=True)
        cfg = trials[w]["config"]
        head = (
            f"{data}:{cond}:s{seed}".ljust(26)
            + f" lr {cfg['lr']:.4f} batch {cfg['batch_size']:>3} epochs {trials[w]['epochs']:>2}"
            + f" margin {100 * (accs[0] - (accs[1] if len(accs) > 1 else 0)):+.2f}"
        )
        cells = []
        for e in epochs:
            r = winner_ranks(pool, e)
            cells.append(f"@{e}: " + " ".join(f"{k} {v}" for k, v in r.items()))
        lines.append(head + " | " + " | ".join(cells) + f" | of {len(trials)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--set", choices=("design", "heldout", "all"), default="all")
    p.add_argument("--out", default=str(OUT), help="where benchmarks/selection.py wrote the pools")
    p.add_argument(
        "--reduction-factor",
        type=int,
        default=REDUCTION_FACTOR,
        help="successive halving's factor (4: NeVePruner's default)",
    )
    p.add_argument(
        "--first-rungs",
        default=",".join(map(str, FIRST_RUNGS)),
        help="comma-separated epochs of the first rung to replay (default 1,2,4)",
    )
    p.add_argument(
        "--ranks",
        action="store_true",
        help="instead of the table: each pool's winner, its margin, and its rank at epochs 1 and 4",
    )
    args = p.parse_args(argv)
    if args.reduction_factor < 2:
        p.error(f"--reduction-factor must be >= 2, got {args.reduction_factor}")
    pools = {"design": DESIGN, "heldout": HELDOUT, "all": DESIGN + HELDOUT}[args.set]
    try:
        first_rungs = tuple(int(x) for x in args.first_rungs.split(","))
    except ValueError:
        p.error(f"--first-rungs must be comma-separated epochs, got {args.first_rungs!r}")
    if not first_rungs or min(first_rungs) < 1:
        p.error(f"--first-rungs must be epochs >= 1, got {args.first_rungs!r}")
    if args.ranks:
        print(ranks_table(pools, Path(args.out), (1, 4)))
        return 0
    print(table(pools, Path(args.out), args.reduction_factor, first_rungs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
