"""A user's own loop gets the studies' rules: patience "auto", the guard's misuse said out
loud, the kept epoch's loss as the objective, and the early stall check, which the Ray
stopper applies too."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import optuna
import pytest
import torch
from torch import nn

from neve_tune import NeuralVelocity, NeVe, Study, _callbacks, _rules, gaussian_probe
from neve_tune.optuna import report_epoch, trial_history
from neve_tune.ray import NeVeASHAScheduler, NeVeStopper
from neve_tune.ray._report import check_epoch_metrics
from neve_tune.records import METRIC_NAMES


def _neve(lr: float = 0.1, **kw) -> tuple[nn.Module, NeVe]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return model, NeVe(opt, NeuralVelocity(model, gaussian_probe((4,), 16)), **kw)


def _nudge(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)


# ---------------------------------------------------------------- patience "auto"
@pytest.mark.parametrize("max_epochs, patience", [(60, 3), (250, 12), (15, 2), (100, 5)])
def test_neve_defaults_to_the_studies_patience_against_its_budget(max_epochs, patience):
    _, neve = _neve(max_epochs=max_epochs)
    assert neve.lr_patience == neve.scheduler.patience == patience
    assert Study(name="x", max_epochs=max_epochs).lr_patience_epochs == patience
    _, explicit = _neve(max_epochs=max_epochs, lr_patience="auto")
    assert explicit.scheduler.patience == patience
    _, fixed = _neve(max_epochs=max_epochs, lr_patience=7)
    assert fixed.scheduler.patience == 7


def test_one_definition_of_auto_patience():
    # the callbacks resolve "auto" with the controller's rule rather than keep a copy
    assert _callbacks.resolve_patience is _rules.resolve_patience


@pytest.mark.parametrize("bad, error", [("soon", ValueError), (-1, ValueError), (2.5, TypeError)])
def test_a_bad_patience_is_refused_naming_it(bad, error):
    with pytest.raises(error, match="lr_patience"):
        _neve(lr_patience=bad)


# ---------------------------------------------------------------- the guard without its signal
def test_the_guard_without_prediction_changes_warns_once_naming_the_argument():
    model, neve = _neve(threshold=1e-12, pc_patience=3, max_epochs=20, stall_patience=None)
    neve.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _nudge(model)
        neve.step(train_loss=1.0)  # the first epoch has no count to give: no warning yet
        assert not caught
        for i in range(3):
            _nudge(model)
            neve.step(train_loss=0.5 / (i + 1))
    assert len(caught) == 1 and caught[0].category is UserWarning
    text = str(caught[0].message)
    assert "prediction_changes=" in text and "pc_patience=3" in text and "epoch 2" in text
    assert caught[0].filename == __file__  # points at the caller's step()


def test_the_guard_fed_its_signal_does_not_warn():
    model, neve = _neve(threshold=1e-12, pc_patience=3, max_epochs=20, stall_patience=None)
    neve.start()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, pc in enumerate([None, 30, 20, 10]):
            _nudge(model)
            neve.step(train_loss=1.0 / (i + 1), prediction_changes=pc, unfit=100 - 10 * i)


# ---------------------------------------------------------------- the kept epoch
def _guarded_run(**kw) -> tuple[NeVe, list[dict]]:
    """A run whose prediction changes fall, then rise (memorisation): the guard stops it and
    restores an earlier epoch's weights."""
    model, neve = _neve(threshold=1e-12, max_epochs=50, pc_patience=2, pc_window=1, **kw)
    neve.start()
    out = []
    changes = [None, 40, 20, 30, 35, 40, 45, 50, 55, 60]
    unfit = [300, 200, 100, 95, 80, 70, 60, 50, 40, 30]  # labels refused at the minimum get fitted
    for i, (pc, u) in enumerate(zip(changes, unfit)):
        _nudge(model)
        out.append(neve.step(train_loss=1.0 / (i + 1), prediction_changes=pc, unfit=u))
        if neve.should_stop:
            break
    return neve, out


def test_the_last_epoch_carries_the_kept_epoch_and_its_loss():
    neve, out = _guarded_run()
    last = out[-1]
    assert neve.stopped_by == "prediction_changes" and last["stopped_by"] == "prediction_changes"
    assert last["kept_epoch"] == neve.best_epoch < last["epoch"]
    assert last["kept_train_loss"] == out[neve.best_epoch - 1]["train_loss"] != last["train_loss"]
    # before the stop every epoch keeps its own weights
    assert all(
        (m["kept_epoch"], m["kept_train_loss"], m["stopped_by"])
        == (m["epoch"], m["train_loss"], None)
        for m in out[:-1]
    )


