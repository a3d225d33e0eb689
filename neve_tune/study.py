"""Study files and the one function that runs a trial of them.

A study file (``studies/*.py``) defines ``STUDY = Study(...)``: data, model, search space
and budgets. Every backend (Optuna, Ray Tune, the comparison) turns a sampled ``config``
into a finished trial with :func:`run_trial`, so they all train the same way.

Methods:

- ``"neve"``: the whole training set, velocity on the probe each epoch, LR decay on the
  velocity change, stop on the velocity threshold; objective: the last epoch's mean
  training loss (TSE-E with E = 1; ``Study.objective`` selects another estimate).
- ``"asha"``: ``val_fraction`` of the training set held out, ``ReduceLROnPlateau`` on
  validation loss, ``max_epochs`` fixed; objective: validation loss of the last epoch.
- ``"asha_es"``: the same with early stopping after ``early_stopping`` epochs without a
  new best validation loss; objective: the best validation loss.
- ``"retrain"``: the whole training set for ``epochs`` epochs, replaying a recorded
  per-epoch learning-rate schedule (how a validation-based search gets its final model).
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .control import NeVe, ValidationControl, check_epochs
from .data import DataBundle, get_dataset, validation_split
from .models import create_model
from .probe import dataset_probe, gaussian_probe
from .train import evaluate, fit
from .velocity import NeuralVelocity

__all__ = [
    "Choice",
    "IntUniform",
    "LogUniform",
    "Uniform",
    "Study",
    "METHODS",
    "load_study",
    "run_trial",
    "resolve_device",
]

METHODS = ("neve", "asha", "asha_es", "retrain")
STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"


# ---------------------------------------------------------------- search space
@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def validate(self, name: str) -> None:
        if not (0 < self.low < self.high):
            raise ValueError(f"search space {name!r}: LogUniform needs 0 < low < high, got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def validate(self, name: str) -> None:
        if not self.low < self.high:
            raise ValueError(f"search space {name!r}: Uniform needs low < high, got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class IntUniform:
    low: int
    high: int
    log: bool = False

    def validate(self, name: str) -> None:
        if not self.low < self.high or (self.log and self.low < 1):
            raise ValueError(f"search space {name!r}: IntUniform needs low < high (low >= 1 if log), got [{self.low}, {self.high}]")


@dataclass(frozen=True)
class Choice:
    values: tuple

    def __init__(self, values: Sequence) -> None:
        object.__setattr__(self, "values", tuple(values))

    def validate(self, name: str) -> None:
        if not self.values:
            raise ValueError(f"search space {name!r}: Choice needs at least one value, got none")


Distribution = LogUniform | Uniform | IntUniform | Choice


def _default_space() -> dict[str, Distribution]:
    return {
        "lr": LogUniform(1e-3, 0.5),
        "threshold": LogUniform(1e-4, 1e-2),
        "batch_size": Choice([32, 64, 128]),
    }


def _default_params() -> dict[str, Any]:
    return {
        "lr": 0.05,
        "threshold": 1e-3,
        "batch_size": 64,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "optimizer": "sgd",
    }


@dataclass
class Study:
    """What a search trains and over which hyperparameters.

    ``defaults`` holds every hyperparameter a trial uses; those in ``search_space`` are
    overwritten by the sampled values. ``resources`` is per trial (Ray).
    """

    name: str
    data: str = "digits"
    data_options: dict[str, Any] = field(default_factory=dict)
    model: str = "small_cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    search_space: dict[str, Distribution] = field(default_factory=_default_space)
    defaults: dict[str, Any] = field(default_factory=_default_params)
    max_epochs: int = 60
    min_epochs: int = 0
    probe: str = "noise"
    probe_samples: int = 100
    lr_signal: str = "velocity_change"
    lr_factor: float = 0.5
    lr_patience: int = 10
    val_fraction: float = 0.1
    early_stopping: int = 10
    objective: str = "tse_e1"
    amp: str | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not self.search_space:
            raise ValueError(f"study {self.name!r}: search_space is empty")
        for k, d in self.search_space.items():
            if not isinstance(d, (LogUniform, Uniform, IntUniform, Choice)):
                raise TypeError(f"search space {k!r}: expected LogUniform/Uniform/IntUniform/Choice, got {d!r}")
            d.validate(k)
        check_epochs(self.min_epochs, self.max_epochs)
        if self.probe not in ("noise", "train"):
            raise ValueError(f"probe must be 'noise' or 'train', got {self.probe!r}")
        if not isinstance(self.objective, str) or not (self.objective == "tse_ema" or (self.objective.startswith("tse_e") and self.objective[5:].isdigit()
                                                   and int(self.objective[5:]) >= 1)):
            raise ValueError(f"objective must be 'tse_e<N>' (N >= 1) or 'tse_ema', got {self.objective!r}")
        if self.lr_signal not in ("velocity_change", "velocity"):
            raise ValueError(f"lr_signal must be 'velocity_change' or 'velocity', got {self.lr_signal!r}")
        if not 0.0 < self.lr_factor < 1.0:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor!r}")
        for key in ("lr_patience", "early_stopping"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "lr_patience" else 1):
                raise ValueError(f"{key} must be an int >= {0 if key == 'lr_patience' else 1}, got {v!r}")
        if isinstance(self.probe_samples, bool) or not isinstance(self.probe_samples, int) or self.probe_samples < 1:
            raise ValueError(f"probe_samples must be a positive int, got {self.probe_samples!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for key in ("lr", "batch_size"):
            if key not in self.defaults and key not in self.search_space:
                raise ValueError(f"study {self.name!r}: {key!r} is neither in defaults nor in search_space")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {self.amp!r}")

    def config(self, sampled: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Full hyperparameters: defaults overwritten by ``sampled``."""
        cfg = dict(self.defaults)
        cfg.update(sampled or {})
        return cfg

    def replace(self, **changes: Any) -> "Study":
        return replace(self, **changes)

    def load_data(self, seed: int | None = None) -> DataBundle:
        opts = dict(self.data_options)
        if seed is not None:
            opts["seed"] = seed
        return get_dataset(self.data, **opts)


