"""The records every part of neve_tune passes around: names, costs, finished trials.

One definition each of the training methods, the per-epoch metric names, the stop
reasons, the counted :class:`Cost` and the :class:`TrialResult` that
:func:`neve_tune.run_trial` returns and every backend consumes.

    >>> c = Cost(train_samples=2874, probe_samples=300)
    >>> round(c.epochs_equiv(1437), 3)
    2.07
    >>> Cost.from_dict(c.as_dict(1437)) == c
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Cost",
    "FINAL_MODELS",
    "FORWARD_FRACTION",
    "METHODS",
    "METRIC_NAMES",
    "RUNG_SIGNALS",
    "SCHEDULERS",
    "SEARCH_METHODS",
    "STOP_REASONS",
    "TrialResult",
    "VAL_METRICS",
    "val_metric_key",
]

#: how a trial trains: NeVe, the two validation baselines, and the final retrain of a
#: validation search's best configuration (see docs/design.md, "Comparison protocol")
METHODS = ("neve", "asha", "asha_es", "retrain")
#: the methods a search runs trials of
SEARCH_METHODS = tuple(m for m in METHODS if m != "retrain")
#: how a Ray search schedules its trials (``auto``: ``neve_asha`` for NeVe, ``asha`` for
#: the validation baselines)
SCHEDULERS = ("auto", "neve_asha", "asha", "fifo")
#: what a NeVe search ranks trials on at a rung, the same for ``NeVePruner`` (Optuna) and
#: ``NeVeASHAScheduler`` (Ray): ``train_loss`` (the epoch's mean training loss),
#: ``velocity``, ``consensus`` (agreement with the other trials' vote on the selection
#: subset) or ``auto`` (the consensus once the finished trials say the labels are noisy,
#: their fit low and a memorisation-guard stop among them, else ``train_loss``)
RUNG_SIGNALS = ("train_loss", "velocity", "consensus", "auto")
#: the rung signals that rank on the selection subset's predictions (``subset_pred``), so a
#: trial records them at the rung epochs; the others read them only at a trial's end
SUBSET_SIGNALS = ("consensus", "auto")

#: the validation metric a baseline search decides on: its rungs, early stopping, LR plateau
#: and pick (``Study.val_metric``): ``loss`` (reported as ``val_loss``, lower is better) or
#: ``acc`` (``val_acc``, higher is better; the objective is the validation error 1 - acc)
VAL_METRICS = ("loss", "acc")
#: a validation search's final model (``Study.final``): ``retrain`` its winner's configuration
#: on all training data, replaying the winner's learning rates; ``best_checkpoint`` keep the
#: winner's own weights at its best validation epoch (trained on the held-in part, no retrain)
FINAL_MODELS = ("retrain", "best_checkpoint")


def val_metric_key(val_metric: str) -> tuple[str, str]:
    """The reported metric name and its mode (Ray's ``metric``/``mode``) of ``val_metric``.

    >>> val_metric_key("acc")
    ('val_acc', 'max')
    """
    if val_metric not in VAL_METRICS:
        raise ValueError(f"val_metric must be one of {VAL_METRICS}, got {val_metric!r}")
    return ("val_loss", "min") if val_metric == "loss" else ("val_acc", "max")


#: metric names every backend reports each epoch (docs/design.md, "Metric names")
METRIC_NAMES = (
    "epoch",
    "velocity",
    "velocity_change",
    "train_loss",
    "train_acc",
    "prediction_changes",
    "unfit",
    "lr",
    "neve_stop",
    "stalled",
    "diverged",
    "epoch_time_s",
    "train_samples",
    "probe_samples",
    "eval_samples",
    "kept_epoch",  # the epoch whose weights the model holds (a guard stop restores its window)
    "kept_train_loss",  # that epoch's training loss: the objective of the weights kept
)

#: why a run ended (``stopped_by``). ``velocity`` and ``prediction_changes`` are the
#: validation-free convergence stops (``neve_stop``); ``stalled`` is a velocity stop of
#: a run that did not learn, never a converged one.
STOP_REASONS = (
    "velocity",
    "prediction_changes",
    "stalled",
    "max_epochs",
    "early_stopping",
    "diverged",
)

FORWARD_FRACTION = 1.0 / 3.0  # cost of a forward-only sample relative to a trained one


@dataclass
class Cost:
    """Samples processed and seconds spent; add them with ``+``."""

    train_samples: int = 0
    probe_samples: int = 0
    eval_samples: int = 0
    wall_s: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.train_samples + other.train_samples,
            self.probe_samples + other.probe_samples,
            self.eval_samples + other.eval_samples,
            self.wall_s + other.wall_s,
        )

    def epochs_equiv(self, full_train_size: int) -> float:
        """Cost in full-data training epochs (forward-only samples count 1/3)."""
        fwd = self.probe_samples + self.eval_samples
        return (self.train_samples + FORWARD_FRACTION * fwd) / float(full_train_size)

    def as_dict(self, full_train_size: int | None = None) -> dict[str, float]:
        d: dict[str, float] = asdict(self)
        if full_train_size:
            d["epochs_equiv"] = self.epochs_equiv(full_train_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cost:
        """The inverse of :meth:`as_dict` (``epochs_equiv`` and missing counters ignored)."""
        return cls(
            int(d.get("train_samples") or 0),
            int(d.get("probe_samples") or 0),
            int(d.get("eval_samples") or 0),
            float(d.get("wall_s") or 0.0),
        )


@dataclass
class TrialResult:
    """One finished training run of one configuration (:func:`neve_tune.run_trial`).

    ``objective`` is lower-is-better (NeVe: a validation-free training-loss estimate;
    the baselines: validation loss, or validation error ``1 - val_acc`` with
    ``Study.val_metric="acc"``) and NaN when the run has none (diverged, stalled).
    ``train_size`` is the size of the full training set that ``cost`` is measured
    against (``epochs_equiv``). ``unfit_share`` (NeVe) is the share of the examples the
    prediction changes are counted on whose label the run left unfit (at the guard's minimum
    after a guard stop, else at the kept epoch).
    ``test_acc``/``test_loss`` are None unless the test set was read (once, after training).
    """

    config: dict[str, Any]
    method: str
    seed: int
    stopped_by: str | None
    epochs: int
    objective: float
    best_epoch: int
    cost: Cost
    history: list[dict[str, Any]]
    train_size: int
    test_acc: float | None = None
    test_loss: float | None = None
    test_samples: int | None = None
    unfit_share: float | None = None

    @property
    def converged(self) -> bool:
        """Ended by a validation-free convergence stop (velocity or prediction changes)."""
        return self.stopped_by in ("velocity", "prediction_changes")

    @property
    def finished(self) -> bool:
        """A candidate for selection: neither diverged nor stalled, with a finite objective."""
        return self.stopped_by not in ("diverged", "stalled") and math.isfinite(self.objective)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (``neve-tune train --json``)."""
        d: dict[str, Any] = {
            "config": dict(self.config),
            "method": self.method,
            "seed": self.seed,
            "stopped_by": self.stopped_by,
            "epochs": self.epochs,
            "objective": self.objective,
            "best_epoch": self.best_epoch,
            "cost": self.cost.as_dict(self.train_size),
            "history": list(self.history),
            "test_acc": self.test_acc,
            "test_loss": self.test_loss,
        }
        if self.test_samples is not None:
            d["test_samples"] = self.test_samples
        if self.unfit_share is not None:
            d["unfit_share"] = self.unfit_share
        return d

    def summary(self) -> dict[str, Any]:
        """:meth:`to_dict` without the per-epoch history and the config."""
        return {k: v for k, v in self.to_dict().items() if k not in ("history", "config")}
