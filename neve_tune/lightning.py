"""Lightning 2 (``lightning.pytorch``): NeVe as a callback, with Optuna pruning and Ray Tune.

:class:`NeVeCallback` turns any ``LightningModule`` into a NeVe run without a validation
loader, with the controller :func:`neve_tune.train.fit` runs: after each training epoch
it measures the velocity on a fixed probe and the prediction changes of the memorisation
guard on a fixed subset of training inputs, drives the learning rate of the module's
optimizer through :class:`neve_tune.NeVe` (on top of the user's LR scheduler), logs the
epoch's metrics with ``pl_module.log`` and stops the trainer once the velocity is under
``threshold`` (by default a ratio to its own peak), the guard fires (restoring the weights
of its restore point), or the run stalls. Given an Optuna ``trial`` it also reports every epoch
(:func:`neve_tune.optuna.report_epoch`) and prunes, as optuna-integration's
``PyTorchLightningPruningCallback`` does but on validation-free signals.

Example (the training loss must be logged per epoch under ``loss_key``)::

    import lightning.pytorch as pl
    from neve_tune.lightning import NeVeCallback

    class Net(pl.LightningModule):
        ...
        def training_step(self, batch, batch_idx):
            loss = ...
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

    neve = NeVeCallback(threshold=1e-3, num_classes=10, verbose=True)
    pl.Trainer(max_epochs=100, callbacks=[neve]).fit(Net(), train_loader)
    print(neve.stopped_by)  # "velocity", "prediction_changes", "stalled", "max_epochs", "diverged"

Under Ray Tune, list ``NeVeCallback`` *before* Ray's ``TuneReportCheckpointCallback(
on="train_epoch_end")``: the metrics logged here are then in ``trainer.callback_metrics``
when Ray reports them. Needs ``lightning`` (``pip install neve_tune[lightning]``).
"""

from __future__ import annotations

from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "neve_tune.lightning needs Lightning 2: pip install 'neve_tune[lightning]' (or "
        "lightning>=2.2)"
    ) from e

from ._callbacks import DEFAULT_THRESHOLD, CallbackArguments, CallbackSettings
from ._callbacks.forward import batch_inputs, prefixed_layers
from ._callbacks.lightning_logs import (
    StepLoggedLoss,
    epoch_budget,
    log_epoch,
    log_stop,
    train_loss_of,
)
from ._callbacks.lightning_probe import pc_source, probe_forward, probe_from_batch
from ._callbacks.lr_compose import check_composable, follow_decay, lrs
from ._callbacks.pc_source import PCSource, batch_labels, batch_logits
from ._callbacks.subset import call_model, check_selection_subset, record_subset
from ._callbacks.veto import record_stop
from ._controller import reopened_history
from .control import NeVe
from .probe import gaussian_probe
from .velocity import NeuralVelocity

__all__ = ["NeVeCallback", "batch_inputs"]


