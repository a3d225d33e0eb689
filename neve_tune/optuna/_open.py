"""Opening an Optuna study in a storage: loaded, or created when asked (or in memory); a
missing study is a :class:`StudyNotFoundError` that lists the studies there, its URL's
password redacted."""

from __future__ import annotations

import optuna
from optuna.pruners import BasePruner

from .._checks import check_choice
from ._storage import make_storage
from ._urls import redact_url

__all__ = ["StudyNotFoundError", "open_study"]


class StudyNotFoundError(LookupError):
    """The study does not exist in the storage (and ``create`` was not asked). ``where``
    says so without the hint on how to create it (for readers that cannot create)."""

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.where = where or message


def open_study(
    study_name: str,
    storage: str | None,
    *,
    create: bool = False,
    direction: str = "minimize",
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: BasePruner | None = None,
    heartbeat_interval: int | None = 60,
    heartbeat_grace_period: int | None = None,
    max_retry: int | None = 3,
) -> optuna.Study:
    """Load ``study_name`` from ``storage`` (a URL, see :func:`make_storage`); create it
    when ``create`` or when the storage is in-memory. Raises :class:`StorageError` for an
    unreachable storage and :class:`StudyNotFoundError` for a missing study, both with
    the password redacted."""
    backend = make_storage(
        storage,
        heartbeat_interval=heartbeat_interval,
        heartbeat_grace_period=heartbeat_grace_period,
        max_retry=max_retry,
    )
    if backend is None or create:
        check_choice("direction", direction, ("minimize", "maximize"))
        return optuna.create_study(
            study_name=study_name,
            storage=backend,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    try:
        return optuna.load_study(
            study_name=study_name, storage=backend, sampler=sampler, pruner=pruner
        )
    except KeyError:
        try:
            known = [
                s.study_name
                for s in optuna.get_all_study_summaries(backend, include_best_trial=False)
            ]
        except Exception:  # pragma: no cover - the listing is only a hint
            known = []
        where = (
            f"study {study_name!r} does not exist in storage {redact_url(storage)!r} "
            f"(studies there: {known})"
        )
        raise StudyNotFoundError(
            f"{where}; create it with `optuna create-study --study-name {study_name} --storage URL "
            "--direction minimize`, or pass --create",
            where,
        ) from None
