"""neve_tune: Neural Velocity (NeVe) as the convergence signal of hyperparameter searches.

The core (velocity, probe, control, train) needs only torch; the Optuna and Ray Tune
backends live in :mod:`neve_tune.optuna` and :mod:`neve_tune.ray` and import their
library only there.
"""

from ._controller import Controller
from .baselines import LRReplay, ValidationControl
from .control import NeVe
from .guard import GuardVeto, MemorisationGuard
from .prediction_changes import PredictionChanges, SubsetPredictionChanges
from .probe import dataset_probe, gaussian_probe
from .records import Cost, TrialResult
from .selection_policy import SelectionDecision, SelectionPolicy, TrialOutcome
from .space import Choice, IntUniform, LogUniform, Uniform
from .study import Study, load_study
from .train import FitResult, evaluate, fit
from .trial import run_trial
from .velocity import NeuralVelocity, VelocityReport

__version__ = "0.1.0"

__all__ = [
    "Choice",
    "Controller",
    "Cost",
    "FitResult",
    "GuardVeto",
    "IntUniform",
    "LRReplay",
    "LogUniform",
    "MemorisationGuard",
    "NeVe",
    "NeuralVelocity",
    "PredictionChanges",
    "SelectionDecision",
    "SelectionPolicy",
    "Study",
    "SubsetPredictionChanges",
    "TrialOutcome",
    "TrialResult",
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
