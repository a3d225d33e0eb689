"""``compare`` and ``compare_searches``: the searches side by side, repeated over seeds."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .._checks import check_choice, check_int, check_model_fn
from .._model_fit import trial_model
from .._search_records import SearchTrial
from ..data import DataBundle
from ..records import RUNG_SIGNALS, SUBSET_SIGNALS
from ..records import SEARCH_METHODS as SEARCHES
from ..study import Study, load_study
from ._aggregate import aggregate, ratios
from ._final import search_record
from ._records import (
    MIN_RESOURCE,
    REDUCTION_FACTOR,
)
from ._report import run_line
from ._user_data import check_bundle_labels, user_bundle
from ._variants import BaselineVariant, parse_variants, strongest_baseline

__all__ = ["BACKENDS", "compare", "compare_searches"]

BACKENDS = ("optuna", "ray")

SearchFn = Callable[..., list[SearchTrial]]


def _search_fn(backend: str) -> SearchFn:
    if backend == "optuna":
        from ..optuna import search_trials
    else:
        from ..ray import search_trials
    return search_trials


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
    rung_signal: str,
    searches: Sequence[str],
    on_trial: Callable[[], None],
    reduction_factor: int = REDUCTION_FACTOR,
    variants: Sequence[BaselineVariant] = (),
) -> dict[str, Any]:
    search_trials = _search_fn(backend)
    plan = _plan(study, searches, variants)
    run: dict[str, Any] = {"seed": seed, "searches": [name for name, _, _ in plan]}
    for name, method, own in plan:
        t0 = time.perf_counter()
        found = search_trials(
            own,
            method,
            trials=trials,
            seed=seed,
            data=data,
            model_fn=model_fn,
            device=device,
            rung_signal=rung_signal,
            on_trial=on_trial,
            min_resource=MIN_RESOURCE,
            reduction_factor=reduction_factor,
        )
        run[name] = search_record(
            own,
            method,
            found,
            data=data,
            seed=seed,
            device=device,
            retrain=retrain,
            model_fn=model_fn,
            name=name,
        )
        run[name]["elapsed_s"] = time.perf_counter() - t0
    return paired(run)


def paired(run: dict[str, Any]) -> dict[str, Any]:
    """``run`` (one seed's searches, by name) with NeVe's ratios to each baseline (``vs``,
    ``vs_asha_es``, and against ``asha`` at the top) and the baselines' notes."""
    baselines = [name for name in run["searches"] if name != "neve"]
    if "neve" in run:
        run["vs"] = {b: ratios(run["neve"], run[b]) for b in baselines}
    if "neve" in run and "asha" in run:
        run.update(ratios(run["neve"], run["asha"]))
    if "neve" in run and "asha_es" in run:
        run["vs_asha_es"] = ratios(run["neve"], run["asha_es"])
    notes = [dict(run[b]["note"], seed=run["seed"]) for b in baselines if run[b].get("note")]
    run["notes"] = notes
    return run


def _plan(
    study: Study, searches: Sequence[str], variants: Sequence[BaselineVariant]
) -> list[tuple[str, str, Study]]:
    """(name, method, study) of every search to run: ``searches`` with the study's own
    settings, then each baseline variant under its ``method:val_metric:final`` name."""
    plan = [(m, m, study) for m in searches]
    plan += [
        (v.name, v.method, study.replace(val_metric=v.val_metric, final=v.final)) for v in variants
    ]
    return plan


def compare(
    study: Study | str,
    *,
    backend: str = "optuna",
    trials: int = 20,
    seed: int = 0,
    repeats: int = 1,
    retrain: bool = True,
    device: str | None = None,
    rung_signal: str | None = None,
    searches: Sequence[str] = SEARCHES,
    reduction_factor: int = REDUCTION_FACTOR,
    baseline_variants: str | Sequence[str] | None = None,
    data: DataBundle | None = None,
    model_fn: Callable[[], torch.nn.Module] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the searches ``repeats`` times (seeds ``seed, seed+1, ...``) and return the record.

    Each repeat uses its own seed for the sampler, the trials and, for bundled data sets,
    the train/test split. The top-level figures are means over repeats with ``*_std``
    beside them; ``runs`` holds one full record per seed. ``rung_signal`` is the rung
    signal of the NeVe search's pruner (Optuna) or scheduler (Ray); by default the study's
    :attr:`~neve_tune.Study.rung_signal` (``"auto"`` for the bundled studies). ``reduction_factor``
    sets every search's successive halving alike (rungs at epochs 1, rf, rf², ...; each
    rung keeps the best 1/rf).

    ``baseline_variants`` (``"asha_es:acc:best_checkpoint,asha:acc:retrain"`` or a list)
    adds validation searches run another way (:mod:`~neve_tune.compare._variants`: the
    validation metric they decide on, their final model), each under its own name beside
    ``searches``. NeVe is compared with every baseline (``vs``), and the strongest one
    (highest mean test accuracy, ties by lower cost) is named (``strongest_baseline``).
    ``notes`` says why a baseline's final model ended far below its own winner.
    """
    study = load_study(study)
    rung_signal = study.rung_signal if rung_signal is None else rung_signal
    _check_arguments(backend, trials, repeats, rung_signal, searches, study, reduction_factor)
    check_model_fn(model_fn)
    if data is not None:  # labels out of range would fail only in training or at the test
        check_bundle_labels(data)
    variants = _check_variants(baseline_variants, study, searches)
    names = [name for name, _, _ in _plan(study, searches, variants)]
    t0, seeds = time.perf_counter(), [seed + k for k in range(repeats)]
    settings = dict(
        backend=backend,
        trials=trials,
        seeds=seeds,
        retrain=retrain,
        rung_signal=rung_signal,
        reduction_factor=reduction_factor,
    )
    runs, train_size = _repeats(
        study,
        data=data,
        model_fn=model_fn,
        device=device,
        searches=searches,
        variants=variants,
        progress=progress,
        **settings,
    )
    return _record(study, runs, names, train_size, time.perf_counter() - t0, settings)


def _record(
    study: Study,
    runs: list[dict[str, Any]],
    names: list[str],
    train_size: int,
    elapsed_s: float,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """:func:`compare`'s record: its settings, the means over seeds, the strongest baseline,
    the notes and every seed's run."""
    agg = aggregate(runs, names)
    baselines = [n for n in names if n != "neve"]
    return {
        "study": study.name,
        "backend": settings["backend"],
        "trials": settings["trials"],
        "seeds": settings["seeds"],
        "max_epochs": study.max_epochs,
        "data_options": dict(study.data_options),
        "retrain": settings["retrain"],
        "rung_signal": settings["rung_signal"],
        "reduction_factor": settings["reduction_factor"],
        "train_size": train_size,
        "val_metric": study.val_metric,
        "final": study.final,
        "searches": names,
        **agg,
        "strongest_baseline": strongest_baseline(agg, baselines),
        "notes": [n for r in runs for n in r["notes"]],
        "runs": runs,
        "elapsed_s": elapsed_s,
    }


def _repeats(
    study: Study,
    *,
    seeds: list[int],
    data: DataBundle | None,
    progress: bool,
    backend: str,
    trials: int,
    searches: Sequence[str],
    variants: Sequence[BaselineVariant],
    **kw: Any,
) -> tuple[list[dict[str, Any]], int]:
    """One run per seed (its own data split for a bundled data set), with a progress bar;
    the runs and the training set's size. A Ray that this started is stopped at the end."""
    from tqdm.auto import tqdm

    total = trials * len(_plan(study, searches, variants)) * len(seeds)
    bar = tqdm(total=total, desc="trials", unit="trial", disable=not progress)
    started_ray = backend == "ray" and not _ray_running()
    runs: list[dict[str, Any]] = []
    train_size = 0
    try:
        for s in seeds:
            bundle = data if data is not None else study.load_data(seed=s)
            with torch.random.fork_rng(devices=[]):  # refused before a search, not in each trial
                trial_model(study, bundle, s, kw.get("model_fn"))
            train_size = len(bundle.train)  # type: ignore[arg-type]
            bar.set_postfix_str(f"seed {s}")
            run = _one_run(
                study,
                backend=backend,
                trials=trials,
                seed=s,
                data=bundle,
                searches=searches,
                variants=variants,
                on_trial=lambda: bar.update(1),
                **kw,
            )
            runs.append(run)
            if progress and "cost_ratio" in run:
                bar.write(run_line(run))
    finally:
        bar.close()
        if started_ray:  # a Ray that compare started is compare's to stop
            import ray

            ray.shutdown()
    return runs, train_size


def _check_variants(
    specs: str | Sequence[str] | None, study: Study, searches: Sequence[str]
) -> list[BaselineVariant]:
    """The baseline variants, each refused in one line naming ``baseline_variants``; one
    that is a search of ``searches`` as the study runs it already is refused too."""
    variants = parse_variants(specs, study)
    for v in variants:
        if v.method in searches and (v.val_metric, v.final) == (study.val_metric, study.final):
            raise ValueError(
                f"baseline_variants: {v.name!r} is the search {v.method!r} already run "
                f"(the study's val_metric={study.val_metric!r}, "
                f"final={study.final!r}); leave it out"
            )
    return variants


def _check_arguments(
    backend: str,
    trials: int,
    repeats: int,
    rung_signal: str,
    searches: Sequence[str],
    study: Study,
    reduction_factor: int = REDUCTION_FACTOR,
) -> None:
    """:func:`compare`'s settings, each refused in one line naming it."""
    check_choice("backend", backend, BACKENDS)
    check_int("reduction_factor", reduction_factor, minimum=2)
    check_int("trials", trials, minimum=1)
    check_int("repeats", repeats, minimum=1)
    check_choice("rung_signal", rung_signal, RUNG_SIGNALS)
    if rung_signal in SUBSET_SIGNALS and not study.selection_subset:
        raise ValueError(
            f"rung_signal={rung_signal!r} needs a study with selection_subset > 0 (e.g. "
            "study.replace(selection_subset=500)): the predictions it compares"
        )
    if isinstance(searches, str):  # a string would be read letter by letter
        raise TypeError(f"searches must be a list of names like ['neve', 'asha'], got {searches!r}")
    bad = [s for s in searches if s not in SEARCHES]
    if bad or not searches or len(set(searches)) < len(searches):  # a repeat would run twice
        raise ValueError(
            f"searches must be a non-empty subset of {SEARCHES}, each once, got {list(searches)}"
        )


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


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
    baseline_variants: str | Sequence[str] | None = None,
    **budget: Any,
) -> dict[str, Any]:
    """:func:`compare` on your own data and model.

    ``train_set``/``test_set`` yield ``(input, label)`` pairs; ``model_fn()`` builds a fresh
    model. ``budget`` sets any :class:`~neve_tune.Study` field (``max_epochs``,
    ``min_epochs``, ``probe_samples``, ``val_fraction``, ``early_stopping``, ...);
    ``search_space``/``defaults`` override the default LR/threshold/batch-size search;
    ``baseline_variants`` as in :func:`compare`. ``num_classes`` (None: one more than the
    largest training label) must exceed every label, test labels included, and equal the
    model's number of outputs; both are checked before any search starts.
    """
    bundle = user_bundle(train_set, test_set, num_classes)
    fields: dict[str, Any] = {"name": "user", **budget}
    if search_space is not None:
        fields["search_space"] = dict(search_space)
    if defaults is not None:
        base = Study(name="defaults").defaults
        fields["defaults"] = {**base, **defaults}
    study = Study(**fields)
    return compare(
        study,
        backend=backend,
        trials=trials,
        seed=seed,
        repeats=repeats,
        data=bundle,
        model_fn=model_fn,
        progress=progress,
        baseline_variants=baseline_variants,
    )
