"""Study files the worker tests write into a temporary folder."""

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
    search_space={"lr": LogUniform(0.01, 0.2), "threshold": LogUniform(1e-4, 1e-2), "batch_size": Choice([64, 128])},
    max_epochs=MAX_EPOCHS,
)
"""


def slow_probe_study(max_epochs: int) -> str:
    """The source of a study file whose probe forward sleeps 0.2 s, capped at ``max_epochs``."""
    return _SLOW.replace("MAX_EPOCHS", str(int(max_epochs)))
