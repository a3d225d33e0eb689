"""What a validation-free search must never get wrong: prediction changes counted right,
stalled runs never complete, label noise exactly as asked and never on the test set."""

from __future__ import annotations

import math
import warnings

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from neve_tune import NeuralVelocity, NeVe, gaussian_probe, load_study, run_trial
from neve_tune.data import dataset_labels, get_dataset, stratified_subset, symmetric_label_noise
from neve_tune.optuna import NeVePruner, make_objective
from neve_tune.train import PredictionChanges, fit, train_epoch

try:
    from tests._controllers import CountingController
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from _controllers import CountingController


class _ParityFlipper(nn.Module):
    """Predicts class ``(x + epoch) % 2`` for even x and class 0 for odd x, where the
    epoch is counted from its own training-mode calls: half of the examples change their
    predicted class every epoch, the other half never do."""

    def __init__(self, n: int, batch_size: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.batches_per_epoch = math.ceil(n / batch_size)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        epoch = self.calls // self.batches_per_epoch if self.training else 0
        if self.training:
            self.calls += 1
        v = x[:, 0].long()
        cls = torch.where(v % 2 == 0, (v + epoch) % 2, torch.zeros_like(v))
        return nn.functional.one_hot(cls, 2).float() * 10 + self.w * 0


def test_prediction_changes_counted_by_hand():
    n, bs = 10, 3
    data = TensorDataset(
        torch.arange(n, dtype=torch.float32).view(n, 1), torch.zeros(n, dtype=torch.long)
    )
    model = _ParityFlipper(n, bs)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctl = CountingController(4)
    result = fit(model, opt, data, ctl, batch_size=bs, seed=0)
    # epoch 1 has nothing to compare with; then the 5 even examples flip every epoch
    assert ctl.seen == [None, 5, 5, 5]
    assert [m["prediction_changes"] for m in result.history] == [None, 5, 5, 5]


def test_train_epoch_writes_each_prediction_at_its_example_despite_shuffling():
    n = 12
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    data = TensorDataset(x, torch.zeros(n, dtype=torch.long))
    model = _ParityFlipper(n, 5)
    predictions = PredictionChanges(n)
    train_epoch(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        data,
        5,
        device=torch.device("cpu"),
        seed=3,
        predictions=predictions,
    )
    expected = torch.where(
        x[:, 0].long() % 2 == 0, x[:, 0].long() % 2, torch.zeros(n, dtype=torch.long)
    )
    assert torch.equal(predictions.predictions, expected)


def test_a_run_that_does_not_learn_ends_stalled_end_to_end():
    # an LR so small the loss stays within 10% of its first epoch; a threshold it meets at once
    study = load_study("digits").replace(max_epochs=6, min_epochs=3)
    result = run_trial(
        study, {"lr": 1e-7, "threshold": 1.0, "batch_size": 128}, evaluate_test=False
    )
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last > 0.9 * first
    assert (
        result.stopped_by == "stalled"
        and result.history[-1]["stalled"]
        and not result.history[-1]["neve_stop"]
    )
    assert not result.finished


def test_a_stalled_trial_is_pruned_by_optuna_never_completed():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study("digits").replace(max_epochs=4, min_epochs=3)
    search = optuna.create_study(pruner=NeVePruner(), sampler=optuna.samplers.TPESampler(seed=0))
    search.enqueue_trial({"lr": 1e-7, "threshold": 1e-2, "batch_size": 128}, skip_if_exists=False)
    with warnings.catch_warnings():  # the enqueued LR lies outside the study's range on purpose
        warnings.simplefilter("ignore", UserWarning)
        search.optimize(make_objective(study), n_trials=1)
    (trial,) = search.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["stopped_by"] == "stalled"


def test_label_noise_flips_exactly_the_fraction_and_never_the_test_set():
    clean = get_dataset("digits", seed=0)
    noisy = get_dataset("digits", seed=0, label_noise=0.2, noise_seed=7)
    y_clean, y_noisy = dataset_labels(clean.train), dataset_labels(noisy.train)
    changed = torch.nonzero(y_clean != y_noisy).flatten()
    assert len(changed) == round(0.2 * len(y_clean)) == 287
    assert torch.equal(changed, noisy.flipped)
    assert torch.equal(dataset_labels(noisy.test), dataset_labels(clean.test))
    assert torch.equal(noisy.test.tensors[0], clean.test.tensors[0])
    assert torch.equal(noisy.train.tensors[0], clean.train.tensors[0])
    # every class other than the true one is hit (symmetric), and the noise seed decides
    assert set(((y_noisy[changed] - y_clean[changed]) % 10).tolist()) == set(range(1, 10))
    again = get_dataset("digits", seed=0, label_noise=0.2, noise_seed=7)
    other = get_dataset("digits", seed=0, label_noise=0.2, noise_seed=8)
    assert torch.equal(dataset_labels(again.train), y_noisy)
    assert not torch.equal(dataset_labels(other.train), y_noisy)


def test_train_fraction_is_stratified_and_noise_applies_to_the_kept_part():
    clean = get_dataset("digits", seed=0)
    small = get_dataset("digits", seed=0, train_fraction=0.25, label_noise=0.4)
    counts = torch.bincount(dataset_labels(small.train), minlength=10)
    assert 350 <= len(small.train) <= 365
    assert len(small.flipped) == round(0.4 * len(small.train))
    kept = stratified_subset(clean.train, 0.25, seed=0)
    full_counts = torch.bincount(dataset_labels(kept), minlength=10)
    assert full_counts.min() >= 34 and full_counts.max() <= 38 and counts.sum() == len(small.train)
    assert len(small.test) == len(clean.test)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label_noise": 1.0}, "label_noise must be a finite number >= 0 and < 1"),
        ({"label_noise": -0.1}, "label_noise must be"),
        ({"train_fraction": 0.0}, "train_fraction must be a finite number > 0 and <= 1"),
        ({"noise_seed": 1.5}, "noise_seed must be an int"),
    ],
)
def test_bad_data_options_are_clear_errors(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        get_dataset("digits", **kwargs)


def test_noise_on_a_generic_dataset_keeps_inputs_and_relabels():
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 20

        def __getitem__(self, i):
            return torch.full((2,), float(i)), i % 4

    noisy, flipped = symmetric_label_noise(Plain(), 0.5, 4, seed=0)
    assert len(flipped) == 10
    xs, ys = zip(*(noisy[i] for i in range(20)))
    assert all(float(x[0]) == i for i, x in enumerate(xs))
    assert sum(int(y) != i % 4 for i, y in enumerate(ys)) == 10


def test_neve_step_rejects_a_missing_loss():
    model = nn.Sequential(nn.Linear(3, 2))
    neve = NeVe(
        torch.optim.SGD(model.parameters(), lr=0.1), NeuralVelocity(model, gaussian_probe((3,), 4))
    )
    with pytest.raises(TypeError, match="train_loss must be a number"):
        neve.step(None)


def test_objectives_by_hand():
    from neve_tune.trial import prediction_changes_minimum, training_speed_estimate, trial_objective

    history = [
        {"train_loss": loss, "prediction_changes": pc}
        for loss, pc in zip([2.0, 1.0, 0.6, 0.5, 0.4], [None, 30, 12, 9, 15])
    ]
    assert training_speed_estimate([2.0, 1.0, 0.6]) == 0.6
    assert training_speed_estimate([2.0, 1.0, 0.6], "tse_e2") == pytest.approx(0.8)
    # moving averages over 2 epochs: (30+12)/2, (12+9)/2, (9+15)/2 -> lowest 10.5
    assert prediction_changes_minimum(history, 2) == 10.5
    assert math.isnan(prediction_changes_minimum(history[:2], 2))
    study = load_study("digits").replace(objective="pc_min", pc_window=2)
    assert trial_objective(study, "neve", history, {"stopped_by": "velocity"}) == (10.5, 5)
    # after a restoring guard stop the run is judged at the restored epoch
    state = {"stopped_by": "prediction_changes", "best_weights": {"w": 1}, "pc_best_epoch": 3}
    assert trial_objective(study, "neve", history, state) == (21.0, 3)
    assert trial_objective(study.replace(objective="tse_e1"), "neve", history, state) == (0.6, 3)
    with pytest.raises(ValueError, match="objective must be"):
        study.replace(objective="pc_max")


def test_prediction_changes_in_your_own_loop_feed_the_guard():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] > 0).long()
    flip = torch.randperm(256)[:64]
    y[flip] = 1 - y[flip]  # 25% wrong labels: the guard should stop before memorising them
    model = nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    neve = NeVe(
        opt,
        NeuralVelocity(model, gaussian_probe((8,), 64, seed=0)),
        threshold=1e-9,
        max_epochs=300,
        num_classes=2,
        pc_patience=3,
        pc_window=3,
    )
    pc = PredictionChanges(len(x))
    neve.start()
    counts = []
    while not neve.should_stop:
        g = torch.Generator().manual_seed(neve.epoch)
        total = 0.0
        for idx in torch.randperm(len(x), generator=g).split(32):
            out = model(x[idx])
            loss = nn.functional.cross_entropy(out, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            pc.update(idx, out, y[idx])
            total += loss.item()
        counts.append(pc.epoch_end())
        neve.step(train_loss=total / 8, prediction_changes=counts[-1], unfit=pc.unfit)
    assert counts[0] is None and all(isinstance(c, int) for c in counts[1:])
    assert neve.stopped_by == "prediction_changes" and neve.epoch < 300
    # the same counts as fit's own bookkeeping would give: a restored tracker continues them
    state = pc.state_dict()
    again = PredictionChanges(len(x))
    again.load_state_dict(state)
    again.update(torch.arange(256), state["predictions"])
    assert again.epoch_end() == 0
    with pytest.raises(ValueError, match="one index per example"):
        again.update(torch.arange(3), torch.zeros(4, 2))
    with pytest.raises(
        IndexError, match=r"index must hold example indices in \[0, 256\), got -1\.\.1"
    ):
        again.update(torch.tensor([-1, 0, 1]), torch.zeros(3, 2))
