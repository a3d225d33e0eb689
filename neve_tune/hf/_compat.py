"""The one place the Hugging Face backend leans on ``transformers`` behaviour that is not
documented API. Checked against transformers :data:`CHECKED_TRANSFORMERS`;
``tests/test_hf_search.py::test_the_search_hooks_the_compat_module_relies_on`` checks each
assumption and fails (it does not skip) when a release breaks one.

**A search trial's objective without an evaluation.** ``Trainer.hyperparameter_search``
runs each trial through ``run_hp_search_optuna`` / ``run_hp_search_ray``
(``transformers/integrations/integration_utils.py``): they set ``trainer.objective =
None``, train, and call ``trainer.evaluate()`` (which needs an ``eval_dataset``) only when
``trainer.objective`` is still None; the value of ``trainer.objective`` is the trial's.
So :func:`set_objective` writing the attribute at the end of training gives the trial
NeVe's objective with no evaluation. Under Ray the runner then reports nothing itself,
so the callback reports each measurement to Tune (with ``objective``).
:func:`search_backend` reads ``trainer.hp_search_backend``, which the Trainer sets for the
duration of a search (None otherwise).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CHECKED_TRANSFORMERS", "search_backend", "set_objective"]

CHECKED_TRANSFORMERS = "5.25.0"


def search_backend(trainer: Any) -> str | None:
    """``"optuna"``, ``"ray"``, ... while ``trainer`` runs a hyperparameter search, else None."""
    backend = getattr(trainer, "hp_search_backend", None)
    return None if backend is None else str(getattr(backend, "value", backend))


def set_objective(trainer: Any, value: float) -> None:
    """Make ``value`` the objective of the search trial ``trainer`` is running."""
    trainer.objective = float(value)
