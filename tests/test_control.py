import math

import pytest
import torch
from torch import nn

from neve_tune import MemorisationGuard, NeuralVelocity, NeVe, ValidationControl, gaussian_probe


def _setup(lr=0.1, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    nv = NeuralVelocity(model, gaussian_probe((4,), 16))
    return model, opt, NeVe(opt, nv, **kw)


def _nudge(model, scale):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale)


def test_stops_when_velocity_under_threshold_after_min_epochs():
    model, opt, neve = _setup(threshold=1e-2, min_epochs=3, max_epochs=50)
    neve.start()
    out = []
    for i in range(10):
        m = neve.step(train_loss=0.5 / (i + 1))  # model unchanged: velocity decays towards 0
        out.append(m)
        if neve.should_stop:
            break
    # 1 - rho = 0 each epoch, so v = 0 from epoch 1; the rule waits for min_epochs
    assert [m["neve_stop"] for m in out] == [False, False, True]
    assert neve.stopped_by == "velocity" and out[-1]["epoch"] == 3
    with pytest.raises(RuntimeError, match="already stopped"):
        neve.step(0.5)


def test_max_epochs_cap_and_result_names():
    model, opt, neve = _setup(threshold=1e-9, max_epochs=3)
    neve.start()
    for i in range(3):
        _nudge(model, 0.1 * (i + 1))
        m = neve.step(train_loss=1.0 / (i + 1))
    assert set(m) == {
        "epoch",
        "velocity",
        "velocity_change",
        "train_loss",
        "prediction_changes",
        "unfit",
        "lr",
        "neve_stop",
        "stalled",
        "diverged",
        "stopped_by",
        "kept_epoch",
        "kept_train_loss",
    }
    assert (m["stopped_by"], m["kept_epoch"], m["kept_train_loss"]) == ("max_epochs", 3, 1.0 / 3)
    assert neve.stopped_by == "max_epochs" and m["velocity"] > 1e-9


@pytest.mark.parametrize(
    "losses, num_classes",
    [
        ([2.0, 1.95, 1.9, 1.85], None),  # within 10% of the first epoch's loss
        ([2.30, 2.0, 1.5, 1.0], 2),  # dropped, but still above 0.9 * log(2) = 0.62 (chance)
        ([0.69, 0.69, 0.69, 0.69], 2),  # a dead network at chance
    ],
)
def test_a_velocity_stop_without_learning_ends_as_stalled_never_converged(losses, num_classes):
    model, opt, neve = _setup(
        threshold=1e-2, min_epochs=len(losses), max_epochs=50, num_classes=num_classes
    )
    neve.start()
    for loss in losses:
        m = neve.step(train_loss=loss)  # model unchanged: the velocity stop fires at min_epochs
    assert neve.stopped_by == "stalled" and m["stalled"] and not m["neve_stop"]
    assert not neve.learned(losses[-1])


def test_a_run_that_learned_stops_as_converged():
    model, opt, neve = _setup(threshold=1e-2, min_epochs=3, max_epochs=50, num_classes=2)
    neve.start()
    for loss in (0.69, 0.5, 0.3):  # under 0.9 * first epoch's loss and under 0.9 * chance
        m = neve.step(train_loss=loss)
    assert neve.stopped_by == "velocity" and m["neve_stop"] and not m["stalled"]


def test_max_epochs_without_learning_is_stalled():
    model, opt, neve = _setup(threshold=1e-9, max_epochs=3)
    neve.start()
    for i in range(3):
        _nudge(model, 0.1 * (i + 1))
        m = neve.step(train_loss=1.0)
    assert neve.stopped_by == "stalled" and m["stalled"]


def test_relative_threshold_is_scale_free():
    # the same velocity series, scaled: a relative stop fires on the same epoch, an absolute one
    # does not
    fired = {}
    for scale in (1.0, 0.01):
        model, opt, neve = _setup(threshold=0.5, max_epochs=20, threshold_mode="relative")
        neve.start()
        for i in range(20):
            _nudge(model, scale * 0.5**i)
            neve.step(train_loss=1.0 / (i + 1))
            if neve.should_stop:
                break
        fired[scale] = (neve.stopped_by, neve.epoch)
    assert fired[1.0] == fired[0.01] and fired[1.0][0] == "velocity"


