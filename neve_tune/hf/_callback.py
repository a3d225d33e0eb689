"""``NeVeTrainerCallback``: NeVe as a ``transformers.TrainerCallback``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from .._callbacks import DEFAULT_THRESHOLD, CallbackArguments, CallbackSettings, check_trial
from .._callbacks.forward import ProbeForward, prefixed_layers
from .._callbacks.lr_compose import check_composable, follow_decay, lrs
from .._callbacks.pc_source import PCSource, check_classes
from .._callbacks.subset import check_selection_subset, record_subset
from .._callbacks.veto import record_stop
from .._checks import check_int, check_model_fn
from ..control import NeVe
from ..velocity import NeuralVelocity
from . import _search, _state
from ._probe import choose_probe, logits_forward
from ._state import StateInCheckpoints

__all__ = ["NeVeTrainerCallback"]


class NeVeTrainerCallback(CallbackSettings, StateInCheckpoints, TrainerCallback):
    """NeVe LR decay, stopping and memorisation guard for ``transformers.Trainer`` (optionally with
    Optuna).

    Measurement points are every epoch end, or every ``every_n_steps`` optimizer steps.
    At each one the callback takes the mean training loss since the previous point (the
    Trainer's logged ``loss``, weighted by steps; it asks the Trainer to log at that point
    with ``control.should_log``), counts the prediction changes, then
    :meth:`neve_tune.NeVe.step` measures the velocity and steps the LR. NeVe's decay
    multiplies the Trainer's LR scheduler ``base_lrs``, so it composes with any
    ``lr_scheduler_type`` (``"constant"`` gives the NeVe schedule itself); a scheduler that
    cannot compose (a ``OneCycleLR`` passed in ``optimizers=``, ...) is refused when
    training starts. When the controller stops (``stopped_by``: ``"velocity"``,
    ``"prediction_changes"``, ``"stalled"``, ``"max_epochs"``, ``"diverged"``)
    ``control.should_training_stop`` is set, ``state.log_history`` gets
    ``{"neve_stopped_by", "neve_stop_measurement", "neve_best_measurement",
    "neve_kept_train_loss"}`` (the loss of the weights kept) and, with ``verbose``, one line
    names the rule that fired with its numbers (``V / peak V`` for a relative threshold).
    A guard stop has restored the mean weights of its minimum's window (``pc_restore``), as
    ``fit`` does.
    Every measurement's metrics (with ``train_loss``, ``prediction_changes`` and ``step``)
    go to :attr:`history`.

    Defaults are the studies' (docs/design.md, "The callbacks"): the relative velocity
    threshold (``threshold_mode="relative"``, ``threshold=1e-2``), the guard on
    (``pc_patience=3``, ``pc_window=3``, ``pc_restore="mean"``), ``lr_patience="auto"``
    (``max(2, max_epochs // 20)``), ``max_epochs`` the Trainer's epochs (or, with
    ``every_n_steps``, its measurement points). Pass ``num_classes`` so a run that stays at
    chance ends ``"stalled"``. The guard's prediction changes (``prediction_changes``):
    ``"subset"`` forwards 1,000 training inputs (``train_dataset[i][input_key]``, drawn with
    ``probe_seed``) at each point and counts the changed argmax of the model's ``logits``
    (``[batch, classes]``: a model with other outputs is refused at the start; pass
    ``pc_patience=None``); a :class:`neve_tune.SubsetPredictionChanges` you built or a
    :class:`neve_tune.PredictionChanges` you update (e.g. in ``compute_loss``) is used as
    given; None turns the guard off.

    Checkpoints: at every Trainer save the callback writes its state (the controller,
    :attr:`history`, the prediction-change series, the loss logged since the last point, a
    built probe) to :data:`neve_tune.hf.STATE_FILE` in the folder just saved
    (:mod:`neve_tune.hf._state`); it asks the Trainer to log at each save, since the
    Trainer's checkpoint drops the loss it has not logged yet.
    ``trainer.train(resume_from_checkpoint=...)`` loads the file of the checkpoint whose
    ``trainer_state.json`` is the resumed state. One without it gives a warning and a fresh
    series, an unreadable one a ``ValueError``. Pass a given ``probe`` again to resume.

    With a ``trial`` (given here, or learnt through :meth:`track_trial` under
    ``Trainer.hyperparameter_search(backend="optuna")``) each measurement is reported with
    :func:`neve_tune.optuna.report_epoch` and ``optuna.TrialPruned`` is raised when
    ``trial.should_prune()``, the stop recorded first (``neve_stopped_by`` in ``log_history``
    and the last measurement's ``stopped_by``: the controller's reason, else ``"pruned"``).
    :meth:`attach` makes a search's objective NeVe's, with no
    ``eval_dataset`` (:mod:`neve_tune.hf._search`). Keep ``eval_strategy="no"``.

    The probe: ``probe``, or one built from ``train_dataset[0][probe_key]`` (integer ids:
    :func:`neve_tune.hf.token_probe` over ``model.config.vocab_size``; floats: a seeded
    Gaussian probe), given to the model as ``probe_key=``, to its submodule
    ``probe_module`` the same way, or to ``probe_fn(model, probe)``.

    Args:
        probe: probe inputs ``[N, ...]`` or None.
        threshold: the velocity stop: V / peak V under it (default ``threshold_mode="relative"``,
            1e-2, the studies' rule), or V under it with ``threshold_mode="absolute"``.
        every_n_steps: measure every N optimizer steps instead of at epoch ends.
        trial: an Optuna trial to report to and prune.
        probe_key: the model's keyword argument that receives the probe.
        input_key: the training examples' entry (and the model's keyword) the guard's
            subset is drawn from and given as (default: ``probe_key``).
        probe_samples: size of the built probe (100; refused with ``probe``).
        probe_seed: seed of the built probe and of the guard's subset.
        layers: monitored layers (see :class:`neve_tune.NeuralVelocity`; names of the model).
        probe_module, probe_fn: what the probe goes through (see above).
        prediction_changes: the guard's source (see above).
        selection_subset: a :class:`neve_tune.selection.SelectionSubset` (the same for every
            trial; its inputs go to the model as ``input_key=``): each measurement records
            ``subset_pred`` and ``subset_fit``, what ``pick_trial(study, "auto")`` reads.
        verbose: print one line when the callback stops the run.
        state_key: a name for this callback's state file (``neve_state-<name>.pt``), needed
            by a second NeVeTrainerCallback in one Trainer.
        **controller_options: more :class:`neve_tune.NeVe` options (``min_epochs``,
            ``max_epochs`` counted in measurements, ``lr_patience``, ``num_classes``, ...).
    """

    who = "NeVeTrainerCallback"

    def __init__(
        self,
        probe: torch.Tensor | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        every_n_steps: int | None = None,
        *,
        trial: Any = None,
        probe_key: str = "input_ids",
        input_key: str | None = None,
        probe_samples: int | None = None,
        probe_seed: int = 0,
        layers: Any = None,
        probe_module: str | None = None,
        probe_fn: Any = None,
        prediction_changes: Any = "subset",
        selection_subset: Any = None,
        verbose: bool = False,
        state_key: str | None = None,
        **controller_options: Any,
    ) -> None:
        state_file = _state.state_file_name(state_key)
        for name, key in (("probe_key", probe_key), ("input_key", input_key)):
            if not (isinstance(key, str) and key) and not (key is None and name == "input_key"):
                raise TypeError(f"{name} must be a non-empty str, got {key!r}")
        self._settings(CallbackArguments.pick(locals()))
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1, allow_none=True)
        if input_key is not None and self.source_spec != "subset":
            raise ValueError(
                "input_key names the data set's input for the guard's subset; with "
                f"prediction_changes={prediction_changes!r} and "
                f"pc_patience={self.controller_options['pc_patience']!r} it is unused: drop it"
            )
        self.probe_key = probe_key
        self.input_key = probe_key if input_key is None else input_key
        self.selection_subset = check_selection_subset(selection_subset, self.who)
        self.state_file = state_file
        self._warned: set[str] = set()
        self._trainer: Any = None  # set by attach(): a search's objective needs no evaluation
        self._reset_run()

    def _reset_run(self) -> None:
        self.neve = None
        self.history = []
        self.resumed_from: str | None = None  # the state file this run continued, if any
        self._built_probe: torch.Tensor | None = None
        self._probe_digest: str | None = None
        self._lr_scheduler: Any = None
        self._source: PCSource | None = None
        self._model: nn.Module | None = None
        self._loss_sum = 0.0  # logged loss x steps since the last measurement
        self._loss_steps = 0
        self._last_log_step = 0
        self._pending = False

    # ------------------------------------------------------------ results
    @property
    def stopped_by(self) -> str | None:
        return None if self.neve is None else self.neve.stopped_by

    @property
    def velocities(self) -> list[float | None]:
        return [m.get("velocity") for m in self.history]

    def track_trial(self, model_init: Callable[..., nn.Module]) -> Callable[[Any], nn.Module]:
        """Wrap a Trainer ``model_init`` so this callback learns each Optuna search trial.

        ``Trainer.hyperparameter_search`` calls ``model_init(trial)`` at the start of every
        trial (``model_init(None)`` when the Trainer is built; a dict of the sampled
        values under Ray, which has no trial to report to); the wrapper records an Optuna
        trial and calls ``model_init`` with it if it takes an argument.
        """
        check_model_fn(model_init, "model_init", optional=False)
        takes_trial = len(inspect.signature(model_init).parameters) >= 1

        def wrapped(trial: Any = None) -> nn.Module:
            self.trial = None if isinstance(trial, dict) else check_trial(trial)
            return model_init(trial) if takes_trial else model_init()

        return wrapped

    def attach(self, trainer: Any) -> Any:
        """Give this callback its Trainer, so that ``trainer.hyperparameter_search`` takes
        NeVe's objective with no ``eval_dataset`` (:mod:`neve_tune.hf._search`): each trial's
        value is the training loss of the measurement whose weights it keeps, and under
        Ray every measurement is reported to Tune. Returns ``trainer``."""
        _search.check_trainer(trainer, self)
        self._trainer = trainer
        return trainer

    def on_train_end(self, args, state, control, **kwargs):
        _search.set_trial_objective(self._trainer, self.history)
        return control

    # ------------------------------------------------------------ setup
    def _probe_for(
        self, model: nn.Module, dataset: Any, saved: dict[str, Any] | None
    ) -> torch.Tensor:
        probe, self._built_probe = choose_probe(
            self.probe,
            saved,
            dataset,
            model,
            key=self.probe_key,
            samples=self.probe_samples,
            seed=self.probe_seed,
            resumed_from=self.resumed_from,
        )
        return probe

    def _build_source(self, model: nn.Module, dataset: Any) -> PCSource | None:
        spec = self.source_spec
        if spec is None:
            return None
        if not isinstance(spec, str):
            return PCSource(spec)
        forward = self.probe_fn or logits_forward(self.input_key)
        source = PCSource.subset(
            dataset, seed=self.probe_seed, input_key=self.input_key, who=self.who, forward=forward
        )
        check_classes(forward, model, dataset, self.input_key, self.who)
        return source

    def _max_measurements(self, state: Any) -> int:
        if self.every_n_steps:
            return max(1, math.ceil(state.max_steps / self.every_n_steps))
        return max(1, math.ceil(state.num_train_epochs))

    def on_train_begin(
        self,
        args,
        state,
        control,
        model=None,
        optimizer=None,
        lr_scheduler=None,
        train_dataloader=None,
        **kwargs,
    ):
        if model is None or optimizer is None:
            raise RuntimeError(
                "NeVeTrainerCallback needs the Trainer's model and optimizer at on_train_begin"
            )
        self._reset_run()
        _state.claim(state, self.state_file, self)
        check_composable([lr_scheduler] if lr_scheduler is not None else [], self.who)
        saved = self._find_saved_state(args, state) if state.global_step > 0 else None
        dataset = getattr(train_dataloader, "dataset", None)
        probe = self._probe_for(model, dataset, saved)
        self._probe_digest = _state.probe_digest(probe)
        self._source = self._build_source(model, dataset)
        forward = ProbeForward(model, self.probe_module, self.probe_fn, key=self.probe_key)
        velocity = NeuralVelocity(
            forward, probe, layers=prefixed_layers(self.layers, self.probe_module)
        )
        self.neve = NeVe(
            optimizer,
            velocity,
            threshold=self.threshold,
            veto=self.veto(args.world_size),
            **self.controller_kwargs(self._max_measurements(state)),
        )
        self._lr_scheduler, self._model = lr_scheduler, model
        self._last_log_step = state.global_step
        if saved is not None:
            self._load(saved, control)
        self.neve.start()
        return control

    # ------------------------------------------------------------ measurement points
    def _measure_point(self, state, control):
        if self.neve is None or self.neve.should_stop:
            return control
        if self._last_log_step == state.global_step and self._loss_steps > 0:
            return self._measure(state, control)
        self._pending = True
        control.should_log = True  # the Trainer logs the loss right after this hook
        return control

    def _log_before_save(self, control):
        """The Trainer's loss since its last log is not in its checkpoint: have it logged
        (into this callback's saved loss) before a save that the Trainer has decided on."""
        if control.should_save and self.neve is not None and not self.neve.should_stop:
            control.should_log = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            control = self._measure_point(state, control)
        return self._log_before_save(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.every_n_steps:
            control = self._measure_point(state, control)
        return self._log_before_save(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and state.global_step > self._last_log_step:
            steps = state.global_step - self._last_log_step
            self._loss_sum += float(logs["loss"]) * steps
            self._loss_steps += steps
            self._last_log_step = state.global_step
        if self._pending:
            if self._loss_steps == 0:  # no training step since the last point: nothing to measure
                self._pending = False
                return control
            return self._measure(state, control)
        return control

    def _measure(self, state, control):
        self._pending = False
        train_loss = self._loss_sum / self._loss_steps
        self._loss_sum, self._loss_steps = 0.0, 0
        neve = self.neve
        changes = None if self._source is None else self._source.measure(self._model)
        before = lrs(neve.optimizer)
        counts = {} if self._source is None else self._source.counts()
        metrics = dict(neve.step(train_loss=train_loss, prediction_changes=changes, **counts))
        follow_decay([self._lr_scheduler], neve.optimizer, before)
        metrics.setdefault("train_loss", train_loss)
        metrics.setdefault("prediction_changes", changes)
        metrics["step"] = state.global_step
        if self.selection_subset is not None:  # what the `auto` pick reads (kept weights)
            forward = self.probe_fn or logits_forward(self.input_key)
            record_subset(metrics, self.selection_subset, self._model, forward)
        self.history.append(metrics)
        _search.report_to_search(self._trainer, metrics, state.is_world_process_zero)
        if self.trial is not None and state.is_world_process_zero:
            from ..optuna import report_epoch

            report_epoch(self.trial, metrics)
            if self.trial.should_prune():
                import optuna

                # recorded as the Ray scheduler's stop is: the controller's own word, else "pruned"
                metrics["stopped_by"] = neve.stopped_by or "pruned"
                self._report_stop(state, metrics["stopped_by"])
                raise optuna.TrialPruned(
                    f"pruned at measurement {metrics['epoch']} (step {state.global_step})"
                )
        if neve.should_stop:
            control.should_training_stop = True
            self._report_stop(state)
            if state.is_world_process_zero:
                record_stop(self.trial, neve, self.history, self._source)
        return control

    def _report_stop(self, state: Any, why: str | None = None) -> None:
        """The stop reason (``why``: the controller's, or ``"pruned"`` by the trial's pruner)
        in the Trainer's ``log_history``, and one printed line with ``verbose``."""
        neve = self.neve
        assert neve is not None
        state.log_history.append(
            {
                "neve_stopped_by": why or neve.stopped_by,
                "neve_stop_measurement": neve.epoch,
                "neve_best_measurement": neve.best_epoch,
                "neve_kept_train_loss": neve.kept()["kept_train_loss"],
                "step": state.global_step,
            }
        )
        if self.verbose and state.is_world_process_zero:
            unit = "epoch" if not self.every_n_steps else "measurement"
            print(self.stop_line(unit) if neve.stopped_by else self.pruned_line(unit), flush=True)
