"""Replay of a NeVe search on a recorded pool (benchmarks/selection.py): ASHA decisions at
the rungs of :class:`neve_tune.optuna.NeVePruner`, then the pick, for any rung signal and
final criterion, without training anything again.

:func:`replay_search` plays the trials in their order, one after the other (a sequential
search, as ``neve-tune compare`` runs one), each epoch applying the pruner's rules:
diverged, converged (never pruned), stalled, unsettled velocity, then successive halving
with Optuna's promotion rule at ``min_resource * reduction_factor ** k``.
tests/test_selection.py checks that it takes the same decisions as a real Optuna search.
No rule reads a trial's test accuracy; it is only reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from neve_tune import selection as sel

Pool = dict[str, Any]
# rung signal: (pool, trial index, epoch, trials at this rung incl. the trial) -> values
# (lower is better)
RungSignal = Callable[[Pool, int, int, list[int]], dict[int, float]]


def _preds(codes: str) -> torch.Tensor:
    return torch.tensor([ord(c) - 48 for c in codes], dtype=torch.long)


def _static(metric: Callable[[dict[str, Any]], float]) -> RungSignal:
    def values(pool: Pool, i: int, epoch: int, at_rung: list[int]) -> dict[int, float]:
        return {j: metric(pool["trials"][j]["history"][epoch - 1]) for j in at_rung}

    return values


def _consensus_rung(pool: Pool, i: int, epoch: int, at_rung: list[int]) -> dict[int, float]:
    """Minus the agreement with the other trials' vote, every trial at this rung judged
    again against the same vote (their predictions at the rung epoch)."""
    preds = torch.stack(
        [_preds(pool["trials"][j]["history"][epoch - 1]["subset_pred"]) for j in at_rung]
    )
    agree = sel.consensus_agreement(preds, pool["num_classes"])
    if len(at_rung) < 2:
        return {j: 0.0 for j in at_rung}
    return {j: -float(a) for j, a in zip(at_rung, agree)}


def _tse_rung(pool: Pool, i: int, epoch: int, at_rung: list[int]) -> dict[int, float]:
    """The sum of the training losses up to the rung epoch (the same epochs for all)."""
    return {j: sel.tse(pool["trials"][j]["history"], epoch) for j in at_rung}


def _fit_excess_rung(pool: Pool, i: int, epoch: int, at_rung: list[int]) -> dict[int, float]:
    """|fit of the given labels - the vote's| at the rung epoch, among the trials there."""
    if len(at_rung) < 2:
        return {j: 0.0 for j in at_rung}
    preds = torch.stack(
        [_preds(pool["trials"][j]["history"][epoch - 1]["subset_pred"]) for j in at_rung]
    )
    ex = sel.fit_excess(preds, _preds(pool["subset_labels"]), pool["num_classes"])
    return {j: abs(float(x)) for j, x in zip(at_rung, ex)}


def _zeta_rung(pool: Pool, i: int, epoch: int, at_rung: list[int]) -> dict[int, float]:
    return {j: sel.susceptibility(pool["trials"][j]["history"], epoch) for j in at_rung}


RUNG_SIGNALS: dict[str, RungSignal] = {
    "zeta": _zeta_rung,
    "fit_excess": _fit_excess_rung,
    "train_loss": _static(
        lambda m: float(m["train_loss"]) if m.get("train_loss") is not None else math.nan
    ),
    "velocity": _static(
        lambda m: float(m["velocity"]) if m.get("velocity") is not None else math.nan
    ),
    "tse": _tse_rung,
    "consensus": _consensus_rung,
    "consensus_frozen": _consensus_rung,
}
# signals whose competitors keep the value they recorded when they reached the rung (as
# Optuna's successive halving keeps them); the others are judged again at each decision
FROZEN = {"train_loss", "velocity", "tse", "consensus_frozen"}


def _reported(m: dict[str, Any]) -> float:
    v, loss = m.get("velocity"), m.get("train_loss")
    if (
        m.get("diverged")
        or v is None
        or loss is None
        or not math.isfinite(v)
        or not math.isfinite(loss)
    ):
        return math.nan
    return float(v)