def _guarded(changes, unfit, **kw):
    """Run NeVe with the guard over per-epoch (prediction_changes, unfit); the last metrics."""
    model, opt, neve = _setup(threshold=1e-9, max_epochs=50, pc_patience=2, pc_window=1, **kw)
    neve.start()
    for i, (pc, u) in enumerate(zip(changes, unfit)):
        _nudge(model, 0.1)
        m = neve.step(train_loss=1.0 / (i + 1), prediction_changes=pc, unfit=u)
        if neve.should_stop:
            break
    return neve, m


def test_prediction_changes_guard_stops_once_the_refused_labels_are_fitted():
    # falls to a settled minimum (5 changes, 100 labels refused) at epoch 5, then rises while
    # the refused labels get fitted (100 -> 85): memorisation
    neve, m = _guarded(
        [None, 40, 20, 10, 5, 8, 12, 20, 30], [300, 200, 150, 110, 100, 98, 85, 70, 60]
    )
    # two epochs after the minimum (epoch 7) 85 <= 0.9 * 100: stop there
    assert neve.stopped_by == "prediction_changes" and neve.epoch == 7 and m["neve_stop"]
    assert neve.pc_best_epoch == 5


def test_prediction_changes_guard_waits_for_evidence_of_memorisation():
    # the same turn in the changes, but the refused labels stay refused: the network churns,
    # it does not memorise; the guard waits and stops once they are being fitted (epoch 9)
    neve, m = _guarded(
        [None, 40, 20, 10, 5, 8, 12, 20, 30, 30], [300, 200, 150, 110, 100, 99, 97, 95, 88, 80]
    )
    assert neve.stopped_by == "prediction_changes" and neve.epoch == 9 and neve.pc_best_epoch == 5


def test_prediction_changes_guard_ignores_churn_of_a_learning_run():
    # a slow learner: the changes dip and rise, but more predictions change than there are
    # labels left to fit, so no minimum is settled and the guard never fires while it learns
    neve, m = _guarded(
        [None, 900, 800, 700, 750, 800, 720, 650, 500],
        [1000, 800, 700, 600, 560, 520, 480, 440, 400],
    )
    assert neve.stopped_by is None and neve.pc_best_epoch == 9 and not neve.guard.settled


def test_prediction_changes_guard_leaves_a_run_that_fits_every_label():
    # clean labels, all fitted: nothing to memorise, whatever the changes do
    neve, m = _guarded([None, 40, 10, 2, 0, 0, 1, 3, 0], [100, 30, 5, 1, 0, 0, 1, 2, 0])
    assert neve.stopped_by is None


def _guarded_losses(changes, unfit, losses, num_classes=None):
    """As _guarded, with the epochs' training losses given (the guard's clock)."""
    model, opt, neve = _setup(
        threshold=1e-9, max_epochs=50, pc_patience=2, pc_window=1, num_classes=num_classes
    )
    neve.start()
    for pc, u, loss in zip(changes, unfit, losses):
        _nudge(model, 0.1)
        neve.step(train_loss=loss, prediction_changes=pc, unfit=u)
        if neve.should_stop:
            break
    return neve


# the memorising series of the test above: a settled minimum at epoch 5, labels fitted after
TURN = (
    [None, 40, 20, 10, 5, 8, 12, 20, 30, 30, 30, 30],
    [300, 200, 150, 110, 100, 98, 85] + [70] * 5,
)


def test_prediction_changes_guard_runs_on_the_runs_clock():
    # a slow start: the loss first falls under 0.9 x the first at epoch 4, so the guard
    # waits max(pc_patience 2, onset 4) = 4 epochs after the minimum: epoch 9, not 7
    slow = [2.3, 2.3, 2.25, 2.0, 1.8, 1.7, 1.6, 1.5, 1.45, 1.4, 1.35, 1.3]
    neve = _guarded_losses(*TURN, slow)
    assert (neve.stopped_by, neve.epoch, neve.pc_best_epoch, neve.guard.onset) == (
        "prediction_changes",
        9,
        5,
        4,
    )
    fast = [2.3, 1.5, 1.2] + [1.0] * 9  # learning began at epoch 2: patience alone
    assert _guarded_losses(*TURN, fast).epoch == 7