def load_study(study: "str | os.PathLike | Study") -> Study:
    """A :class:`Study` from a file path, a bundled study name (``"digits"``) or itself."""
    if isinstance(study, Study):
        return study
    path = Path(study)
    if not path.exists() and not path.suffix:
        path = STUDIES_DIR / f"{study}.py"
    if not path.is_file():
        known = sorted(p.stem for p in STUDIES_DIR.glob("*.py")) if STUDIES_DIR.is_dir() else []
        raise FileNotFoundError(f"study file {str(study)!r} not found; bundled studies: {known}")
    spec = importlib.util.spec_from_file_location(f"neve_study_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    obj = getattr(module, "STUDY", None)
    if not isinstance(obj, Study):
        raise ValueError(f"study file {str(path)!r} must define STUDY = neve_tune.Study(...)")
    return obj


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------- one trial
class _LRReplay:
    """Controller for a retrain: sets each epoch's recorded LR, runs ``len(lrs)`` epochs."""

    probe_samples = 0

    def __init__(self, optimizer: torch.optim.Optimizer, lrs: Sequence[float]) -> None:
        if not lrs:
            raise ValueError("lr_schedule must hold at least one epoch")
        self.optimizer, self.lrs, self.epoch, self.stopped_by = optimizer, list(lrs), 0, None
        self._set(0)

    def _set(self, i: int) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = float(self.lrs[i])

    should_stop = property(lambda self: self.stopped_by is not None)

    def start(self) -> None:
        pass

    def step(self, train_loss: float, val_loss: float | None = None) -> dict[str, Any]:
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.epoch += 1
        diverged = not math.isfinite(train_loss)
        if diverged:
            self.stopped_by = "diverged"
        elif self.epoch >= len(self.lrs):
            self.stopped_by = "max_epochs"
        else:
            self._set(self.epoch)
        return {"epoch": self.epoch, "lr": lr, "diverged": diverged}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "stopped_by": self.stopped_by}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.stopped_by = int(state["epoch"]), state["stopped_by"]
        if self.stopped_by is None:
            self._set(self.epoch)


def trial_objective(
    study: Study, method: str, history: Sequence[Mapping[str, Any]], controller_state: Mapping[str, Any]
) -> tuple[float, int]:
    """(objective, best epoch) of a finished run, lower is better.

    ``neve``/``retrain``: the study's validation-free objective over the training losses
    (``study.objective``: ``"tse_e1"`` the last epoch's, ``"tse_eN"`` the mean of the last
    N epochs', ``"tse_ema"`` their exponential moving average, Ru et al. 2021);
    ``asha``: the last validation loss; ``asha_es``: the best validation loss.
    """
    nan = float("nan")
    if method == "asha":
        return (float(history[-1]["val_loss"]) if history else nan), len(history)
    if method == "asha_es":
        best = float(controller_state.get("best_loss", math.inf))
        return (best if math.isfinite(best) else nan), int(controller_state.get("best_epoch", 0))
    losses = [float(m["train_loss"]) for m in history]
    return training_speed_estimate(losses, study.objective), len(history)