def _promotable(value: float, competing: list[float], reduction_factor: int) -> bool:
    """Optuna's successive-halving rule (minimize): in the best ``1/reduction_factor``,
    or the best of all while fewer than ``reduction_factor`` trials compete."""
    idx = max(len(competing) // reduction_factor - 1, 0)
    return value <= sorted(competing)[idx]


def pruner_rungs() -> dict[str, Any]:
    """The rung settings of the search being replayed: ``NeVePruner``'s defaults, which
    ``neve-tune compare`` uses (``min_resource`` 1, ``reduction_factor`` 4)."""
    from neve_tune.optuna import NeVePruner

    s = NeVePruner().settings
    keys = (
        "min_resource",
        "reduction_factor",
        "min_early_stopping_rate",
        "unsettled_bound",
        "unsettled_patience",
    )
    return {k: (math.inf if s[k] == "inf" else s[k]) for k in keys}


def replay_search(
    pool: Pool,
    rung_signal: str | RungSignal = "train_loss",
    *,
    min_resource: int = 1,
    reduction_factor: int = 4,
    min_early_stopping_rate: int = 0,
    unsettled_bound: float = 0.6,
    unsettled_patience: int = 5,
) -> list[dict[str, Any]]:
    """Per trial: ``{"state": "COMPLETE"|"PRUNED", "epochs": last epoch run}``; the
    keyword arguments are ``NeVePruner``'s (:func:`pruner_rungs` gives its defaults)."""
    signal = RUNG_SIGNALS[rung_signal] if isinstance(rung_signal, str) else rung_signal
    reached: dict[int, list[int]] = {}  # rung -> trials that recorded a value there
    recorded: dict[int, dict[int, float]] = {}  # rung -> trial -> the value it recorded
    frozen = rung_signal in FROZEN
    out = []
    for i, trial in enumerate(pool["trials"]):
        hist, rung, velocities, state, last = (
            trial["history"],
            0,
            [],
            "COMPLETE",
            len(trial["history"]),
        )
        for epoch, m in enumerate(hist, start=1):
            rep = _reported(m)
            velocities.append(rep)
            converged = bool(m.get("neve_stop"))
            if not math.isfinite(rep):
                state, last = "PRUNED", epoch
                break
            unsettled = (
                len(velocities) >= unsettled_patience
                and math.isfinite(unsettled_bound)
                and all(v > unsettled_bound for v in velocities[-unsettled_patience:])
            )
            if not converged and (m.get("stalled") or unsettled):
                state, last = "PRUNED", epoch
                break
            pruned = False
            while epoch >= min_resource * reduction_factor ** (min_early_stopping_rate + rung):
                if frozen:  # those that recorded a value at this rung (Optuna's successive halving)
                    at_rung = reached.setdefault(rung, []) + [i]
                else:  # those that reported this epoch (NeVePruner(rung_signal="consensus"))
                    at_rung = [j for j in range(i) if out[j]["epochs"] >= epoch] + [i]
                    reached.setdefault(rung, [])
                values = signal(pool, i, epoch, at_rung)
                if math.isnan(values[i]):
                    pruned = True
                    break
                reached[rung].append(i)
                if frozen:
                    values = {**recorded.get(rung, {}), i: values[i]}
                recorded.setdefault(rung, {})[i] = values[i]
                if not _promotable(values[i], [values[j] for j in at_rung], reduction_factor):
                    pruned = True
                    break
                rung += 1
            if pruned and not converged:
                state, last = "PRUNED", epoch
                break
        if state == "COMPLETE" and trial["stopped_by"] in ("diverged", "stalled"):
            state = "PRUNED"
        out.append({"state": state, "epochs": last})
    return out


# ---------------------------------------------------------------- final criteria
def _finished(t: dict[str, Any]) -> bool:
    return (
        t["stopped_by"] not in ("diverged", "stalled")
        and t["objective"] is not None
        and math.isfinite(t["objective"])
    )


def final_scores(
    pool: Pool, idx: Sequence[int], voters: Sequence[str] = ()
) -> dict[str, list[float]]:
    """Each criterion's score (lower is better) of the trials ``idx`` at their stop or restore
    epoch; the consensus among those trials, and for ``consensus_all`` with the predictions
    ``voters`` (pruned trials' last ones) voting too."""
    ts = [pool["trials"][i] for i in idx]
    at = [int(t["best_epoch"] or t["epochs"]) for t in ts]
    out: dict[str, list[float]] = {
        "loss": [sel.final_loss(t["history"], e) for t, e in zip(ts, at)],
        "pc_min": [sel.pc_min(t["history"], 3, e) for t, e in zip(ts, at)],
        "tse5": [sel.tse(t["history"], 5) for t in ts],
        "tse16": [sel.tse(t["history"], 16) for t in ts],
        "zeta": [sel.susceptibility(t["history"], e) for t, e in zip(ts, at)],
    }
    out["auto"] = _shipped_auto(ts, idx, pool["subset_labels"])
    acc = [float(t["history"][e - 1]["train_acc"]) for t, e in zip(ts, at)]
    gate = sel.zeta_gate(acc, out["zeta"])
    out["zeta_gate+zeta"] = _gated(gate, out["zeta"])
    out["zeta_gate+loss"] = _gated(gate, out["loss"])
    n = len(ts)
    if n >= 2:
        preds = torch.stack([_preds(t["final_pred"]) for t in ts])
        labels = _preds(pool["subset_labels"])
        k = pool["num_classes"]
        agree = sel.consensus_agreement(preds, k).tolist()
        out["consensus"] = [-a for a in agree]
        out["fit_excess"] = [abs(x) for x in sel.fit_excess(preds, labels, k).tolist()]
        eps = sel.noise_rate_estimate(preds, labels, k)
        mean_agree = sum(agree) / n
        out["cons_gate+loss"] = _gated([a >= mean_agree - 1e-12 for a in agree], out["loss"])
        out["auto_eps"] = out["consensus"] if eps >= 0.1 else out["loss"]
        out["eps"] = [eps] * n  # not a criterion: the estimate, for the table
        if voters:
            extra = torch.stack([_preds(v) for v in voters])
            everyone = sel.consensus_agreement(torch.cat([preds, extra]), k)[:n].tolist()
            out["consensus_all"] = [-a for a in everyone]
        else:
            out["consensus_all"] = out["consensus"]
    else:
        for name in (
            "consensus",
            "consensus_all",
            "fit_excess",
            "cons_gate+loss",
            "auto_eps",
            "eps",
        ):
            out[name] = [0.0] * n
    return out


def _shipped_auto(ts: Sequence[dict[str, Any]], idx: Sequence[int], labels: str) -> list[float]:
    """``selection="auto"`` as the library ships it (:class:`SelectionPolicy`: the finished
    trials' median fit of the subset's labels, the memorisation guard's stop, the consensus
    tie rule), as scores: 0 for its pick, 1 for the others (``auto_eps`` is the replay's
    older criterion: the vote's noise estimate alone)."""
    from neve_tune.selection_policy import SelectionPolicy, TrialOutcome

    rows = [
        TrialOutcome(
            i,
            t["objective"],
            t["stopped_by"],
            subset_fit=sum(a == b for a, b in zip(t["final_pred"], labels)) / len(labels),
            subset_pred=t["final_pred"],
        )
        for i, t in zip(idx, ts)
    ]
    winner, _ = SelectionPolicy().pick(rows, "auto")
    return [0.0 if i == winner else 1.0 for i in idx]


def _gated(gate: Sequence[bool], score: Sequence[float]) -> list[float]:
    """Trials through the gate first (by ``score``), then the others (by ``score``)."""
    big = 1e6
    return [s if g else (s + big if math.isfinite(s) else math.nan) for g, s in zip(gate, score)]


CRITERIA = (
    "loss",
    "pc_min",
    "tse5",
    "tse16",
    "zeta",
    "zeta_gate+zeta",
    "zeta_gate+loss",
    "consensus",
    "consensus_all",
    "fit_excess",
    "cons_gate+loss",
    "auto_eps",
    "auto",
)
#: criteria that name a pick, not a ranking: no Kendall tau
PICK_ONLY = ("auto",)


def kendall_tau(scores: Sequence[float], accs: Sequence[float]) -> float:
    """Kendall's tau-b between ``-score`` and test accuracy (finite pairs only)."""
    from scipy.stats import kendalltau

    pairs = [(-s, a) for s, a in zip(scores, accs) if math.isfinite(s) and a is not None]
    if len(pairs) < 3:
        return math.nan
    tau = kendalltau([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(tau) if tau is not None and math.isfinite(tau) else math.nan


def pick(scores: Sequence[float], idx: Sequence[int]) -> int | None:
    best = [(s, i) for s, i in zip(scores, idx) if math.isfinite(s)]
    return min(best)[1] if best else None


# ---------------------------------------------------------------- the table
def trial_cost(pool: Pool, i: int, epochs: int) -> float:
    """Epochs-equivalent cost of trial ``i`` run for ``epochs`` (forward-only samples 1/3)."""
    m = pool["trials"][i]["history"][epochs - 1]
    fwd = (m.get("probe_samples") or 0) + (m.get("eval_samples") or 0)
    return (m["train_samples"] + fwd / 3.0) / pool["train_size"]


def evaluate_pool(
    pool: Pool, rung_signals: Sequence[str] = ("train_loss", "velocity", "consensus"), **rungs: Any
) -> dict[str, Any]:
    """Per criterion: on the unpruned pool (tau, pick, regret) and inside a replayed search
    per rung signal (pick, regret, cost). Test accuracy is read here only to report."""
    trials = pool["trials"]
    accs = [t["test_acc"] for t in trials]
    best_acc = max(a for t, a in zip(trials, accs) if _finished(t))
    idx = [i for i, t in enumerate(trials) if _finished(t)]
    scores = final_scores(pool, idx)
    res: dict[str, Any] = {
        "best": best_acc,
        "eps": scores["eps"][0] if idx else math.nan,
        "true_eps": pool.get("subset_noise_rate"),
        "pool": {},
        "search": {},
    }
    for c in CRITERIA:
        p = pick(scores[c], idx)
        res["pool"][c] = {
            "tau": math.nan if c in PICK_ONLY else kendall_tau(scores[c], [accs[i] for i in idx]),
            "acc": None if p is None else accs[p],
            "regret": None if p is None else best_acc - accs[p],
        }
    for rs in rung_signals:
        decisions = replay_search(pool, rs, **{**pruner_rungs(), **rungs})
        done = [
            i for i, d in enumerate(decisions) if d["state"] == "COMPLETE" and _finished(trials[i])
        ]
        cost = sum(trial_cost(pool, i, d["epochs"]) for i, d in enumerate(decisions))
        voters = [
            trials[i]["history"][d["epochs"] - 1]["subset_pred"]
            for i, d in enumerate(decisions)
            if d["state"] == "PRUNED" and "subset_pred" in trials[i]["history"][d["epochs"] - 1]
        ]
        sc = final_scores(pool, done, voters)
        res["search"][rs] = {"cost": cost, "complete": len(done), "picks": {}}
        for c in CRITERIA:
            p = pick(sc[c], done)
            res["search"][rs]["picks"][c] = None if p is None else accs[p]
    return res


def _m(xs: Sequence[float | None], scale: float = 1.0, fmt: str = "{:+.2f}") -> str:
    v = [scale * x for x in xs if x is not None and math.isfinite(x)]
    return fmt.format(statistics.fmean(v)) if v else "-"


def print_tables(
    folder: Path,
    rung_signals: Sequence[str] = ("train_loss", "velocity", "consensus"),
    criteria: Sequence[str] = CRITERIA,
    partial: bool = False,
    **rungs: Any,
) -> None:
    import json

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.json")):
        pool = json.loads(path.read_text())
        if len(pool["trials"]) < len(pool["configs"]) and not partial:
            continue  # still recording
        groups.setdefault((pool["data"], pool["condition"]), []).append(
            evaluate_pool(pool, rung_signals, **rungs)
        )
    for (data, cond), rs in sorted(groups.items()):
        eps = _m([r["eps"] for r in rs], 100, "{:.1f}")
        true = _m([r["true_eps"] for r in rs], 100, "{:.1f}")
        print(
            f"\n{data} {cond}: {len(rs)} seeds; pool best "
            f"{_m([r['best'] for r in rs], 100, '{:.2f}')}%; "
            f"consensus noise estimate {eps}% (subset's true {true}%)"
        )
        cost = "  ".join(
            f"{s} {_m([r['search'][s]['cost'] for r in rs], 1, '{:.1f}')} ep "
            f"({_m([r['search'][s]['complete'] for r in rs], 1, '{:.1f}')} complete)"
            for s in rung_signals
        )
        print(f"  search cost by rung signal: {cost}")
        head = "".join(f" {'rungs ' + s + ': pick, regret':>31s}" for s in rung_signals)
        print(f"  {'criterion':15s} {'pool: tau':>9s} {'pick %':>7s} {'regret':>7s}{head}")
        for c in criteria:
            row = (
                f"  {c:15s} {_m([r['pool'][c]['tau'] for r in rs]):>9s} "
                f"{_m([r['pool'][c]['acc'] for r in rs], 100, '{:.2f}'):>7s} "
                f"{_m([r['pool'][c]['regret'] for r in rs], 100, '{:.2f}'):>7s}"
            )
            for s in rung_signals:
                accs = [r["search"][s]["picks"][c] for r in rs]
                reg = [r["best"] - a if a is not None else None for r, a in zip(rs, accs)]
                row += f" {_m(accs, 100, '{:.2f}'):>22s} {_m(reg, 100, '{:.2f}'):>8s}"
            print(row)


def print_summary(
    folder: Path,
    rung_signals: Sequence[str],
    criteria: Sequence[str],
    conditions: Sequence[str],
    **rungs: Any,
) -> None:
    """Per data set, over ``conditions``: each (rung signal, criterion)'s mean search regret
    (points) and mean cost, plus the worst condition's mean regret: how a choice is made."""
    import json

    by: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.json")):
        pool = json.loads(path.read_text())
        if pool["condition"] in conditions and len(pool["trials"]) == len(pool["configs"]):
            r = evaluate_pool(pool, rung_signals, **rungs)
            r["condition"] = pool["condition"]
            by.setdefault(pool["data"], []).append(r)
    for data, rs in sorted(by.items()):
        conds = sorted({r["condition"] for r in rs})
        print(
            f"\n{data}: {len(rs)} pools over {conds}; search regret (pt) mean / worst condition, "
            "cost (epochs)"
        )
        for s in rung_signals:
            cost = statistics.fmean(r["search"][s]["cost"] for r in rs)
            cells = []
            for c in criteria:
                reg = {
                    cd: [
                        100 * (r["best"] - r["search"][s]["picks"][c])
                        for r in rs
                        if r["condition"] == cd and r["search"][s]["picks"][c] is not None
                    ]
                    for cd in conds
                }
                per = [statistics.fmean(v) for v in reg.values() if v]
                cells.append(f"{c} {statistics.fmean(per):.2f}/{max(per):.2f}" if per else f"{c} -")
            print(f"  rungs {s:16s} cost {cost:6.1f} | " + "  ".join(cells))


def print_markdown(
    folder: Path,
    criteria: Sequence[str],
    rung_signals: Sequence[str] = ("train_loss", "consensus"),
    **rungs: Any,
) -> None:
    """The README's tables: per data set, each criterion's Kendall tau and regret on the
    unpruned pools, and its regret inside replayed searches per rung signal, by condition."""
    import json

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.json")):
        pool = json.loads(path.read_text())
        if len(pool["trials"]) == len(pool["configs"]):
            groups.setdefault((pool["data"], pool["condition"]), []).append(
                evaluate_pool(pool, rung_signals, **rungs)
            )
    for data in sorted({d for d, _ in groups}):
        conds = [c for (d, c) in groups if d == data]
        head = " | ".join(f"{c} ({len(groups[(data, c)])})" for c in conds)
        print(
            f"\n{data}: tau / pick regret (pt) on the unpruned pools; then regret inside searches "
            "by rung signal\n"
        )
        print(f"| criterion | {head} |\n|---|" + "---|" * len(conds))
        for c in criteria:
            cells = []
            for cd in conds:
                rs = groups[(data, cd)]
                cells.append(
                    f"{_m([r['pool'][c]['tau'] for r in rs])} / "
                    f"{_m([r['pool'][c]['regret'] for r in rs], 100, '{:.2f}')}"
                )
            print(f"| {c} | " + " | ".join(cells) + " |")
        for s in rung_signals:
            costs = " | ".join(
                _m([r["search"][s]["cost"] for r in groups[(data, cd)]], 1, "{:.1f}")
                for cd in conds
            )
            print(f"| *search, rungs on {s}: cost (epochs)* | {costs} |")
            for c in criteria:
                cells = []
                for cd in conds:
                    rs = groups[(data, cd)]
                    reg = [
                        r["best"] - r["search"][s]["picks"][c]
                        for r in rs
                        if r["search"][s]["picks"][c] is not None
                    ]
                    cells.append(_m(reg, 100, "{:.2f}"))
                print(f"| rungs {s}, pick {c} | " + " | ".join(cells) + " |")
