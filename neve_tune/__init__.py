"""neve_tune: Neural Velocity (NeVe) as the convergence signal of hyperparameter searches.

The core (velocity, probe, control, train) needs only torch; the Optuna and Ray Tune
backends live in :mod:`neve_tune.optuna` and :mod:`neve_tune.ray` and import their
library only there.
"""

from .control import NeVe, ValidationControl
from .probe import dataset_probe, gaussian_probe
from .study import Choice, IntUniform, LogUniform, Study, Uniform, load_study, run_trial
from .train import Cost, FitResult, evaluate, fit
from .velocity import NeuralVelocity, VelocityReport

__version__ = "0.1.0"

__all__ = [
    "Choice",
    "Cost",
    "FitResult",
    "IntUniform",
    "LogUniform",
    "NeVe",
    "NeuralVelocity",
    "Study",
    "Uniform",
    "ValidationControl",
    "VelocityReport",
    "dataset_probe",
    "evaluate",
    "fit",
    "gaussian_probe",
    "load_study",
    "run_trial",
]
