"""The search's veto on the memorisation guard's stops (docs/design.md, "The guard's veto"):
the rule (GuardVeto), NeVe acting on it, the trial's evidence (unfit_share) and the Optuna
study's estimate (guard_noise_estimate), and the objective passing one to the other."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch
from torch import nn

from neve_tune import GuardVeto, NeuralVelocity, NeVe, gaussian_probe, load_study, run_trial
from neve_tune._trial_veto import counted_examples, trial_veto, unfit_share
from neve_tune.optuna import SUMMARY_ATTRS, guard_noise_estimate, make_objective
from neve_tune.optuna import _objective as objective_module

optuna.logging.set_verbosity(optuna.logging.WARNING)

# a settled minimum at epoch 5 leaving 100 labels unfit, then the refused labels get fitted:
# the guard alone stops at epoch 7 (tests/test_control.py)
CHANGES = [None, 40, 20, 10, 5, 8, 12, 20, 30, 30, 30, 30]
UNFIT = [300, 200, 150, 110, 100, 98, 85, 70, 70, 70, 70, 70]


def _neve(veto=None, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    velocity = NeuralVelocity(model, gaussian_probe((4,), 16))
    neve = NeVe(
        opt, velocity, threshold=1e-9, max_epochs=50, pc_patience=2, pc_window=1, veto=veto, **kw
    )
    return model, neve


def _run(veto=None, epochs=None, **kw):
    model, neve = _neve(veto, **kw)
    neve.start()
    for i, (pc, u) in enumerate(zip(CHANGES[:epochs], UNFIT[:epochs])):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)  # the weights move: no velocity stop
        neve.step(train_loss=1.0 / (i + 1), prediction_changes=pc, unfit=u)
        if neve.should_stop:
            break
    return neve


def test_the_guard_stops_where_the_unfit_share_is_within_the_noise_estimate():
    # 100 of 1,000 labels unfit at the minimum: 10%, under 20% + 0.1
    neve = _run(GuardVeto(0.2, examples=1000))
    assert (neve.stopped_by, neve.epoch, neve.veto.vetoed_epochs) == ("prediction_changes", 7, [])


def test_the_veto_refuses_a_stop_that_leaves_far_more_labels_unfit_than_the_noise():
    # 100 of 200 labels unfit at the minimum: 50%, above 20% + 0.1; each later stop too
    neve = _run(GuardVeto(0.2, examples=200))
    assert neve.stopped_by is None and neve.epoch == len(CHANGES)
    assert neve.veto.vetoed_epochs == [7, 8, 9, 10, 11, 12]
    assert _run().stopped_by == "prediction_changes"  # no veto: the guard's own stop


def test_no_estimate_yet_means_no_veto_and_the_estimate_is_asked_only_at_a_stop():
    asked = []

    def estimate():
        asked.append(1)
        return None

    neve = _run(GuardVeto(estimate, examples=200))
    assert (neve.stopped_by, neve.epoch, len(asked)) == ("prediction_changes", 7, 1)


def test_the_estimate_is_read_again_at_every_stop_the_guard_would_take():
    estimates = iter([0.0, 0.0, 0.45])  # the search's trials finish meanwhile
    neve = _run(GuardVeto(lambda: next(estimates), examples=200))
    assert (neve.stopped_by, neve.epoch, neve.veto.vetoed_epochs) == (
        "prediction_changes",
        9,
        [7, 8],
    )


def test_vetoed_epochs_survive_a_resume():
    neve = _run(GuardVeto(0.0, examples=200), epochs=9)
    assert neve.veto.vetoed_epochs == [7, 8, 9]
    _, other = _neve(GuardVeto(0.0, examples=200))
    other.load_state_dict(neve.state_dict())
    assert other.veto.vetoed_epochs == [7, 8, 9]
    _, unvetoed = _neve()  # a run resumed without a veto reads the same state
    unvetoed.load_state_dict(neve.state_dict())
    assert unvetoed.epoch == 9


@pytest.mark.parametrize("noise", [np.float32(0.2), torch.tensor(0.2), 0, 1])
def test_noise_estimates_as_the_users_scalars(noise):
    assert GuardVeto(noise, examples=10).estimate() == pytest.approx(float(noise))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"noise_estimate": 1.5, "examples": 10}, ValueError, "noise_estimate must be"),
        ({"noise_estimate": float("nan"), "examples": 10}, ValueError, "noise_estimate must be"),
        ({"noise_estimate": "0.2", "examples": 10}, TypeError, "noise_estimate must be"),
        ({"noise_estimate": True, "examples": 10}, TypeError, "noise_estimate must be"),
        ({"noise_estimate": 0.2, "examples": 0}, ValueError, "examples must be"),
        ({"noise_estimate": 0.2, "examples": 10, "margin": -0.1}, ValueError, "margin must be"),
    ],
)
def test_bad_veto_arguments_are_refused_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        GuardVeto(**kwargs)


def test_a_callable_estimate_that_returns_no_share_is_refused_when_asked():
    veto = GuardVeto(lambda: 2.0, examples=10)
    with pytest.raises(ValueError, match="noise_estimate must be"):
        veto.refuses(3, best_unfit=5)


def test_neve_refuses_a_veto_that_is_not_a_guard_veto():
    with pytest.raises(TypeError, match="veto must be a neve_tune.GuardVeto"):
        _neve(veto=0.2)


def test_the_study_margin_is_checked_and_turns_the_veto_off():
    study = load_study("digits")
    assert study.pc_veto_margin is None  # off by default (docs/measurements.md)
    assert trial_veto(study, range(100), 0.2) is None
    study = study.replace(pc_veto_margin=0.1)
    with pytest.raises(ValueError, match="pc_veto_margin must be"):
        study.replace(pc_veto_margin=-0.1)
    with pytest.raises(TypeError, match="pc_veto_margin must be"):
        study.replace(pc_veto_margin="0.1")
    assert trial_veto(study.replace(pc_veto_margin=None), range(100), 0.2) is None
    assert trial_veto(study.replace(pc_patience=None, pc_veto_margin=None), range(100), 0.2) is None
    assert trial_veto(study, range(100), None) is None
    veto = trial_veto(study.replace(pc_veto_margin=0.05), range(100), 0.2)
    assert (veto.examples, veto.margin) == (100, 0.05)


def test_the_examples_counted_are_the_training_set_or_the_subset():
    study = load_study("digits")
    assert counted_examples(study, 1437) == 1437  # in the training pass
    subset = study.replace(prediction_changes="subset", pc_subset_size=1000)
    assert counted_examples(subset, 1437) == 1000
    assert counted_examples(subset, 300) == 300


def test_unfit_share_reads_the_kept_epoch():
    history = [{"unfit": 50, "kept_epoch": 1}, {"unfit": 20, "kept_epoch": 2}]
    history.append({"unfit": 10, "kept_epoch": 2})  # a guard stop restored epoch 2
    assert unfit_share(history, 100) == 0.2
    assert unfit_share([{"unfit": None, "kept_epoch": 1}], 100) is None
    assert unfit_share([], 100) is None


def test_after_a_guard_stop_the_share_is_read_at_its_minimum_restored_or_not():
    # memorisation has lowered the unfit count by the stop: the estimate must not read it there
    for restore in ("mean", None):
        neve = _run(pc_restore=restore)
        history = [{"unfit": u, "kept_epoch": neve.best_epoch} for u in UNFIT[: neve.epoch]]
        assert neve.stopped_by == "prediction_changes" and neve.pc_best_epoch == 5
        assert unfit_share(history, 1000, neve) == 0.1  # 100 unfit at epoch 5, not 85 at 7


def test_a_veto_needs_the_guard_and_noise_estimates_need_neve():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="pass pc_patience too"):
        NeVe(
            torch.optim.SGD(model.parameters(), lr=0.1),
            NeuralVelocity(model, gaussian_probe((4,), 4)),
            veto=GuardVeto(0.2, examples=10),
        )
    with pytest.raises(ValueError, match="pc_veto_margin is unused with the guard off"):
        load_study("digits").replace(pc_patience=None, pc_veto_margin=0.1)
    study = load_study("digits").replace(max_epochs=1)
    with pytest.raises(ValueError, match="method='asha_es' has no guard"):
        run_trial(study, {"lr": 0.05}, method="asha_es", noise_estimate=0.2)
    with pytest.raises(ValueError, match="noise_estimate must be"):
        run_trial(study, {"lr": 0.05}, noise_estimate=5.0)  # checked with the veto off too


def test_a_neve_trial_records_its_unfit_share_and_the_baselines_none():
    study = load_study("digits").replace(max_epochs=2)
    result = run_trial(study, {"lr": 0.05})
    last = result.history[-1]
    kept = result.history[last["kept_epoch"] - 1]
    assert result.unfit_share == pytest.approx(kept["unfit"] / result.train_size)
    assert result.to_dict()["unfit_share"] == result.unfit_share
    baseline = run_trial(study, {"lr": 0.05}, method="asha_es")
    assert baseline.unfit_share is None and "unfit_share" not in baseline.to_dict()


def _finished(search, share, stopped_by="prediction_changes", method="neve", state=None):
    attrs = {"method": method, "stopped_by": stopped_by, "unfit_share": share}
    trial = optuna.trial.create_trial(
        value=None if state else 0.5,
        state=state or optuna.trial.TrialState.COMPLETE,
        user_attrs=attrs,
    )
    search.add_trial(trial)


def test_the_study_estimate_is_the_median_of_the_guards_own_stops():
    search = optuna.create_study()
    assert guard_noise_estimate(search) is None
    _finished(search, 0.02, stopped_by="velocity")  # memorised before its stop: not counted
    _finished(search, 0.9, method="asha_es")
    _finished(search, float("nan"))
    _finished(search, 0.5, state=optuna.trial.TrialState.PRUNED)
    assert guard_noise_estimate(search) is None
    for share in (0.18, 0.22, 0.30):
        _finished(search, share)
    assert guard_noise_estimate(search) == pytest.approx(0.22)


def test_the_study_estimate_refuses_what_is_not_a_study():
    with pytest.raises(TypeError, match="study must be an optuna.Study"):
        guard_noise_estimate("digits")


def test_the_objective_passes_the_studys_estimate_and_stores_the_share(monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["noise_estimate"])
        return run_trial(*args, **kwargs)

    monkeypatch.setattr(objective_module, "run_trial", spy)
    search = optuna.create_study()
    _finished(search, 0.25)
    # the study's default configuration: a sampled one (a small LR) may end stalled in two
    # epochs, and a stalled trial is pruned, with no unfit_share
    search.enqueue_trial({"lr": 0.05, "batch_size": 64})
    search.optimize(make_objective(load_study("digits").replace(max_epochs=2)), n_trials=1)
    assert search.trials[-1].state == optuna.trial.TrialState.COMPLETE
    assert search.trials[-1].params["lr"] == 0.05
    assert len(seen) == 1 and seen[0]() == pytest.approx(0.25)
    trial = search.trials[-1]
    assert "unfit_share" in SUMMARY_ATTRS
    assert trial.user_attrs["unfit_share"] == pytest.approx(
        trial.user_attrs["epoch_0002"]["unfit"] / 1437
    )
    baseline = optuna.create_study()
    make_asha = make_objective(load_study("digits").replace(max_epochs=1), method="asha_es")
    baseline.optimize(make_asha, n_trials=1)
    assert seen[-1] is None and baseline.trials[0].user_attrs["unfit_share"] is None
