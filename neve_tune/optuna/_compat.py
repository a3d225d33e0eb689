"""The one place the Optuna backend leans on Optuna behaviour that is not public API.

Checked against Optuna :data:`CHECKED_OPTUNA`. ``tests/test_optuna_compat.py`` tests
every assumption listed here and fails (it does not skip) when an Optuna release breaks
one; a failure means this module must change, not the test.

**Successive halving on a signal other than the reported value.** ``NeVePruner`` runs
Optuna's own :class:`~optuna.pruners.SuccessiveHalvingPruner` on the signal it reads from
the stored epoch (training loss or velocity), whatever value the trial reports. Optuna has no public
way to hand a pruner another value, so :func:`with_step_value` gives it a shallow copy of
the trial whose ``intermediate_values`` hold that value. This relies on two details of
``SuccessiveHalvingPruner.prune`` (``optuna/pruners/_successive_halving.py``):

1. it reads the value to rank from ``trial.intermediate_values[trial.last_step]`` of the
   trial it is given, not from the storage;
2. it records the rung value (system attribute ``completed_rung_<r>``) on the stored trial
   the copy refers to (``copy.copy`` keeps that reference), and reads the competitors'
   rung values from the other trials' system attributes.

Everything else in the backend uses public Optuna API only.
"""

from __future__ import annotations

import copy

from optuna.trial import FrozenTrial

__all__ = ["CHECKED_OPTUNA", "with_step_value"]

CHECKED_OPTUNA = "5.0.0"


def with_step_value(trial: FrozenTrial, step: int, value: float) -> FrozenTrial:
    """A shallow copy of ``trial`` whose only intermediate value is ``value`` at ``step``,
    for :class:`~optuna.pruners.SuccessiveHalvingPruner` to rank (see the module doc).

    ``trial`` itself is left unchanged.

    >>> import optuna
    >>> t = optuna.trial.create_trial(value=1.0, intermediate_values={1: 0.5, 2: 0.4})
    >>> view = with_step_value(t, 2, 0.9)
    >>> (view.intermediate_values, view.last_step, t.intermediate_values)
    ({2: 0.9}, 2, {1: 0.5, 2: 0.4})
    """
    view = copy.copy(trial)
    view.intermediate_values = {int(step): float(value)}
    return view