def test_prediction_changes_guard_never_stops_a_run_that_has_not_begun_to_learn():
    # the same evidence of memorisation, but the loss never falls under 0.9 x the first:
    # the guard leaves the decision to the stall rule
    neve = _guarded_losses(*TURN, [2.3] * 12)
    assert neve.stopped_by != "prediction_changes" and neve.guard.onset == 0


def test_a_guard_stop_that_would_restore_weights_that_never_learned_is_stalled():
    # a learning rate too high: the first epoch blows the loss up to 9.0, the network
    # collapses to a few classes (few changes) and the minimum at epoch 5 sits at loss 2.25,
    # above 0.9 x log(10) = 2.07 (chance); at the stop (epoch 7) the loss is 1.7
    losses = [9.0, 4.0, 2.5, 2.3, 2.25, 1.9, 1.7, 1.5, 1.4, 1.3, 1.2, 1.1]
    neve = _guarded_losses(*TURN, losses, num_classes=10)
    assert (neve.stopped_by, neve.epoch, neve.pc_best_epoch) == ("stalled", 7, 5)
    assert neve.learned(losses[6]) and not neve.learned(losses[4])
    # judged on the first epoch's loss alone (no class count) epoch 5 learned: a guard stop
    assert _guarded_losses(*TURN, losses).stopped_by == "prediction_changes"
    # with the minimum's loss under chance the same series is a guard stop
    learned = losses[:4] + [2.0] + losses[5:]
    assert _guarded_losses(*TURN, learned, num_classes=10).stopped_by == "prediction_changes"


def test_the_guard_without_losses_runs_on_patience_alone():
    guard = MemorisationGuard(patience=2, window=1)
    fired = [guard.update(e, pc, u) for e, (pc, u) in enumerate(zip(*TURN), start=1)]
    assert fired.index(True) + 1 == 7 and not guard.clocked and guard.onset == 0


def test_the_guards_clock_survives_a_resume():
    guard = MemorisationGuard(patience=2, window=1)
    for e, loss in enumerate([2.3, 2.3, 2.0, 1.8], start=1):
        guard.update(e, None if e == 1 else 10.0, 50, train_loss=loss)
    other = MemorisationGuard(patience=2, window=1)
    other.load_state_dict(guard.state_dict())
    assert (other.onset, other.first_loss, other.clocked) == (3, 2.3, True)
    assert other.state_dict() == guard.state_dict()


def test_prediction_changes_guard_needs_the_unfit_count():
    model, opt, neve = _setup(threshold=1e-9, max_epochs=50, pc_patience=2)
    neve.start()
    neve.step(train_loss=1.0)
    with pytest.raises(
        ValueError, match=r"memorisation guard \(pc_patience set\) needs step\(\.\.\., unfit=m\)"
    ):
        neve.step(train_loss=0.5, prediction_changes=12)
    assert neve.epoch == 1  # refused before anything changed


def test_lr_decays_when_prediction_changes_stop_settling():
    model, opt, neve = _setup(
        threshold=1e-9, max_epochs=50, lr_signal="prediction_changes", lr_patience=1, pc_window=1
    )
    neve.start()
    lrs = []
    for i, pc in enumerate([None, 40, 20, 10, 12, 15, 9, 11, 13]):
        _nudge(model, 0.1)
        lrs.append(neve.step(train_loss=1.0 / (i + 1), prediction_changes=pc)["lr"])
    lrs.append(opt.param_groups[0]["lr"])
    # new lows at 40, 20, 10; 12 and 15 are two epochs without one (> patience 1): halve; 9 is a
    # new low; 11 and 13 halve again. The LR a step reports is the one its epoch trained with.
    assert lrs == [0.1] * 6 + [0.05] * 3 + [0.025]
    assert neve.stopped_by is None  # the guard is off: the decay alone does not stop the run


