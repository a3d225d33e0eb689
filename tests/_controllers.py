"""Test doubles shared by the tests of fit's bookkeeping."""


class CountingController:
    """A controller that only counts epochs and records the prediction changes fit passes it
    (so fit's bookkeeping is what is tested); a run stopped by a smaller cap goes on."""

    probe_samples = 0

    def __init__(self, epochs: int) -> None:
        self.epoch, self.epochs, self.stopped_by, self.seen, self.unfit = 0, epochs, None, [], []

    should_stop = property(lambda self: self.stopped_by is not None)

    def start(self) -> None:
        pass

    def step(self, train_loss, val_loss=None, *, prediction_changes=None, unfit=None):
        self.epoch += 1
        self.seen.append(prediction_changes)
        self.unfit.append(unfit)
        if self.epoch >= self.epochs:
            self.stopped_by = "max_epochs"
        return {"epoch": self.epoch, "lr": 0.0, "diverged": False}

    def state_dict(self):
        return {"epoch": self.epoch, "stopped_by": self.stopped_by}

    def load_state_dict(self, s):  # a run stopped by a smaller cap goes on
        self.epoch = s["epoch"]
        self.stopped_by = None if self.epoch < self.epochs else s["stopped_by"]
