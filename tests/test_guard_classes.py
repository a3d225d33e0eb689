"""The guard's class rule: a minimum where some class is fitted no better than chance is not
settled (docs/design.md, "The memorisation guard")."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from neve_tune import (
    MemorisationGuard,
    NeuralVelocity,
    NeVe,
    PredictionChanges,
    SubsetPredictionChanges,
    gaussian_probe,
)
from neve_tune.prediction_changes import class_fit
from neve_tune.train import fit

# a settled minimum at epoch 5 (5 changes, 100 labels refused), the refused labels fitted
# after it: the guard stops at epoch 7 (tests/test_control.py)
CHANGES = [None, 40, 20, 10, 5, 8, 12, 20, 30, 30, 30, 30]
UNFIT = [300, 200, 150, 110, 100, 98, 85] + [70] * 5
LEARNED = [0.9, 0.8, 0.95, 0.85]  # four classes, each fitted far above chance (1/4)
PLATEAU = [0.95, 0.06, 0.93, 0.2]  # two classes fitted below chance: still learning


def _neve(**kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    neve = NeVe(opt, NeuralVelocity(model, gaussian_probe((4,), 16)), **kw)
    return model, neve


def _run(fits):
    """The series above through NeVe.step, ``fits[i]`` the class fit of epoch i + 1."""
    model, neve = _neve(threshold=1e-9, max_epochs=50, pc_patience=2, pc_window=1)
    neve.start()
    for i, (pc, u, f) in enumerate(zip(CHANGES, UNFIT, fits)):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
        neve.step(train_loss=1.0 / (i + 1), prediction_changes=pc, unfit=u, class_fit=f)
        if neve.should_stop:
            break
    return neve


def test_every_class_above_chance_keeps_the_stop():
    neve = _run([LEARNED] * 12)
    assert (neve.stopped_by, neve.epoch, neve.pc_best_epoch) == ("prediction_changes", 7, 5)
    assert neve.guard.best_class_fit == LEARNED and neve.guard.classes_learned


def test_a_class_below_chance_at_the_minimum_means_still_learning():
    neve = _run([PLATEAU] * 12)
    assert neve.stopped_by is None and neve.pc_best_epoch == 5
    assert not neve.guard.classes_learned and not neve.guard.settled


def test_only_the_minimums_class_fit_counts():
    # below chance at epoch 6 (after the minimum): the minimum's classes were learned
    fits = [LEARNED] * 5 + [PLATEAU] + [LEARNED] * 6
    assert _run(fits).epoch == 7
    # below chance at the minimum only: its stop is refused, though every class is learned later
    fits = [LEARNED] * 4 + [PLATEAU] + [LEARNED] * 7
    assert _run(fits).stopped_by is None


def test_exactly_chance_is_not_learned():
    guard = MemorisationGuard(patience=1, window=1)
    guard.update(1, None, 100, class_fit=[0.5, 0.5])
    guard.update(2, 5.0, 100, class_fit=[0.9, 0.5])  # 2 classes: chance is 1/2
    assert not guard.classes_learned
    guard.update(3, 4.0, 100, class_fit=[0.9, 0.51])
    assert guard.classes_learned and guard.settled


def test_without_class_fit_the_rule_is_off():
    assert _run([None] * 12).epoch == 7


def test_the_class_fit_at_the_minimum_survives_a_resume():
    guard = MemorisationGuard(patience=2, window=1)
    guard.update(1, None, 100, class_fit=PLATEAU)
    guard.update(2, 5.0, 100, class_fit=PLATEAU)
    other = MemorisationGuard(patience=2, window=1)
    other.load_state_dict(guard.state_dict())
    assert other.best_class_fit == PLATEAU and not other.classes_learned
    old = {k: v for k, v in guard.state_dict().items() if k != "best_class_fit"}
    other.load_state_dict(old)  # a checkpoint from before the rule: none known
    assert other.best_class_fit is None and other.classes_learned


@pytest.mark.parametrize(
    "value",
    [np.array([0.9, 0.2]), torch.tensor([0.9, 0.2]), (0.9, np.float32(0.2)), [1, 0]],
)
def test_class_fit_as_the_users_sequences(value):
    _, neve = _neve(threshold=1e-9, max_epochs=5, pc_patience=2, pc_window=1)
    neve.start()
    neve.step(train_loss=1.0, prediction_changes=None, unfit=10)
    neve.step(train_loss=0.5, prediction_changes=3, unfit=10, class_fit=value)
    assert neve.guard.best_epoch == 2  # the minimum, where the guard keeps the class fit
    assert neve.guard.best_class_fit == pytest.approx([float(v) for v in value])


@pytest.mark.parametrize(
    "value, error, match",
    [
        (0.5, TypeError, "class_fit must be a sequence"),
        ("0.5", TypeError, "class_fit must be a sequence"),
        ([], ValueError, "class_fit is empty"),
        ([0.5, 1.5], ValueError, r"class_fit\[1\] must be a finite number >= 0 and <= 1"),
        ([float("nan")], ValueError, r"class_fit\[0\]"),
        ([[0.5]], TypeError, r"class_fit\[0\]"),
        ({0: 0.9, 1: 0.1}, TypeError, "class_fit must be a sequence"),
        ({0.9, 0.1}, TypeError, "class_fit must be a sequence"),
        (torch.tensor(0.5), TypeError, "class_fit must be a sequence"),
    ],
)
def test_bad_class_fit_is_refused_by_name_before_anything_changes(value, error, match):
    _, neve = _neve(threshold=1e-9, max_epochs=5, pc_patience=2)
    neve.start()
    with pytest.raises(error, match=match):
        neve.step(train_loss=1.0, prediction_changes=None, unfit=10, class_fit=value)
    assert neve.epoch == 0


def test_class_fit_per_class_present_in_class_order():
    assert class_fit(torch.tensor([2, 2, 0, 1]), torch.tensor([2, 0, 0, 2])) == [0.5, 0.5]
    pc = PredictionChanges(4)
    pc.update(torch.arange(4), torch.tensor([0, 1, 1, 1]))
    pc.epoch_end()
    assert pc.class_fit is None  # no labels given
    pc.update(torch.arange(4), torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]))
    pc.epoch_end()
    assert pc.class_fit == [0.5, 1.0] and pc.unfit == 1


def test_the_subset_counts_its_class_fit():
    x = torch.eye(3).repeat(4, 1)
    data = TensorDataset(x, torch.tensor([0, 1, 2] * 4))
    pc = SubsetPredictionChanges.from_dataset(data, num_examples=12)
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3)[[0, 1, 0]])  # class 2 predicted as 0
    pc.measure(model)
    assert pc.class_fit == [1.0, 1.0, 0.0] and pc.unfit == 4


class _Recorder:
    """A user's controller: records the keywords ``fit`` gives its ``step``."""

    def __init__(self, takes_class_fit: bool) -> None:
        self.epoch, self.stopped_by, self.probe_samples, self.given = 0, None, 0, []
        self.takes = takes_class_fit

    @property
    def should_stop(self) -> bool:
        return self.epoch >= 2

    def start(self) -> None:
        pass

    def step(self, train_loss, val_loss=None, **kw):
        if "class_fit" in kw and not self.takes:
            raise AssertionError("class_fit given to a step that does not take it")
        self.epoch += 1
        self.given.append(kw)
        return {"epoch": self.epoch, "lr": 0.1, "diverged": False, "stopped_by": None}