def test_lr_signal_prediction_changes_needs_them_reported():
    model, opt, neve = _setup(threshold=1e-9, max_epochs=50, lr_signal="prediction_changes")
    neve.start()
    neve.step(train_loss=1.0)  # epoch 1: nothing to compare with yet
    with pytest.raises(ValueError, match="lr_signal='prediction_changes' needs step"):
        neve.step(train_loss=0.5)
    assert neve.epoch == 1 and neve.velocity.epoch == 1  # refused before anything was measured


def test_prediction_changes_guard_state_round_trip():
    model, opt, neve = _setup(threshold=1e-9, max_epochs=50, pc_patience=3, pc_window=2)
    neve.start()
    for i, pc in enumerate([None, 9, 7, 8]):
        neve.step(train_loss=1.0 / (i + 1), prediction_changes=pc, unfit=100 - i)
    state = neve.state_dict()
    model2, opt2, other = _setup(threshold=1e-9, max_epochs=50, pc_patience=3, pc_window=2)
    other.load_state_dict(state)
    assert neve.pc_best_epoch == 4  # moving averages 8, 7.5: the minimum at epoch 4
    assert (other.pc_series, other.guard.state_dict(), other.pc_best_epoch, other.first_loss) == (
        neve.pc_series,
        neve.guard.state_dict(),
        neve.pc_best_epoch,
        neve.first_loss,
    )


def test_non_finite_loss_marks_diverged_without_raising():
    model, opt, neve = _setup()
    neve.start()
    m = neve.step(train_loss=float("nan"))
    assert m["diverged"] and neve.stopped_by == "diverged" and m["velocity"] is None


def test_non_finite_velocity_marks_diverged():
    model, opt, neve = _setup()
    neve.start()
    with torch.no_grad():
        model[0].weight.fill_(float("inf"))
    m = neve.step(train_loss=0.3)
    assert m["diverged"] and neve.stopped_by == "diverged"


