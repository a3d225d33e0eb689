"""Study files: what a search trains and over which hyperparameters.

A study file (``studies/*.py``, shipped inside the package as :mod:`neve_tune.studies`)
defines ``STUDY = Study(...)``: data, model, search space and budgets. Every backend
(Optuna, Ray Tune, the comparison) turns a sampled ``config`` into a finished trial with
:func:`neve_tune.run_trial`, so they all train the same way.

    >>> from neve_tune import load_study
    >>> study = load_study("digits")
    >>> study.data, study.model, study.max_epochs, sorted(study.search_space)
    ('digits', 'small_cnn', 60, ['batch_size', 'lr', 'threshold'])
"""

from __future__ import annotations

import os
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from ._checks import (
    check_choice,
    check_float,
    check_int,
    check_mapping,
    check_resources,
    check_seed,
)
from ._controller import check_epochs
from ._guard_weights import check_restore
from ._rules import auto_patience
from .control import LR_SIGNALS
from .data import DataBundle, check_data_changes, check_data_options, get_dataset
from .models import check_model_name, check_model_options
from .prediction_changes import PREDICTION_CHANGES
from .records import FINAL_MODELS, VAL_METRICS
from .space import (
    Distribution,
    check_hyperparameter,
    default_space,
    validate_space,
)

__all__ = ["Study", "bundled_studies", "load_study"]


