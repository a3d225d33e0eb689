"""The default velocity-stop rule: relative to the run's own peak velocity, 1e-2.

Chosen from the model-family table (docs/measurements.md, "One stop rule for every model family";
``benchmarks/model_families.py``). These tests pin what that choice rests on: the
relative rule's reference is the running peak (not epoch 1), it ignores the velocity's
scale where the absolute rule kills a slow-starting run as stalled, the studies carry it,
and the benchmark's replay of a recorded run decides exactly as ``NeVe.step`` does.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neve_tune import NeuralVelocity, NeVe, Study, gaussian_probe, load_study
from neve_tune.control import resolve_threshold
from neve_tune.space import LogUniform, default_space
from neve_tune.trial import make_controller
from neve_tune.velocity import VelocityReport

ROOT = Path(__file__).resolve().parent.parent


class _Scripted(NeuralVelocity):
    """A NeuralVelocity whose measurements follow a given series (epoch t gives series[t-1])."""

    def __init__(self, series: list[float]) -> None:
        super().__init__(nn.Sequential(nn.Linear(4, 2)), gaussian_probe((4,), 4))
        self.series = list(series)

    def measure(self) -> VelocityReport:
        if self.epoch < 0:
            self.epoch = 0
            return VelocityReport(0, None, None)
        self.epoch += 1
        return VelocityReport(
            self.epoch, self.series[self.epoch - 1], 0.0 if self.epoch > 1 else None
        )


def _run(series: list[float], losses: list[float], **options) -> tuple[str | None, int]:
    model = nn.Linear(4, 2)
    neve = NeVe(
        torch.optim.SGD(model.parameters(), lr=0.1),
        _Scripted(series),
        max_epochs=len(series),
        **options,
    )
    neve.start()
    for loss in losses:
        neve.step(train_loss=loss)
        if neve.should_stop:
            break
    return neve.stopped_by, neve.epoch


def _losses(n: int) -> list[float]:
    return [2.0 / (1 + i) for i in range(n)]  # a run that learns (well under chance for 4 classes)


def test_relative_reference_is_the_running_peak_not_the_first_epoch():
    # epoch 1 is slow (0.02), the peak comes at epoch 2 (0.5): 0.004 is under 1/100 of epoch 1's
    # velocity at epoch 3 but not under 1/100 of the peak until epoch 5 (0.004 / 0.5 = 0.008)
    series = [0.02, 0.5, 0.1, 0.03, 0.004, 0.001]
    assert _run(series, _losses(6), threshold=1e-2, threshold_mode="relative", num_classes=4) == (
        "velocity",
        5,
    )


def test_relative_rule_stops_a_slow_scale_run_that_the_absolute_default_kills_as_stalled():
    # the wine MLP at LR 0.005 in the model-family table: V starts at 1e-4, far under an
    # absolute 1e-3
    series = [1e-4 * 0.8**i for i in range(60)]
    losses = [
        1.1 * 0.9**i for i in range(60)
    ]  # epoch 1 is at chance (log 3 = 1.10), then it learns
    assert _run(series, losses, threshold=1e-3, num_classes=3) == ("stalled", 1)
    stop = _run(series, losses, threshold=1e-2, threshold_mode="relative", num_classes=3)
    assert stop[0] == "velocity" and 10 < stop[1] < 60  # 0.8**21 < 0.01 at epoch 22
    assert stop == ("velocity", 22)


def test_relative_rule_never_stops_a_run_on_its_first_epoch():
    # V / peak is 1 on the first epoch whatever the scale, so any threshold under 1 waits
    assert _run([1e-9, 1e-9], _losses(2), threshold=0.5, threshold_mode="relative") == (
        "max_epochs",
        2,
    )


def test_no_threshold_means_the_default_rule_and_a_given_one_keeps_its_meaning():
    assert resolve_threshold() == (1e-2, "relative")
    assert resolve_threshold(threshold_mode="absolute") == (1e-3, "absolute")
    assert resolve_threshold(5e-3) == (
        5e-3,
        "absolute",
    )  # a number alone is a velocity, as it always was
    numpy_scalar, mode = resolve_threshold(np.float32(0.05), "relative")
    assert (
        type(numpy_scalar) is float and numpy_scalar == pytest.approx(0.05) and mode == "relative"
    )
    with pytest.raises(ValueError, match="threshold_mode must be one of"):
        resolve_threshold(1e-3, "ratio")
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        resolve_threshold(0.0, "relative")
    model = nn.Sequential(nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    default = NeVe(opt, NeuralVelocity(model, gaussian_probe((4,), 4)))
    assert (default.threshold, default.threshold_mode) == (1e-2, "relative")
    given = NeVe(opt, NeuralVelocity(model, gaussian_probe((4,), 4)), threshold=1e-3)
    assert (given.threshold, given.threshold_mode) == (1e-3, "absolute")
    # the default rule decides: the scripted slow-scale run stops on velocity, not at epoch 1
    # as stalled
    series, losses = [1e-4 * 0.8**i for i in range(60)], [1.1 * 0.9**i for i in range(60)]
    assert _run(series, losses, num_classes=3) == ("velocity", 22)


def test_studies_default_to_the_relative_rule():
    study = Study(name="x")
    assert study.threshold_mode == "relative" and study.defaults["threshold"] == 1e-2
    assert default_space()["threshold"] == LogUniform(1e-3, 1e-1)
    digits = load_study("digits")
    assert digits.threshold_mode == "relative" and digits.search_space["threshold"] == LogUniform(
        1e-3, 1e-1
    )
    # the GPU studies keep the paper's absolute threshold (the relative rule is unmeasured there)
    for name in ("cifar10_resnet32", "cifar100_resnet32", "imagenet_folder_timm"):
        gpu = load_study(name)
        assert gpu.threshold_mode == "absolute" and gpu.search_space["threshold"] == LogUniform(
            1e-4, 1e-2
        )


def test_a_trial_gets_the_studys_rule():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    neve = make_controller(
        load_study("digits"),
        "neve",
        model,
        opt,
        {"threshold": 0.02},
        train_set=None,
        input_shape=(1, 8, 8),
        seed=0,
        num_classes=10,
    )
    assert (neve.threshold_mode, neve.threshold) == ("relative", 0.02)


def _benchmark():
    path = ROOT / "benchmarks" / "model_families.py"
    spec = importlib.util.spec_from_file_location("model_families", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_families"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "mode, threshold", [("absolute", 1e-3), ("relative", 1e-2), ("relative", 0.3)]
)
@pytest.mark.parametrize("case", ["learns", "stalls", "cap"])
def test_the_benchmarks_replay_decides_as_neve_does(mode, threshold, case):
    series = {
        "learns": [0.5, 0.6, 0.2, 0.05, 0.01, 0.004, 0.002, 0.0005, 0.0002, 0.0001],
        "stalls": [0.004, 0.002, 0.001, 0.0008, 0.0005, 0.0004, 0.0003, 0.0002, 0.0001, 0.00005],
        "cap": [0.5] * 10,
    }[case]
    losses = _losses(10) if case != "stalls" else [1.39] * 10  # 1.39 = chance for 4 classes
    live = _run(series, losses, threshold=threshold, threshold_mode=mode, num_classes=4)
    rows = [
        {"epoch": i + 1, "velocity": v, "train_loss": loss}
        for i, (v, loss) in enumerate(zip(series, losses))
    ]
    epoch, stopped_by = _benchmark().replay(rows, mode, threshold, num_classes=4, max_epochs=10)
    assert (stopped_by, epoch) == live