@pytest.mark.parametrize("signal", ["velocity_change", "velocity"])
def test_lr_decays_on_plateau_of_the_signal(signal):
    model, opt, neve = _setup(
        lr=1.0, threshold=1e-12, max_epochs=40, lr_patience=2, lr_signal=signal, stall_patience=None
    )  # a flat loss: the stall check would end it
    neve.start()
    lrs = []
    for i in range(20):
        _nudge(model, 0.01 * (i + 1) ** 2 * (-1) ** i)  # growing changes: the signal never improves
        lrs.append(neve.step(train_loss=1.0)["lr"])
    assert lrs[0] == 1.0 and min(lrs) < 1.0
    assert all(b in (a, a * 0.5) for a, b in zip(lrs, lrs[1:]))
    assert isinstance(neve.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_state_dict_round_trip():
    model, opt, neve = _setup(threshold=1e-12, lr_patience=1)
    neve.start()
    for i in range(5):
        _nudge(model, 0.05 * (-1) ** i)
        neve.step(1.0)
    state = neve.state_dict()
    _, opt2, neve2 = _setup(threshold=1e-12, lr_patience=1)
    neve2.velocity.model.load_state_dict(model.state_dict())
    opt2.load_state_dict(opt.state_dict())
    neve2.load_state_dict(state)
    _nudge(model, 0.01)
    _nudge(neve2.velocity.model, 0.01)
    a, b = neve.step(1.0), neve2.step(1.0)
    assert a == b


def _run_capped(losses, max_epochs, more_epochs):
    """NeVe over ``losses`` (the model nudged each epoch: no velocity stop) with ``max_epochs``,
    its state restored into a controller with ``more_epochs``, which then runs to its end; and
    the same run uninterrupted under ``more_epochs``. Both: (stopped_by per epoch, velocities)."""

    def epochs(model, neve, start):
        out = []
        for i in range(start, len(losses)):
            if neve.should_stop:
                break
            _nudge(model, 0.1 * (-1) ** i)
            m = neve.step(train_loss=losses[i])
            out.append((m["stopped_by"], m["velocity"]))
        return out

    model, opt, neve = _setup(threshold=1e-9, max_epochs=max_epochs)
    neve.start()
    first = epochs(model, neve, 0)
    resumed = NeVe(
        opt, NeuralVelocity(model, gaussian_probe((4,), 16)), threshold=1e-9, max_epochs=more_epochs
    )
    resumed.load_state_dict(neve.state_dict())
    reopened = resumed.stopped_by
    resumed_run = first + epochs(model, resumed, len(first))
    model, _, whole = _setup(threshold=1e-9, max_epochs=more_epochs)
    whole.start()
    return reopened, resumed_run, epochs(model, whole, 0)


def test_a_run_the_cap_ended_before_it_learned_goes_on_under_a_larger_cap():
    """docs/design.md, "The controller": the cap is a setting, not part of the run. A run the
    cap ended on an epoch where it had not learned ends ``"stalled"``; a larger cap continues it
    with the series of an uninterrupted run, as it does a run the cap ended after learning."""
    losses = [1.0, 0.95, 0.5, 0.3]  # learned from epoch 3 on
    reopened, resumed, whole = _run_capped(losses, max_epochs=2, more_epochs=4)
    assert resumed[1][0] == "stalled", "the cap of 2 ends it unlearned"
    assert reopened is None, "a cap of 4 reopens it"
    assert [s for s, _ in whole] == [None, None, None, "max_epochs"]
    assert resumed[2:] == whole[2:] and [v for _, v in resumed] == [v for _, v in whole]


def test_a_capped_stall_reopened_meets_the_early_stall_check_of_the_larger_cap():
    """A dead run (its loss never moves) that the cap of 6 ended stays ``"stalled"`` under a cap
    of 60: the early stall check, which the cap pre-empted at epoch 6, ends it there, as it
    ends the uninterrupted run; a stop that was not the cap's (the velocity's) stays final."""
    reopened, resumed, whole = _run_capped([1.0] * 8, max_epochs=6, more_epochs=60)
    assert reopened == "stalled" and len(resumed) == 6 and resumed[-1][0] == "stalled"
    assert [s for s, _ in whole] == [None] * 5 + ["stalled"]
    model, opt, neve = _setup(threshold=1e-2, min_epochs=2, max_epochs=3)
    neve.start()
    for _ in range(2):
        neve.step(train_loss=1.0)  # model unchanged: velocity stop at epoch 2, not learned
    assert neve.stopped_by == "stalled"
    again = NeVe(
        opt, NeuralVelocity(model, gaussian_probe((4,), 16)), threshold=1e-2, max_epochs=10
    )
    again.load_state_dict(neve.state_dict())
    assert again.stopped_by == "stalled"


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": -1e-3}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"min_epochs": 5, "max_epochs": 3}, "min_epochs"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"lr_signal": "loss"}, "lr_signal"),
    ],
)
def test_bad_arguments_name_the_parameter(kw, match):
    with pytest.raises(ValueError, match=match):
        _setup(**kw)


def test_validation_control_plateau_early_stopping_and_cap():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ctl = ValidationControl(opt, max_epochs=30, lr_patience=1, early_stopping=3)
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98]
    out = [ctl.step(0.1, v) for v in losses[:5]]
    assert ctl.stopped_by == "early_stopping" and ctl.best_epoch == 2 and ctl.epoch == 5
    assert out[-1]["lr"] < 1.0
    capped = ValidationControl(torch.optim.SGD(model.parameters(), lr=1.0), max_epochs=2)
    capped.step(1, 1.0), capped.step(1, 0.5)
    assert capped.stopped_by == "max_epochs"
    with pytest.raises(ValueError, match="val_loss"):
        ValidationControl(opt).step(1.0)


def test_prediction_changes_guard_restores_the_weights_of_its_minimum():
    model, opt, neve = _setup(threshold=1e-9, max_epochs=50, pc_patience=2, pc_window=1)
    neve.start()
    weights = {}
    for i, (pc, unfit) in enumerate([(None, 300), (40, 200), (20, 100), (30, 95), (35, 80)]):
        _nudge(model, 0.1)  # "training": the weights of epoch i + 1
        weights[i + 1] = [p.detach().clone() for p in model.parameters()]
        neve.step(train_loss=1.0 / (i + 1), prediction_changes=pc, unfit=unfit)
    assert neve.stopped_by == "prediction_changes" and neve.best_epoch == 3
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), weights[3]))
    assert not all(torch.equal(p, q) for p, q in zip(weights[5], weights[3]))


