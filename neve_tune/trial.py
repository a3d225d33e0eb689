"""One trial: a sampled configuration of a study, trained to its end.

:func:`run_trial` is the one function every backend (Optuna objective, Ray trainable,
the comparison) calls, so they all train the same way. Methods (``neve_tune.records.METHODS``):

- ``"neve"``: the whole training set, velocity on the probe each epoch, LR decay on the
  velocity change, stop on the velocity threshold; objective: the last epoch's mean
  training loss (TSE-E with E = 1; ``Study.objective`` selects another estimate).
- ``"asha"``: ``val_fraction`` of the training set held out, ``ReduceLROnPlateau`` on
  the validation metric (``study.val_metric``: loss, or accuracy), ``max_epochs`` fixed;
  objective: the validation loss (or error, ``1 - val_acc``) of the last epoch.
- ``"asha_es"``: the same with early stopping after ``early_stopping`` epochs without a
  new best validation value; objective: the best one.
- With ``study.final="best_checkpoint"`` a baseline run ends holding the weights of its
  best validation epoch (its objective and test score are that epoch's).
- ``"retrain"``: the whole training set for ``len(lr_schedule)`` epochs, replaying a
  recorded per-epoch learning-rate schedule (how a validation-based search gets its
  final model).

    >>> from neve_tune import load_study, run_trial
    >>> result = run_trial(load_study("digits").replace(max_epochs=2), {"lr": 0.05})
    >>> result.method, result.epochs, result.stopped_by, result.cost.train_samples
    ('neve', 2, 'max_epochs', 2874)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._checks import check_choice, check_float, check_model_fn
from ._model_fit import trial_model
from ._subset_epochs import selection_measure
from ._trial_inputs import counted_by, resolve_device, trial_config
from ._trial_veto import NoiseEstimate, check_noise_estimate, trial_unfit_share, trial_veto
from .baselines import LRReplay, ValidationControl
from .control import NeVe
from .data import DataBundle, data_identity, validation_split
from .probe import dataset_probe, gaussian_probe
from .records import METHODS, TrialResult, val_metric_key
from .train import evaluate, fit
from .velocity import NeuralVelocity

if (
    TYPE_CHECKING
):  # a type only: study.py names run_trial's module for its old names, so no import back
    from .study import Study

__all__ = [
    "controller_settings",
    "make_controller",
    "make_optimizer",
    "run_guard",
    "run_trial",
    "training_speed_estimate",
    "trial_objective",
]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _plain(value: Any) -> Any:
    """``value`` made of what a ``weights_only`` checkpoint holds (numbers, strings, None,
    lists, tuples, dicts); anything else by its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return repr(value)


