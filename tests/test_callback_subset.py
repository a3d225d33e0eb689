"""The Lightning and Hugging Face callbacks record what the ``auto`` pick needs: with
``selection_subset=`` each epoch's metrics (and the Optuna trial's epoch attribute) carry
``subset_pred`` and ``subset_fit``; anything but a ``SelectionSubset`` is refused at once."""

from __future__ import annotations

import optuna
import pytest
import torch

try:
    from tests import _conformance as C
    from tests import _conformance_callbacks as K
except ImportError:  # tests/ on sys.path (pytest's default import mode)
    import _conformance as C  # type: ignore[no-redef]
    import _conformance_callbacks as K  # type: ignore[no-redef]

from neve_tune.selection import SelectionSubset, decode_predictions

CASE = C.Case(0.5, noise=0.2, guard=False)


def _subset() -> SelectionSubset:
    return SelectionSubset.from_dataset(C.dataset(CASE.noise), 64, seed=0)


def _check(history: list[dict], subset: SelectionSubset) -> None:
    assert history and all(len(m["subset_pred"]) == subset.num_examples for m in history)
    for m in history:
        assert m["subset_fit"] == subset.fit(m["subset_pred"])
    # the last epoch's predictions are those of the model it ended with: they fit the labels
    assert history[-1]["subset_fit"] > history[0]["subset_fit"] - 0.2
    assert decode_predictions(history[-1]["subset_pred"]).max() < C.CLASSES


@pytest.mark.parametrize("door", ["lightning", "hf"])
def test_callback_records_the_subset_each_epoch_and_reports_it(door, tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    subset = _subset()
    trial = optuna.create_study(pruner=optuna.pruners.NopPruner()).ask()
    if door == "lightning":
        out = K.lightning_run(CASE, trial=trial, subset=subset, max_epochs=3)
    else:
        out = K.hf_run(CASE, tmp_path, trial=trial, subset=subset, stop_after=3)
    _check(out.history, subset)
    from neve_tune.optuna import epoch_key

    stored = trial.study.trials[0].user_attrs[epoch_key(1)]
    assert stored["subset_pred"] == out.history[0]["subset_pred"]
    assert stored["subset_fit"] == out.history[0]["subset_fit"]


def test_a_callback_refuses_anything_but_a_selection_subset():
    from neve_tune.hf import NeVeTrainerCallback
    from neve_tune.lightning import NeVeCallback

    for cls in (NeVeCallback, NeVeTrainerCallback):
        with pytest.raises(TypeError, match="selection_subset=.*must be a .*SelectionSubset"):
            cls(selection_subset=500)
        with pytest.raises(TypeError, match="SelectionSubset"):
            cls(selection_subset=torch.zeros(3, 2))


def test_the_callbacks_subset_refuses_one_logit_per_example():
    """A binary model's [batch, 1] output: its argmax is class 0 for every example, so the
    pick would see no prediction ever change; refused as the library's own subset does."""
    from neve_tune._callbacks.subset import call_model, record_subset

    subset = SelectionSubset(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 1, 0]))
    metrics: dict = {}
    with pytest.raises(ValueError, match="one logit per example"):
        record_subset(metrics, subset, torch.nn.Linear(3, 1), call_model)
    record_subset(metrics, subset, torch.nn.Linear(3, 2), call_model)
    assert len(metrics["subset_pred"]) == 6 and 0.0 <= metrics["subset_fit"] <= 1.0
