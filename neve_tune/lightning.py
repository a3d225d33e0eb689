"""Lightning 2 (``lightning.pytorch``): NeVe as a callback, with Optuna pruning and Ray Tune.

:class:`NeVeCallback` turns any ``LightningModule`` into a NeVe run without a validation
loader. After each training epoch it measures the velocity on a fixed probe, drives the
learning rate of ``trainer.optimizers[0]`` through :class:`neve_tune.NeVe`, logs the
epoch's metrics with ``pl_module.log`` and stops the trainer once the velocity is under
``threshold``. Given an Optuna ``trial`` it also reports every epoch
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

    neve = NeVeCallback(threshold=1e-3)
    pl.Trainer(max_epochs=100, callbacks=[neve]).fit(Net(), train_loader)
    print(neve.stopped_by)    # "velocity", "max_epochs", "diverged", ...

Under Ray Tune, list ``NeVeCallback`` *before* Ray's
``ray.tune.integration.pytorch_lightning.TuneReportCheckpointCallback(on="train_epoch_end")``:
the metrics logged here are then in ``trainer.callback_metrics`` when Ray reports them,
and :class:`neve_tune.ray.NeVeStopper` reads ``velocity`` from the result.

Importing this module needs ``lightning`` (``pip install neve_tune[lightning]``);
``import neve_tune`` does not.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "neve_tune.lightning needs Lightning 2: pip install 'neve_tune[lightning]' (or lightning>=2.2)"
    ) from e

from ._callbacks import CallbackSettings
from ._checks import to_float
from .control import NeVe
from .probe import gaussian_probe
from .velocity import NeuralVelocity

__all__ = ["NeVeCallback", "batch_inputs"]

# names NeVe.step() returns that are not logged: Lightning keeps its own "epoch"
_NOT_LOGGED = frozenset({"epoch"})


def batch_inputs(batch: Any, input_key: str | int = 0) -> torch.Tensor:
    """The input tensor of one training batch: the batch itself, its ``input_key``-th
    element (tuple/list) or its ``input_key`` entry (dict).

    >>> import torch
    >>> batch_inputs((torch.zeros(8, 3), torch.zeros(8))).shape
    torch.Size([8, 3])
    >>> batch_inputs({"x": torch.zeros(4, 2), "y": torch.zeros(4)}, "x").shape
    torch.Size([4, 2])
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        if input_key not in batch:
            raise ValueError(
                f"input_key={input_key!r} is not in the training batch, which holds {sorted(map(str, batch))}; "
                "pass input_key= naming the model's input, or probe="
            )
        x = batch[input_key]
    elif isinstance(batch, (tuple, list)):
        if not isinstance(input_key, int) or not -len(batch) <= input_key < len(batch):
            raise ValueError(
                f"input_key={input_key!r} does not index the training batch (a {type(batch).__name__} of "
                f"{len(batch)}); pass an int position, or probe="
            )
        x = batch[input_key]
    else:
        raise TypeError(
            f"cannot find the inputs in a training batch of type {type(batch).__name__}; pass probe= "
            "(a tensor [N, ...] of probe inputs)"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"the training batch's input {input_key!r} is a {type(x).__name__}, not a tensor; pass probe=")
    return x


