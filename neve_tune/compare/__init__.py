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

Baseline variants (``baseline_variants``, ``--baseline-variants``) run the validation
searches as a practitioner may: deciding on validation accuracy (``:acc``) and/or keeping
the winner's own best-epoch weights as the final model (``:best_checkpoint``). NeVe is
compared with each (``vs``); the strongest is named (``strongest_baseline``); ``notes``
says why a baseline's final model ended far below its winner (``_variants``).

Cost is counted two ways: the search alone (``search_cost``) and the cost to a final
model that learned from the whole training set (``cost``). A validation-based search's
best configuration is retrained on all training data, replaying the learning rates of its
trial for the epochs it ran (``asha``) or up to its best epoch (``asha_es``); that retrain
and its test accuracy belong to that search. The NeVe search's best trial already trained
on everything: its model is the final model.

The test set is read once per finished trial, after training, to draw the anytime curve
(test accuracy of the best configuration so far against the cost so far); no decision
(sampling, pruning, stopping, selection) reads it.

Modules: ``_records`` (a search's trials, cost, anytime curve), ``_final`` (a search's
record: its final model and costs), ``_aggregate`` (means over seeds), ``_variants``
(baseline variants, the strongest, notes), ``_report``
(table, JSON, plots), ``_api`` (:func:`compare`,
:func:`compare_searches`). Each backend's search adapter lives in its own package
(``neve_tune.optuna.search_trials``, ``neve_tune.ray.search_trials``). The protocol is
written out in docs/design.md, "Comparison protocol"; the printed table is explained block
by block in docs/compare.md, "Reading the output".

Example::

    from neve_tune.compare import compare
    result = compare("digits", backend="optuna", trials=20, seed=0)
    print(result["cost_ratio"], result["test_acc_diff"])
"""

from .._search_records import SearchTrial
from ..records import RUNG_SIGNALS
from ..records import SEARCH_METHODS as SEARCHES
from ._aggregate import aggregate, mean_std
from ._api import BACKENDS, compare, compare_searches
from ._records import anytime_curve, epochs_by_rung, total_cost
from ._report import summary_table, write_outputs

__all__ = [
    "BACKENDS",
    "RUNG_SIGNALS",
    "SEARCHES",
    "SearchTrial",
    "aggregate",
    "anytime_curve",
    "compare",
    "compare_searches",
    "epochs_by_rung",
    "mean_std",
    "summary_table",
    "total_cost",
    "write_outputs",
]
