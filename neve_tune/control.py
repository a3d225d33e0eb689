"""Per-trial controllers: what happens to the learning rate and whether to go on.

:class:`NeVe` (docs/design.md, "The controller") needs no held-out data: after each epoch it
measures the velocity, steps torch's ``ReduceLROnPlateau`` on the velocity change (or the velocity),
and stops once the velocity is under ``threshold`` (given no threshold: V / peak V < 1e-2).
:class:`ValidationControl` is the validation-based baseline: ``ReduceLROnPlateau`` on
validation loss, a fixed epoch cap and, optionally, early stopping on validation loss.
:class:`LRReplay` replays a recorded learning-rate schedule (the final retrain of a
validation-based search). The two baselines live in :mod:`neve_tune.baselines`.

All three implement :class:`Controller` (:mod:`neve_tune._controller`), the interface
:func:`neve_tune.train.fit` uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from ._checks import check_choice, check_float, check_int
from ._controller import Stoppable, check_epochs, current_lr, finite_or_absent, reopened
from ._guard_weights import GuardWeights, check_restore
from ._rules import (
    STALL_PATIENCE,
    learned,
    resolve_patience,
    resolve_threshold,
    stalled_early,
)
from ._step_inputs import check_step_inputs
from .guard import GuardVeto, MemorisationGuard, check_class_fit, check_veto
from .velocity import NeuralVelocity

__all__ = ["LR_SIGNALS", "NeVe", "resolve_threshold"]

LR_SIGNALS = ("velocity_change", "velocity", "prediction_changes")


class NeVe(Stoppable):
    """Velocity-driven LR decay and stopping for one training run, with no held-out data.

    After every epoch, :meth:`step`:

    1. measures the velocity ``V^t`` and its change ``D^t`` on the probe;
    2. steps ``ReduceLROnPlateau(mode="min", lr_factor, lr_patience, threshold=0)``
       (``lr_patience="auto"``, the default: ``max(2, max_epochs // 20)`` epochs, as every
       study and callback, :func:`~neve_tune._rules.auto_patience`) on ``D^t``
       (``lr_signal="velocity_change"``, from the 2nd epoch), on ``V^t``
       (``"velocity"``), or on the moving average of ``prediction_changes`` over
       ``pc_window`` epochs (``"prediction_changes"``: the LR decays once the predictions
       stop settling, which on noisy labels is when memorisation starts);
    3. ends the run (``stopped_by``), after at least ``min_epochs`` epochs:

       - ``"velocity"``: ``V^t / max_s V^s < threshold`` (``threshold_mode="relative"``:
         scale-free, since velocity follows the learning rate), or ``V^t < threshold``
         (``"absolute"``). With neither given, the default rule: relative, 1e-2; a
         ``threshold`` given alone is absolute (:func:`resolve_threshold`);
       - ``"prediction_changes"``: the memorisation guard (``pc_patience`` set; its
         rules are :class:`~neve_tune.guard.MemorisationGuard`'s) finds the network
         memorising after a settled minimum of the moving average over ``pc_window``
         epochs of ``prediction_changes``, read with ``unfit``, ``class_fit`` and the
         training loss (Label Wave, with evidence of memorisation); the
         epochs after that minimum memorise, so the weights of its window are put back
         (``pc_restore="mean"``, the default: the mean of the weights of the ``pc_window``
         epochs ending at the minimum, ``pc_best_epoch``, which the held-out accuracy's
         epoch-to-epoch jitter under noise makes better than any one of them;
         ``"epoch"``: that epoch's weights alone; None: none); a search's ``veto``
         (:class:`~neve_tune.guard.GuardVeto`) refuses a stop that leaves far more labels
         unfit than the noise it estimates;
       - ``"stalled"``: either stop above (or the ``max_epochs`` cap) on a run that did not
         learn: its training loss is not below ``(1 - stall_margin)`` times its first
         epoch's, or not below ``(1 - stall_margin) * log(num_classes)`` (chance) when
         ``num_classes`` is given (for the guard's stop, the loss of the epoch it restores: a
         minimum reached before learning, such as a network near chance, is no
         memorisation); or, with no stop, ``stall_patience`` epochs (5) after
         the first with the training loss never below ``(1 - stall_margin)`` times the
         first epoch's and, at its pace so far, not getting there by ``max_epochs``
         (:func:`neve_tune._rules.stalled_early`: a dead learning rate, whose V / peak V
         stays near 1, ends within a few epochs, not at the cap; a slow learner goes on).
         A stalled run is not converged;
       - ``"max_epochs"``: the cap;
    4. a non-finite training loss or velocity ends the run as ``"diverged"`` (no exception).

    ``neve_stop`` is true on the epoch the run ends as converged (``"velocity"`` or
    ``"prediction_changes"``); ``stalled`` on the epoch it ends as stalled; ``stopped_by``
    is None until that epoch. Every epoch carries ``kept_epoch``, the epoch whose weights
    the model holds after it (:attr:`best_epoch`: itself, or an earlier one after a
    restoring guard stop), and ``kept_train_loss``, that epoch's training loss: the
    objective that describes the weights kept, to return from an objective. The rule is
    written out in docs/design.md, "The controller".

    Example::

        >>> import torch
        >>> from neve_tune import NeVe, NeuralVelocity, gaussian_probe
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> velocity = NeuralVelocity(model, gaussian_probe((4,), 16))
        >>> neve = NeVe(opt, velocity, threshold=1e-3, max_epochs=5)
        >>> neve.start()
        >>> metrics = neve.step(train_loss=0.7)    # after one training epoch
        >>> sorted(metrics)  # doctest: +NORMALIZE_WHITESPACE
        ['diverged', 'epoch', 'kept_epoch', 'kept_train_loss', 'lr', 'neve_stop',
         'prediction_changes', 'stalled', 'stopped_by', 'train_loss', 'unfit', 'velocity',
         'velocity_change']
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        velocity: NeuralVelocity,
        *,
        threshold: float | None = None,
        min_epochs: int = 0,
        max_epochs: int = 100,
        lr_signal: str = "velocity_change",
        lr_factor: float = 0.5,
        lr_patience: int | str = "auto",
        threshold_mode: str | None = None,
        num_classes: int | None = None,
        stall_margin: float = 0.1,
        stall_patience: int | None = STALL_PATIENCE,
        pc_patience: int | None = None,
        pc_window: int = 3,
        pc_restore: str | None = "mean",
        veto: GuardVeto | None = None,
    ) -> None:
        threshold, threshold_mode = resolve_threshold(threshold, threshold_mode)
        check_choice("lr_signal", lr_signal, LR_SIGNALS)
        if not isinstance(velocity, NeuralVelocity):
            raise TypeError(f"velocity must be a NeuralVelocity, got {type(velocity).__name__}")
        check_epochs(min_epochs, max_epochs)
        lr_patience = resolve_patience(lr_patience, max_epochs, "lr_patience")
        check_float("lr_factor", lr_factor, low=0.0, high=1.0, low_open=True, high_open=True)
        self.optimizer = optimizer
        self.velocity = velocity
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.min_epochs = min_epochs
        self.max_epochs = max_epochs
        self.lr_signal = lr_signal
        self.num_classes = check_int("num_classes", num_classes, minimum=2, allow_none=True)
        self.stall_margin = check_float(
            "stall_margin", stall_margin, low=0.0, high=1.0, high_open=True
        )
        self.stall_patience = check_int(
            "stall_patience", stall_patience, minimum=1, allow_none=True
        )
        self.pc_patience = check_int("pc_patience", pc_patience, minimum=1, allow_none=True)
        self.pc_window = check_int("pc_window", pc_window, minimum=1)
        self.pc_restore = check_restore(pc_restore)
        self.veto = check_veto(veto, self.pc_patience)
        self.lr_patience = lr_patience
        self._pc_warned = False  # the missing-prediction-changes warning, once per controller
        self.guard = (
            None
            if self.pc_patience is None
            else MemorisationGuard(self.pc_patience, self.pc_window)
        )
        self._weights = GuardWeights(self.pc_restore, self.pc_window)
        self.scheduler = ReduceLROnPlateau(
            optimizer, mode="min", factor=lr_factor, patience=lr_patience, threshold=0.0
        )
        self.epoch = 0
        self.stopped_by: str | None = None
        self.capped = False  # the run's stop was the cap's alone
        self.first_loss: float | None = None
        self.train_losses: list[float] = []  # per epoch: the kept epoch's loss, the stall check
        self.peak_velocity = 0.0
        self.pc_series: list[float] = []

    @property
    def best_epoch(self) -> int:
        """The epoch whose weights the model holds at the end: the prediction-changes
        minimum after a restoring guard stop, else the last epoch."""
        if self.stopped_by == "prediction_changes" and self._weights.holds:
            return self.pc_best_epoch
        return self.epoch

    def start(self) -> None:
        """Record the reference outputs (epoch 0) if not done yet."""
        if self.velocity.epoch < 0:
            self.velocity.measure()

    @property
    def probe_samples(self) -> int:
        return int(self.velocity.probe.shape[0])

    def learned(self, train_loss: float) -> bool:
        """Whether ``train_loss`` shows the run learned (:func:`learned`)."""
        return learned(
            train_loss,
            self.first_loss,
            stall_margin=self.stall_margin,
            num_classes=self.num_classes,
        )

    def _restores_unlearned(self) -> bool:
        """Whether a guard stop would restore an epoch that had not learned (unknown: no)."""
        if not self._weights.holds or not 0 < self.pc_best_epoch <= len(self.train_losses):
            return False
        loss = self.train_losses[self.pc_best_epoch - 1]
        return math.isfinite(loss) and not self.learned(loss)

    def _pc_level(self) -> float | None:
        """The moving average of prediction changes over the last ``pc_window`` epochs."""
        if len(self.pc_series) < self.pc_window:
            return None
        return sum(self.pc_series[-self.pc_window :]) / self.pc_window

    @property
    def pc_best_epoch(self) -> int:
        """The epoch of the guard's minimum (0: none yet, or the guard is off)."""
        return 0 if self.guard is None else self.guard.best_epoch

    def _prediction_changes_stop(
        self, prediction_changes: Any, unfit: Any, train_loss: float, class_fit: Any
    ) -> bool:
        if prediction_changes is not None:
            self.pc_series.append(float(prediction_changes))
        if self.guard is None:
            return False
        # every epoch, the first too: the guard's clock starts at the first training loss
        counts = {"train_loss": train_loss, "class_fit": class_fit}
        stop = self.guard.update(self.epoch, prediction_changes, unfit, **counts)
        self._weights.observe(self.velocity.module, self.guard.kept)
        if stop and self.veto is not None and self.epoch >= self.min_epochs:
            return not self.veto.refuses(self.epoch, self.guard.best_unfit)
        return stop

    def step(
        self,
        train_loss: float,
        val_loss: float | None = None,
        *,
        prediction_changes: int | None = None,
        unfit: int | None = None,
        class_fit: Sequence[float | None] | None = None,
    ) -> dict[str, Any]:
        """Close one training epoch; ``val_loss`` is ignored (NeVe needs none);
        ``prediction_changes`` and ``unfit`` (counted on the same examples: those whose
        predicted class is not their label) feed the memorisation guard, which needs both,
        and reads ``class_fit`` when given (``PredictionChanges.class_fit``).

        Returns the epoch's metrics with its inputs: ``train_loss`` (as a float),
        ``prediction_changes`` and ``unfit`` (``None`` when not given) and ``val_loss`` when
        given, so the dict goes straight to either ``report_epoch`` (Optuna's or Ray's).
        :meth:`start` must have run before the first epoch, as a torch LR scheduler
        records its initial state when it is built before training: it records the
        untrained outputs the first velocity compares with. A ``step`` without it is
        refused (measuring the reference now would give epoch 1 a velocity of 0 and a
        bogus stop); a controller restored with :meth:`load_state_dict` needs no start.
        """
        train_loss, val_loss, prediction_changes, unfit = check_step_inputs(
            self, train_loss, val_loss, prediction_changes, unfit
        )
        class_fit = check_class_fit(class_fit)
        lr = current_lr(self.optimizer)
        self.epoch += 1
        if self.first_loss is None and finite_or_absent(train_loss):
            self.first_loss = float(train_loss)
        self.train_losses.append(float(train_loss))
        velocity, change, diverged = self._measure(train_loss)
        if diverged:
            self.stopped_by = "diverged"
        else:
            self._decide(train_loss, velocity, change, prediction_changes, unfit, class_fit)  # type: ignore[arg-type]
            if self.stopped_by is None and self.epoch >= self.min_epochs and self._stalled_early():
                self.stopped_by = "stalled"
        metrics = {
            "epoch": self.epoch,
            "velocity": velocity,
            "velocity_change": change,
            "train_loss": train_loss,
            "prediction_changes": prediction_changes,
            "unfit": unfit,
            "lr": lr,
            "neve_stop": self.stopped_by in ("velocity", "prediction_changes"),
            "stalled": self.stopped_by == "stalled",
            "diverged": diverged,
            "stopped_by": self.stopped_by,
            **self.kept(),
        }
        if val_loss is not None:
            metrics["val_loss"] = val_loss
        return metrics

    def kept(self) -> dict[str, Any]:
        """``kept_epoch`` (:attr:`best_epoch`) and ``kept_train_loss``, its training loss
        (NaN when a restored run's state predates the loss series)."""
        epoch = self.best_epoch
        loss = self.train_losses[epoch - 1] if 0 < epoch <= len(self.train_losses) else float("nan")
        return {"kept_epoch": epoch, "kept_train_loss": loss}

    def _stalled_early(self) -> bool:
        """:func:`stalled_early` on this run's losses (the lowest finite one so far)."""
        finite = [x for x in self.train_losses if finite_or_absent(x)]
        return stalled_early(
            self.epoch,
            min(finite, default=None),
            self.first_loss,
            max_epochs=self.max_epochs,
            stall_patience=self.stall_patience,
            stall_margin=self.stall_margin,
        )

    def _measure(self, train_loss: float) -> tuple[float | None, float | None, bool]:
        """(velocity, velocity change, diverged); nothing is measured after a non-finite loss."""
        if not finite_or_absent(train_loss):
            return None, None, True
        report = self.velocity.measure()
        velocity, change = report.model_velocity, report.velocity_change
        return velocity, change, not (finite_or_absent(velocity) and finite_or_absent(change))

    def _decide(
        self,
        train_loss: float,
        velocity: float,
        change: float | None,
        prediction_changes: Any,
        unfit: Any,
        class_fit: list[float | None] | None,
    ) -> None:
        """Step the LR schedule and set ``stopped_by`` when a stop fires (class docstring, 2-3)."""
        pc_stop = self._prediction_changes_stop(prediction_changes, unfit, train_loss, class_fit)
        if self.lr_signal == "prediction_changes":
            signal = self._pc_level()
        else:
            signal = velocity if self.lr_signal == "velocity" else change
        if signal is not None:
            self.scheduler.step(signal)
        self.peak_velocity = max(self.peak_velocity, float(velocity))
        settled = (
            velocity / self.peak_velocity
            if self.threshold_mode == "relative" and self.peak_velocity > 0
            else velocity
        )
        may_stop = self.epoch >= self.min_epochs
        velocity_stop = may_stop and settled < self.threshold
        pc_stop = may_stop and pc_stop
        cap_only = not (velocity_stop or pc_stop)
        if cap_only and self.epoch < self.max_epochs:
            return
        self.capped = cap_only  # a larger cap reopens the run (load_state_dict)
        guard_only = pc_stop and not velocity_stop
        if not self.learned(train_loss) or (guard_only and self._restores_unlearned()):
            self.stopped_by = "stalled"
        else:
            self.stopped_by = (
                "velocity" if velocity_stop else "prediction_changes" if pc_stop else "max_epochs"
            )
        if self.stopped_by == "prediction_changes":
            self._weights.restore(self.velocity.module)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "stopped_by": self.stopped_by,
            "capped": self.capped,
            "threshold": self.threshold,
            "scheduler": self.scheduler.state_dict(),
            "velocity": self.velocity.state_dict(),
            "first_loss": self.first_loss,
            "train_losses": list(self.train_losses),
            "peak_velocity": self.peak_velocity,
            "pc_series": list(self.pc_series),
            "guard": None if self.guard is None else self.guard.state_dict(),
            "pc_best_epoch": self.pc_best_epoch,
            "veto": None if self.veto is None else self.veto.state_dict(),
            **self._weights.state_dict(),  # best_weights (what a stop restores), recent_weights
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a run; one stopped only by a smaller ``max_epochs`` cap than this
        controller's, learned or not, is reopened (:func:`reopened`) and goes on up to this
        cap, unless the early stall check under this cap ends it there."""
        self.epoch = int(state_dict["epoch"])
        self.threshold = float(state_dict["threshold"])
        self.scheduler.load_state_dict(dict(state_dict["scheduler"]))
        self.velocity.load_state_dict(state_dict["velocity"])
        self.first_loss = state_dict.get("first_loss")
        # a state saved before the loss series: its losses are unknown (NaN), the count kept
        losses = state_dict.get("train_losses", [float("nan")] * self.epoch)
        self.train_losses = [float(x) for x in losses]
        self.peak_velocity = float(state_dict.get("peak_velocity", 0.0))
        self.pc_series = [float(x) for x in state_dict.get("pc_series", [])]
        if self.guard is not None:
            self.guard.load_state_dict(state_dict["guard"])
        self._weights.load_state_dict(state_dict)
        if self.veto is not None:
            self.veto.load_state_dict(state_dict.get("veto") or {})
        capped = bool(state_dict.get("capped", False))  # absent: saved before it was kept
        stopped, stalls = state_dict["stopped_by"], self._stalled_early  # the losses restored
        self.stopped_by = reopened(stopped, self.epoch, self.max_epochs, capped, stalls)
        self.capped = capped and self.stopped_by is not None  # reopened: no stop yet
