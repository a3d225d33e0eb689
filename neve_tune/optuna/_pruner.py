"""``NeVePruner``: validation-free trial pruning on NeVe velocity (or training loss)."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

from optuna.pruners import BasePruner, SuccessiveHalvingPruner
from optuna.trial import FrozenTrial

from .._checks import check_choice, check_int, is_finite, to_float
from ..records import RUNG_SIGNALS, SUBSET_SIGNALS
from ..selection_policy import SelectionPolicy
from ._compat import with_step_value
from ._consensus import consensus_rung, rung_index
from ._pruner_settings import (
    bind_settings,
    settings_from_study,
)
from ._report import check_optuna_study, direction_sign, epoch_key
from ._selection import trial_outcomes

if TYPE_CHECKING:
    import optuna

__all__ = ["NeVePruner"]


class NeVePruner(BasePruner):
    """Pruner for NeVe searches: asynchronous successive halving on a validation-free
    signal, plus divergence pruning.

    Each trial reports every epoch with :func:`~neve_tune.optuna.report_epoch`: its
    training loss as the intermediate value and the epoch's metrics (velocity, flags) in
    the trial's user attributes, where this pruner reads them. At every :meth:`prune`
    call the rule is, in order:

    1. **Diverged**: the reported value is NaN/inf, or the epoch's training loss or
       velocity is not finite, or the epoch is flagged ``diverged`` -> prune.
    2. **Converged**: the epoch is flagged ``neve_stop`` (velocity under the trial's
       threshold) -> never prune by the rules below. Convergence is the trial's own
       stop: it returns its objective and COMPLETEs. (Its rung values are still
       recorded, so it competes.)
    3. **Stalled**: the epoch is flagged ``stalled`` (the velocity fell under the
       threshold but the training loss did not drop: the trial settled without
       learning) -> prune.
    4. **Unsettled**: the velocity stayed above ``unsettled_bound`` for the last
       ``unsettled_patience`` reported epochs -> prune. A velocity of about 2/3 is what
       a network whose probe outputs decorrelate completely every epoch settles at
       (``1 / (1 + mu)`` with momentum ``mu = 0.5``); healthy runs fall below 0.6 within
       one or two epochs.
    5. **Rungs** (asynchronous successive halving, exactly Optuna's
       :class:`~optuna.pruners.SuccessiveHalvingPruner`, rung state in the storage): at
       epoch ``min_resource * reduction_factor ** (min_early_stopping_rate + rung)`` a
       trial is promoted only if its signal is in the best ``1 / reduction_factor`` of
       all trials that reached that rung, else it is pruned. With ``rung_signal="velocity"``
       the trials with the **highest velocity** (the least settled) lose; with
       ``rung_signal="train_loss"`` those with the highest mean training loss of the epoch.
       Neither needs a validation set. With ``rung_signal="consensus"`` those whose predictions
       on the study's fixed subset (``subset_pred``, recorded when
       ``Study.selection_subset > 0``) agree least with the majority vote of the other
       trials at the same epoch lose; every trial at the rung is judged again against the
       same vote (trials that reported that epoch, in the storage), with Optuna's rule.
       With ``rung_signal="auto"`` each rung decides by the consensus when the study's
       finished trials fit the given labels on the subset so poorly that the labels look
       noisy (``subset_fit``, :class:`neve_tune.selection_policy.SelectionPolicy`: estimated
       noise >= 10%) and the memorisation guard stopped one of them, else by the training
       loss (also before any trial finished).

    The default signal is ``"train_loss"``, because it measured better. On digits (20
    trials of TPE, ``max_epochs=60``, 5 seeds), the final model's test accuracy was
    98.94 ± 0.50% with ``"train_loss"`` and 98.83 ± 0.63% with ``"velocity"``, at about
    the same cost (76 and 73 full-data epochs). Velocity ranks how far each trial still is
    from its own stop. At the first rungs the high learning rates are the least settled,
    so ``"velocity"`` pruned them and kept slow, low-LR trials. The training loss ranks how
    well the training set is already fit and keeps the fast learners. Neither signal needs
    a validation set. ``neve-tune compare --rung-signal velocity`` reruns that measurement.
    Either way the velocity is read from the stored epoch, whatever value the trial
    reports (a trial reporting by hand with ``trial.report`` and no stored epoch has its
    reported value taken as its velocity).

    The pruner never changes a learning rate (Optuna pruners cannot): LR decay and the
    convergence stop happen inside the trial (:class:`neve_tune.NeVe`).

    **Shared studies.** ``optuna create-study`` cannot store a pruner. The first time a
    ``NeVePruner`` is used on a study, it stores its settings in the study user attribute
    ``"neve_pruner"``; every later worker checks them at each trial and refuses, with a
    :class:`ValueError` saying what differs, when its own differ. Use
    :meth:`from_study` to adopt a study's stored settings.

    **Orientation.** :func:`~neve_tune.optuna.report_epoch` reports ``+value`` in a
    minimize study and ``-value`` in a maximize one; the pruner undoes that sign, so its
    rule is the same for both directions.

    Example:

        A search over the learning rate in which each trial reports a stand-in for its
        velocity and training loss every epoch:

        .. code-block:: python

            import optuna
            from neve_tune.optuna import NeVePruner, report_epoch


            def objective(trial):
                lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
                loss = 2.3
                for epoch in range(1, 41):
                    loss *= 1.0 - min(lr, 0.5) / 2  # one epoch of "training"
                    velocity = lr / epoch  # its NeVe velocity
                    report_epoch(trial, {"epoch": epoch, "velocity": velocity,
                                         "train_loss": loss, "neve_stop": velocity < 1e-3})
                    if velocity < 1e-3:  # converged: the trial stops itself and COMPLETEs
                        break
                    if trial.should_prune():
                        raise optuna.TrialPruned()
                return loss  # validation-free objective: the last epoch's training loss


            sampler = optuna.samplers.TPESampler(seed=0)
            study = optuna.create_study(pruner=NeVePruner(), sampler=sampler)
            study.optimize(objective, n_trials=20)

        With real training, :func:`neve_tune.optuna.make_objective` builds that objective
        from a study file: ``study.optimize(make_objective(load_study("digits")), 20)``.

    Args:
        rung_signal:
            ``"train_loss"`` (default; the epoch's mean training loss), ``"velocity"``,
            ``"consensus"`` or ``"auto"`` (rule 5), all read from the epoch stored in
            the trial's user attributes.
            With ``"train_loss"``, an epoch reported without ``train_loss`` makes
            :meth:`prune` raise a ``ValueError`` that says so, instead of never pruning.
        min_resource:
            Epochs before the first rung (Optuna's ``min_resource``; ``r`` in ASHA).
        reduction_factor:
            About ``1 / reduction_factor`` of the trials reaching a rung are promoted.
        min_early_stopping_rate:
            Shifts the first rung to ``min_resource * reduction_factor ** rate``.
        unsettled_bound:
            Velocity above which a trial counts as unsettled (rule 4; ``inf`` turns the
            rule off).
        unsettled_patience:
            How many consecutive reported epochs above ``unsettled_bound`` prune a trial.
    """

    def __init__(
        self,
        rung_signal: str = "train_loss",
        *,
        min_resource: int = 1,
        reduction_factor: int = 4,
        min_early_stopping_rate: int = 0,
        unsettled_bound: float = 0.6,
        unsettled_patience: int = 5,
    ) -> None:
        check_choice("rung_signal", rung_signal, RUNG_SIGNALS)
        min_resource = check_int("min_resource", min_resource, minimum=1)
        reduction_factor = check_int("reduction_factor", reduction_factor, minimum=2)
        min_early_stopping_rate = check_int(
            "min_early_stopping_rate", min_early_stopping_rate, minimum=0
        )
        unsettled_patience = check_int("unsettled_patience", unsettled_patience, minimum=1)
        unsettled_bound = to_float("unsettled_bound", unsettled_bound)
        if not unsettled_bound > 0:  # inf is allowed: turns the unsettled rule off
            raise ValueError(
                "unsettled_bound must be a number > 0 (inf turns the rule off), got "
                f"{unsettled_bound!r}"
            )
        self._signal = rung_signal
        self._min_resource = min_resource
        self._reduction_factor = reduction_factor
        self._min_early_stopping_rate = min_early_stopping_rate
        self._unsettled_bound = unsettled_bound
        self._unsettled_patience = unsettled_patience
        self._sha = SuccessiveHalvingPruner(
            min_resource=min_resource,
            reduction_factor=reduction_factor,
            min_early_stopping_rate=min_early_stopping_rate,
        )
        self._lock = threading.Lock()
        # (study object, name) -> (last trial checked, direction sign): one settings check and
        # one direction read per trial, not per epoch
        self._checked: dict[tuple[int, str], tuple[int, float]] = {}

    # ------------------------------------------------------------ settings
    @property
    def rung_signal(self) -> str:
        return self._signal

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor arguments, as stored in the study (JSON)."""
        return {
            "rung_signal": self._signal,
            "min_resource": self._min_resource,
            "reduction_factor": self._reduction_factor,
            "min_early_stopping_rate": self._min_early_stopping_rate,
            "unsettled_bound": self._unsettled_bound
            if math.isfinite(self._unsettled_bound)
            else "inf",
            "unsettled_patience": self._unsettled_patience,
        }

    def rung_epochs(self, max_epochs: int) -> tuple[int, ...]:
        """The epochs up to ``max_epochs`` at which a rung decides: where a trial must have
        reported what its rung signal ranks on (``subset_pred`` for ``"consensus"`` and
        ``"auto"``).

        >>> NeVePruner(reduction_factor=4).rung_epochs(60)
        (1, 4, 16)
        """
        check_int("max_epochs", max_epochs, minimum=1)
        rung = (self._min_resource, self._reduction_factor, self._min_early_stopping_rate)
        return tuple(e for e in range(1, max_epochs + 1) if rung_index(e, *rung) is not None)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"NeVePruner({args})"

    @classmethod
    def from_study(cls, study: optuna.study.Study, **overrides: Any) -> NeVePruner:
        """A pruner with the settings stored in ``study`` (defaults where none are stored),
        with ``overrides`` applied; :meth:`bind` then refuses overrides that conflict with
        stored settings."""
        return cls(**settings_from_study(study, overrides))

    def bind(self, study: optuna.study.Study) -> None:
        """Store this pruner's settings in ``study`` if it holds none; raise
        :class:`ValueError` if it holds different ones. :meth:`prune` calls it once per
        trial, so every worker on a shared study prunes by the same rule."""
        bind_settings(study, self.settings)

    def _check_once_per_trial(self, study: optuna.study.Study, number: int) -> float:
        """Bind to ``study`` once per trial; the study's direction sign."""
        key = (id(study), study.study_name)
        with self._lock:
            checked = self._checked.get(key)
        if checked is not None and checked[0] == number:
            return checked[1]
        self.bind(study)
        sign = direction_sign(study.direction)
        with self._lock:
            self._checked[key] = (number, sign)
        return sign

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_checked"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ the rule
    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        check_optuna_study("study", study)
        if not isinstance(trial, FrozenTrial):
            raise TypeError(
                f"trial must be an optuna FrozenTrial (what Optuna passes to prune), got {trial!r}"
            )
        step = trial.last_step
        if step is None:
            return False
        sign = self._check_once_per_trial(study, trial.number)
        reported = trial.intermediate_values[step]
        epoch = trial.user_attrs.get(epoch_key(step))
        epoch = epoch if isinstance(epoch, dict) else {}

        if _diverged(reported, epoch):  # 1.
            return True
        self._check_signal_reported(epoch, step, trial.number)

        # 2. converged: never pruned (but its values still enter the rungs below)
        converged = bool(epoch.get("neve_stop"))

        # 3. stalled (the velocity settled but the training loss did not drop): not learned
        if not converged and epoch.get("stalled"):
            return True

        # 4. unsettled for too long
        if not converged and self._unsettled(trial, sign):
            return True

        # 5. successive-halving rungs on the signal, oriented so "better" = lower signal
        if self._signal_at(study) == "consensus":
            index = rung_index(
                step, self._min_resource, self._reduction_factor, self._min_early_stopping_rate
            )
            return (
                index is not None
                and not converged
                and consensus_rung(study, trial, step, epoch["subset_pred"], self._reduction_factor)
            )
        value = (
            self._velocity(trial, step, sign)
            if self._signal == "velocity"
            else float(epoch["train_loss"])
        )
        view = with_step_value(trial, step, sign * value)
        pruned = self._sha.prune(study, view)
        return pruned and not converged

    def _check_signal_reported(self, epoch: dict[str, Any], step: int, number: int) -> None:
        """Refuse an epoch without what this pruner's signal ranks on."""
        at_rung = rung_index(
            step, self._min_resource, self._reduction_factor, self._min_early_stopping_rate
        )
        if (
            self._signal in SUBSET_SIGNALS
            and at_rung is not None
            and not isinstance(epoch.get("subset_pred"), str)
        ):
            raise ValueError(
                f"NeVePruner(rung_signal={self._signal!r}) found no 'subset_pred' in epoch "
                f"{step} of trial {number}: record the predictions on the fixed subset with "
                "Study(selection_subset=500) (or report 'subset_pred', "
                "neve_tune.selection.SelectionSubset.predict, at each of rung_epochs())"
            )
        if self._signal in ("train_loss", "auto") and "train_loss" not in epoch:
            raise ValueError(
                f"NeVePruner(rung_signal='train_loss') found no 'train_loss' in epoch {step} of "
                f"trial {number} "
                f"(user attribute {epoch_key(step)!r}): report the epoch's mean training loss, "
                "e.g. report_epoch(trial, {'epoch': e, 'velocity': v, 'train_loss': loss}), "
                "or prune on velocity alone with NeVePruner(rung_signal='velocity')"
            )

    def _signal_at(self, study: optuna.study.Study) -> str:
        """The rung signal of this decision: ``"auto"`` resolved from the finished trials by
        the selection policy (:mod:`neve_tune.selection_policy`), as the pick is."""
        if self._signal != "auto":
            return self._signal
        rule = SelectionPolicy().decide(trial_outcomes(study), "auto").rule
        return "consensus" if rule == "consensus" else "train_loss"

    def _unsettled(self, trial: optuna.trial.FrozenTrial, sign: float) -> bool:
        if not math.isfinite(self._unsettled_bound):
            return False
        steps = sorted(trial.intermediate_values)[-self._unsettled_patience :]
        if len(steps) < self._unsettled_patience:
            return False
        return all(self._velocity(trial, s, sign) > self._unsettled_bound for s in steps)

    @staticmethod
    def _velocity(trial: optuna.trial.FrozenTrial, step: int, sign: float) -> float:
        """The velocity of epoch ``step``, from the epoch ``report_epoch`` stored; a trial
        that reported its velocity by hand (``trial.report``, no epoch attribute) has it
        as the reported value, oriented by ``sign``."""
        epoch = trial.user_attrs.get(epoch_key(step))
        if isinstance(epoch, dict) and epoch.get("velocity") is not None:
            return float(epoch["velocity"])
        return sign * trial.intermediate_values[step]


def _diverged(reported: float, epoch: dict[str, Any]) -> bool:
    """Rule 1: a non-finite reported value, velocity or training loss, or an epoch the
    controller flagged ``diverged`` (JSON stores NaN/inf as null, so a present null
    velocity is a non-finite value only where the epoch reports one)."""
    if not math.isfinite(reported) or epoch.get("diverged"):
        return True
    if "train_loss" in epoch and not is_finite(epoch["train_loss"]):
        return True
    velocity = epoch.get("velocity")
    return velocity is not None and not is_finite(velocity)
