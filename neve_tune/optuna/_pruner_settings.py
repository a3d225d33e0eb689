"""The :class:`~neve_tune.optuna.NeVePruner` settings every worker of a study shares: the
first worker stores them in the study's user attribute :data:`SETTINGS_ATTR`, a later
worker adopts them (:meth:`~neve_tune.optuna.NeVePruner.from_study`) or is refused when
its own differ."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

__all__ = ["SETTINGS_ATTR", "bind_settings", "settings_from_study"]

SETTINGS_ATTR = "neve_pruner"  # study user attribute holding the settings every worker must share
SETTINGS_VERSION = 1


def settings_from_study(study: optuna.study.Study, overrides: dict[str, Any]) -> dict[str, Any]:
    """The pruner arguments stored in ``study`` (none: the defaults), ``overrides`` applied."""
    stored = study.user_attrs.get(SETTINGS_ATTR)
    settings: dict[str, Any] = dict(stored) if isinstance(stored, dict) else {}
    settings.update(overrides)
    s = {k: v for k, v in settings.items() if k != "version"}
    if s.get("unsettled_bound") == "inf":
        s["unsettled_bound"] = math.inf
    return s


def bind_settings(study: optuna.study.Study, settings: dict[str, Any]) -> None:
    """Store ``settings`` in ``study`` if it holds none; :class:`ValueError` naming what
    differs if it holds different ones."""
    mine = {**settings, "version": SETTINGS_VERSION}
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, mine)
        stored = study.user_attrs.get(SETTINGS_ATTR)  # read back: a concurrent first writer wins
    if stored != mine:
        theirs = (
            {k: v for k, v in dict(stored).items() if k != "version"}
            if isinstance(stored, dict)
            else stored
        )
        diff = {
            k: (theirs.get(k), v)
            for k, v in settings.items()
            if isinstance(theirs, dict) and theirs.get(k) != v
        }
        raise ValueError(
            f"study {study.study_name!r} prunes with NeVePruner settings {theirs} (stored in "
            f"its user attribute {SETTINGS_ATTR!r} by the first worker), but this worker uses "
            f"{settings}; differing (study, this worker): {diff}. Start every worker with "
            "the same settings, or with none to adopt the study's (NeVePruner.from_study)."
        )