def training_speed_estimate(losses: Sequence[float], kind: str = "tse_e1", ema_decay: float = 0.9) -> float:
    """A validation-free estimate from per-epoch mean training losses (Ru et al. 2021)."""
    if not losses:
        return float("nan")
    if kind == "tse_ema":
        ema = losses[0]
        for x in losses[1:]:
            ema = ema_decay * ema + (1 - ema_decay) * x
        return float(ema)
    e = int(kind[len("tse_e"):])
    tail = losses[-e:]
    return float(sum(tail) / len(tail))


def make_optimizer(model: torch.nn.Module, config: Mapping[str, Any]) -> torch.optim.Optimizer:
    name = str(config.get("optimizer", "sgd")).lower()
    lr, wd = float(config["lr"]), float(config.get("weight_decay", 0.0))
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(config.get("momentum", 0.9)), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {name!r}")


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
) -> dict[str, Any]:
    """Train one configuration and return its record.

    ``config`` holds the hyperparameters (``lr``, ``threshold``, ``batch_size``, ...;
    missing ones come from ``study.defaults``). ``seed`` fixes initialisation, data order
    and the validation split. ``on_epoch(metrics)`` sees each new epoch (DESIGN names;
    ``val_loss``/``val_acc`` too for validation methods) after its checkpoint is saved.
    The test set is touched once, after training, only when ``evaluate_test``.

    Returns a dict: ``config``, ``method``, ``seed``, ``stopped_by``, ``epochs``,
    ``objective``, ``best_epoch``, ``test_acc``, ``test_loss``, ``cost`` (with
    ``epochs_equiv`` relative to the full training set), ``history``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cfg = study.config(config)
    for key in ("lr", "batch_size") + (("threshold",) if method == "neve" else ()):
        if key not in cfg:
            raise ValueError(f"config has no {key!r} (and study {study.name!r} has no default for it)")
    device = resolve_device(device)
    bundle = data if data is not None else study.load_data()
    full_train = bundle.train
    train_set, val_set = full_train, None
    if method in ("asha", "asha_es"):
        train_set, val_set = validation_split(full_train, study.val_fraction, seed=seed)

    torch.manual_seed(seed)
    model = model_fn() if model_fn is not None else create_model(
        study.model, bundle.num_classes, bundle.input_shape, **study.model_options
    )
    model = model.to(device)
    optimizer = make_optimizer(model, cfg)
    batch_size = int(cfg["batch_size"])
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(study.amp or "")

    if method == "neve":
        if study.probe == "noise":
            probe = gaussian_probe(bundle.input_shape, study.probe_samples, seed=seed)
        else:
            probe = dataset_probe(train_set, study.probe_samples, seed=seed)
        nv = NeuralVelocity(model, probe, autocast_dtype=amp_dtype)
        controller: Any = NeVe(
            optimizer,
            nv,
            threshold=float(cfg["threshold"]),
            min_epochs=study.min_epochs,
            max_epochs=study.max_epochs,
            lr_signal=study.lr_signal,
            factor=study.lr_factor,
            patience=study.lr_patience,
        )
    elif method == "retrain":
        controller = _LRReplay(optimizer, lr_schedule or [])
    else:
        controller = ValidationControl(
            optimizer,
            max_epochs=study.max_epochs,
            factor=study.lr_factor,
            patience=study.lr_patience,
            early_stopping=study.early_stopping if method == "asha_es" else None,
        )

    result = fit(
        model,
        optimizer,
        train_set,
        controller,
        batch_size=batch_size,
        val_set=val_set,
        device=device,
        seed=seed,
        amp_dtype=amp_dtype,
        checkpoint_path=checkpoint_path,
        on_epoch=on_epoch,
        checkpoint_meta={"config": dict(cfg), "method": method, "seed": seed},
    )
    hist = result.history
    objective, best_epoch = trial_objective(study, method, hist, controller.state_dict())
    record: dict[str, Any] = {
        "config": cfg,
        "method": method,
        "seed": seed,
        "stopped_by": result.stopped_by,
        "epochs": result.epochs,
        "objective": float(objective),
        "best_epoch": best_epoch,
        "cost": result.cost.as_dict(len(full_train)),
        "history": hist,
        "test_acc": None,
        "test_loss": None,
    }
    if evaluate_test:
        loss, acc, n = evaluate(model, bundle.test, device=device, amp_dtype=amp_dtype)
        record.update(test_acc=acc, test_loss=loss, test_samples=n)
    return record