@pytest.mark.parametrize("kind", ["python", "numpy", "tensor"])
def test_step_returns_its_inputs_as_plain_numbers(kind):
    np = pytest.importorskip("numpy")
    cast = {"python": lambda v: v, "numpy": np.float32, "tensor": torch.tensor}[kind]
    count = {"python": lambda v: v, "numpy": np.int64, "tensor": torch.tensor}[kind]
    model, opt, neve = _setup(threshold=1e-9, max_epochs=5, pc_patience=3)
    neve.start()
    first = neve.step(train_loss=cast(0.75))
    assert first["train_loss"] == 0.75 and type(first["train_loss"]) is float
    assert first["prediction_changes"] is None and "val_loss" not in first
    second = neve.step(cast(0.5), cast(0.625), prediction_changes=count(12), unfit=count(30))
    assert (
        second["train_loss"],
        second["val_loss"],
        second["prediction_changes"],
        second["unfit"],
    ) == (0.5, 0.625, 12, 30)
    assert (
        type(second["prediction_changes"]) is int
        and type(second["unfit"]) is int
        and type(second["val_loss"]) is float
    )
    assert neve.pc_series == [12.0]


def test_step_without_start_is_refused_and_changes_nothing():
    model, opt, neve = _setup(threshold=1e-2, max_epochs=5)
    with pytest.raises(
        RuntimeError,
        match=r"^NeVe.step\(\) before start\(\): call neve.start\(\) once before the first",
    ):
        neve.step(train_loss=0.7)
    assert neve.epoch == 0 and neve.stopped_by is None and neve.velocity.epoch < 0
    neve.start()
    _nudge(model, 0.1)
    m = neve.step(train_loss=0.7)  # the refused call did not count: this is epoch 1
    assert m["epoch"] == 1 and m["velocity"] > 1e-2 and not m["stalled"]


def test_a_restored_controller_steps_without_start():
    model, opt, neve = _setup(threshold=1e-9, max_epochs=5)
    neve.start()
    _nudge(model, 0.1)
    neve.step(train_loss=1.0)
    _, _, fresh = _setup(threshold=1e-9, max_epochs=5)
    fresh.load_state_dict(neve.state_dict())
    assert fresh.step(train_loss=0.8)["epoch"] == 2


@pytest.mark.parametrize("bad, error", [("many", TypeError), (True, TypeError)])
def test_bad_prediction_changes_name_the_parameter(bad, error):
    model, opt, neve = _setup(threshold=1e-2, max_epochs=5)
    neve.start()
    with pytest.raises(error, match="prediction_changes must be a number"):
        neve.step(train_loss=0.5, prediction_changes=bad)
    assert neve.epoch == 0


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), -0.5])
@pytest.mark.parametrize("name", ["prediction_changes", "unfit"])
def test_negative_or_non_finite_counts_name_the_parameter(name, bad):
    model, opt, neve = _setup(threshold=1e-2, max_epochs=5)
    neve.start()
    counts = {"prediction_changes": 3, "unfit": 2, name: bad}
    with pytest.raises(ValueError, match=f"{name} must be a finite count >= 0"):
        neve.step(train_loss=0.5, **counts)
    assert neve.epoch == 0


@pytest.mark.parametrize(
    "threshold, mode, rule",
    [(2.0, "relative", "<= 1 \\(relative rule"), (1e300, None, "<= 3.4.* \\(absolute rule")],
)
def test_a_threshold_out_of_its_rule_is_refused_as_in_a_study(threshold, mode, rule):
    """V / peak V never exceeds 1, so a relative threshold above 1 would stop at once; a
    study and the command line refuse it, and so does NeVe."""
    with pytest.raises(ValueError, match=f"threshold must be a finite number > 0 and {rule}"):
        _setup(threshold=threshold, threshold_mode=mode)
