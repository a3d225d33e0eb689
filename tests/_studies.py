"""Study files the worker tests write into a temporary folder, the signal a test sends its
worker mid-trial, and the check of a resumed trial."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch

from neve_tune import load_study, run_trial
from neve_tune.optuna import trial_history

# The model sleeps 0.2 s in every eval-mode forward (the once-per-epoch velocity probe), so a
# test can signal or kill its worker in the middle of an epoch. Training is unchanged.
_SLOW = """
import time

from torch import nn

from neve_tune import Choice, LogUniform, Study
from neve_tune.models import MODELS, SmallCNN


class SlowProbeCNN(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.net = SmallCNN(num_classes, input_shape)

    def forward(self, x):
        if not self.training:
            time.sleep(0.2)
        return self.net(x)


MODELS["slow_probe_cnn"] = SlowProbeCNN

STUDY = Study(
    name="slow",
    data="digits",
    model="slow_probe_cnn",
    search_space={
        "lr": LogUniform(0.01, 0.2),
        "threshold": LogUniform(1e-4, 1e-2),
        "batch_size": Choice([64, 128]),
    },
    max_epochs=MAX_EPOCHS,
)
"""


def slow_probe_study(max_epochs: int) -> str:
    """The source of a study file whose probe forward sleeps 0.2 s, capped at ``max_epochs``."""
    return _SLOW.replace("MAX_EPOCHS", str(int(max_epochs)))


def signal_when_reported(
    proc: subprocess.Popen,
    reported: Callable[[], int],
    epochs: int,
    signum: int,
    pause: float = 0.0,
    timeout: float = 300,
) -> int | None:
    """Send ``signum`` to the worker ``proc`` once its trial has reported ``epochs`` epochs
    (``reported()``), ``pause`` seconds later (into the next epoch); return the epochs
    reported then, or None when the worker ended (or ``timeout`` passed) first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if reported() >= epochs:
            time.sleep(pause)
            proc.send_signal(signum)
            return reported()
        time.sleep(0.05)
    return None


def assert_resumed_like_uninterrupted(retried: Any, study_file: Any, params: dict) -> Any:
    """A resumed trial reported the same training-loss series, and stored the same velocity
    series, as one uninterrupted run of ``params`` (one torch thread, as the workers train);
    returns that run's result."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = run_trial(load_study(study_file), params, evaluate_test=False)
    finally:
        torch.set_num_threads(before)
    assert retried.intermediate_values == {m["epoch"]: m["train_loss"] for m in reference.history}
    assert [m["velocity"] for m in trial_history(retried)] == [
        m["velocity"] for m in reference.history
    ]
    return reference
