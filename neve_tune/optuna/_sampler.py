"""The workers' sampler: TPE seeded per trial, so workers given one seed sample apart.

Optuna samplers seeded alike sample alike: two workers each holding
``TPESampler(seed=s)`` draw the same startup configurations and train them twice. Here
each trial gets its own ``TPESampler`` whose seed comes from the given seed and the
trial's number (:func:`trial_seed`). Trial numbers are unique in a study (the storage
hands them out), so N workers started with one ``--sampler-seed`` (or a worker restarted
after a crash) never draw from one random stream, while a study run again with the same
seed and one worker samples the same configurations. TPE itself keeps no state between
trials beyond its random generator, so a fresh one per trial samples as TPE does.

    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> storage = optuna.storages.InMemoryStorage()
    >>> a = optuna.create_study(storage=storage, study_name="s",
    ...                         sampler=TrialSeededTPESampler(seed=0))
    >>> b = optuna.load_study(storage=storage, study_name="s",
    ...                       sampler=TrialSeededTPESampler(seed=0))
    >>> x, y = a.ask(), b.ask()
    >>> x.suggest_float("lr", 1e-3, 1.0, log=True) != y.suggest_float("lr", 1e-3, 1.0, log=True)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from .._checks import check_seed

__all__ = ["TrialSeededTPESampler", "trial_seed"]


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` in a search seeded with ``seed`` (NumPy's
    ``SeedSequence`` mixes the two, so neighbouring seeds or numbers give unrelated streams).

    >>> trial_seed(0, 0) != trial_seed(0, 1) != trial_seed(1, 0)
    True
    """
    return int(np.random.SeedSequence([int(seed), int(number)]).generate_state(1)[0])


class TrialSeededTPESampler(BaseSampler):
    """A :class:`~optuna.samplers.TPESampler` per trial, seeded with
    :func:`trial_seed` (``seed``, trial number). ``tpe_options`` go to every TPESampler."""

    def __init__(self, seed: int, **tpe_options: Any) -> None:
        self.seed = check_seed("sampler_seed", seed)
        self._options = tpe_options
        self._samplers: dict[int, TPESampler] = {}

    def _for(self, trial: FrozenTrial) -> TPESampler:
        sampler = self._samplers.get(trial.number)
        if sampler is None:
            if len(self._samplers) > 8:  # trials of this process run one at a time
                self._samplers.clear()
            sampler = self._samplers[trial.number] = TPESampler(
                seed=trial_seed(self.seed, trial.number), **self._options
            )
        return sampler

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial.number, None)

    def reseed_rng(self) -> None:  # the seeds are fixed by (seed, trial number) on purpose
        pass

    def __repr__(self) -> str:
        return f"TrialSeededTPESampler(seed={self.seed})"
