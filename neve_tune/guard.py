"""The memorisation guard: stop a run that has started memorising wrong labels, never one
that is still learning (docs/design.md, "The memorisation guard").

Label Wave's observation: on noisy labels the number of training examples whose predicted
class changes between epochs (``prediction_changes``) falls while the network fits the
clean pattern, and rises again once it starts fitting the labels that pattern refuses.
A network still learning (a slow start, a small set, a high learning rate) also churns,
so a turn in the count alone is not evidence. :class:`MemorisationGuard` asks for two
more facts, both from the same examples the count is taken on:

1. **settled**: at the minimum it keeps, fewer predictions change than there are labels
   the network does not fit (``unfit``: the examples whose predicted class is not their
   label), times ``settle``: the network refuses some labels, and refuses them stably.
   A network still learning changes more predictions than it has labels left to fit; a
   clean run that fits every label has nothing left to memorise. Given each class's
   share of its examples fitted (``class_fit``), every class is also fitted above chance
   (more than 1/K of its examples, K classes): a network that fits some class no better
   than chance has not finished learning the clean pattern (a plateau where it has
   learned half the classes), while label noise at rate p leaves every class fitted on
   about 1 - p of its examples;
2. **memorising**: when it stops, ``patience`` or more epochs after that minimum, the
   network has since fitted labels it refused there: ``unfit`` has fallen by at least
   ``memorise`` times its value at the minimum.

3. **on the run's clock**: the run has begun to learn (its training loss fell under
   ``1 - margin`` times its first epoch's, the stall rule's margin) and the stop comes at
   least ``max(patience, onset)`` epochs after the minimum, where ``onset`` is the epoch
   learning began. A run that needed six epochs to start (a small learning rate, AdamW's
   slow start on a transformer) moves six times slower than one that started at once,
   and its churn before a second learning phase is not memorisation. Without
   ``train_loss`` the clock is off (patience alone).

A search adds evidence no single run holds: :class:`GuardVeto` refuses a stop while the
share of labels the run does not fit at its minimum exceeds, by more than ``margin``, the
label noise the search estimates from the runs the guard already ended (a slow learner
still refuses far more labels than the noise explains; docs/design.md, "The guard's veto").

The rule and its constants were chosen by replaying recorded runs against the epoch where
each run's held-out accuracy peaked (``benchmarks/guard_replay.py``; docs/measurements.md,
"The memorisation guard, measured").

    >>> guard = MemorisationGuard(patience=2, window=1)
    >>> series = [(1, None, 600), (2, 300, 400), (3, 40, 300), (4, 60, 290), (5, 90, 240)]
    >>> losses = [2.3, 1.5, 1.1, 1.0, 0.9]     # learning began at epoch 2
    >>> [guard.update(e, changes, unfit, train_loss=loss)
    ...  for (e, changes, unfit), loss in zip(series, losses)]
    [False, False, False, False, True]
    >>> guard.best_epoch, guard.settled, guard.onset    # 40 changes against 300 refused labels
    (3, True, 2)
    >>> plateau = MemorisationGuard(patience=2, window=1)   # two of four classes unlearned
    >>> [plateau.update(e, changes, unfit, train_loss=loss, class_fit=[0.9, 0.05, 0.9, 0.1])
    ...  for (e, changes, unfit), loss in zip(series, losses)]
    [False, False, False, False, False]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._checks import check_float, check_int

__all__ = [
    "VETO_MARGIN",
    "GuardVeto",
    "MemorisationGuard",
    "check_class_fit",
    "check_share",
    "check_veto",
]

#: the moving average of changes at the minimum is below this share of the unfit labels
SETTLE = 1.0
#: at the stop, the unfit labels have fallen by this share since the minimum
MEMORISE = 0.1
#: learning began once the training loss is under (1 - MARGIN) x the first epoch's
MARGIN = 0.1
#: the veto's margin over the noise estimate (benchmarks/guard_evidence.py, ``--estimate guard``)
VETO_MARGIN = 0.1


class MemorisationGuard:
    """Stops once the network memorises: ``max(patience, onset)`` epochs without a new
    minimum of the prediction changes, that minimum settled, and the labels refused there
    being fitted.

    :meth:`update` takes, after each epoch, the epoch number, ``prediction_changes`` (None
    on the first epoch) and ``unfit``, counted on the same examples, and the epoch's mean
    ``train_loss`` (the run's clock) and ``class_fit`` (per class, the share of its counted
    examples whose predicted class is its label); it returns whether the run should stop
    now.
    :attr:`best_epoch` is the epoch of the kept minimum (0: none yet), whose weights the
    caller restores.

    Args:
        patience: epochs after the kept minimum before a stop may fire (``pc_patience``).
        window: epochs in the moving average of the changes (``pc_window``).
        settle: the minimum counts only where that average is below ``settle * unfit``.
        memorise: the stop needs ``unfit <= (1 - memorise) * unfit`` at the minimum.
        margin: learning began at the first epoch whose ``train_loss`` is under
            ``(1 - margin)`` times the first epoch's (``onset``).
    """

    def __init__(
        self,
        patience: int = 3,
        window: int = 3,
        *,
        settle: float = SETTLE,
        memorise: float = MEMORISE,
        margin: float = MARGIN,
    ) -> None:
        self.patience = check_int("pc_patience", patience, minimum=1)
        self.window = check_int("pc_window", window, minimum=1)
        self.settle = check_float("settle", settle, positive=True)
        self.memorise = check_float("memorise", memorise, low=0.0, high=1.0, high_open=True)
        self.margin = check_float("margin", margin, low=0.0, high=1.0, high_open=True)
        self.series: list[float] = []
        self.first_loss: float | None = None
        self.onset = 0  # the epoch learning began (0: not yet, or no losses given)
        self.best: float | None = None
        self.best_epoch = 0
        self.best_unfit = 0.0
        self.best_class_fit: list[float | None] | None = None  # class_fit at the minimum
        self.kept = False

    def level(self) -> float | None:
        """The moving average of the changes over the last ``window`` epochs."""
        if len(self.series) < self.window:
            return None
        return sum(self.series[-self.window :]) / self.window

    def update(
        self,
        epoch: int,
        prediction_changes: float | None,
        unfit: float | None,
        *,
        train_loss: float | None = None,
        class_fit: Sequence[float | None] | None = None,
    ) -> bool:
        """Record one epoch; whether the run memorises and should stop now. The first
        epoch's count is None (nothing to compare with) and is skipped. :attr:`kept` tells
        whether this epoch became the minimum (its weights are the ones to restore)."""
        fits = check_class_fit(class_fit)  # refused before anything changes, on any epoch
        self.kept = False
        self._clock(epoch, train_loss)
        if prediction_changes is None:
            return False
        self.series.append(float(prediction_changes))
        level = self.level()
        if level is None or unfit is None:
            return False
        if self.best is None or level < self.best:
            self.best, self.best_epoch, self.best_unfit = level, epoch, float(unfit)
            self.best_class_fit = fits
            self.kept = True
            return False
        return (
            self.settled
            and self._on_clock(epoch)
            and unfit <= (1.0 - self.memorise) * self.best_unfit
        )

    def _clock(self, epoch: int, train_loss: float | None) -> None:
        """Track when learning began (the run's clock), from the epochs' training losses."""
        if train_loss is None or not math.isfinite(float(train_loss)):
            return
        if self.first_loss is None:
            self.first_loss = float(train_loss)
        elif not self.onset and train_loss < (1.0 - self.margin) * self.first_loss:
            self.onset = epoch

    @property
    def clocked(self) -> bool:
        """Whether :meth:`update` has been given a finite training loss (the clock runs)."""
        return self.first_loss is not None

    def _on_clock(self, epoch: int) -> bool:
        """The run's clock (patience alone when no training losses are given)."""
        if not self.clocked:
            return epoch - self.best_epoch >= self.patience
        return self.onset > 0 and epoch - self.best_epoch >= max(self.patience, self.onset)

    @property
    def settled(self) -> bool:
        """Whether the kept minimum is settled (rule 1)."""
        return (
            self.best is not None
            and self.best < self.settle * self.best_unfit
            and self.classes_learned
        )

    @property
    def classes_learned(self) -> bool:
        """Whether every class was fitted above chance (1/K, K classes) at the kept minimum:
        True when ``class_fit`` was not given or holds fewer than two classes; a class given
        as None (too few examples to tell) is not judged."""
        fits = self.best_class_fit
        if not fits or len(fits) < 2:
            return True
        return all(f * len(fits) > 1.0 for f in fits if f is not None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "first_loss": self.first_loss,
            "onset": self.onset,
            "series": list(self.series),
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_unfit": self.best_unfit,
            "best_class_fit": self.best_class_fit,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.series = [float(x) for x in state_dict["series"]]
        self.best = state_dict["best"]
        self.best_epoch = int(state_dict["best_epoch"])
        self.best_unfit = float(state_dict["best_unfit"])
        # absent from checkpoints before it
        self.best_class_fit = check_class_fit(state_dict.get("best_class_fit"))
        first = state_dict["first_loss"]
        self.first_loss = None if first is None else float(first)
        self.onset = int(state_dict["onset"])


class GuardVeto:
    """A search's veto on the guard's stops: no stop while the share of the counted labels
    the run does not fit at the guard's minimum exceeds the search's label-noise estimate
    by more than ``margin``.

    ``noise_estimate`` is that estimate (a share in ``[0, 1]``), or a callable returning it
    or None (no estimate yet: no veto), asked only when a stop would fire (a search's
    estimate grows as its trials finish; :func:`neve_tune.optuna.guard_noise_estimate`
    reads one from an Optuna study). ``examples`` is the number of examples
    ``prediction_changes`` and ``unfit`` are counted on. A vetoed stop waits for the next
    one the guard would take, at a new minimum or at the same one once the estimate moves.

        >>> veto = GuardVeto(0.2, examples=1000)
        >>> veto.refuses(12, best_unfit=250), veto.refuses(13, best_unfit=400)  # 25%: noise
        (False, True)
        >>> veto.vetoed_epochs
        [13]
        >>> GuardVeto(lambda: None, examples=1000).refuses(9, best_unfit=900)  # no estimate yet
        False
    """

    def __init__(
        self,
        noise_estimate: float | Callable[[], float | None],
        examples: int,
        margin: float = VETO_MARGIN,
    ) -> None:
        if not callable(noise_estimate):
            check_share(noise_estimate)
        self.noise_estimate = noise_estimate
        self.examples = check_int("examples", examples, minimum=1)
        self.margin = check_float("margin", margin, low=0.0)
        # the epochs whose guard stop it refused (a velocity stop may still end the run there)
        self.vetoed_epochs: list[int] = []

    def estimate(self) -> float | None:
        """The search's noise estimate now (None: none yet)."""
        if not callable(self.noise_estimate):
            return float(self.noise_estimate)
        noise = self.noise_estimate()
        return None if noise is None else check_share(noise)

    def refuses(self, epoch: int, best_unfit: float) -> bool:
        """Whether the guard's stop at ``epoch``, whose minimum left ``best_unfit`` labels
        unfit, is refused (the epoch is then recorded in :attr:`vetoed_epochs`)."""
        noise = self.estimate()
        refused = noise is not None and best_unfit / self.examples > noise + self.margin
        if refused:
            self.vetoed_epochs.append(int(epoch))
        return refused

    def state_dict(self) -> dict[str, Any]:
        return {"vetoed_epochs": list(self.vetoed_epochs)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.vetoed_epochs = [int(e) for e in state_dict.get("vetoed_epochs", [])]


def check_veto(veto: Any, pc_patience: int | None) -> GuardVeto | None:
    """``NeVe``'s ``veto``: a :class:`GuardVeto` for a run with the guard on, or None."""
    if veto is not None and not isinstance(veto, GuardVeto):
        raise TypeError(f"veto must be a neve_tune.GuardVeto or None, got {veto!r}")
    if veto is not None and pc_patience is None:
        raise ValueError("veto vetoes the memorisation guard's stops; pass pc_patience too")
    return veto


def check_share(noise: Any) -> float:
    """A noise estimate ``noise`` as a float in [0, 1] (NumPy and 0-d tensor scalars too),
    else an error naming ``noise_estimate``."""
    return check_float("noise_estimate", noise, low=0.0, high=1.0)  # type: ignore[return-value]


def check_class_fit(class_fit: Any) -> list[float | None] | None:
    """``class_fit`` as a list of per-class shares in [0, 1] (None entries: a class too small
    to judge), from a list, tuple, NumPy array or 1-d tensor; None stays None. Anything else
    (a number, a string, a dict, a set, an empty sequence) is refused naming it."""
    if class_fit is None:
        return None
    if hasattr(class_fit, "tolist"):  # a NumPy array or tensor (0-d: a bare number)
        class_fit = class_fit.tolist()
    if not isinstance(class_fit, (list, tuple)):
        raise TypeError(
            "class_fit must be a sequence of per-class shares in [0, 1] "
            f"(PredictionChanges.class_fit), got {type(class_fit).__name__}"
        )
    if not class_fit:
        raise ValueError("class_fit is empty: give one share per class of the counted labels")
    return [
        None if f is None else check_float(f"class_fit[{i}]", f, low=0.0, high=1.0)
        for i, f in enumerate(class_fit)
    ]
