"""NeVe search vs validation-based ASHA: the same search, measured cost and test accuracy.

:func:`compare` runs three searches on the same data, trial count, sampler, seeds,
``max_epochs`` and ranges for the shared hyperparameters:

- ``neve``: the whole training set, velocity on the probe every epoch, LR decay and stop
  in the trial, :class:`~neve_tune.optuna.NeVePruner` / :class:`~neve_tune.ray.NeVeStopper`,
  validation-free objective (the last epoch's mean training loss);
- ``asha``: 10% of the training set held out, validation loss every epoch,
  ``ReduceLROnPlateau`` on it, fixed ``max_epochs``, Optuna's ``SuccessiveHalvingPruner``
  or Ray's ``ASHAScheduler`` (grace period 1, reduction factor 4), objective: validation
  loss;
- ``asha_es``: the same plus early stopping on validation loss (patience 10).

Cost is counted two ways: the search alone (``search_cost``) and the cost to a final
model that learned from the whole training set (``cost``). A validation-based search's
best configuration is retrained on all training data, replaying the learning rates of its
trial for the epochs it ran (``asha``) or up to its best epoch (``asha_es``); that retrain
and its test accuracy belong to that search. The NeVe search's best trial already trained
on everything: its model is the final model.

The test set is read once per finished trial, after training, to draw the anytime curve
(test accuracy of the best configuration so far against the cost so far); no decision
(sampling, pruning, stopping, selection) reads it.

Example::

    from neve_tune.compare import compare
    result = compare("digits", backend="optuna", trials=20, seed=0)
    print(result["cost_ratio"], result["test_acc_diff"])
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from .data import DataBundle
from .study import Study, load_study, run_trial
from .train import Cost

__all__ = ["SEARCHES", "compare", "compare_searches", "add_cli", "summary_table"]

SEARCHES = ("neve", "asha", "asha_es")
BACKENDS = ("optuna", "ray")
REDUCTION_FACTOR = 4
GRACE_PERIOD = 1


# ------------------------------------------------------------------ one search
def _optuna_search(
    study: Study,
    method: str,
    *,
    trials: int,
    seed: int,
    data: DataBundle,
    model_fn: Callable[[], torch.nn.Module] | None,
    device: str | None,
    neve_signal: str,
    on_trial: Callable[[], None],
) -> list[dict[str, Any]]:
    import optuna

    from .optuna import NeVePruner, make_objective, trial_history

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if method == "neve":
        pruner: optuna.pruners.BasePruner = NeVePruner(
            signal=neve_signal, min_resource=GRACE_PERIOD, reduction_factor=REDUCTION_FACTOR
        )
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=GRACE_PERIOD, reduction_factor=REDUCTION_FACTOR, min_early_stopping_rate=0
        )
    search = optuna.create_study(
        study_name=f"{study.name}-{method}-{seed}",
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
    )
    extra = {"model_fn": model_fn} if model_fn is not None else {}
    objective = make_objective(study, method=method, seed=seed, device=device, data=data, **extra)
    search.optimize(objective, n_trials=trials, callbacks=[lambda s, t: on_trial()], catch=())
    out = []
    for t in search.trials:
        attrs = t.user_attrs
        history = trial_history(t)
        out.append(
            {
                "number": t.number,
                "config": study.config(t.params),
                "state": t.state.name,
                "stopped_by": attrs.get("stopped_by"),
                "epochs": int(attrs.get("epochs") or len(history)),
                "best_epoch": attrs.get("best_epoch"),
                "objective": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                "test_acc": attrs.get("test_acc"),
                "cost": attrs.get("cost") or Cost().as_dict(len(data.train)),
                "lrs": [m.get("lr") for m in history],
                "velocity": [m.get("velocity") for m in history],
            }
        )
    return out


def _ray_search(
    study: Study,
    method: str,
    *,
    trials: int,
    seed: int,
    data: DataBundle,
    model_fn: Callable[[], torch.nn.Module] | None,
    device: str | None,
    neve_signal: str,
    on_trial: Callable[[], None],
) -> list[dict[str, Any]]:
    import tempfile

    import ray
    from ray import tune

    from .ray import run_search

    # neve_signal is Optuna's: NeVeASHAScheduler ranks on the training loss, velocity deciding convergence
    class _Done(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            on_trial()

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            on_trial()

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory(prefix="neve_compare_") as tmp:
        results = run_search(
            study, method=method, num_samples=trials, seed=seed, storage_path=tmp,
            name=f"{study.name}-{method}-{seed}", device=device, callbacks=[_Done()],
            grace_period=GRACE_PERIOD, reduction_factor=REDUCTION_FACTOR, data=data, model_fn=model_fn,
        )
        out = []
        for i, r in enumerate(sorted(results, key=lambda r: r.metrics.get("trial_id", ""))):
            df = r.metrics_dataframe
            rows = [] if df is None else df.sort_values("training_iteration").to_dict("records")
            last = r.metrics or {}
            n = len(data.train)  # type: ignore[arg-type]
            epochs = int(last.get("epoch") or len(rows))
            objective = last.get("objective")
            finished = bool(last.get("done")) and last.get("stopped_by") != "diverged"
            complete = finished and isinstance(objective, float) and math.isfinite(objective)
            cost = Cost(int(last.get("train_samples") or 0), int(last.get("probe_samples") or 0),
                        int(last.get("eval_samples") or 0), float(sum(x.get("epoch_time_s") or 0.0 for x in rows)))
            out.append({
                "number": i,
                "config": study.config({k: r.config[k] for k in study.search_space if k in r.config}),
                "state": "COMPLETE" if complete else ("FAIL" if r.error else "PRUNED"),
                "stopped_by": last.get("stopped_by") if finished else ("diverged" if last.get("diverged") else "pruned"),
                "epochs": epochs,
                "best_epoch": last.get("best_epoch"),
                "objective": float(objective) if complete else None,
                "test_acc": last.get("test_acc") if complete else None,
                "cost": cost.as_dict(n),
                "lrs": [x.get("lr") for x in rows],
                "velocity": [_nan_to_none(x.get("velocity")) for x in rows],
            })
    return out


def _nan_to_none(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _rung_edges(max_epochs: int) -> list[int]:
    edges, r = [], GRACE_PERIOD
    while r < max_epochs:
        edges.append(r)
        r *= REDUCTION_FACTOR
    return edges + [max_epochs]


def epochs_by_rung(trials: Sequence[Mapping[str, Any]], max_epochs: int) -> dict[str, int]:
    """Epochs spent between successive rungs (1, 4, 16, ... max_epochs), all trials."""
    edges = _rung_edges(max_epochs)
    out: dict[str, int] = {}
    lo = 0
    for hi in edges:
        key = f"{lo + 1}-{hi}"
        out[key] = sum(max(0, min(t["epochs"], hi) - lo) for t in trials)
        lo = hi
    return out


def _anytime(trials: Sequence[Mapping[str, Any]]) -> tuple[list[list[float]], Mapping[str, Any] | None]:
    """[cumulative cost, test acc of the best-so-far configuration] after each trial."""
    curve: list[list[float]] = []
    spent = 0.0
    best = None
    for t in trials:
        spent += float(t["cost"]["epochs_equiv"])
        obj = t["objective"]
        if t["state"] == "COMPLETE" and obj is not None and math.isfinite(obj):
            if best is None or obj < best["objective"]:
                best = t
        if best is not None and best.get("test_acc") is not None:
            curve.append([spent, float(best["test_acc"])])
    return curve, best


def _total(trials: Iterable[Mapping[str, Any]]) -> Cost:
    total = Cost()
    for t in trials:
        c = t["cost"]
        total = total + Cost(int(c["train_samples"]), int(c["probe_samples"]), int(c["eval_samples"]), float(c["wall_s"]))
    return total


def _search_record(
    study: Study,
    method: str,
    trials: list[dict[str, Any]],
    *,
    data: DataBundle,
    seed: int,
    device: str | None,
    retrain: bool,
    model_fn: Callable[[], torch.nn.Module] | None,
) -> dict[str, Any]:
    full = len(data.train)
    curve, best = _anytime(trials)
    search_cost = _total(trials)
    final_cost = search_cost
    record: dict[str, Any] = {
        "method": method,
        "best_config": None if best is None else best["config"],
        "search_test_acc": None if best is None else best["test_acc"],
        "test_acc": None if best is None else best["test_acc"],
        "retrain": None,
    }
    if best is not None and method != "neve" and retrain:
        epochs = int(best["best_epoch"] or best["epochs"]) if method == "asha_es" else int(best["epochs"])
        lrs = [float(x) for x in best["lrs"][:epochs]]
        rt = run_trial(study, best["config"], method="retrain", seed=seed, device=device, data=data,
                       lr_schedule=lrs, model_fn=model_fn)
        rc = rt["cost"]
        final_cost = search_cost + Cost(rc["train_samples"], rc["probe_samples"], rc["eval_samples"], rc["wall_s"])
        record["retrain"] = {"epochs": rt["epochs"], "test_acc": rt["test_acc"], "cost": rc}
        record["test_acc"] = rt["test_acc"]
        curve = curve + [[final_cost.epochs_equiv(full), float(rt["test_acc"])]]
    stopped: dict[str, int] = {}
    for t in trials:
        key = t["stopped_by"] or t["state"].lower()
        stopped[key] = stopped.get(key, 0) + 1
    record.update(
        cost=final_cost.as_dict(full),
        search_cost=search_cost.as_dict(full),
        anytime=curve,
        epochs_by_rung=epochs_by_rung(trials, study.max_epochs),
        stopped_by=stopped,
        trials=[{k: v for k, v in t.items() if k != "lrs"} for t in trials],
    )
    return record


def _ratios(neve: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, float | None]:
    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    acc = None if neve["test_acc"] is None or base["test_acc"] is None else neve["test_acc"] - base["test_acc"]
    return {
        "cost_ratio": ratio(neve["cost"]["epochs_equiv"], base["cost"]["epochs_equiv"]),
        "test_acc_diff": acc,
        "search_cost_ratio": ratio(neve["search_cost"]["epochs_equiv"], base["search_cost"]["epochs_equiv"]),
    }


def _one_run(
    study: Study,
    *,
    backend: str,
    trials: int,
    seed: int,
    data: DataBundle,
    model_fn: Callable[[], torch.nn.Module] | None,
    device: str | None,
    retrain: bool,
    neve_signal: str,
    searches: Sequence[str],
    on_trial: Callable[[], None],
) -> dict[str, Any]:
    search_fn = _optuna_search if backend == "optuna" else _ray_search
    run: dict[str, Any] = {"seed": seed}
    for method in searches:
        t0 = time.perf_counter()
        recs = search_fn(study, method, trials=trials, seed=seed, data=data, model_fn=model_fn, device=device,
                         neve_signal=neve_signal, on_trial=on_trial)
        run[method] = _search_record(study, method, recs, data=data, seed=seed, device=device, retrain=retrain,
                                     model_fn=model_fn)
        run[method]["elapsed_s"] = time.perf_counter() - t0
    if "neve" in run and "asha" in run:
        run.update(_ratios(run["neve"], run["asha"]))
    if "neve" in run and "asha_es" in run:
        run["vs_asha_es"] = _ratios(run["neve"], run["asha_es"])
    return run


# ------------------------------------------------------------------ aggregation over seeds
def _mean_std(xs: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> list[list[float]]:
    """Mean over runs of the best-so-far test accuracy (a step function of cost), at every
    cost where every run already has a point, so each point averages the same runs."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    start = max(c[0][0] for c in curves)
    out = []
    for x in sorted({p[0] for c in curves for p in c if p[0] >= start}):
        out.append([x, statistics.fmean([[p[1] for p in c if p[0] <= x][-1] for c in curves])])
    return out