def _window_run(restore, resume_at: int | None = None) -> tuple[NeVe, list[dict], nn.Module]:
    """The guarded run of :func:`_guarded_run` with a window of 2: each epoch's weights kept,
    optionally resumed (a new controller from ``state_dict``) after epoch ``resume_at``."""
    model, neve = _neve(threshold=1e-12, max_epochs=50, pc_patience=2, pc_window=2)
    neve = NeVe(neve.optimizer, neve.velocity, threshold=1e-12, max_epochs=50, pc_patience=2,
                pc_window=2, pc_restore=restore)  # fmt: skip
    neve.start()
    saved = []
    changes = [None, 40, 20, 10, 30, 35, 40, 45, 50, 55, 60]
    unfit = [300, 200, 100, 95, 80, 70, 60, 50, 40, 30, 20]
    for i, (pc, u) in enumerate(zip(changes, unfit)):
        _nudge(model)
        with torch.no_grad():
            model[0].weight[0, 0] += float(i % 3)  # epochs differ unevenly: a mean is no epoch
        saved.append({k: v.clone() for k, v in model.state_dict().items()})
        neve.step(train_loss=1.0 / (i + 1), prediction_changes=pc, unfit=u)
        if neve.should_stop:
            break
        if resume_at == i + 1:
            state = neve.state_dict()
            neve = NeVe(neve.optimizer, neve.velocity, threshold=1e-12, max_epochs=50,
                        pc_patience=2, pc_window=2, pc_restore=restore)  # fmt: skip
            neve.load_state_dict(state)
    return neve, saved, model


@pytest.mark.parametrize("restore", ["mean", "epoch", None])
def test_a_guard_stop_restores_its_windows_mean_one_epoch_or_nothing(restore):
    neve, saved, model = _window_run(restore)
    best, now = neve.best_epoch, model.state_dict()
    assert neve.stopped_by == "prediction_changes"
    if restore is None:
        assert best == neve.epoch and all(torch.equal(now[k], saved[-1][k]) for k in now)
        return
    assert best == neve.pc_best_epoch < neve.epoch
    window = saved[best - 2 : best] if restore == "mean" else saved[best - 1 : best]
    expected = {k: torch.stack([s[k] for s in window]).mean(0) for k in now}
    assert all(torch.equal(now[k], expected[k]) for k in now)
    if restore == "mean":  # a model of its own, no epoch's
        assert not any(all(torch.equal(now[k], s[k]) for k in now) for s in saved)


def test_the_window_survives_a_resume_inside_it():
    uninterrupted = _window_run("mean")[2].state_dict()
    # the minimum is epoch 4, its window epochs 3-4: the resumed controller needs epoch 3's
    neve, _, model = _window_run("mean", resume_at=3)
    assert neve.stopped_by == "prediction_changes"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in uninterrupted.items())


def test_the_kept_loss_survives_a_resume():
    neve, out = _guarded_run()
    model, fresh = _neve(threshold=1e-12, max_epochs=50, pc_patience=2, pc_window=1)
    fresh.load_state_dict(neve.state_dict())
    assert fresh.kept() == {
        "kept_epoch": out[-1]["kept_epoch"],
        "kept_train_loss": out[-1]["kept_train_loss"],
    }


def test_kept_metrics_are_metric_names_every_report_accepts():
    assert {"kept_epoch", "kept_train_loss"} <= set(METRIC_NAMES)
    _, out = _guarded_run()
    # kept_train_loss is one typo away from train_loss; Ray's report_epoch must not refuse it
    reported = check_epoch_metrics(out[-1])
    assert (
        reported["kept_train_loss"] == out[-1]["kept_train_loss"]
        and reported["stopped_by"] == "prediction_changes"
    )