def _default_params() -> dict[str, Any]:
    return {
        "lr": 0.05,
        "threshold": 1e-2,
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

    Trial control (docs/design.md, "The controller"): ``lr_patience`` is the
    ``ReduceLROnPlateau`` patience of NeVe and of the validation baselines alike
    (``"auto"``: ``max(2, max_epochs // 20)``); ``threshold_mode`` ``"relative"`` (the
    default: velocity over its running peak, the ``threshold`` a ratio, 1e-2 by default,
    searched over 1e-3–1e-1) or ``"absolute"`` (velocity itself); ``stall_margin`` the drop in
    training loss (from the first epoch, and from chance) that counts as learning; ``pc_patience`` /
    ``pc_window`` / ``pc_restore`` the memorisation guard (None: off), counted
    ``prediction_changes="in_pass"`` or on a subset of ``pc_subset_size`` examples;
    ``pc_veto_margin`` the search's veto on its stops (:class:`~neve_tune.guard.GuardVeto`;
    None, the default: off; the replays chose 0.1, ``VETO_MARGIN``). The defaults are
    the measured ones (docs/measurements.md,
    "Which validation-free defaults, and why"). ``selection_subset`` (0: off) makes each
    NeVe trial record (every epoch, or under a ``NeVePruner`` ranking on them its rung
    epochs, and the last) the classes it predicts for that many training examples (a fixed
    seeded subset, ``subset_pred``, 500 by default), which
    ``NeVePruner(rung_signal="consensus")`` compares across trials; ``selection="consensus"``
    (it needs ``selection_subset``) makes the comparison's NeVe search pick, among its finished
    trials, the one that agrees most with the majority vote of the others instead of the lowest
    objective;
    ``"auto"`` (the default) does so only when the finished trials' fit of the subset's labels says
    the labels are noisy and the memorisation guard stopped one of them
    (:class:`neve_tune.selection_policy.SelectionPolicy`) (docs/design.md, "Selection
    criteria").

    The validation baselines (``asha``, ``asha_es``) hold out ``val_fraction`` and decide
    on ``val_metric`` (``"loss"``, or ``"acc"``: validation accuracy, the objective its
    error ``1 - acc``): rungs, early stopping after ``early_stopping`` epochs, the LR
    plateau and the pick. ``final`` is their final model: ``"retrain"`` (the winner's
    configuration on all training data, the comparison's retrain) or ``"best_checkpoint"``
    (each trial ends holding its weights of its best validation epoch; its objective is
    that epoch's value) (docs/design.md, "Comparison protocol").
    """

    name: str
    data: str = "digits"
    data_options: dict[str, Any] = field(default_factory=dict)
    model: str = "small_cnn"
    model_options: dict[str, Any] = field(default_factory=dict)
    search_space: dict[str, Distribution] = field(default_factory=default_space)
    defaults: dict[str, Any] = field(default_factory=_default_params)
    max_epochs: int = 60
    min_epochs: int = 0
    probe: str = "noise"
    probe_samples: int = 100
    lr_signal: str = "velocity_change"
    lr_factor: float = 0.5
    lr_patience: int | str = "auto"
    threshold_mode: str = "relative"
    stall_margin: float = 0.1
    pc_patience: int | None = 3
    pc_window: int = 3
    pc_restore: str | None = "mean"
    pc_veto_margin: float | None = None
    prediction_changes: str = "in_pass"
    pc_subset_size: int = 1000
    selection_subset: int = 500
    selection: str = "auto"
    val_fraction: float = 0.1
    early_stopping: int = 10
    val_metric: str = "loss"
    final: str = "retrain"
    objective: str = "tse_e1"
    amp: str | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every field, in one line naming it (``study 'x': ...``): the search space's
        bounds and choices and the defaults go through the checks the command-line flags
        use (:func:`neve_tune.space.check_hyperparameter`)."""
        try:
            self._validate()
        except (TypeError, ValueError) as e:
            prefix = f"study {self.name!r}: "
            raise type(e)(str(e) if str(e).startswith(prefix) else prefix + str(e)) from None

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        check_data_options(self.data, self.data_options)
        check_model_name(self.model)
        check_mapping("model_options", self.model_options)
        check_model_options(self.model, self.model_options)
        check_mapping("defaults", self.defaults)
        check_choice("threshold_mode", self.threshold_mode, ("absolute", "relative"))
        validate_space(self.search_space, threshold_mode=self.threshold_mode)
        for key, value in self.defaults.items():
            check_hyperparameter(
                key, value, f"defaults[{key!r}]", threshold_mode=self.threshold_mode
            )
        check_int("max_epochs", self.max_epochs, minimum=1)
        check_int("min_epochs", self.min_epochs, minimum=0)
        check_epochs(self.min_epochs, self.max_epochs)
        opts = self.data_options
        check_seed("data_options['noise_seed']", opts.get("noise_seed", 0))
        check_seed("data_options['seed']", opts.get("seed", 0))
        check_data_changes(
            opts.get("train_fraction", 1.0), opts.get("label_noise", 0.0), opts.get("noise_seed", 0)
        )
        if self.probe not in ("noise", "train"):
            raise ValueError(f"probe must be 'noise' or 'train', got {self.probe!r}")
        _check_objective(self.objective, self.max_epochs)
        check_choice("lr_signal", self.lr_signal, LR_SIGNALS)
        if not 0.0 < self.lr_factor < 1.0:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor!r}")
        if self.lr_patience != "auto":
            check_int("lr_patience", self.lr_patience, minimum=0)
        check_float("stall_margin", self.stall_margin, low=0.0, high=1.0, high_open=True)
        check_int("pc_patience", self.pc_patience, minimum=1, allow_none=True)
        check_int("pc_window", self.pc_window, minimum=1)
        check_restore(self.pc_restore)
        check_float("pc_veto_margin", self.pc_veto_margin, low=0.0, allow_none=True)
        if self.pc_veto_margin is not None and self.pc_patience is None:
            raise ValueError("pc_veto_margin is unused with the guard off (pc_patience=None)")
        check_choice("prediction_changes", self.prediction_changes, PREDICTION_CHANGES)
        check_int("pc_subset_size", self.pc_subset_size, minimum=1)
        check_int("selection_subset", self.selection_subset, minimum=0)
        check_choice("selection", self.selection, ("objective", "consensus", "auto"))
        if self.selection in ("consensus", "auto") and not self.selection_subset:
            raise ValueError(
                f"selection={self.selection!r} needs selection_subset > 0 (e.g. 500): the trials' "
                "predictions on that fixed subset are what it compares"
            )
        check_int("early_stopping", self.early_stopping, minimum=1)
        check_choice("val_metric", self.val_metric, VAL_METRICS)
        check_choice("final", self.final, FINAL_MODELS)
        check_int("probe_samples", self.probe_samples, minimum=1)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for key in ("lr", "batch_size", "threshold"):  # every NeVe trial needs them
            if key not in self.defaults and key not in self.search_space:
                raise ValueError(f"{key!r} is neither in defaults nor in search_space")
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {self.amp!r}")
        check_resources(self.resources)

    @property
    def rung_signal(self) -> str:
        """The NeVe search's rung signal that goes with ``selection`` (what ``compare``,
        ``run_search`` and a worker creating a study's pruner use unless told otherwise):
        ``"auto"`` or ``"consensus"`` as the selection, ``"train_loss"`` for ``"objective"``
        or without a selection subset."""
        return (
            self.selection
            if self.selection_subset and self.selection != "objective"
            else "train_loss"
        )

    @property
    def lr_patience_epochs(self) -> int:
        """``lr_patience`` in epochs: ``"auto"`` scales it to the budget,
        ``max(2, max_epochs // 20)`` (3 for 60 epochs, 12 for the paper's 250); the same for NeVe
        and the baselines."""
        if self.lr_patience == "auto":
            return auto_patience(self.max_epochs)
        return int(self.lr_patience)

    def config(self, sampled: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Full hyperparameters: defaults overwritten by ``sampled``."""
        cfg = dict(self.defaults)
        cfg.update(sampled or {})
        return cfg

    def replace(self, **changes: Any) -> Study:
        return replace(self, **changes)

    def load_data(self, seed: int | None = None) -> DataBundle:
        opts = dict(self.data_options)
        if seed is not None:
            opts["seed"] = seed
        return get_dataset(self.data, **opts)


def _check_objective(objective: Any, max_epochs: int) -> None:
    """``tse_e<N>`` (1 <= N <= max_epochs: the mean of the last N epochs' training losses),
    ``tse_ema`` or ``pc_min``."""
    if isinstance(objective, str) and objective in ("tse_ema", "pc_min"):
        return
    n = objective[5:] if isinstance(objective, str) and objective.startswith("tse_e") else ""
    if not (n.isascii() and n.isdigit() and int(n) >= 1):
        raise ValueError(
            f"objective must be 'tse_e<N>' (N >= 1), 'tse_ema' or 'pc_min', got {objective!r}"
        )
    if len(n) > 9 or int(n) > max_epochs:  # no trial trains more epochs than max_epochs
        raise ValueError(
            f"objective {objective!r} averages the last {n} epochs; "
            f"N must be <= max_epochs ({max_epochs})"
        )


def load_study(study: str | os.PathLike | Study) -> Study:
    """A :class:`Study` from a file path, a bundled study name (``"digits"``) or itself."""
    if isinstance(study, Study):
        return study
    if not isinstance(study, (str, os.PathLike)):
        raise TypeError(
            f"study must be a Study, a study file path or a bundled study name, got {study!r}"
        )
    path = Path(study)
    if not path.exists() and not path.suffix and str(study) in bundled_studies():
        bundled = resources.files("neve_tune.studies").joinpath(f"{study}.py")
        with resources.as_file(bundled) as real:  # a real file, so the study's own __file__ works
            return _exec_study(str(study), real.read_text(), str(real))
    if not path.is_file():
        raise FileNotFoundError(
            f"study file {str(study)!r} not found; bundled studies: {bundled_studies()}"
        )
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"study file {str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason})"
        ) from None
    return _exec_study(path.stem, source, str(path))


def bundled_studies() -> list[str]:
    """Names of the study files shipped with the package (``studies/`` in the source tree)."""
    root = resources.files("neve_tune.studies")
    return sorted(
        p.name[:-3] for p in root.iterdir() if p.name.endswith(".py") and not p.name.startswith("_")
    )


def _exec_study(stem: str, source: str, origin: str) -> Study:
    """Run a study file's source and return its ``STUDY``; its own errors become one line."""
    module = types.ModuleType(f"neve_study_{stem}")
    module.__file__ = origin
    try:
        exec(compile(source, origin, "exec"), module.__dict__)
    except SyntaxError as e:
        raise ValueError(
            f"study file {origin!r} has a syntax error at line {e.lineno}: {e.msg}"
        ) from None
    except SystemExit as e:  # loaded, not run: exiting would end the caller in silence
        raise ValueError(
            f"study file {origin!r} called sys.exit({e.code!r}) while loading; "
            "it must define STUDY instead"
        ) from None
    except Exception as e:  # the file's own code failed: say which file, keep the cause
        raise ValueError(f"study file {origin!r} failed to load: {type(e).__name__}: {e}") from e
    obj = getattr(module, "STUDY", None)
    if not isinstance(obj, Study):
        raise ValueError(f"study file {origin!r} must define STUDY = neve_tune.Study(...)")
    return obj
