"""Which finished trial of an Optuna study wins: the lowest objective, or (``Study.selection
= "consensus"``) the one whose last predictions on the fixed training subset agree most with
the majority vote of the other finished trials' (docs/measurements.md, "Which trial wins"). The
predictions travel through the storage, in each epoch's user attribute (``subset_pred``),
so any worker, or a script after the search, can pick.

    >>> import optuna
    >>> from neve_tune.optuna import pick_trial, report_epoch
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> search = optuna.create_study()
    >>> for preds, loss in (("0123", 0.1), ("0120", 0.3), ("0100", 0.2)):
    ...     t = search.ask()
    ...     epoch = {"epoch": 1, "train_loss": loss, "velocity": 0.1, "subset_pred": preds}
    ...     _ = report_epoch(t, epoch)
    ...     _ = search.tell(t, loss)
    >>> pick_trial(search).number, pick_trial(search, "consensus").number
    (0, 1)
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from .._checks import check_choice
from ._report import check_optuna_study, trial_history

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["SELECTIONS", "last_fits", "last_predictions", "pick_trial"]

SELECTIONS = ("objective", "consensus", "auto")


def _last(
    search: optuna.Study, key: str, kind: type | tuple[type, ...], states: Any = None
) -> dict[int, Any]:
    """Each trial's (of ``states``, default all) last recorded epoch value of ``key`` of
    type ``kind``, by trial number; trials that recorded none are left out."""
    last = {}
    check_optuna_study("search", search)
    for t in search.get_trials(deepcopy=False, states=states):
        values = [m[key] for m in trial_history(t) if isinstance(m.get(key), kind)]
        if values:
            last[t.number] = values[-1]
    return last


def last_predictions(search: optuna.Study, states: Any = None) -> dict[int, str]:
    """Each trial's last recorded predictions on the selection subset, by trial number
    (trials that recorded none are left out; ``states``: only trials in these states)."""
    return _last(search, "subset_pred", str, states)


def last_fits(search: optuna.Study, states: Any = None) -> dict[int, float]:
    """Each trial's last recorded fit of the subset's given labels (``subset_fit``)."""
    return {k: float(v) for k, v in _last(search, "subset_fit", (int, float), states).items()}


#: what pick_trial(..., "auto") says when no finished trial recorded what it decides on
AUTO_WITHOUT_DATA = (
    "pick_trial(selection='auto'): no finished trial reported subset_fit, so 'auto' cannot tell "
    "noisy labels and picks by the objective; record it in your objective with "
    "neve_tune.selection.SelectionSubset.from_dataset(train_set, 500, seed=0) (the same seed in "
    "every trial): codes = subset.predict(model); metrics.update(subset_pred=codes, "
    "subset_fit=subset.fit(codes)) before report_epoch (docs/own_loop.md)"
)


def pick_trial(search: optuna.Study, selection: str = "objective") -> FrozenTrial | None:
    """The winning COMPLETE trial by ``selection`` (see the module doc), or None when no
    trial finished. ``"consensus"`` needs predictions on the finished trials (record them
    with ``Study(selection_subset=500)``); ties go to the lower trial number. ``"auto"``
    picks by the consensus when the finished trials' ``subset_fit`` says the labels are
    noisy (:func:`neve_tune.selection.selection_mode`), else by the objective; with no
    ``subset_fit`` recorded it warns (:data:`AUTO_WITHOUT_DATA`) and picks by the objective."""
    import optuna

    from ..selection import consensus_winner, selection_mode

    check_optuna_study("search", search)
    check_choice("selection", selection, SELECTIONS)
    complete = (optuna.trial.TrialState.COMPLETE,)
    done = search.get_trials(deepcopy=False, states=complete)
    if not done:
        return None
    if selection == "auto":
        fits = last_fits(search, complete)
        if not fits:
            warnings.warn(AUTO_WITHOUT_DATA, UserWarning, stacklevel=2)
        selection = selection_mode([fits.get(t.number) for t in done])
    if selection == "objective":
        return search.best_trial
    number = consensus_winner(last_predictions(search, complete), [t.number for t in done])
    return next(t for t in done if t.number == number)