def test_an_own_loop_optuna_objective_returns_the_kept_epochs_loss():
    def objective(trial: optuna.Trial) -> float:
        neve, out = _guarded_run()
        for metrics in out:
            report_epoch(trial, metrics)
        return out[-1]["kept_train_loss"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    history = trial_history(trial)
    kept = history[-1]["kept_epoch"]
    assert (
        kept < len(history)
        and trial.value == history[kept - 1]["train_loss"] != history[-1]["train_loss"]
    )


# ---------------------------------------------------------------- the early stall check
def _train(lr: float, max_epochs: int, epochs: int | None = None) -> tuple[NeVe, list[dict]]:
    """The README loop (its data and model), at learning rate ``lr``."""
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x[:, :2].sum(1) > 0).long()
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    neve = NeVe(
        optimizer,
        NeuralVelocity(model, gaussian_probe((20,), 100, seed=0)),
        max_epochs=max_epochs,
        num_classes=2,
    )
    neve.start()
    out = []
    while not neve.should_stop and len(out) < (epochs or max_epochs):
        total = 0.0
        for xb, yb in zip(x.split(64), y.split(64)):
            loss = nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        out.append(neve.step(train_loss=total / 8))
    return neve, out


@pytest.mark.parametrize("max_epochs", [15, 60])
def test_a_dead_learning_rate_ends_stalled_within_a_few_epochs(max_epochs):
    neve, out = _train(1e-6, max_epochs)
    ratios = [m["velocity"] / neve.peak_velocity for m in out]
    assert min(ratios) > 0.5  # the relative velocity stop would never come
    assert neve.stopped_by == "stalled" and neve.epoch == 1 + _rules.STALL_PATIENCE
    assert out[-1]["stalled"] and not out[-1]["neve_stop"]


def test_a_slow_learner_is_not_stalled_early():
    neve, out = _train(1e-2, 60, epochs=8)
    losses = [m["train_loss"] for m in out]
    assert losses[5] > 0.9 * losses[0]  # no 10 % drop by epoch 6: the bare margin would stall it
    assert all(b < a for a, b in zip(losses, losses[1:]))  # but it learns, every epoch
    assert neve.stopped_by is None and not any(m["stalled"] for m in out)


def test_the_ray_stopper_applies_the_same_early_stall_check_to_raw_results():
    flat = [0.755] * 8
    slow = [0.749, 0.734, 0.721, 0.709, 0.698, 0.688, 0.679, 0.67]
    stopper = NeVeStopper(threshold=1e-9, max_epochs=60, num_classes=2)
    stopped = {}
    for name, losses in (("flat", flat), ("slow", slow)):
        for i, loss in enumerate(losses, start=1):
            if stopper(name, {"training_iteration": i, "velocity": 0.3, "train_loss": loss}):
                stopped[name] = i
                break
    assert (
        stopped == {"flat": 1 + _rules.STALL_PATIENCE} and stopper.stopped_by("flat") == "stalled"
    )
    without_budget = NeVeStopper(threshold=1e-9)  # no budget: no pace to judge, the check is off
    assert not any(
        without_budget("flat", {"training_iteration": i, "velocity": 0.3, "train_loss": 0.755})
        for i in range(1, 9)
    )


# ---------------------------------------------------------------- the stop line
def test_the_stop_reason_names_the_rule_that_fired_with_its_numbers():
    neve, out = _guarded_run()
    guard = _callbacks.stop_reason(neve, out[-1])
    assert guard.startswith("memorisation guard") and f"since epoch {neve.pc_best_epoch}" in guard
    assert (
        "threshold" not in guard and "velocity" not in guard
    )  # the velocity did not stop this run
    for mode, text in (
        ("relative", "V / peak V = {:.3g} < threshold 0.5 (relative)"),
        ("absolute", "velocity {:.3g} < threshold 0.5 (absolute)"),
    ):
        model, neve = _neve(threshold=0.5, threshold_mode=mode, max_epochs=30, stall_patience=None)
        neve.start()
        for i in range(30):  # ever smaller steps: the velocity falls
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.5**i)
            last = neve.step(train_loss=1.0 / (i + 1))
            if neve.should_stop:
                break
        assert neve.stopped_by == "velocity"
        value = last["velocity"] / neve.peak_velocity if mode == "relative" else last["velocity"]
        assert _callbacks.stop_reason(neve, last) == text.format(value)


# ---------------------------------------------------------------- a scheduler's stop is recorded
def _fake_trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, status="PENDING")


