"""The conformance suite's doors without a Trainer (the callbacks' are in
tests/_conformance_callbacks.py, Ray's in tests/_conformance_ray.py): each trains a
:data:`~_conformance.CASES` case through one entrance to the library and returns an
:class:`~_conformance.Outcome`: the stop reason, the per-epoch metrics and what the door
records about the stop (``record``), in the door's own words."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import torch

try:
    from tests import _conformance as C
except ImportError:  # tests/ on sys.path (pytest's default import mode)
    import _conformance as C  # type: ignore[no-redef]

from neve_tune import fit
from neve_tune.optuna import NeVePruner, report_epoch, trial_history


class Crash(Exception):
    """A run killed after an epoch (its checkpoint written)."""


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------- fit (the CLI's loop)
def fit_run(case: C.Case, checkpoint: Path | None = None, crash_after: int | None = None):
    model = C.mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=case.lr)

    def on_epoch(metrics: dict[str, Any]) -> None:
        if metrics["epoch"] == crash_after:
            raise Crash

    result = fit(
        model,
        optimizer,
        C.dataset(case.noise),
        C.controller(model, optimizer, case),
        batch_size=C.BATCH,
        prediction_changes="subset",
        checkpoint_path=checkpoint,
        on_epoch=on_epoch,
    )
    record = {"FitResult.stopped_by": result.stopped_by}
    return C.Outcome(result.stopped_by, result.history, record)


def fit_resumed(tmp: Path) -> C.Outcome:
    path = tmp / "run.pt"
    try:
        fit_run(C.CASES["clean"], path, crash_after=C.STOPPED_AT)
    except Crash:
        pass
    return fit_run(C.CASES["clean"], path)


# ---------------------------------------------------------------- the CLI's trial runner
def cli_run(case: C.Case, checkpoint: Path | None = None, crash_after: int | None = None):
    """``run_trial`` (what ``neve-tune train`` runs) with a :class:`neve_tune.Study`'s own
    defaults: only the budget, the guard's source (the subset, as the callbacks') and, for
    an unguarded case, ``pc_patience=None`` are set; plain SGD as in every door."""
    from neve_tune import Study, run_trial
    from neve_tune.data import DataBundle

    study = Study(
        name="conformance",
        max_epochs=C.MAX_EPOCHS,
        prediction_changes="subset",
        pc_patience=C.rules(case)["pc_patience"],
    )
    ds = C.dataset(case.noise)

    def on_epoch(metrics: dict[str, Any]) -> None:
        if metrics["epoch"] == crash_after:
            raise Crash

    result = run_trial(
        study,
        {"lr": case.lr, "batch_size": C.BATCH, "momentum": 0.0},
        data=DataBundle("synthetic", ds, ds, (C.DIM,), C.CLASSES),
        model_fn=C.mlp,
        evaluate_test=False,
        checkpoint_path=checkpoint,
        on_epoch=on_epoch,
    )
    record = {"TrialResult.stopped_by": result.stopped_by}
    return C.Outcome(result.stopped_by, result.history, record)


def cli_resumed(tmp: Path) -> C.Outcome:
    path = tmp / "trial.pt"
    try:
        cli_run(C.CASES["clean"], path, crash_after=C.STOPPED_AT)
    except Crash:
        pass
    return cli_run(C.CASES["clean"], path)


# ---------------------------------------------------------------- own loop + Optuna
def optuna_run(case: C.Case, pruner: Any = None) -> C.Outcome:
    """One trial of the own-loop objective (docs/optuna_loop.py's shape) under ``pruner``
    (default :class:`NeVePruner`)."""
    _quiet_optuna()
    study = optuna.create_study(pruner=pruner or NeVePruner())

    def objective(trial: optuna.Trial) -> float:
        loop = C.OwnLoop(case)
        while not loop.neve.should_stop:
            metrics = loop.epoch()
            report_epoch(trial, metrics)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return metrics["kept_train_loss"]

    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    history = trial_history(trial)
    record = {"trial.state": trial.state.name, "stopped_by": history[-1]["stopped_by"]}
    return C.Outcome(history[-1]["stopped_by"], history, record)


def optuna_resumed() -> C.Outcome:
    """A trial killed after epoch 4; the retry loads the loop's checkpoint, replays the
    history it inherited through ``report_epoch`` (which skips nothing new) and goes on."""
    _quiet_optuna()
    study = optuna.create_study(pruner=NeVePruner())
    saved: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        loop = C.OwnLoop(C.CASES["clean"])
        if saved:
            loop.load(saved["state"])
            for metrics in saved["history"]:
                report_epoch(trial, metrics)
        while not loop.neve.should_stop:
            metrics = loop.epoch()
            report_epoch(trial, metrics)
            if not saved and metrics["epoch"] == C.STOPPED_AT:
                saved.update(state=loop.state(), history=trial_history(trial))
                raise Crash
        return metrics["kept_train_loss"]

    study.optimize(objective, n_trials=2, catch=(Crash,))
    first, retry = study.trials
    assert first.state.name == "FAIL" and retry.state.name == "COMPLETE"
    history = trial_history(retry)
    return C.Outcome(history[-1]["stopped_by"], history)


def optuna_search(noise: float, lrs: tuple[float, ...], record_subset: bool = True):
    """An own-loop search over ``lrs`` on data with ``noise``; each epoch records the fixed
    subset's predictions and fit when ``record_subset`` (docs/own_loop.md, the ``auto`` pick)."""
    from neve_tune.selection import SelectionSubset

    _quiet_optuna()
    study = optuna.create_study(pruner=NeVePruner())

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_categorical("lr", lrs)
        loop = C.OwnLoop(C.Case(lr, noise=noise))
        subset = SelectionSubset.from_dataset(C.dataset(noise), 500, seed=0)
        while not loop.neve.should_stop:
            metrics = loop.epoch()
            if record_subset:
                codes = subset.predict(loop.model)
                metrics.update(subset_pred=codes, subset_fit=subset.fit(codes))
            report_epoch(trial, metrics)
        return metrics["kept_train_loss"]

    for lr in lrs:
        study.enqueue_trial({"lr": lr})
    study.optimize(objective, n_trials=len(lrs))
    return study


def optuna_picks() -> dict[str, Any]:
    """The picks of own-loop searches over :data:`C.PICK_LRS`: by ``auto`` (with the rule the
    selection policy applied), by each rule, and whether ``auto`` warns without the data."""
    from neve_tune.optuna import pick_trial, select_trial

    out: dict[str, Any] = {}
    for name, noise in (("clean", 0.0), ("noisy", 0.2)):
        study = optuna_search(noise, C.PICK_LRS)
        best, decision = select_trial(study, "auto")
        assert pick_trial(study, "auto").number == best.number
        out[name] = (decision.rule, best.number)
        for rule in ("objective", "consensus"):
            out[f"{name}_{rule}"] = pick_trial(study, rule).number
    bare = optuna_search(0.0, C.PICK_LRS[:2], record_subset=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pick_trial(bare, "auto")
    out["without_data_warns"] = any("subset_fit" in str(w.message) for w in caught)
    return out


def pruner_at_once() -> optuna.pruners.BasePruner:
    """A pruner that prunes a trial at its first report (any loss is above 0)."""
    return optuna.pruners.ThresholdPruner(upper=0.0)


def pruned_at_once() -> optuna.Trial:
    """A running trial of a study whose pruner prunes at the first report (a pruner's stop)."""
    _quiet_optuna()
    return optuna.create_study(pruner=pruner_at_once()).ask()