def test_fit_gives_class_fit_only_to_a_controller_that_takes_it():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))

    class Takes(_Recorder):
        def step(
            self, train_loss, val_loss=None, *, prediction_changes=None, unfit=None, class_fit=None
        ):
            return super().step(
                train_loss,
                val_loss,
                prediction_changes=prediction_changes,
                unfit=unfit,
                class_fit=class_fit,
            )

    class Plain(_Recorder):
        def step(self, train_loss, val_loss=None, *, prediction_changes=None, unfit=None):
            return super().step(
                train_loss, val_loss, prediction_changes=prediction_changes, unfit=unfit
            )

    for cls, takes in ((Takes, True), (Plain, False)):
        model = nn.Linear(4, 3)
        ctrl = cls(takes)
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), data, ctrl, batch_size=8)
        fits = [kw.get("class_fit") for kw in ctrl.given]
        if takes:
            assert len(fits[0]) == 3 and all(0.0 <= f <= 1.0 for f in fits[0])
        else:
            assert fits == [None, None]


def test_the_guard_checks_class_fit_given_to_it_directly():
    guard = MemorisationGuard(patience=1, window=1)
    with pytest.raises(ValueError, match=r"class_fit\[0\] must be a finite number"):
        guard.update(1, 5.0, 10, class_fit=[float("nan"), 0.9])
    guard.update(1, None, 10, class_fit=[0.9, 0.9])
    guard.update(2, 5.0, 10, class_fit=[0.9, 0.9])  # the minimum
    before = guard.state_dict()
    with pytest.raises(TypeError, match="class_fit must be a sequence"):
        guard.update(3, 6.0, 10, class_fit=0.5)  # not a minimum: refused all the same
    assert guard.state_dict() == before  # and nothing changed


def test_a_class_too_small_to_judge_is_left_out():
    # 100 classes present, 10 examples of class 0 fitted on none: fewer examples than classes,
    # so no evidence either way; a class with enough examples is judged
    labels = torch.cat([torch.zeros(10, dtype=torch.long), torch.arange(1, 100).repeat(2)])
    labels = torch.cat([labels, torch.arange(1, 100).repeat(98)])
    fits = class_fit(labels.clamp(min=1), labels)  # class 0 always predicted as 1
    assert fits[0] is None and fits[1] == pytest.approx(1.0) and len(fits) == 100
    guard = MemorisationGuard(patience=1, window=1)
    guard.update(1, 5.0, 10, class_fit=fits)
    assert guard.classes_learned
    guard.update(2, 4.0, 10, class_fit=[0.0] + fits[1:])  # class 0 judged: fitted on none
    assert not guard.classes_learned


def test_one_class_leaves_the_check_off():
    guard = MemorisationGuard(patience=1, window=1)
    guard.update(1, 5.0, 10, class_fit=[0.3])
    assert guard.classes_learned


def test_unlabelled_examples_are_left_out_of_the_subsets_class_fit():
    labels = torch.tensor([0, 1, 2, -1] * 3)
    pc = SubsetPredictionChanges(torch.eye(3)[labels.clamp(min=0)], labels=labels)
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    pc.measure(model)
    assert pc.class_fit == [1.0, 1.0, 1.0]


def test_class_fit_refuses_what_is_not_class_ids():
    with pytest.raises(ValueError, match="predictions must be a 1-d tensor of class ids"):
        class_fit(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="one predicted class per label"):
        class_fit(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