def _aggregate(runs: Sequence[Mapping[str, Any]], searches: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in searches:
        recs = [r[method] for r in runs]
        agg: dict[str, Any] = {"method": method}
        for key in ("cost", "search_cost"):
            agg[key], agg[key + "_std"] = {}, {}
            for field in recs[0][key]:
                agg[key][field], agg[key + "_std"][field] = _mean_std([r[key][field] for r in recs])
        agg["test_acc"], agg["test_acc_std"] = _mean_std([r["test_acc"] for r in recs])
        agg["search_test_acc"], agg["search_test_acc_std"] = _mean_std([r["search_test_acc"] for r in recs])
        agg["test_acc_runs"] = [r["test_acc"] for r in recs]
        agg["best_config"] = [r["best_config"] for r in recs]
        agg["anytime"] = _mean_curve([r["anytime"] for r in recs])
        agg["epochs_by_rung"] = {k: statistics.fmean(r["epochs_by_rung"][k] for r in recs) for k in recs[0]["epochs_by_rung"]}
        stopped: dict[str, float] = {}
        for r in recs:
            for k, v in r["stopped_by"].items():
                stopped[k] = stopped.get(k, 0) + v / len(recs)
        agg["stopped_by"] = stopped
        agg["trials"] = [dict(t, seed=run["seed"]) for run in runs for t in run[method]["trials"]]
        out[method] = agg

    def ratios(base: str) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for key in ("cost_ratio", "test_acc_diff", "search_cost_ratio"):
            vals = [(r if base == "asha" else r["vs_asha_es"])[key] for r in runs]
            d[key], d[key + "_std"] = _mean_std(vals)
            d[key + "_runs"] = vals
        return d

    if "neve" in out and "asha" in out:
        out.update(ratios("asha"))
    if "neve" in out and "asha_es" in out:
        out["vs_asha_es"] = ratios("asha_es")
    return out


# ------------------------------------------------------------------ public API
def compare(
    study: Study | str,
    *,
    backend: str = "optuna",
    trials: int = 20,
    seed: int = 0,
    repeats: int = 1,
    retrain: bool = True,
    device: str | None = None,
    neve_signal: str = "train_loss",
    searches: Sequence[str] = SEARCHES,
    data: DataBundle | None = None,
    model_fn: Callable[[], torch.nn.Module] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the searches ``repeats`` times (seeds ``seed, seed+1, ...``) and return the record.

    Each repeat uses its own seed for the sampler, the trials and, for bundled data sets,
    the train/test split. The top-level figures are means over repeats with ``*_std``
    beside them; ``runs`` holds one full record per seed.
    """
    from tqdm.auto import tqdm

    study = load_study(study)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, got {repeats!r}")
    if neve_signal not in ("velocity", "train_loss"):
        raise ValueError(f"neve_signal must be 'velocity' or 'train_loss', got {neve_signal!r}")
    bad = [s for s in searches if s not in SEARCHES]
    if bad or not searches:
        raise ValueError(f"searches must be a non-empty subset of {SEARCHES}, got {list(searches)}")
    bar = tqdm(total=trials * len(searches) * repeats, desc="trials", unit="trial", disable=not progress)
    started_ray = False
    if backend == "ray":
        import ray

        started_ray = not ray.is_initialized()
    runs = []
    train_size = 0
    t0 = time.perf_counter()
    try:
        for k in range(repeats):
            s = seed + k
            bundle = data if data is not None else study.load_data(seed=s)
            train_size = len(bundle.train)  # type: ignore[arg-type]
            bar.set_postfix_str(f"seed {s}")
            run = _one_run(study, backend=backend, trials=trials, seed=s, data=bundle, model_fn=model_fn,
                           device=device, retrain=retrain, neve_signal=neve_signal, searches=searches,
                           on_trial=lambda: bar.update(1))
            runs.append(run)
            if progress and "cost_ratio" in run:
                bar.write(_run_line(run))
    finally:
        bar.close()
        if started_ray:  # a Ray that compare started is compare's to stop
            import ray

            ray.shutdown()
    result = {
        "study": study.name,
        "backend": backend,
        "trials": trials,
        "seeds": [seed + k for k in range(repeats)],
        "max_epochs": study.max_epochs,
        "retrain": retrain,
        "neve_signal": neve_signal,
        "train_size": train_size,
        **_aggregate(runs, searches),
        "runs": runs,
        "elapsed_s": time.perf_counter() - t0,
    }
    return result


def compare_searches(
    train_set: Dataset,
    test_set: Dataset,
    model_fn: Callable[[], torch.nn.Module],
    *,
    backend: str = "optuna",
    trials: int = 20,
    seed: int = 0,
    repeats: int = 1,
    num_classes: int | None = None,
    search_space: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    progress: bool = False,
    **budget: Any,
) -> dict[str, Any]:
    """:func:`compare` on your own data and model.

    ``train_set``/``test_set`` yield ``(input, label)`` pairs; ``model_fn()`` builds a fresh
    model. ``budget`` sets any :class:`~neve_tune.Study` field (``max_epochs``,
    ``min_epochs``, ``probe_samples``, ``val_fraction``, ``early_stopping``, ...);
    ``search_space``/``defaults`` override the default LR/threshold/batch-size search.
    """
    x0, _ = train_set[0]
    if num_classes is None:
        labels = [int(train_set[i][1]) for i in range(len(train_set))]  # type: ignore[arg-type]
        num_classes = max(labels) + 1
    bundle = DataBundle("user", train_set, test_set, tuple(torch.as_tensor(x0).shape), num_classes)
    fields: dict[str, Any] = {"name": "user", **budget}
    if search_space is not None:
        fields["search_space"] = dict(search_space)
    if defaults is not None:
        base = Study(name="defaults").defaults
        fields["defaults"] = {**base, **defaults}
    study = Study(**fields)
    return compare(study, backend=backend, trials=trials, seed=seed, repeats=repeats, data=bundle,
                   model_fn=model_fn, progress=progress)


# ------------------------------------------------------------------ reporting
def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _run_line(run: Mapping[str, Any]) -> str:
    parts = [f"seed {run['seed']}:"]
    for m in SEARCHES:
        if m in run:
            parts.append(f"{m} acc {_fmt(run[m]['test_acc'], 4)} cost {_fmt(run[m]['cost']['epochs_equiv'], 1)}ep")
    parts.append(f"cost_ratio {_fmt(run.get('cost_ratio'))}")
    return "  ".join(parts)


def summary_table(result: Mapping[str, Any]) -> str:
    """The terminal table: one row per search (means over seeds, ± std)."""
    n = len(result["runs"])
    head = (f"{result['study']} · backend {result['backend']} · {result['trials']} trials · "
            f"max_epochs {result['max_epochs']} · {n} seed{'s' if n > 1 else ''}")
    rows = [head, "",
            f"{'search':9s} {'test acc (final model)':>24s} {'cost to final model':>22s} {'search cost':>18s} {'wall s':>8s}",
            f"{'':9s} {'mean ± std':>24s} {'epochs-equiv':>22s} {'epochs-equiv':>18s} {'':>8s}"]
    def pm(d: Mapping[str, Any], key: str, scale: float = 1.0, fmt: str = ".3f") -> str:
        if d.get(key) is None:
            return "-"
        return f"{scale * d[key]:{fmt}} ± {scale * (d.get(key + '_std') or 0.0):{fmt.lstrip('+')}}"

    for m in SEARCHES:
        if m not in result:
            continue
        r = result[m]
        acc = f"{100 * r['test_acc']:.2f} ± {100 * (r['test_acc_std'] or 0):.2f} %" if r["test_acc"] is not None else "-"
        cost = pm({"c": r["cost"]["epochs_equiv"], "c_std": r["cost_std"]["epochs_equiv"]}, "c", fmt=".1f")
        scost = pm({"c": r["search_cost"]["epochs_equiv"], "c_std": r["search_cost_std"]["epochs_equiv"]}, "c", fmt=".1f")
        rows.append(f"{m:9s} {acc:>24s} {cost:>22s} {scost:>18s} {r['cost']['wall_s'] or 0.0:8.1f}")
    for base, d in (("asha", result), ("asha_es", result.get("vs_asha_es"))):
        if d and "cost_ratio" in d:
            rows.append(
                f"NeVe vs {base:8s} cost ratio {pm(d, 'cost_ratio')}   search cost ratio {pm(d, 'search_cost_ratio')}   "
                f"test acc diff {pm(d, 'test_acc_diff', 100, '+.2f')} pt"
            )
    rows.append("")
    rows.append("epochs spent per rung interval (mean per seed):")
    for m in SEARCHES:
        if m in result:
            rows.append(f"  {m:8s} " + "  ".join(f"{k}: {v:.0f}" for k, v in result[m]["epochs_by_rung"].items())
                        + "   ended: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(result[m]["stopped_by"].items())))
    return "\n".join(rows)


def write_outputs(result: Mapping[str, Any], out_dir: str | Path | None, json_path: str | Path | None) -> list[Path]:
    from .cli import write_json
    from .plots import plot_anytime, plot_velocity_curves

    written: list[Path] = []
    if json_path:
        write_json(json_path, result)
        written.append(Path(json_path))
    if out_dir:
        out = Path(out_dir)
        curves = {m: result[m]["anytime"] for m in SEARCHES if m in result}
        written.append(plot_anytime(curves, out / "anytime.png",
                                    title=f"{result['study']}: best-so-far test accuracy vs cost (mean of {len(result['runs'])} seeds)"))
        if "neve" in result:
            first = result["runs"][0]["neve"]["trials"]
            hists = {f"#{t['number']} lr={t['config']['lr']:.3g}": [
                {"epoch": i + 1, "velocity": v} for i, v in enumerate(t["velocity"])] for t in first}
            written.append(plot_velocity_curves(hists, out / "velocity.png",
                                                title=f"NeVe trials, seed {result['runs'][0]['seed']}"))
    return written


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="NeVe search vs validation-based ASHA", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", nargs="?", default="digits", help="study file or bundled name (default: digits)")
    p.add_argument("--backend", choices=BACKENDS, default="optuna")
    p.add_argument("--trials", type=int, default=20, help="trials per search (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="run the comparison K times, seeds seed..seed+K-1")
    p.add_argument("--max-epochs", type=int, help="override the study's max_epochs (same for every search)")
    p.add_argument("--searches", default=",".join(SEARCHES), help="comma-separated subset of neve,asha,asha_es")
    p.add_argument("--neve-signal", choices=["velocity", "train_loss"], default="train_loss",
                   help="NeVePruner rung signal (default train_loss, measured better on digits)")
    p.add_argument("--objective", help="NeVe's validation-free objective: tse_e1 (default), tse_e<N>, tse_ema")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=True,
                   help="retrain the validation searches' best configuration on all training data (default on)")
    p.add_argument("--device", default=None)
    p.add_argument("--data-root")
    p.add_argument("--json", dest="json_path", help="write the full record here")
    p.add_argument("--out", help="folder for the PNG plots")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    changes: dict[str, Any] = {}
    if args.max_epochs is not None:
        changes["max_epochs"] = args.max_epochs
    if args.objective:
        changes["objective"] = args.objective
    if args.data_root:
        changes["data_options"] = {**study.data_options, "data_root": args.data_root}
    if changes:
        study = study.replace(**changes)
    searches = [s.strip() for s in args.searches.split(",") if s.strip()]
    result = compare(study, backend=args.backend, trials=args.trials, seed=args.seed, repeats=args.repeats,
                     retrain=args.retrain, device=args.device, neve_signal=args.neve_signal, searches=searches,
                     progress=not args.quiet)
    print(summary_table(result))
    for path in write_outputs(result, args.out, args.json_path):
        print(f"wrote {path}")
    return 0