def test_a_trial_the_scheduler_stopped_records_why_in_its_last_result():
    sched = NeVeASHAScheduler(max_t=16, min_resource=1, reduction_factor=2)
    callback = sched.callback()
    trials = [_fake_trial(f"t{i}") for i in range(3)]
    for t in trials:
        sched.on_trial_add(None, t)
    results = [
        {"training_iteration": 1, "velocity": 0.5, "train_loss": loss, "neve_stop": False}
        for loss in (1.0, 0.5, 2.0)
    ]
    decisions = [sched.on_trial_result(None, t, r) for t, r in zip(trials, results)]
    assert decisions == ["CONTINUE", "CONTINUE", "STOP"]
    for t, r, decision in zip(trials, results, decisions):
        if decision == "STOP":
            r["done"] = True  # what Tune does to a result it stops the trial on
        callback.on_trial_result(iteration=1, trials=trials, trial=t, result=r)
    assert [r.get("stopped_by") for r in results] == [None, None, "pruned"]
    own = {
        "training_iteration": 2,
        "done": True,
        "stopped_by": "velocity",
    }  # the controller's own word stays
    callback.on_trial_result(iteration=2, trials=trials, trial=trials[0], result=own)
    assert own["stopped_by"] == "velocity"
    by_stopper = {
        "training_iteration": 2,
        "done": True,
        "stopped_by": None,
    }  # the scheduler never saw it
    callback.on_trial_result(
        iteration=2, trials=trials, trial=_fake_trial("other"), result=by_stopper
    )
    assert by_stopper["stopped_by"] == "tune"


@pytest.mark.ray
@pytest.mark.slow  # a local Ray: 30-90 s on a shared 2-core machine
def test_under_tune_a_pruned_trial_reports_stopped_by(tmp_path, monkeypatch):
    import ray
    import ray.train.constants
    from ray import tune

    monkeypatch.setattr(ray.train.constants, "DEFAULT_STORAGE_PATH", str(tmp_path))

    def trainable(config):
        for epoch in range(
            1, 9
        ):  # a loss that falls at the trial's own pace; velocity never settles
            tune.report(
                {
                    "epoch": epoch,
                    "velocity": 0.5,
                    "train_loss": config["scale"] / epoch,
                    "neve_stop": False,
                    "stopped_by": None,
                }
            )

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sched = NeVeASHAScheduler(max_t=8, min_resource=1, reduction_factor=2)
        results = tune.Tuner(
            trainable,
            param_space={"scale": tune.grid_search([1.0, 2.0, 3.0, 4.0])},
            tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=1),
            run_config=tune.RunConfig(callbacks=[sched.callback()], verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    ended = {
        r.config["scale"]: (r.metrics["training_iteration"], r.metrics["stopped_by"])
        for r in results
    }
    pruned = [s for s, (it, _) in ended.items() if it < 8]
    assert pruned and all(ended[s][1] == "pruned" for s in pruned), ended
    assert all(ended[s][1] in ("max_t", None) for s in ended if s not in pruned), ended


@pytest.mark.ray
@pytest.mark.slow  # a local Ray: 30-90 s on a shared 2-core machine
def test_under_tune_a_dead_learning_rate_ends_stalled_within_a_few_epochs(tmp_path, monkeypatch):
    """The README trainable at LR 1e-6 (and a learning LR beside it), 15-epoch budget, under
    Tuner with NeVeStopper and NeVeASHAScheduler: the dead trial ends stalled at epoch 6."""
    import ray
    import ray.train.constants
    from ray import tune

    from neve_tune.ray import report_epoch

    monkeypatch.setattr(ray.train.constants, "DEFAULT_STORAGE_PATH", str(tmp_path))

    def trainable(config):
        torch.manual_seed(0)
        x = torch.randn(512, 20)
        y = (x[:, :2].sum(1) > 0).long()
        model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
        velocity = NeuralVelocity(model, gaussian_probe((20,), 100, seed=0))
        neve = NeVe(optimizer, velocity, max_epochs=15, num_classes=2)
        neve.start()
        while not neve.should_stop:
            total = 0.0
            for xb, yb in zip(x.split(64), y.split(64)):
                loss = nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
            report_epoch(neve.step(train_loss=total / 8))

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sched = NeVeASHAScheduler(max_t=15, min_resource=1, reduction_factor=2)
        results = tune.Tuner(
            trainable,
            param_space={"lr": tune.grid_search([1e-6, 0.5])},
            tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=1),
            run_config=tune.RunConfig(
                stop=NeVeStopper(num_classes=2), callbacks=[sched.callback()], verbose=0
            ),
        ).fit()
    finally:
        ray.shutdown()
    ended = {r.config["lr"]: (r.metrics["epoch"], r.metrics["stopped_by"]) for r in results}
    assert ended[1e-6] == (1 + _rules.STALL_PATIENCE, "stalled"), ended
    assert ended[0.5][1] != "stalled", ended
