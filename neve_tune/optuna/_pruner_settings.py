"""The :class:`~neve_tune.optuna.NeVePruner` settings every worker of a study shares: the
first worker stores them in the study's user attribute :data:`SETTINGS_ATTR`, a later
worker adopts them (:meth:`~neve_tune.optuna.NeVePruner.from_study`) or is refused when
its own differ."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

__all__ = ["SETTINGS_ATTR", "bind_settings", "settings_from_study", "stored_signal_note"]

SETTINGS_ATTR = "neve_pruner"  # study user attribute holding the settings every worker must share
SETTINGS_VERSION = 1

#: the selection each rung signal goes with (Study.rung_signal's inverse)
_SELECTION_OF = {"auto": "auto", "consensus": "consensus", "train_loss": "objective"}


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


def stored_signal_note(study: optuna.study.Study, rung_signal: str, selection: str) -> str | None:
    """One line when the signal stored in ``study`` by its first worker differs from the study
    file's rung signal (``rung_signal``, what its ``selection`` goes with), else None. The
    stored rungs are kept (every worker of a study prunes by one rule, and studies stored
    before keep running); the line says that this worker's pick follows another rule and
    how to make them agree."""
    stored = study.user_attrs.get(SETTINGS_ATTR)
    theirs = stored.get("rung_signal") if isinstance(stored, dict) else None
    if theirs is None or theirs == rung_signal:
        return None
    same = _SELECTION_OF.get(theirs)
    fix = f"--selection {same} or " if same else ""
    return (
        f"note: study {study.study_name!r} prunes on rung signal {theirs!r} (stored in "
        f"{SETTINGS_ATTR!r} by its first worker), not {rung_signal!r}, which this study file's "
        f"selection {selection!r} goes with: the rungs keep {theirs!r}, the pick is by "
        f"{selection!r} (pass {fix}--rung-signal {theirs} to say so and silence this)"
    )
