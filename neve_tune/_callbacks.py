"""Shared by the Lightning and Hugging Face callbacks (no third-party import here).

Both callbacks run the controller :func:`neve_tune.train.fit` runs, with the studies'
defaults (docs/design.md, "The callbacks"): the relative velocity threshold
(``threshold_mode="relative"``, ``threshold=1e-2``: stop when V / peak V < 1e-2), the memorisation guard on (``pc_patience=3``,
``pc_window=3``, ``pc_restore=True``), its prediction changes counted on a fixed seeded
subset of 1,000 training inputs (:class:`neve_tune.SubsetPredictionChanges`, since a
callback sees batches, not example indices), ``patience="auto"`` (``max(2, max_epochs //
20)``, the budget being the Trainer's) and the stall check. Every option is checked when
the callback is built; one it cannot honour is refused there, never accepted and ignored.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch

from ._checks import check_float, check_int
from ._forward import check_probe_target
from .control import NeVe, auto_patience, resolve_patience
from .prediction_changes import PredictionChanges, SubsetPredictionChanges

__all__ = ["CallbackSettings", "auto_patience", "check_controller_options", "check_trial"]

# set by the callback itself, never through **controller_options
_OWN = {"self", "optimizer", "velocity", "threshold"}
# the studies' trial control (neve_tune.Study), which the callbacks share
STUDY_DEFAULTS: dict[str, Any] = {"patience": "auto", "threshold_mode": "relative", "pc_patience": 3, "pc_window": 3,
                                  "pc_restore": True}
DEFAULT_THRESHOLD = 1e-2  # the studies' default: with threshold_mode="relative", V / peak V < 1e-2


def check_controller_options(options: Mapping[str, Any], who: str) -> None:
    """Refuse, when the callback is built, keyword options that :class:`neve_tune.NeVe` does not take.

    >>> check_controller_options({"min_epochs": 3}, "NeVeCallback")
    >>> check_controller_options({"patients": 3}, "NeVeCallback")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: unknown NeVeCallback options ['patients']; NeVe options are [..., 'patience'...]
    """
    params = inspect.signature(NeVe.__init__).parameters
    allowed = sorted(n for n, p in params.items() if n not in _OWN and p.kind is not p.VAR_KEYWORD)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown {who} options {unknown}; NeVe options are {allowed}")


def check_trial(trial: Any) -> Any:
    """An Optuna trial or None; anything else is refused when the callback is built."""
    if trial is None:
        return None
    try:
        from optuna.trial import BaseTrial
    except ImportError:  # pragma: no cover - optuna is a core dependency
        BaseTrial = ()  # type: ignore[assignment,misc]
    if not isinstance(trial, BaseTrial):
        raise TypeError(f"trial must be an optuna trial (optuna.Trial) or None, got {type(trial).__name__}")
    return trial


def _check_guard(options: dict[str, Any], source: Any, given: set[str], who: str) -> Any:
    """The prediction-change source the options need (None: the guard is off), or a
    ``ValueError`` for an option that would be accepted and ignored."""
    uses_pc = options["pc_patience"] is not None or options.get("lr_signal") == "prediction_changes"
    if source is None:
        if "pc_patience" in given and options["pc_patience"] is not None:
            raise ValueError(f"{who}(pc_patience=...) needs prediction changes; pass prediction_changes='subset' "
                             "(or a PredictionChanges / SubsetPredictionChanges), or pc_patience=None")
        if options.get("lr_signal") == "prediction_changes":
            raise ValueError(f"{who}(lr_signal='prediction_changes') needs prediction changes; pass "
                             "prediction_changes='subset' (the default), or another lr_signal")
        options["pc_patience"] = None  # the guard is off
        uses_pc = False
    if not uses_pc:
        unused = sorted(given & {"pc_window", "pc_restore"})
        if unused or (source is not None and not isinstance(source, str)):
            what = unused or ["prediction_changes"]
            raise ValueError(f"{who}: {what} are unused with the guard off (pc_patience=None) and "
                             "lr_signal != 'prediction_changes'; drop them, or turn the guard on")
        return None
    if options["pc_patience"] is None and "pc_restore" in given:
        raise ValueError(f"{who}: pc_restore is unused with the guard off (pc_patience=None); drop it")
    return source


class CallbackSettings:
    """The settings both callbacks take, checked once: the probe (given, or built from the
    first batch or example) and what it is forwarded through, the velocity threshold, an
    optional Optuna trial, the monitored layers, the prediction-change source of the
    memorisation guard, ``verbose``, and further :class:`neve_tune.NeVe` options with the
    studies' defaults; and the run's controller and history."""

    who = "callback"
    sources: tuple[str, ...] = ("subset",)

    def _settings(self, probe: torch.Tensor | None, threshold: float, trial: Any, probe_samples: int | None,
                  probe_seed: int, layers: Any, probe_module: str | None, probe_fn: Any, prediction_changes: Any,
                  verbose: bool, controller_options: Mapping[str, Any]) -> None:
        who = self.who
        if probe is not None and not isinstance(probe, torch.Tensor):
            raise TypeError(f"probe must be a torch.Tensor [N, ...] or None, got {type(probe).__name__}")
        if probe is not None and probe_samples is not None:
            raise ValueError("probe_samples sizes a built probe; with probe= given it is unused: drop one")
        check_controller_options(controller_options, who)
        check_probe_target(probe_module, probe_fn)
        if not isinstance(verbose, bool):
            raise TypeError(f"verbose must be a bool, got {verbose!r}")
        self.threshold = check_float("threshold", threshold, positive=True)
        self.probe = probe
        self.trial = check_trial(trial)
        self.probe_samples = check_int("probe_samples", 100 if probe_samples is None else probe_samples, minimum=1)
        self.probe_seed = check_int("probe_seed", probe_seed, minimum=0)
        self.layers = layers
        self.probe_module, self.probe_fn, self.verbose = probe_module, probe_fn, verbose
        options = {**STUDY_DEFAULTS, **controller_options}
        resolve_patience(options["patience"], 100)  # checked here, resolved against the run's budget
        check_int("pc_patience", options["pc_patience"], minimum=1, allow_none=True)
        self.prediction_changes = self._check_source(prediction_changes)
        self.source_spec = _check_guard(options, self.prediction_changes, set(controller_options), who)
        self.controller_options = options
        self.neve: NeVe | None = None
        self.history: list[dict[str, Any]] = []

    def _check_source(self, source: Any) -> Any:
        if source is None or (isinstance(source, str) and source in self.sources):
            return source
        if isinstance(source, (PredictionChanges, SubsetPredictionChanges)):
            return source
        raise ValueError(f"prediction_changes must be one of {list(self.sources)}, a PredictionChanges, a "
                         f"SubsetPredictionChanges or None (the guard off), got {source!r}")

    def controller_kwargs(self, max_epochs: int | None) -> dict[str, Any]:
        """The :class:`neve_tune.NeVe` keyword options for a run of ``max_epochs``
        measurements (the Trainer's budget when not given), ``patience="auto"`` resolved."""
        options = dict(self.controller_options)
        if "max_epochs" not in options and max_epochs is not None:
            options["max_epochs"] = max(1, int(max_epochs))
        options["patience"] = resolve_patience(options["patience"], options.get("max_epochs", 100))
        return options

    def stop_line(self, unit: str = "epoch") -> str:
        """One line: why the run stopped, when, and which weights the model holds."""
        neve = self.neve
        assert neve is not None and neve.stopped_by is not None
        last = self.history[-1] if self.history else {}
        velocity = last.get("velocity")
        text = f"{self.who}: stopped by {neve.stopped_by} at {unit} {neve.epoch}"
        if velocity is not None:
            text += f" (velocity {velocity:.3g}, threshold {self.threshold:g})"
        if neve.best_epoch != neve.epoch:
            text += f"; weights restored to {unit} {neve.best_epoch}, the prediction-changes minimum"
        return text

