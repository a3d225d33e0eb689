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

from ..selection_policy import SelectionDecision, SelectionPolicy, TrialOutcome
from ._report import check_optuna_study, direction_sign, trial_history

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "SELECTION_ATTR",
    "last_fits",
    "last_predictions",
    "pick_trial",
    "record_selection",
    "select_trial",
    "trial_outcomes",
]

#: study user attribute: the rule the last recorded pick applied (SelectionDecision.as_dict())
SELECTION_ATTR = "neve_selection"


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
#: an Optuna state -> how the trial ended, for a trial that did not COMPLETE
_ENDED = {"PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "running"}


def _outcome(t: FrozenTrial, sign: float) -> TrialOutcome:
    """One Optuna trial as the selection policy reads it: a COMPLETE trial ended by the
    reason its objective recorded (``stopped_by``: the summary attribute, else its last
    epoch's), with its value oriented so lower is better."""
    history = trial_history(t)
    last = history[-1] if history else {}
    ended = _ENDED.get(t.state.name)
    if ended is None:
        ended = t.user_attrs.get("stopped_by") or last.get("stopped_by")
    fits = [m["subset_fit"] for m in history if isinstance(m.get("subset_fit"), (int, float))]
    preds = [m["subset_pred"] for m in history if isinstance(m.get("subset_pred"), str)]
    return TrialOutcome(
        t.number,
        None if t.value is None else sign * float(t.value),
        ended,
        float(fits[-1]) if fits else None,
        preds[-1] if preds else None,
    )


def trial_outcomes(search: optuna.Study) -> list[TrialOutcome]:
    """Every trial of ``search`` as :class:`~neve_tune.selection_policy.TrialOutcome` rows,
    by trial number (what the selection policy decides on)."""
    check_optuna_study("search", search)
    if len(search.directions) != 1:  # Optuna's search.direction raises its own RuntimeError
        raise ValueError(
            f"search: study {search.study_name!r} has {len(search.directions)} objectives; "
            "picking a trial needs a single-objective study"
        )
    sign = direction_sign(search.direction)
    return [_outcome(t, sign) for t in search.get_trials(deepcopy=False)]


def select_trial(
    search: optuna.Study, selection: str = "auto", policy: SelectionPolicy | None = None
) -> tuple[FrozenTrial | None, SelectionDecision]:
    """The winning finished trial by ``selection`` (None when none finished) and the
    policy's decision (the rule applied, the noise estimate, why): :func:`pick_trial`
    with its reason."""
    check_optuna_study("search", search)
    policy = policy or SelectionPolicy()
    policy.decide([], selection)  # the selection is checked before the storage is read
    number, decision = policy.pick(trial_outcomes(search), selection)
    best = next((t for t in search.get_trials(deepcopy=False) if t.number == number), None)
    return best, decision


def record_selection(
    search: optuna.Study, best: FrozenTrial | None, decision: SelectionDecision, by: str
) -> dict[str, Any]:
    """Store the pick in the study user attribute :data:`SELECTION_ATTR`: the decision, the
    trial picked and who picked (``by``); returns what was stored."""
    record = {**decision.as_dict(), "trial": None if best is None else best.number, "by": by}
    search.set_user_attr(SELECTION_ATTR, record)
    return record


def pick_trial(search: optuna.Study, selection: str = "objective") -> FrozenTrial | None:
    """The winning finished trial by ``selection`` (see the module doc), or None when no
    trial finished (:mod:`neve_tune.selection_policy`: a trial that ended by its own rule
    with a finite objective; a COMPLETE trial whose ``stopped_by`` says stalled or diverged
    is not). ``"consensus"`` needs predictions on the finished trials (record them with
    ``Study(selection_subset=500)``); ties go to a trial the memorisation guard stopped, then
    to the lower trial number. ``"auto"`` picks by the consensus when the finished trials'
    ``subset_fit`` says the labels are noisy and the guard stopped one of them, else by the
    objective; with no ``subset_fit`` recorded it warns (:data:`AUTO_WITHOUT_DATA`)
    and picks by the objective. :func:`select_trial` also returns the rule applied."""
    best, decision = select_trial(search, selection)
    if selection == "auto" and decision.finished and not decision.fits:
        warnings.warn(AUTO_WITHOUT_DATA, UserWarning, stacklevel=2)
    return best