def run_guard(
    study: Study,
    config: Mapping[str, Any],
    method: str,
    seed: int,
    model: torch.nn.Module | None = None,
    model_fn: Callable[[], torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """What a checkpoint must share with a run to be resumed by it: the configuration,
    method, seed, data (:func:`neve_tune.data.data_identity`: not where it lies), model and
    controller settings (:func:`controller_settings`). ``max_epochs`` is not part of it: a
    larger cap continues a run stopped by the cap."""
    if model_fn is None:
        model_id: dict[str, Any] = {"name": study.model, **study.model_options}
    else:
        cls = type(model) if model is not None else type(model_fn)
        model_id = {"name": f"model_fn:{cls.__module__}.{cls.__qualname__}"}
    return {
        "config": dict(config),
        "method": method,
        "seed": seed,
        "data": _plain(data_identity(study.data, study.data_options)),
        "model": _plain(model_id),
        "controller": _plain(controller_settings(study, method)),
    }


def controller_settings(study: Study, method: str) -> dict[str, Any]:
    """The study fields that shape ``method``'s controller state, as the study holds them
    (``lr_patience`` may be ``"auto"``: the scheduler restored from a checkpoint keeps its
    own patience, so a larger ``max_epochs`` still continues a run). A resumed run with
    other values would mix two controllers' states, so the run guard holds them.

        >>> from neve_tune import load_study
        >>> sorted(controller_settings(load_study("digits"), "asha_es"))
        ['early_stopping', 'lr_factor', 'lr_patience', 'val_fraction']
    """
    if method == "neve":
        names: tuple[str, ...] = (
            "lr_signal",
            "lr_factor",
            "lr_patience",
            "threshold_mode",
            "min_epochs",
            "stall_margin",
            "pc_patience",
            "pc_window",
            "pc_restore",
            "prediction_changes",
            "pc_subset_size",
            "probe",
            "probe_samples",
            "amp",
        )
    elif method in ("asha", "asha_es"):
        names = ("lr_factor", "lr_patience", "val_fraction") + (
            ("early_stopping",) if method == "asha_es" else ()
        )
        # held only when not the defaults: a checkpoint written before they existed has those
        names += tuple(
            n
            for n, default in (("val_metric", "loss"), ("final", "retrain"))
            if getattr(study, n) != default
        )
    else:  # retrain: the replayed schedule is the run's; a longer one continues it
        names = ()
    return {name: getattr(study, name) for name in names}


def amp_dtype(study: Study) -> torch.dtype | None:
    """The autocast dtype of ``study.amp`` (None: full precision)."""
    return AMP_DTYPES.get(study.amp or "")


def trial_objective(
    study: Study,
    method: str,
    history: Sequence[Mapping[str, Any]],
    controller_state: Mapping[str, Any],
) -> tuple[float, int]:
    """(objective, best epoch) of a finished run, lower is better.

    ``neve``/``retrain``: the study's validation-free objective over the training losses
    (``study.objective``: ``"tse_e1"`` the last epoch's, ``"tse_eN"`` the mean of the last
    N epochs', ``"tse_ema"`` their exponential moving average, Ru et al. 2021);
    ``"pc_min"`` the lowest moving average of the prediction changes;
    ``asha``: the last epoch's validation value; ``asha_es``, and ``asha`` with
    ``study.final="best_checkpoint"``: the best one (with its epoch). The value is the
    validation loss, or the validation error ``1 - val_acc`` with ``study.val_metric="acc"``.
    """
    nan = float("nan")
    if method in ("asha", "asha_es"):
        key, _ = val_metric_key(study.val_metric)

        def error(v: Any) -> float:  # lower is better whatever the metric
            v = float(v) if v is not None else nan
            return (v if study.val_metric == "loss" else 1.0 - v) if math.isfinite(v) else nan

        if method == "asha" and study.final == "retrain":
            return (error(history[-1].get(key)) if history else nan), len(history)
        best = controller_state.get(f"best_{study.val_metric}")
        return error(best), int(controller_state.get("best_epoch", 0))
    # a NeVe run whose guard restored an earlier epoch's weights is judged at that epoch
    best = len(history)
    if (
        method == "neve"
        and controller_state.get("stopped_by") == "prediction_changes"
        and controller_state.get("best_weights")
    ):
        best = int(controller_state.get("pc_best_epoch") or best)
    if study.objective == "pc_min":
        return prediction_changes_minimum(history[:best], study.pc_window), best
    losses = [float(m["train_loss"]) for m in history[:best]]
    return training_speed_estimate(losses, study.objective), best


def prediction_changes_minimum(history: Sequence[Mapping[str, Any]], window: int) -> float:
    """The lowest moving average (over ``window`` epochs) of the prediction changes: how
    settled the run's predictions became before it stopped (NaN before ``window`` epochs)."""
    pcs = [m.get("prediction_changes") for m in history]
    levels = [
        sum(pcs[i - window + 1 : i + 1]) / window
        for i in range(window - 1, len(pcs))
        if None not in pcs[i - window + 1 : i + 1]
    ]
    return float(min(levels)) if levels else float("nan")


def training_speed_estimate(
    losses: Sequence[float], kind: str = "tse_e1", ema_decay: float = 0.9
) -> float:
    """A validation-free estimate from per-epoch mean training losses (Ru et al. 2021)."""
    if not losses:
        return float("nan")
    if kind == "tse_ema":
        ema = losses[0]
        for x in losses[1:]:
            ema = ema_decay * ema + (1 - ema_decay) * x
        return float(ema)
    e = int(kind[len("tse_e") :])
    tail = losses[-e:]
    return float(sum(tail) / len(tail))


def make_optimizer(model: torch.nn.Module, config: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer ``config["optimizer"]`` names (``sgd``, ``adam``, ``adamw``)."""
    name = str(config.get("optimizer", "sgd")).lower()
    lr = check_float("lr", config["lr"], positive=True)
    wd = check_float("weight_decay", config.get("weight_decay", 0.0), low=0.0)
    if name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=lr, momentum=float(config.get("momentum", 0.9)), weight_decay=wd
        )
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {name!r}")


def make_controller(
    study: Study,
    method: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: Mapping[str, Any],
    *,
    train_set: Any,
    input_shape: tuple[int, ...],
    seed: int,
    lr_schedule: Sequence[float] | None = None,
    num_classes: int | None = None,
    noise_estimate: NoiseEstimate | None = None,
) -> Any:
    """The per-trial controller of ``method``: :class:`~neve_tune.NeVe` with the study's
    probe and budget, :class:`~neve_tune.ValidationControl` for the baselines, or
    :class:`~neve_tune.baselines.LRReplay` for a retrain. ``noise_estimate`` is NeVe's
    search's label-noise estimate, which vetoes guard stops (``study.pc_veto_margin``)."""
    check_noise_estimate(noise_estimate, method)
    if method == "neve":
        if study.probe == "noise":
            probe = gaussian_probe(input_shape, study.probe_samples, seed=seed)
        else:
            probe = dataset_probe(train_set, study.probe_samples, seed=seed)
        return NeVe(
            optimizer,
            NeuralVelocity(model, probe, autocast_dtype=amp_dtype(study)),
            threshold=float(config["threshold"]),
            min_epochs=study.min_epochs,
            max_epochs=study.max_epochs,
            lr_signal=study.lr_signal,
            lr_factor=study.lr_factor,
            lr_patience=study.lr_patience_epochs,
            threshold_mode=study.threshold_mode,
            num_classes=num_classes,
            stall_margin=study.stall_margin,
            pc_patience=study.pc_patience,
            pc_window=study.pc_window,
            pc_restore=study.pc_restore,
            veto=trial_veto(study, train_set, noise_estimate),
        )
    if method == "retrain":
        return LRReplay(optimizer, lr_schedule or [])
    return ValidationControl(
        optimizer,
        max_epochs=study.max_epochs,
        lr_factor=study.lr_factor,
        lr_patience=study.lr_patience_epochs,
        early_stopping=study.early_stopping if method == "asha_es" else None,
        metric=study.val_metric,
        keep_best_weights=study.final == "best_checkpoint",
        model=model,
    )


def run_trial(
    study: Study,
    config: Mapping[str, Any],
    *,
    method: str = "neve",
    seed: int = 0,
    device: str | torch.device | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    data: DataBundle | None = None,
    evaluate_test: bool = True,
    lr_schedule: Sequence[float] | None = None,
    model_fn: Callable[[], torch.nn.Module] | None = None,
    subset_epochs: Collection[int] | None = None,
    noise_estimate: NoiseEstimate | None = None,
) -> TrialResult:
    """Train one configuration and return its :class:`~neve_tune.records.TrialResult`.

    ``config`` holds the hyperparameters (``lr``, ``threshold``, ``batch_size``, ...;
    missing ones come from ``study.defaults``). ``seed`` fixes initialisation, data order
    and the validation split. ``on_epoch(metrics)`` sees each new epoch (the metric names
    of :data:`neve_tune.records.METRIC_NAMES`; ``val_loss``/``val_acc`` too for validation
    methods) after its checkpoint is saved. The test set is touched once, after training,
    only when ``evaluate_test``. ``model_fn`` builds the model instead of ``study.model``.
    ``subset_epochs``: with ``study.selection_subset``, record ``subset_pred``/``subset_fit``
    only at these epochs and the last (the search's rung epochs; None: every epoch).
    ``noise_estimate``: the label noise NeVe's search estimates (a share, or a callable giving
    one or None), for the guard's veto (``study.pc_veto_margin``; docs/design.md)."""
    check_choice("method", method, METHODS)
    check_model_fn(model_fn)
    cfg = trial_config(study, config, method)
    device = resolve_device(device)
    bundle = data if data is not None else study.load_data()
    train_set, val_set = bundle.train, None
    if method in ("asha", "asha_es"):
        train_set, val_set = validation_split(bundle.train, study.val_fraction, seed=seed)
    model = trial_model(study, bundle, seed, model_fn).to(device)
    optimizer = make_optimizer(model, cfg)
    measure, forwards = selection_measure(study, method, bundle.train, seed, model, subset_epochs)
    controller = make_controller(
        study,
        method,
        model,
        optimizer,
        cfg,
        train_set=train_set,
        input_shape=bundle.input_shape,
        seed=seed,
        lr_schedule=lr_schedule,
        num_classes=bundle.num_classes,
        noise_estimate=noise_estimate,
    )
    fitted = fit(
        model,
        optimizer,
        train_set,
        controller,
        batch_size=int(cfg["batch_size"]),
        val_set=val_set,
        device=device,
        seed=seed,
        amp_dtype=amp_dtype(study),
        checkpoint_path=checkpoint_path,
        on_epoch=on_epoch,
        measure=measure,
        checkpoint_meta=run_guard(study, cfg, method, seed, model, model_fn),
        prediction_changes=counted_by(study, method),
        pc_subset_size=study.pc_subset_size,
    )
    fitted.cost.probe_samples += forwards()  # the selection subset's
    _deliver_best_epoch(model, controller)
    objective, best_epoch = trial_objective(study, method, fitted.history, controller.state_dict())
    result = TrialResult(
        config=cfg,
        method=method,
        seed=seed,
        stopped_by=fitted.stopped_by,
        epochs=fitted.epochs,
        objective=float(objective),
        best_epoch=best_epoch,
        cost=fitted.cost,
        history=fitted.history,
        train_size=len(bundle.train),
        unfit_share=trial_unfit_share(study, method, fitted.history, controller, len(train_set)),
    )  # type: ignore[arg-type]
    if evaluate_test:
        _score_on_test(result, model, bundle.test, device, amp_dtype(study))
    return result


def _score_on_test(
    result: TrialResult, model: torch.nn.Module, test_set: Any, device: Any, dtype: Any
) -> None:
    """The final model's test loss and accuracy, touched once, after training."""
    loss, acc, n = evaluate(model, test_set, device=device, amp_dtype=dtype)
    result.test_acc, result.test_loss, result.test_samples = acc, loss, n


def _deliver_best_epoch(model: torch.nn.Module, controller: Any) -> None:
    """``final="best_checkpoint"``: a baseline's run delivers its best epoch's weights."""
    best_weights = getattr(controller, "best_weights", None)
    if best_weights is not None:
        model.load_state_dict(best_weights)
