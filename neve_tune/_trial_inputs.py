"""What :func:`~neve_tune.trial.run_trial` is given, checked before any work: the device (CUDA
when available, else CPU, or the one named) and the trial's configuration (the study's
defaults overwritten by the sampled values, every value checked)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .space import check_hyperparameter

if TYPE_CHECKING:
    from .study import Study

__all__ = ["check_device_name", "counted_by", "resolve_device", "trial_config"]


def check_device_name(device: Any) -> torch.device | None:
    """The device ``device`` names (None for None and ``"auto"``), or a ``ValueError`` naming
    ``device`` when torch does not know the name. Whether a machine has it is not judged here:
    a Ray trial's node judges that, :func:`resolve_device` this machine."""
    if device is None or device == "auto":
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        ) from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; otherwise the device named, which
    must be one torch knows and, for CUDA, present here (else a ``ValueError`` naming
    ``device``)."""
    dev = check_device_name(device)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r}: CUDA is not available on this machine (use 'auto' or 'cpu')"
        )
    return dev


def trial_config(study: Study, config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """The trial's full hyperparameters (study defaults overwritten by ``config``), with
    those every trial of ``method`` needs."""
    # a Study (only a type here: study.py names this module)
    if not callable(getattr(study, "config", None)) or not hasattr(study, "search_space"):
        raise TypeError(f"study must be a neve_tune.Study (load_study(...)), got {study!r}")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict of hyperparameters, got {config!r}")
    cfg = study.config(config)
    for key in ("lr", "batch_size") + (("threshold",) if method == "neve" else ()):
        if key not in cfg:
            raise ValueError(
                f"config has no {key!r} (and study {study.name!r} has no default for it)"
            )
    for key in config or {}:  # the checks a study's defaults and the command-line flags pass
        check_hyperparameter(key, cfg[key], f"config[{key!r}]", threshold_mode=study.threshold_mode)
    return cfg


def counted_by(study: Study, method: str) -> str:
    """How a ``method`` trial counts its prediction changes: NeVe's guard reads them as the
    study says; the baselines keep the free in-pass count."""
    return study.prediction_changes if method == "neve" else "in_pass"