class NeVeCallback(CallbackSettings, pl.Callback):
    """NeVe LR decay, stopping and memorisation guard (optionally Optuna pruning) for a Lightning
    run.

    At the end of every training epoch (never during the sanity check):

    1. ``train_loss`` is read from ``trainer.callback_metrics[loss_key]`` (its epoch mean
       ``loss_key + "_epoch"`` when logged with both ``on_step`` and ``on_epoch``);
    2. the prediction changes are counted (``prediction_changes``, see below);
    3. :meth:`neve_tune.NeVe.step` measures the velocity and steps the LR of the optimizer;
       a decay is applied on top of the user's LR schedulers (their ``base_lrs`` scale with
       it); a scheduler that cannot compose (``OneCycleLR``, ``CyclicLR``,
       ``SequentialLR``, ``ChainedScheduler``) is refused when training starts;
    4. every numeric metric (``velocity``, ``velocity_change``, ``lr``, ``neve_stop``,
       ``stalled``, ``diverged``, ``train_loss``, ``prediction_changes``) is logged with
       ``pl_module.log`` (booleans as 0/1; ``None`` skipped);
    5. with ``trial``: on global rank zero, :func:`neve_tune.optuna.report_epoch` and
       ``trial.should_prune()``; the decision is shared with ``trainer.strategy.broadcast``;
       a pruned run stops and raises ``optuna.TrialPruned`` (on one process; under DDP
       every rank stops and :meth:`check_pruned` raises after ``fit``), its stop recorded as
       in 6. (the controller's reason, else ``"pruned"``);
    6. once the controller stops (``stopped_by``) ``trainer.should_stop`` is set, the
       reason goes to every logger's hyperparameters (``neve_stopped_by``,
       ``neve_stop_epoch``, ``neve_best_epoch``, ``neve_kept_train_loss``: the training
       loss of the epoch whose weights the model holds), the last epoch's logged metrics
       carry ``kept_epoch`` and ``kept_train_loss``, and, with ``verbose``, one line is
       printed: the rule that fired with its numbers (``V / peak V`` next to a relative
       threshold, the velocity next to an absolute one, the guard's reason for a guard stop).
       A guard stop (``"prediction_changes"``) has restored the mean weights of the window of
       the prediction-changes minimum (``pc_restore``), as ``fit`` does.

    The defaults are the studies' (docs/design.md, "The callbacks"): the relative velocity
    threshold (``threshold_mode="relative"``, ``threshold=1e-2``), the guard on
    (``pc_patience=3``, ``pc_window=3``, ``pc_restore="mean"``), ``lr_patience="auto"``
    (``max(2, max_epochs // 20)``), ``max_epochs`` the trainer's (or its ``max_steps`` in
    epochs). Pass ``num_classes`` so a run that stays at chance ends ``"stalled"``.

    Prediction changes (``prediction_changes``): ``"subset"`` (default) forwards a fixed
    subset of 1,000 training inputs (drawn with ``probe_seed``; found in each item with
    ``input_key``) in eval mode once per epoch; ``"batch"`` counts the training pass's own
    predictions when the batches carry example indices (``index_key``) and
    ``training_step`` returns ``{"loss": loss, "logits": logits}`` (one process only); a
    :class:`neve_tune.PredictionChanges` you update or a
    :class:`neve_tune.SubsetPredictionChanges` you built is used as given; None turns the
    guard off.

    The probe: ``probe``, or ``gaussian_probe(shape, probe_samples, probe_seed)`` with the
    shape of one input of the first training batch (:func:`batch_inputs`). It goes through
    the module's ``forward``, its submodule ``probe_module``, or ``probe_fn(module,
    inputs)`` (for a module without ``forward``; the guard's subset then goes through
    ``probe_fn`` too). The callback's ``state_dict`` (saved in Lightning checkpoints under
    :attr:`state_key`, unique per configuration) holds the controller, the velocity series,
    the prediction-change series and the per-epoch ``history``, so ``fit(ckpt_path=...)``
    continues the same run; a larger trainer ``max_epochs`` continues a run that had
    stopped at the old one. A given ``probe`` is not saved: pass the same one when resuming.

    Args:
        probe: probe inputs ``[N, ...]``, or None to build a Gaussian one.
        threshold: the velocity stop: V / peak V under it (default ``threshold_mode="relative"``,
            1e-2, the studies' rule), or V under it with ``threshold_mode="absolute"``.
        trial: an Optuna trial to report to and prune, or None.
        loss_key: the ``callback_metrics`` key of the training loss.
        input_key: where the inputs are in a batch or data set item (int position or dict key).
        probe_samples: size of the built probe (100; refused with ``probe``).
        probe_seed: seed of the built probe and of the guard's subset.
        layers: monitored layers (see :class:`neve_tune.NeuralVelocity`; names of the module).
        probe_module, probe_fn: what the probe goes through (see above).
        prediction_changes: the guard's source (see above).
        index_key: where a batch holds the examples' indices (``prediction_changes="batch"``).
        selection_subset: a :class:`neve_tune.selection.SelectionSubset` (the same for every
            trial): each epoch records ``subset_pred`` and ``subset_fit`` (the ``auto`` pick).
        verbose: print one line when the callback stops the run.
        **controller_options: more :class:`neve_tune.NeVe` options (``min_epochs``,
            ``max_epochs``, ``lr_factor``, ``lr_patience``, ``lr_signal``, ``threshold_mode``,
            ``num_classes``, ``stall_margin``, ``pc_patience``, ``pc_window``, ``pc_restore``);
            ``pc_veto_margin``, the guard's veto with a trial (docs/design.md).
    """

    who = "NeVeCallback"
    sources = ("subset", "batch")

    def __init__(
        self,
        probe: torch.Tensor | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        trial: Any = None,
        *,
        loss_key: str = "train_loss",
        input_key: str | int = 0,
        probe_samples: int | None = None,
        probe_seed: int = 0,
        layers: Any = None,
        probe_module: str | None = None,
        probe_fn: Any = None,
        prediction_changes: Any = "subset",
        index_key: str | int | None = None,
        selection_subset: Any = None,
        verbose: bool = False,
        **controller_options: Any,
    ) -> None:
        if not isinstance(loss_key, str) or not loss_key:
            raise TypeError(f"loss_key must be a non-empty str, got {loss_key!r}")
        for name, key in (("input_key", input_key), ("index_key", index_key)):
            if (
                isinstance(key, bool)
                or not isinstance(key, (str, int, type(None)))
                or (key is None and name == "input_key")
            ):
                raise TypeError(f"{name} must be a str or an int, got {key!r}")
        self._settings(CallbackArguments.pick(locals()))
        if (self.source_spec == "batch") != (index_key is not None):
            raise ValueError(
                "prediction_changes='batch' and index_key= go together: index_key names where each "
                "batch holds its examples' indices (with the guard on)"
            )
        self.loss_key, self.input_key, self.index_key = loss_key, input_key, index_key
        self._loss_check = StepLoggedLoss(loss_key)
        self.selection_subset = check_selection_subset(selection_subset, self.who)
        self.pruned = False
        self._source: PCSource | None = None
        self._schedulers: list[Any] = []
        self._probe_shape: tuple[int, ...] | None = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        """Unique per configuration, so two NeVeCallbacks in one Trainer keep their own state."""
        options = {
            k: v
            for k, v in sorted(self.controller_options.items())
            if isinstance(v, (int, float, str, type(None)))
        }
        return self._generate_state_key(
            threshold=self.threshold,
            loss_key=self.loss_key,
            input_key=self.input_key,
            probe_module=self.probe_module,
            probe_seed=self.probe_seed,
            layers=repr(self.layers),
            **options,
        )

    # ------------------------------------------------------------ results
    @property
    def stopped_by(self) -> str | None:
        """Why the controller stopped the run (None while it goes on, or if Lightning's own
        limit ended it first)."""
        return None if self.neve is None else self.neve.stopped_by

    @property
    def velocities(self) -> list[float | None]:
        return [m.get("velocity") for m in self.history]

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` if the trial was pruned (needed after ``fit`` under DDP)."""
        if self.pruned:
            import optuna

            raise optuna.TrialPruned(f"trial pruned at epoch {len(self.history)}")

    # ------------------------------------------------------------ setup
    def _forward(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        """What the probe goes through (see :mod:`neve_tune._callbacks.forward`)."""
        return probe_forward(pl_module, self.probe_module, self.probe_fn)

    def _build_source(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> PCSource | None:
        return pc_source(
            self.source_spec,
            trainer,
            pl_module,
            probe_fn=self.probe_fn,
            seed=self.probe_seed,
            input_key=self.input_key,
            who=self.who,
        )

    def _build(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, probe: torch.Tensor
    ) -> None:
        options = self.controller_kwargs(epoch_budget(trainer))
        layers = (
            prefixed_layers(self.layers, self.probe_module)
            if self.probe_module or self.probe_fn
            else self.layers
        )
        velocity = NeuralVelocity(self._forward(pl_module), probe, layers=layers)
        veto = self.veto(trainer.world_size)
        self.neve = NeVe(
            trainer.optimizers[0], velocity, threshold=self.threshold, veto=veto, **options
        )
        state, self._pending_state = self._pending_state, None
        if state is not None:
            self.neve.load_state_dict(state["neve"])
            history = [dict(m) for m in state.get("history", [])]
            self.history = reopened_history(history, self.neve)  # a larger cap: not the end
            if state.get("prediction_changes") is not None and self._source is not None:
                self._source.load_state_dict(state["prediction_changes"])
        self.neve.start()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pruned = False
        if len(trainer.optimizers) != 1:
            raise ValueError(
                "NeVeCallback drives one optimizer; configure_optimizers returned "
                f"{len(trainer.optimizers)}"
            )
        self._schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        check_composable(self._schedulers, self.who)
        if self.neve is not None and self._pending_state is None:
            # a second fit() has new optimizers: rebuild the controller from its own state
            self._pending_state = self.state_dict()
            self.neve = None
        self._source = self._build_source(trainer, pl_module)
        probe = self.probe
        if (
            probe is None
            and self._pending_state is not None
            and self._pending_state.get("probe_shape")
        ):
            self._probe_shape = tuple(self._pending_state["probe_shape"])
            probe = gaussian_probe(self._probe_shape, self.probe_samples, self.probe_seed)
        if probe is not None:
            self._build(trainer, pl_module, probe)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.neve is not None:
            return
        probe = probe_from_batch(batch, self.input_key, self.probe_samples, self.probe_seed)
        self._probe_shape = tuple(probe.shape[1:])
        self._build(trainer, pl_module, probe)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._loss_check.batch_end(trainer)
        if self.source_spec == "batch" and self._source is not None:
            self._source.counter.update(
                batch_inputs(batch, self.index_key),
                batch_logits(outputs, self.who),
                batch_labels(batch),
            )

    # ------------------------------------------------------------ per epoch
    def _prune(self, trainer: pl.Trainer, metrics: dict[str, Any]) -> bool:
        prune = False
        if trainer.is_global_zero:
            from .optuna import report_epoch

            report_epoch(self.trial, metrics)
            prune = bool(self.trial.should_prune())
        if bool(trainer.strategy.broadcast(prune)):
            self.pruned = trainer.should_stop = True
            # recorded as the Ray scheduler's stop is: the controller's own word, else "pruned"
            why = metrics["stopped_by"] = self.neve.stopped_by or "pruned"  # type: ignore[union-attr]
            self._report_stop(trainer, why)
            if trainer.world_size == 1:
                self.check_pruned()
            return True
        return False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.neve is None:
            return
        if self.neve.should_stop:  # e.g. resumed past the controller's own stop
            trainer.should_stop = True
            return
        self._loss_check.epoch_end()
        train_loss = train_loss_of(trainer, self.loss_key)
        changes = None if self._source is None else self._source.measure(pl_module)
        before = lrs(self.neve.optimizer)
        counts = {} if self._source is None else self._source.counts()
        metrics = dict(self.neve.step(train_loss=train_loss, prediction_changes=changes, **counts))
        follow_decay(self._schedulers, self.neve.optimizer, before)
        metrics.setdefault("train_loss", train_loss)
        metrics.setdefault("prediction_changes", changes)
        if self.selection_subset is not None:  # what the `auto` pick reads (kept weights)
            record_subset(metrics, self.selection_subset, pl_module, self.probe_fn or call_model)
        self.history.append(metrics)
        log_epoch(pl_module, metrics)
        if self.trial is not None and self._prune(trainer, metrics):
            return
        if bool(trainer.strategy.broadcast(self.neve.should_stop)):
            trainer.should_stop = True
            self._report_stop(trainer)
            if trainer.is_global_zero:
                record_stop(self.trial, self.neve, self.history, self._source)

    def _report_stop(self, trainer: pl.Trainer, why: str | None = None) -> None:
        """The stop reason (``why``: the controller's, or ``"pruned"`` by the trial's pruner)
        in every logger's hyperparameters, and one printed line with ``verbose``."""
        neve = self.neve
        why = why or (None if neve is None else neve.stopped_by)
        if neve is None or why is None or not trainer.is_global_zero:
            return
        log_stop(trainer, neve, why)
        if self.verbose:
            line = self.stop_line("epoch") if neve.stopped_by else self.pruned_line("epoch")
            print(line, flush=True)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.neve is None:
            return dict(self._pending_state or {})
        return {
            "neve": self.neve.state_dict(),
            "history": [dict(m) for m in self.history],
            "probe_shape": list(self._probe_shape)
            if self.probe is None and self._probe_shape
            else None,
            "prediction_changes": None if self._source is None else self._source.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if "neve" not in state_dict:
            raise ValueError(f"not a NeVeCallback state: keys {sorted(state_dict)}")
        # applied once the optimizer exists (on_train_start)
        self._pending_state = dict(state_dict)
        self.neve = None
