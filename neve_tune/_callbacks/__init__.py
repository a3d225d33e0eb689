"""The integrations' shared layer: what the Lightning and Hugging Face callbacks share.

This package holds their settings and checks (here; no third-party import), what the
probe is forwarded through (:mod:`.forward`), where the guard's prediction changes come
from (:mod:`.pc_source`), NeVe's LR decay on top of a user's scheduler (:mod:`.lr_compose`)
and the Lightning callback's probe and logs (:mod:`.lightning_probe`, :mod:`.lightning_logs`,
which import Lightning).

Both callbacks run the controller :func:`neve_tune.train.fit` runs, with the studies'
defaults (docs/design.md, "The callbacks"): the relative velocity threshold
(``threshold_mode="relative"``, ``threshold=1e-2``: stop when V / peak V < 1e-2), the memorisation
guard on (``pc_patience=3``, ``pc_window=3``, ``pc_restore="mean"``), its prediction changes counted
on a fixed seeded subset of 1,000 training inputs (:class:`neve_tune.SubsetPredictionChanges`, since
a callback sees batches, not example indices), ``lr_patience="auto"``
(``max(2, max_epochs // 20)``, the budget being the Trainer's) and the stall check. Every option is
checked when the callback is built; one it cannot honour is refused there, never accepted and
ignored.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .._checks import check_float, check_int
from .._rules import resolve_patience
from ..control import NeVe
from ..guard import GuardVeto
from ..prediction_changes import PredictionChanges, SubsetPredictionChanges
from ..velocity import NeuralVelocity
from .forward import check_probe_target
from .veto import search_veto

__all__ = [
    "CallbackArguments",
    "CallbackSettings",
    "check_controller_options",
    "check_controller_values",
    "check_trial",
    "stop_reason",
]

# set by the callback itself, never through **controller_options
_OWN = {"self", "optimizer", "velocity", "threshold", "veto"}
# the studies' trial control (neve_tune.Study), which the callbacks share
STUDY_DEFAULTS: dict[str, Any] = {
    "lr_patience": "auto",
    "threshold_mode": "relative",
    "pc_patience": 3,
    "pc_window": 3,
    "pc_restore": "mean",
}
DEFAULT_THRESHOLD = 1e-2  # the studies' default: with threshold_mode="relative", V / peak V < 1e-2


def check_controller_options(options: Mapping[str, Any], who: str) -> None:
    """Refuse, when the callback is built, keyword options that :class:`neve_tune.NeVe` does not
    take.

    >>> check_controller_options({"min_epochs": 3}, "NeVeCallback")
    >>> check_controller_options({"patients": 3}, "NeVeCallback")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: unknown NeVeCallback options ['patients']; NeVe options are [..., 'lr_patience'...]
    """
    params = inspect.signature(NeVe.__init__).parameters
    allowed = sorted(n for n, p in params.items() if n not in _OWN and p.kind is not p.VAR_KEYWORD)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown {who} options {unknown}; NeVe options are {allowed}")


def check_controller_values(options: Mapping[str, Any], threshold: float) -> None:
    """Refuse, when the callback is built, option values :class:`neve_tune.NeVe` would refuse
    when training starts (``num_classes=1``, ``threshold_mode="relatve"``, ...): a throwaway
    controller on a one-neuron model applies NeVe's own checks. Without ``max_epochs`` (the
    Trainer's budget, known at the start) ``min_epochs`` is checked alone.

    >>> check_controller_values({"lr_patience": "auto", "num_classes": 1}, 1e-2)
    Traceback (most recent call last):
    ...
    ValueError: num_classes must be an int >= 2 or None, got 1
    """
    with torch.random.fork_rng(devices=[]):  # the user's seeded RNG stays as it was
        model = torch.nn.Sequential(torch.nn.Linear(1, 1))
    options = {"max_epochs": 2**31, **options}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    NeVe(optimizer, NeuralVelocity(model, torch.zeros(1, 1)), threshold=threshold, **options)


def check_trial(trial: Any) -> Any:
    """An Optuna trial or None; anything else is refused when the callback is built."""
    if trial is None:
        return None
    try:
        from optuna.trial import BaseTrial
    except ImportError:  # pragma: no cover - optuna is a core dependency
        BaseTrial = ()  # type: ignore[assignment,misc]
    if not isinstance(trial, BaseTrial):
        raise TypeError(
            f"trial must be an optuna trial (optuna.Trial) or None, got {type(trial).__name__}"
        )
    return trial


def _check_guard(options: dict[str, Any], source: Any, given: set[str], who: str) -> Any:
    """The prediction-change source the options need (None: the guard is off), or a
    ``ValueError`` for an option that would be accepted and ignored."""
    uses_pc = options["pc_patience"] is not None or options.get("lr_signal") == "prediction_changes"
    if source is None:
        if "pc_patience" in given and options["pc_patience"] is not None:
            raise ValueError(
                f"{who}(pc_patience=...) needs prediction changes; pass "
                "prediction_changes='subset' (or a PredictionChanges / SubsetPredictionChanges), "
                "or pc_patience=None"
            )
        if options.get("lr_signal") == "prediction_changes":
            raise ValueError(
                f"{who}(lr_signal='prediction_changes') needs prediction changes; pass "
                "prediction_changes='subset' (the default), or another lr_signal"
            )
        options["pc_patience"] = None  # the guard is off
        uses_pc = False
    if not uses_pc:
        unused = sorted(given & {"pc_window", "pc_restore"})
        if unused or (source is not None and not isinstance(source, str)):
            what = unused or ["prediction_changes"]
            raise ValueError(
                f"{who}: {what} are unused with the guard off (pc_patience=None) and "
                "lr_signal != 'prediction_changes'; drop them, or turn the guard on"
            )
        return None
    if options["pc_patience"] is None and "pc_restore" in given:
        raise ValueError(
            f"{who}: pc_restore is unused with the guard off (pc_patience=None); drop it"
        )
    return source


@dataclasses.dataclass(frozen=True)
class CallbackArguments:
    """The constructor arguments both callbacks take under the same names, as given (each
    callback's own arguments stay its own); :meth:`CallbackSettings._settings` checks them."""

    probe: torch.Tensor | None
    threshold: float
    trial: Any
    probe_samples: int | None
    probe_seed: int
    layers: Any
    probe_module: str | None
    probe_fn: Any
    prediction_changes: Any
    verbose: bool
    controller_options: Mapping[str, Any]

    @classmethod
    def pick(cls, given: Mapping[str, Any]) -> CallbackArguments:
        """The shared arguments out of a constructor's ``locals()`` (its other names are
        left out), so each callback passes them in one line, by name."""
        return cls(**{f.name: given[f.name] for f in dataclasses.fields(cls)})


class CallbackSettings:
    """The settings both callbacks take, checked once: the probe (given, or built from the
    first batch or example) and what it is forwarded through, the velocity threshold, an
    optional Optuna trial, the monitored layers, the prediction-change source of the
    memorisation guard, ``verbose``, and further :class:`neve_tune.NeVe` options with the
    studies' defaults; and the run's controller and history."""

    who = "callback"
    sources: tuple[str, ...] = ("subset",)

    def _settings(self, given: CallbackArguments) -> None:
        """Check ``given`` and keep it (see the class doc)."""
        who, probe, probe_samples = self.who, given.probe, given.probe_samples
        probe_module, probe_fn, verbose = given.probe_module, given.probe_fn, given.verbose
        controller_options = dict(given.controller_options)
        # the guard's veto with an Optuna trial (docs/design.md, "The guard's veto"): not NeVe's
        margin = controller_options.pop("pc_veto_margin", None)
        self.pc_veto_margin = check_float("pc_veto_margin", margin, low=0.0, allow_none=True)
        if probe is not None and not isinstance(probe, torch.Tensor):
            raise TypeError(
                f"probe must be a torch.Tensor [N, ...] or None, got {type(probe).__name__}"
            )
        if probe is not None and probe_samples is not None:
            raise ValueError(
                "probe_samples sizes a built probe; with probe= given it is unused: drop one"
            )
        check_controller_options(controller_options, who)
        check_probe_target(probe_module, probe_fn)
        if not isinstance(verbose, bool):
            raise TypeError(f"verbose must be a bool, got {verbose!r}")
        self.threshold = check_float("threshold", given.threshold, positive=True)
        self.probe = probe
        self.trial = check_trial(given.trial)
        self.probe_samples = check_int(
            "probe_samples", 100 if probe_samples is None else probe_samples, minimum=1
        )
        self.probe_seed = check_int("probe_seed", given.probe_seed, minimum=0)
        self.layers = given.layers
        self.probe_module, self.probe_fn, self.verbose = probe_module, probe_fn, verbose
        options = {**STUDY_DEFAULTS, **controller_options}
        resolve_patience(options["lr_patience"], 100)  # checked here, resolved against the budget
        check_int("pc_patience", options["pc_patience"], minimum=1, allow_none=True)
        self.prediction_changes = self._check_source(given.prediction_changes)
        self.source_spec = _check_guard(
            options, self.prediction_changes, set(controller_options), who
        )
        check_controller_values(options, self.threshold)
        if self.pc_veto_margin is not None and options["pc_patience"] is None:
            raise ValueError(f"{who}: pc_veto_margin is unused with the guard off; drop it")
        self.controller_options = options
        self.neve: NeVe | None = None
        self.history: list[dict[str, Any]] = []

    def veto(self, world_size: int = 1) -> GuardVeto | None:
        """The guard's veto of this run: with an Optuna trial and ``pc_veto_margin``, one
        reading the trial's study (:func:`~neve_tune._callbacks.veto.search_veto`). Refused
        with several processes: each would read the study at its own moment and could
        decide apart from the others."""
        if self.pc_veto_margin is not None and world_size > 1:
            raise ValueError(
                f"{self.who}(pc_veto_margin=...) runs in one process; this Trainer has "
                f"{world_size}: drop pc_veto_margin"
            )
        return search_veto(self.trial, getattr(self, "_source", None), self.pc_veto_margin)

    def _check_source(self, source: Any) -> Any:
        if source is None or (isinstance(source, str) and source in self.sources):
            return source
        if isinstance(source, (PredictionChanges, SubsetPredictionChanges)):
            return source
        raise ValueError(
            f"prediction_changes must be one of {list(self.sources)}, a PredictionChanges, a "
            f"SubsetPredictionChanges or None (the guard off), got {source!r}"
        )

    def controller_kwargs(self, max_epochs: int | None) -> dict[str, Any]:
        """The :class:`neve_tune.NeVe` keyword options for a run of ``max_epochs``
        measurements (the Trainer's budget when not given), ``lr_patience="auto"`` resolved."""
        options = dict(self.controller_options)
        if "max_epochs" not in options and max_epochs is not None:
            options["max_epochs"] = max(1, int(max_epochs))
        elif "max_epochs" not in options:  # an unbounded Trainer: NeVe's own cap applies
            options["max_epochs"] = inspect.signature(NeVe).parameters["max_epochs"].default
            warnings.warn(
                f"{self.who}: the Trainer sets no budget (max_epochs=-1, no max_steps), so the "
                f"run ends at NeVe's max_epochs={options['max_epochs']} at the latest; pass "
                f"{self.who}(max_epochs=...) to set it",
                UserWarning,
                stacklevel=2,
            )
        options["lr_patience"] = resolve_patience(options["lr_patience"], options["max_epochs"])
        return options

    def stop_line(self, unit: str = "epoch") -> str:
        """One line: why the run stopped (the rule that fired, with its numbers), when, and
        which weights the model holds (:func:`stop_reason`)."""
        neve = self.neve
        assert neve is not None and neve.stopped_by is not None
        last = self.history[-1] if self.history else {}
        why = stop_reason(neve, last, unit)
        text = f"{self.who}: stopped by {neve.stopped_by} at {unit} {neve.epoch} ({why})"
        if neve.best_epoch != neve.epoch:
            text += (
                f"; weights restored to {unit} {neve.best_epoch}, the prediction-changes "
                f"minimum (training loss {_g(last.get('kept_train_loss'))})"
            )
        return text

    def pruned_line(self, unit: str = "epoch") -> str:
        """One line for a run the trial's pruner stopped (the controller had not)."""
        assert self.neve is not None
        return f"{self.who}: stopped by the trial's pruner at {unit} {self.neve.epoch} (pruned)"


def _g(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def stop_reason(neve: NeVe, last: Mapping[str, Any], unit: str = "epoch") -> str:
    """The rule that ended ``neve``'s run, in words and numbers: for a velocity stop the
    quantity the threshold applies to (``V / peak V`` for a relative threshold, ``V`` for an
    absolute one); for a guard stop the guard's reason, not the velocity.

    >>> import torch
    >>> from neve_tune import NeVe, NeuralVelocity, gaussian_probe
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> neve = NeVe(opt, NeuralVelocity(model, gaussian_probe((4,), 8)), min_epochs=1)
    >>> neve.start()
    >>> neve.peak_velocity, neve.stopped_by = 0.5, "velocity"
    >>> stop_reason(neve, {"velocity": 0.002})
    'V / peak V = 0.004 < threshold 0.01 (relative)'
    """
    why = neve.stopped_by
    velocity, loss = last.get("velocity"), last.get("train_loss")
    if why == "prediction_changes":
        since, guard = neve.epoch - neve.pc_best_epoch, neve.guard
        return (
            f"memorisation guard: the training examples whose prediction changed (mean over "
            f"{neve.pc_window} {unit}s) reached no new minimum in {since} {unit}s since {unit} "
            f"{neve.pc_best_epoch} ({_g(guard.best)} against {_g(guard.best_unfit)} labels "
            f"refused), and {_g(last.get('unfit'))} are refused now, patience {neve.pc_patience}"
        )
    if why == "diverged":
        return f"non-finite training loss or velocity (loss {_g(loss)}, velocity {_g(velocity)})"
    if why == "max_epochs":
        return f"the cap, max_epochs={neve.max_epochs}"
    if why == "stalled":
        chance = "" if neve.num_classes is None else f" and chance {math.log(neve.num_classes):.4g}"
        lowest = _g(min(neve.train_losses, default=None))
        return (
            f"did not learn: training loss {_g(loss)}, lowest {lowest}, not "
            f"{neve.stall_margin:g} below the first {unit}'s {_g(neve.first_loss)}{chance}"
        )
    if velocity is None:
        return f"velocity not measured, threshold {neve.threshold:g} ({neve.threshold_mode})"
    if neve.threshold_mode == "relative" and neve.peak_velocity > 0:
        ratio = velocity / neve.peak_velocity
        return f"V / peak V = {ratio:.3g} < threshold {neve.threshold:g} (relative)"
    return f"velocity {velocity:.3g} < threshold {neve.threshold:g} (absolute)"