class NeVeCallback(CallbackSettings, pl.Callback):
    """NeVe LR decay and stopping (and optionally Optuna pruning) for a Lightning run.

    At the end of every training epoch (never during the sanity check):

    1. ``train_loss`` is read from ``trainer.callback_metrics[loss_key]`` (its epoch mean
       ``loss_key + "_epoch"`` when logged with both ``on_step`` and ``on_epoch``); a
       missing key raises ``KeyError`` saying how to log it;
    2. :meth:`neve_tune.NeVe.step` measures the velocity on the probe and steps the LR of
       ``trainer.optimizers[0]``;
    3. every numeric metric (``velocity``, ``velocity_change``, ``lr``, ``neve_stop``,
       ``diverged``, ``train_loss`` and whatever else the controller returns, e.g.
       ``stalled``) is logged with ``pl_module.log`` (booleans as 0/1; ``None`` skipped);
    4. with ``trial``: on global rank zero, :func:`neve_tune.optuna.report_epoch` and
       ``trial.should_prune()``; the decision is shared with ``trainer.strategy.broadcast``;
       a pruned run stops and raises ``optuna.TrialPruned`` (on one process; under DDP
       every rank stops and :meth:`check_pruned` raises after ``fit``);
    5. once the controller stops (``stopped_by``: ``"velocity"``, ``"max_epochs"``,
       ``"diverged"``, ...) ``trainer.should_stop`` is set.

    With ``probe=None`` the probe is ``gaussian_probe(shape, probe_samples, probe_seed)``,
    ``shape`` being that of one input of the first training batch (found by
    :func:`batch_inputs` with ``input_key``), recorded before the first optimizer step.
    ``max_epochs`` defaults to the trainer's. The callback's ``state_dict`` (saved in
    Lightning checkpoints) holds the controller, the velocity series and the per-epoch
    ``history``, so ``fit(ckpt_path=...)`` continues the same velocity series; resuming
    with a larger trainer ``max_epochs`` continues a run that had stopped at the old one.
    A built probe is rebuilt from its recorded shape; a given ``probe`` is not saved, so
    pass the same one when resuming.

    Args:
        probe: probe inputs ``[N, ...]``, or None to build a Gaussian one.
        threshold: velocity under which the run has converged.
        trial: an Optuna trial to report to and prune, or None.
        loss_key: the ``callback_metrics`` key of the training loss.
        input_key: where the inputs are in a batch (int position or dict key).
        probe_samples, probe_seed: size and seed of the built probe.
        layers: monitored layers (see :class:`neve_tune.NeuralVelocity`).
        **controller_options: more :class:`neve_tune.NeVe` options (``min_epochs``,
            ``max_epochs``, ``factor``, ``patience``, ``lr_signal``).
    """

    def __init__(
        self,
        probe: torch.Tensor | None = None,
        threshold: float = 1e-3,
        trial: Any = None,
        *,
        loss_key: str = "train_loss",
        input_key: str | int = 0,
        probe_samples: int = 100,
        probe_seed: int = 0,
        layers: Any = None,
        **controller_options: Any,
    ) -> None:
        if not isinstance(loss_key, str) or not loss_key:
            raise TypeError(f"loss_key must be a non-empty str, got {loss_key!r}")
        if isinstance(input_key, bool) or not isinstance(input_key, (str, int)):
            raise TypeError(f"input_key must be a str or an int, got {input_key!r}")
        self._settings("NeVeCallback", probe, threshold, trial, probe_samples, probe_seed, layers, controller_options)
        self.loss_key = loss_key
        self.input_key = input_key
        self.pruned = False
        self._probe_shape: tuple[int, ...] | None = None
        self._pending_state: dict[str, Any] | None = None

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
    def _build(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", probe: torch.Tensor) -> None:
        if not trainer.optimizers:
            raise RuntimeError("NeVeCallback needs an optimizer: configure_optimizers returned none")
        options = dict(self.controller_options)
        if "max_epochs" not in options and isinstance(trainer.max_epochs, int) and trainer.max_epochs > 0:
            options["max_epochs"] = trainer.max_epochs
        velocity = NeuralVelocity(pl_module, probe, layers=self.layers)
        self.neve = NeVe(trainer.optimizers[0], velocity, threshold=self.threshold, **options)
        state, self._pending_state = self._pending_state, None
        if state is not None:
            self.neve.load_state_dict(state["neve"])
            self.history = [dict(m) for m in state.get("history", [])]
            # a run that ended at the old epoch cap goes on when the cap was raised
            if self.neve.stopped_by == "max_epochs" and self.neve.epoch < self.neve.max_epochs:
                self.neve.stopped_by = None
        self.neve.start()

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.pruned = False
        if self.neve is not None and self._pending_state is None:
            # a second fit() has new optimizers: rebuild the controller from its own state
            self._pending_state = self.state_dict()
            self.neve = None
        probe = self.probe
        if probe is None and self._pending_state is not None and self._pending_state.get("probe_shape"):
            self._probe_shape = tuple(self._pending_state["probe_shape"])
            probe = gaussian_probe(self._probe_shape, self.probe_samples, self.probe_seed)
        if probe is not None:
            self._build(trainer, pl_module, probe)

    def on_train_batch_start(
        self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any, batch_idx: int
    ) -> None:
        if self.neve is not None:
            return
        x = batch_inputs(batch, self.input_key)
        if x.ndim < 2:
            raise ValueError(
                f"the training batch's inputs have shape {tuple(x.shape)}; a probe needs [batch, ...] inputs, "
                "pass probe="
            )
        if not x.is_floating_point():
            raise ValueError(
                f"the training batch's inputs are {x.dtype} (token ids?): Gaussian noise does not fit them; pass probe= "
                "with ids, e.g. torch.randint(vocab_size, (100, seq_len), generator=torch.Generator().manual_seed(0))"
            )
        self._probe_shape = tuple(int(s) for s in x.shape[1:])
        self._build(trainer, pl_module, gaussian_probe(self._probe_shape, self.probe_samples, self.probe_seed, x.dtype))

    # ------------------------------------------------------------ per epoch
    def _train_loss(self, trainer: "pl.Trainer") -> float:
        metrics = trainer.callback_metrics
        for key in (f"{self.loss_key}_epoch", self.loss_key):
            if key in metrics:
                return to_float(key, metrics[key])
        raise ValueError(
            f"NeVeCallback needs the epoch's training loss in trainer.callback_metrics[{self.loss_key!r}]: log it in "
            f"training_step with self.log({self.loss_key!r}, loss, on_epoch=True), or pass loss_key= naming the "
            f"logged loss; logged keys are {sorted(metrics)}"
        )

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking or self.neve is None:
            return
        if self.neve.should_stop:  # e.g. resumed past the controller's own stop
            trainer.should_stop = True
            return
        train_loss = self._train_loss(trainer)
        metrics = dict(self.neve.step(train_loss=train_loss))
        metrics.setdefault("train_loss", train_loss)
        self.history.append(metrics)
        for name, value in metrics.items():
            if name in _NOT_LOGGED or value is None or isinstance(value, str):
                continue
            try:
                value = float(value) if isinstance(value, bool) else to_float(name, value)
            except TypeError:
                continue  # not a number: kept in history only
            pl_module.log(name, value, on_step=False, on_epoch=True)

        if self.trial is not None:
            prune = False
            if trainer.is_global_zero:
                from .optuna import report_epoch

                report_epoch(self.trial, metrics)
                prune = bool(self.trial.should_prune())
            prune = bool(trainer.strategy.broadcast(prune))
            if prune:
                self.pruned = True
                trainer.should_stop = True
                if trainer.world_size == 1:
                    self.check_pruned()
                return

        stop = bool(trainer.strategy.broadcast(self.neve.should_stop))
        if stop:
            trainer.should_stop = True

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.neve is None:
            return dict(self._pending_state or {})
        return {
            "neve": self.neve.state_dict(),
            "history": [dict(m) for m in self.history],
            "probe_shape": list(self._probe_shape) if self.probe is None and self._probe_shape else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if "neve" not in state_dict:
            raise ValueError(f"not a NeVeCallback state: keys {sorted(state_dict)}")
        # applied once the optimizer exists (on_train_start)
        self._pending_state = dict(state_dict)
        self.neve = None
