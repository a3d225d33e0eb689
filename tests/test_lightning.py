"""NeVeCallback on a real Lightning Trainer: a tiny MLP on synthetic data stops by velocity,
drives the LR, prunes inside an Optuna study, feeds Ray Tune's Lightning reporting and
NeVeStopper, and resumes from a Lightning checkpoint with the same velocity series."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import optuna
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import neve_tune
from neve_tune.lightning import NeVeCallback, batch_inputs
from neve_tune.optuna import NeVePruner, trial_history

try:
    from tests._controller_options import REFUSED_BY_NEVE
except ImportError:  # tests/ on sys.path (pytest's default import mode)
    from _controller_options import REFUSED_BY_NEVE  # type: ignore[no-redef]

MAX_EPOCHS = 12


def _loader(batch: str = "tuple") -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    if batch == "dict":
        items = [{"x": a, "y": b} for a, b in zip(x, y)]
        return DataLoader(items, batch_size=32, shuffle=False)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)


class Net(pl.LightningModule):
    def __init__(self, lr: float = 0.5, loss_name: str = "train_loss") -> None:
        super().__init__()
        self.lr, self.loss_name = lr, loss_name
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        if self.loss_name:
            self.log(self.loss_name, loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _trainer(callbacks, max_epochs: int = MAX_EPOCHS, logger=False, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LightningModule.*sanity.*")
        yield


def test_import_neve_tune_needs_no_lightning():
    # a fresh interpreter: this one has imported lightning already
    code = (
        "import sys, neve_tune; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lightning'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_default_rule_is_the_studies_relative_threshold():
    torch.manual_seed(0)
    neve = NeVeCallback(min_epochs=2, pc_patience=None)  # V / peak V < 1e-2
    _trainer([neve], max_epochs=40).fit(Net(lr=0.5), _loader())
    ratios = [v / max(neve.velocities[: i + 1]) for i, v in enumerate(neve.velocities)]
    assert neve.neve.threshold_mode == "relative" and neve.threshold == 1e-2
    assert neve.stopped_by == "velocity" and ratios[-1] < 1e-2 <= min(ratios[1:-1])


def test_run_stops_by_velocity_and_logs_metrics():
    torch.manual_seed(0)
    neve = NeVeCallback(threshold=1e-2, threshold_mode="absolute", min_epochs=2, lr_patience=1)
    trainer = _trainer([neve])
    trainer.fit(Net(lr=0.5), _loader())
    assert neve.stopped_by == "velocity"
    n = len(neve.history)
    assert 2 <= n < MAX_EPOCHS and trainer.current_epoch == n
    assert neve.velocities[-1] < 1e-2 <= min(neve.velocities[:-1])
    last = neve.history[-1]
    assert last["neve_stop"] is True and last["epoch"] == n and last["train_loss"] < 0.69
    logged = trainer.callback_metrics
    for name in ("velocity", "velocity_change", "lr", "neve_stop", "diverged", "train_loss"):
        assert name in logged, name
    assert float(logged["velocity"]) == pytest.approx(last["velocity"])
    assert float(logged["neve_stop"]) == 1.0
    # the built probe: 100 seeded Gaussian samples shaped like one input
    assert tuple(neve.neve.velocity.probe.shape) == (100, 8)
    assert neve.neve.velocity.probe.equal(neve_tune.gaussian_probe((8,), 100, seed=0))


def test_lr_decays_on_the_velocity_and_the_trainer_cap_applies():
    torch.manual_seed(0)
    neve = NeVeCallback(threshold=1e-9, lr_patience=0, lr_factor=0.5, lr_signal="velocity")
    trainer = _trainer([neve], max_epochs=5)
    trainer.fit(Net(lr=8.0), _loader())  # velocity rises at epoch 3: the LR halves
    lrs = [m["lr"] for m in neve.history]
    assert lrs[:3] == [8.0, 8.0, 8.0] and lrs[-1] == 4.0
    assert neve.neve.optimizer is trainer.optimizers[0]
    assert neve.stopped_by == "max_epochs" and len(neve.history) == 5  # cap taken from the trainer


def test_divergence_stops_the_run():
    torch.manual_seed(0)
    neve = NeVeCallback(threshold=1e-2)
    trainer = _trainer([neve])
    trainer.fit(Net(lr=30.0), _loader())
    assert neve.stopped_by == "diverged" and len(neve.history) == 2
    assert (
        neve.history[-1]["diverged"] is True and float(trainer.callback_metrics["diverged"]) == 1.0
    )


def test_dict_batches_and_explicit_probe():
    torch.manual_seed(0)
    auto = NeVeCallback(threshold=1e-2, input_key="x")
    _trainer([auto], max_epochs=2).fit(Net(), _loader("dict"))
    assert tuple(auto.neve.velocity.probe.shape) == (100, 8)
    probe = torch.rand(10, 8)
    given = NeVeCallback(probe=probe, threshold=1e-2)
    _trainer([given], max_epochs=2).fit(Net(), _loader())
    assert given.neve.velocity.probe.equal(probe)


def test_missing_train_loss_is_a_clear_error():
    neve = NeVeCallback(threshold=1e-2)
    with pytest.raises(ValueError, match=r"self\.log\('train_loss', loss, on_epoch=True\)"):
        _trainer([neve], max_epochs=2).fit(Net(loss_name="loss"), _loader())
    other = NeVeCallback(threshold=1e-2, loss_key="loss")
    _trainer([other], max_epochs=1).fit(Net(loss_name="loss"), _loader())
    assert other.history[0]["train_loss"] > 0


class StepLoggedNet(Net):
    """Logs the loss as ``self.log`` does by default in ``training_step``: per step only, or
    per step and per epoch (``train_loss_step`` and ``train_loss_epoch``)."""

    def __init__(self, on_epoch: bool) -> None:
        super().__init__()
        self.on_epoch = on_epoch

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=self.on_epoch)
        return loss


def test_a_loss_logged_per_step_only_is_refused_not_read_as_the_epochs():
    neve = NeVeCallback(threshold=1e-2)
    with pytest.raises(ValueError, match="logged per step only.*on_epoch=True"):
        _trainer([neve], max_epochs=2).fit(StepLoggedNet(on_epoch=False), _loader())
    assert neve.history == []  # refused at the first epoch's end, before any step
    both = NeVeCallback(threshold=1e-2)
    _trainer([both], max_epochs=2).fit(StepLoggedNet(on_epoch=True), _loader())
    assert len(both.history) == 2 and both.history[0]["train_loss"] > 0


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"threshold": 0.0}, "threshold must be"),
        ({"probe": [[1.0]]}, "probe must be a torch.Tensor"),
        ({"loss_key": ""}, "loss_key must be"),
        ({"patients": 3}, "unknown NeVeCallback options"),
        ({"probe_samples": 0}, "probe_samples must be"),
        # values NeVe refuses: refused when the callback is built, not when training starts
        *REFUSED_BY_NEVE,
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises((TypeError, ValueError), match=error):
        NeVeCallback(**kwargs)


def test_min_epochs_beyond_the_default_budget_waits_for_the_trainers():
    """Without ``max_epochs`` the Trainer's budget is known only when fit starts: a
    ``min_epochs`` above NeVe's default of 100 is not refused when the callback is built."""
    assert NeVeCallback(min_epochs=150).controller_options["min_epochs"] == 150
    with pytest.raises(ValueError, match=r"min_epochs must be in \[0, max_epochs=100\]"):
        NeVeCallback(min_epochs=150, max_epochs=100)


def test_building_the_callback_leaves_the_seeded_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    NeVeCallback(num_classes=2)
    assert torch.equal(torch.rand(3), expected)


def test_token_batches_need_a_probe():
    ids = torch.randint(0, 10, (64, 8))
    loader = DataLoader(TensorDataset(ids.float(), ids[:, 0] % 2), batch_size=32)
    int_loader = DataLoader(TensorDataset(ids, ids[:, 0] % 2), batch_size=32)
    _trainer([NeVeCallback()], max_epochs=1).fit(Net(), loader)  # float inputs: a Gaussian probe
    with pytest.raises(ValueError, match=r"token ids\?\): .* pass probe="):
        _trainer([NeVeCallback()], max_epochs=1).fit(Net(), int_loader)


def test_batch_inputs_errors():
    with pytest.raises(ValueError, match="input_key='z'"):
        batch_inputs({"x": torch.zeros(2, 2)}, "z")
    with pytest.raises(TypeError, match="pass probe="):
        batch_inputs("text")


def test_resume_from_checkpoint_keeps_the_velocity_series(tmp_path):
    def run(max_epochs, ckpt=None):
        torch.manual_seed(0)
        model = Net(lr=0.5)
        neve = NeVeCallback(threshold=1e-9)
        trainer = _trainer([neve], max_epochs=max_epochs)
        trainer.fit(model, _loader(), ckpt_path=ckpt)
        return trainer, neve

    _, whole = run(6)
    first, part = run(3)
    path = tmp_path / "three.ckpt"
    first.save_checkpoint(path)
    assert part.stopped_by == "max_epochs"
    _, resumed = run(6, ckpt=str(path))
    assert len(resumed.history) == 6 and resumed.stopped_by == "max_epochs"
    assert resumed.velocities == pytest.approx(whole.velocities, rel=1e-5)
    assert [m["lr"] for m in resumed.history] == [m["lr"] for m in whole.history]
    # epoch 3 is no longer the run's end (the cap of 3 was a setting): as uninterrupted
    assert [m["stopped_by"] for m in resumed.history] == [m["stopped_by"] for m in whole.history]
    assert resumed.neve.epoch == resumed.neve.velocity.epoch == 6


def test_resume_from_a_model_checkpoint_saved_mid_run(tmp_path):
    # ModelCheckpoint saves after this callback's epoch end: the checkpoint holds that epoch's
    # measurement
    def run(max_epochs, callbacks, ckpt=None, **kwargs):
        torch.manual_seed(0)
        neve = NeVeCallback(threshold=1e-9)
        trainer = pl.Trainer(
            max_epochs=max_epochs,
            callbacks=[neve, *callbacks],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            default_root_dir=str(tmp_path),
            **kwargs,
        )
        trainer.fit(Net(lr=0.5), _loader(), ckpt_path=ckpt)
        return neve

    every = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ck", save_top_k=-1, every_n_epochs=1, filename="{epoch}"
    )
    whole = run(5, [every])
    resumed = run(
        5, [], ckpt=str(tmp_path / "ck" / "epoch=1.ckpt"), enable_checkpointing=False
    )  # after 2 epochs
    assert len(resumed.history) == 5
    assert resumed.velocities == pytest.approx(whole.velocities, rel=1e-5)


def test_optuna_study_prunes_and_converges():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=NeVePruner(rung_signal="train_loss"))
    for lr in (0.3, 0.5, 0.003, 0.002):  # the low LRs lose at the first rung on training loss
        study.enqueue_trial({"lr": lr})

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(0)
        neve = NeVeCallback(threshold=1e-2, trial=trial, min_epochs=2)
        trainer = _trainer([neve], max_epochs=8)
        trainer.fit(Net(lr=trial.suggest_float("lr", 1e-3, 1.0, log=True)), _loader())
        trial.set_user_attr("stopped_by", neve.stopped_by)
        return neve.history[-1]["train_loss"]

    study.optimize(objective, n_trials=4)
    states = [t.state for t in study.trials]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) >= 1, states
    assert sorted(t.params["lr"] for t in pruned) == [0.002, 0.003], states
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(t.user_attrs["stopped_by"] == "velocity" for t in done)
    for t in study.trials:  # every epoch reported: velocity as the value, metrics in user attrs
        history = trial_history(t)
        assert [m["epoch"] for m in history] == sorted(t.intermediate_values)
        assert all("train_loss" in m and "velocity" in m for m in history)


def test_with_an_optuna_trial_the_guard_runs_under_its_studys_veto():
    # docs/design.md, "The guard's veto": the study's estimate, and the evidence a run leaves
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    attrs = {"method": "neve", "stopped_by": "prediction_changes", "unfit_share": 0.25}
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs=attrs))
    trial = study.ask()
    neve = NeVeCallback(trial=trial, max_epochs=4, pc_veto_margin=0.1)
    _trainer([neve], max_epochs=4).fit(Net(lr=0.5), _loader())
    veto = neve.neve.veto
    assert isinstance(veto, neve_tune.GuardVeto) and veto.examples == 256  # the subset: all
    assert veto.estimate() == 0.25
    last = neve.history[-1]
    share = neve.history[last["kept_epoch"] - 1]["unfit"] / 256
    assert trial.study.trials[-1].user_attrs["stopped_by"] == neve.stopped_by
    assert trial.study.trials[-1].user_attrs["unfit_share"] == pytest.approx(share)
    alone = NeVeCallback(max_epochs=2, pc_veto_margin=0.1)  # no trial, no other runs: no veto
    _trainer([alone], max_epochs=2).fit(Net(lr=0.5), _loader())
    assert alone.neve.veto is None
    off = NeVeCallback(trial=study.ask(), max_epochs=2)  # the veto is off by default
    _trainer([off], max_epochs=2).fit(Net(lr=0.5), _loader())
    assert off.neve.veto is None and study.trials[-1].user_attrs["stopped_by"] == "max_epochs"
    with pytest.raises(ValueError, match="pc_veto_margin must be"):
        NeVeCallback(pc_veto_margin=-1)
    with pytest.raises(ValueError, match="pc_veto_margin is unused with the guard off"):
        NeVeCallback(pc_patience=None, pc_veto_margin=0.1)
    with pytest.raises(ValueError, match="pc_veto_margin is unused with the guard off"):
        NeVeCallback(pc_patience=None, lr_signal="prediction_changes", pc_veto_margin=0.1)


def test_a_pruned_run_records_and_prints_its_stop(capsys):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0)).ask()
    neve = NeVeCallback(trial=trial, verbose=True)
    recorded: list[dict] = []

    class Recorder(pl.loggers.Logger):
        name, version = "recorder", 0

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            recorded.append(dict(params))

        def log_metrics(self, metrics, step=None) -> None:
            pass

    trainer = _trainer([neve], logger=Recorder(), max_epochs=5)
    with pytest.raises(optuna.TrialPruned):
        trainer.fit(Net(lr=0.5), _loader())
    # the pruner stopped it at the first epoch, the controller had not: "pruned", everywhere
    assert neve.stopped_by is None and neve.history[-1]["stopped_by"] == "pruned"
    assert [p["neve_stopped_by"] for p in recorded if "neve_stopped_by" in p] == ["pruned"]
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("NeVeCallback")]
    assert lines == ["NeVeCallback: stopped by the trial's pruner at epoch 1 (pruned)"]


class _DestroyProcessGroup(pl.Callback):
    """Tears the gloo group down in step on every rank. A spawned rank that exits with the
    group alive can abort in gloo's worker threads at interpreter exit (SIGABRT, "terminate
    called without an active exception"); Lightning's own CI destroys the group the same way."""

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@pytest.mark.slow  # about 20 s: two spawned processes
def test_ddp_ranks_stop_together():
    # each rank measures the same weights on the same probe; rank 0's decision is broadcast
    neve = NeVeCallback(threshold=1e-2, min_epochs=2)
    trainer = pl.Trainer(
        max_epochs=MAX_EPOCHS,
        callbacks=[neve, _DestroyProcessGroup()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
    )
    trainer.fit(Net(lr=0.5), _loader())
    logged = trainer.callback_metrics  # sent back from rank 0
    assert float(logged["neve_stop"]) == 1.0 and float(logged["velocity"]) < 1e-2


@pytest.mark.ray
@pytest.mark.slow  # 20-40 s: a local Ray and two Lightning trials
def test_ray_tune_lightning_reporting_and_neve_stopper(tmp_path):
    import ray
    import ray.cloudpickle
    from ray import tune
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    from neve_tune.ray import NeVeStopper

    def trainable(config):
        torch.manual_seed(0)
        neve = NeVeCallback(threshold=config["threshold"], min_epochs=2)
        report = TuneReportCheckpointCallback(on="train_epoch_end", save_checkpoints=False)
        _trainer([neve, report], max_epochs=MAX_EPOCHS).fit(Net(lr=config["lr"]), _loader())

    ray.cloudpickle.register_pickle_by_value(
        sys.modules[__name__]
    )  # Ray workers cannot import this module
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        stopper = NeVeStopper()
        analysis = tune.run(
            trainable,
            config={"lr": tune.grid_search([0.5, 2.0]), "threshold": 1e-2},
            stop=stopper,
            storage_path=str(tmp_path),
            verbose=0,
        )
    finally:
        ray.shutdown()
    assert len(analysis.trials) == 2
    for trial in analysis.trials:
        result = trial.last_result
        assert trial.status == "TERMINATED"
        assert stopper.stopped_by(trial.trial_id) == "converged"
        assert result["velocity"] < 1e-2 and 2 <= result["training_iteration"] < MAX_EPOCHS
        assert result["neve_stop"] == 1.0  # Lightning logs flags as 0.0 / 1.0
        assert {"train_loss", "lr", "velocity_change", "diverged"} <= set(result)


# ---------------------------------------------------------------- the whole controller


def _noisy_loader(noise: float = 0.2, with_index: bool = False) -> DataLoader:
    """256 examples, ``noise`` of their labels flipped: the MLP memorises them at LR 0.5."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    flip = torch.rand(256, generator=g) < noise
    y[flip] = 1 - y[flip]
    tensors = (x, y, torch.arange(256)) if with_index else (x, y)
    return DataLoader(
        TensorDataset(*tensors),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )


class _Weights(pl.Callback):
    """Keeps the module's weights at every epoch end, before the callbacks listed after it."""

    def __init__(self) -> None:
        self.saved: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.saved.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _window_mean(states: list[dict]) -> dict:
    """What ``pc_restore="mean"`` restores: the entry-wise mean of the window's states (the
    last state's counters)."""
    return {
        k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
        for k, v in states[-1].items()
    }


def test_guard_stops_on_noisy_labels_and_restores_its_restore_point():
    torch.manual_seed(0)
    weights, neve = (
        _Weights(),
        NeVeCallback(threshold=1e-9),
    )  # the studies' guard: pc_patience=3, pc_window=3
    model, record = Net(lr=0.5), _Hparams()
    trainer = _trainer([weights, neve], max_epochs=40, logger=record)
    trainer.fit(model, _noisy_loader())
    assert neve.stopped_by == "prediction_changes" and neve.neve.epoch < 40
    best = neve.neve.best_epoch
    assert best < neve.neve.epoch and neve.history[-1]["neve_stop"] is True
    # the logged objective describes the weights kept, not the last epoch's
    kept_loss = neve.history[best - 1]["train_loss"]
    assert (neve.history[-1]["kept_epoch"], neve.history[-1]["kept_train_loss"]) == (
        best,
        kept_loss,
    )
    assert float(trainer.callback_metrics["kept_epoch"]) == best
    assert float(trainer.callback_metrics["kept_train_loss"]) == pytest.approx(kept_loss)
    assert record.hparams["neve_kept_train_loss"] == kept_loss
    assert _same(model.state_dict(), _window_mean(weights.saved[best - 3 : best]))
    assert not _same(model.state_dict(), weights.saved[-1])
    changes = [m["prediction_changes"] for m in neve.history]
    assert changes[0] is None and all(
        isinstance(c, int) for c in changes[1:]
    )  # the subset: all 256 examples
    guard = neve.neve.guard  # it read the subset's class fit at its minimum, every class learned
    assert guard.best_class_fit is not None and guard.classes_learned


def test_guard_restoring_one_epoch_keeps_the_minimums_weights():
    torch.manual_seed(0)
    weights, neve = _Weights(), NeVeCallback(threshold=1e-9, pc_restore="epoch")
    model = Net(lr=0.5)
    _trainer([weights, neve], max_epochs=40).fit(model, _noisy_loader())
    best = neve.neve.best_epoch
    assert neve.stopped_by == "prediction_changes" and best < neve.neve.epoch
    assert _same(model.state_dict(), weights.saved[best - 1])


def test_guard_without_restore_keeps_the_last_weights():
    torch.manual_seed(0)
    weights, neve = _Weights(), NeVeCallback(threshold=1e-9, pc_restore=None)
    model = Net(lr=0.5)
    _trainer([weights, neve], max_epochs=40).fit(model, _noisy_loader())
    assert neve.stopped_by == "prediction_changes" and _same(model.state_dict(), weights.saved[-1])


def test_guard_off_runs_on_and_refuses_its_options():
    torch.manual_seed(0)
    neve = NeVeCallback(threshold=1e-9, pc_patience=None)
    _trainer([neve], max_epochs=12).fit(Net(lr=0.5), _noisy_loader())
    assert neve.stopped_by == "max_epochs" and all(
        m["prediction_changes"] is None for m in neve.history
    )
    for kwargs, error in [
        (
            {"prediction_changes": None, "pc_patience": 3},
            r"pc_patience=\.\.\.\) needs prediction changes",
        ),
        (
            {"prediction_changes": None, "lr_signal": "prediction_changes"},
            r"lr_signal='prediction_changes'\) needs",
        ),
        ({"pc_patience": None, "pc_window": 5}, r"\['pc_window'\] are unused with the guard off"),
        ({"pc_patience": None, "pc_restore": None}, "unused with the guard off"),
        (
            {"pc_patience": None, "prediction_changes": neve_tune.PredictionChanges(4)},
            "unused with the guard off",
        ),
        ({"prediction_changes": "batch"}, "index_key= go together"),
        ({"index_key": 2}, "index_key= go together"),
        ({"prediction_changes": "all"}, "prediction_changes must be one of"),
    ]:
        with pytest.raises(ValueError, match=error):
            NeVeCallback(**kwargs)


def _plateaus(series: list) -> set[int]:
    """Indices after which ``ReduceLROnPlateau(mode="min", patience=0, threshold=0)`` on
    ``series`` decays the LR: a value not below the lowest before it (None: not stepped)."""
    best, out = math.inf, set()
    for i, value in enumerate(series):
        if value is None:
            continue
        if value >= best:
            out.add(i)
        best = min(best, value)
    return out


def test_lr_signal_prediction_changes_decays_on_the_subset():
    torch.manual_seed(0)
    neve = NeVeCallback(
        threshold=1e-9, lr_signal="prediction_changes", lr_patience=0, pc_window=1, pc_patience=None
    )
    _trainer([neve], max_epochs=14).fit(Net(lr=0.5), _noisy_loader())
    rows = neve.history
    assert neve.stopped_by == "max_epochs" and len(rows) == 14 and rows[0]["lr"] == 0.5
    # each row holds the LR its epoch trained with: a decay after epoch i shows in row i + 1
    decayed = {i for i in range(len(rows) - 1) if rows[i + 1]["lr"] < rows[i]["lr"]}
    by_pc = _plateaus([r["prediction_changes"] for r in rows]) - {len(rows) - 1}
    by_change = _plateaus([r["velocity_change"] for r in rows]) - {len(rows) - 1}
    # the run tells the signals apart (else this test could not see lr_signal ignored)
    assert by_pc != by_change
    assert decayed == by_pc


class IndexedNet(Net):
    """Its batches carry the examples' indices; training_step returns the logits too."""

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        logits = self(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return {"loss": loss, "logits": logits}


def test_batch_indices_count_the_training_pass():
    torch.manual_seed(0)
    neve = NeVeCallback(threshold=1e-9, prediction_changes="batch", index_key=2, input_key=0)
    _trainer([neve], max_epochs=40).fit(IndexedNet(lr=0.5), _noisy_loader(with_index=True))
    changes = [m["prediction_changes"] for m in neve.history]
    assert changes[0] is None and all(isinstance(c, int) and 0 <= c <= 256 for c in changes[1:])
    assert neve.stopped_by == "prediction_changes"

    class LossOnly(IndexedNet):
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx)["loss"]

    with pytest.raises(
        ValueError, match=r"return \{'loss': loss, 'logits': logits\} from training_step"
    ):
        _trainer([NeVeCallback(prediction_changes="batch", index_key=2)], max_epochs=1).fit(
            LossOnly(), _noisy_loader(with_index=True)
        )


def test_a_users_prediction_changes_is_read_at_each_epoch_end():
    counter = neve_tune.PredictionChanges(256)

    class Counting(IndexedNet):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            counter.update(batch[2], out["logits"], batch[1])
            return out["loss"]

    torch.manual_seed(0)
    neve = NeVeCallback(threshold=1e-9, prediction_changes=counter)
    _trainer([neve], max_epochs=3).fit(Counting(lr=0.5), _noisy_loader(with_index=True))
    assert neve.history[0]["prediction_changes"] is None and isinstance(
        neve.history[1]["prediction_changes"], int
    )


def test_an_untrained_run_ends_stalled_not_converged():
    torch.manual_seed(0)
    neve = NeVeCallback(threshold=1e-2)
    _trainer([neve], max_epochs=12).fit(Net(lr=1e-5), _loader())
    assert neve.stopped_by == "stalled" and neve.history[-1]["stalled"] is True
    assert neve.history[-1]["neve_stop"] is False


def test_patience_auto_follows_the_trainer_budget():
    for max_epochs, options, expected in [
        (60, {}, 3),
        (100, {}, 5),
        (10, {}, 2),
        (60, {"lr_patience": 7}, 7),
        (60, {"max_epochs": 200}, 10),
    ]:
        neve = NeVeCallback(threshold=1e-9, **options)
        _trainer([neve], max_epochs=max_epochs, limit_train_batches=1).fit(Net(), _loader())
        assert neve.neve.scheduler.patience == expected, (max_epochs, options)
    with pytest.raises(ValueError, match="lr_patience must be"):
        NeVeCallback(lr_patience=-1)


def test_a_trainer_given_max_steps_is_the_budget_in_epochs():
    """``Trainer(max_steps=...)`` has no ``max_epochs``: the budget is its steps in epochs
    (here 8 batches, 2 per optimizer step: 24 steps are 6 epochs), not NeVe's default 100."""
    neve = NeVeCallback(threshold=1e-9, pc_patience=None, prediction_changes=None)
    trainer = _trainer([neve], max_epochs=None, max_steps=24, accumulate_grad_batches=2)
    trainer.fit(Net(), _loader())
    assert trainer.global_step == 24 and len(neve.history) == 6
    assert neve.neve.max_epochs == 6 and neve.stopped_by == "max_epochs"
    assert neve.neve.scheduler.patience == 2  # "auto" against those 6 epochs


def test_an_unbounded_trainer_is_told_that_neves_cap_applies():
    """``Trainer(max_epochs=-1)``: no budget to read, so NeVe's own ``max_epochs`` (100) is the
    cap; said once, with the option that sets it. Given ``max_epochs=``, nothing is said."""
    neve = NeVeCallback(threshold=0.5, pc_patience=None, prediction_changes=None)
    with pytest.warns(UserWarning, match=r"no budget.*max_epochs=100.*NeVeCallback\(max_epochs"):
        _trainer([neve], max_epochs=-1).fit(Net(), _loader())
    assert neve.neve.max_epochs == 100 and neve.stopped_by == "velocity"
    capped = NeVeCallback(threshold=0.5, pc_patience=None, prediction_changes=None, max_epochs=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*no budget.*")
        _trainer([capped], max_epochs=-1).fit(Net(), _loader())
    assert capped.neve.max_epochs == 3


class ScheduledNet(Net):
    def __init__(self, lr: float, scheduler) -> None:
        super().__init__(lr=lr)
        self.make_scheduler = scheduler

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        return {"optimizer": opt, "lr_scheduler": self.make_scheduler(opt)}


def _lrs_with(scheduler, max_epochs=5, patience=0, factor=0.5) -> tuple[list[float], float]:
    torch.manual_seed(0)
    neve = NeVeCallback(
        threshold=1e-9,
        lr_patience=patience,
        lr_factor=factor,
        lr_signal="velocity",
        pc_patience=None,
    )
    trainer = _trainer([neve], max_epochs=max_epochs)
    trainer.fit(ScheduledNet(8.0, scheduler) if scheduler else Net(lr=8.0), _loader())
    return [m["lr"] for m in neve.history], trainer.optimizers[0].param_groups[0]["lr"]


def test_neve_decay_composes_with_the_users_lr_scheduler():
    alone, _ = _lrs_with(None)
    assert alone == [8.0, 8.0, 8.0, 4.0, 4.0]  # NeVe halves the LR after the 3rd epoch
    constant, _ = _lrs_with(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0))
    assert constant == alone  # LambdaLR recomputes from base_lrs: NeVe's decay is applied on top
    # StepLR halves every 2 epochs; NeVe's halvings multiply that schedule
    step = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)  # noqa: E731
    schedule, _ = _lrs_with(step, patience=100)  # NeVe never decays: the schedule alone
    assert schedule == [
        8.0,
        4.0,
        4.0,
        2.0,
        2.0,
    ]  # Lightning steps epoch schedulers before epoch-end callbacks
    stepped, final = _lrs_with(step)
    ratios = [a / b for a, b in zip(stepped, schedule)]
    assert all(r in (1.0, 0.5, 0.25, 0.125) for r in ratios) and ratios == sorted(
        ratios, reverse=True
    ), stepped
    assert ratios[-1] < 1.0 and final <= stepped[-1]


@pytest.mark.parametrize(
    "make, name",
    [
        (
            lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=100),
            "OneCycleLR",
        ),
        (lambda opt: torch.optim.lr_scheduler.CyclicLR(opt, 0.1, 1.0), "CyclicLR"),
    ],
)
def test_schedulers_that_cannot_compose_are_refused_at_fit_start(make, name):
    neve = NeVeCallback()
    with pytest.raises(
        ValueError, match=rf"cannot compose NeVe's LR decay with {name}.*remove the {name}"
    ):
        _trainer([neve], max_epochs=2).fit(ScheduledNet(0.5, make), _loader())
    assert neve.history == []


class NoForward(pl.LightningModule):
    """A module without forward(): an encoder and a head used in training_step."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 2)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.cross_entropy(self.head(self.encoder(batch[0])), batch[1])
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_a_module_without_forward_is_probed_through_a_submodule_or_a_function():
    with pytest.raises(
        ValueError,
        match=r"NoForward has no forward\(\) for the probe; pass NeVeCallback\(probe_module=",
    ):
        _trainer([NeVeCallback(pc_patience=None)], max_epochs=1).fit(NoForward(), _loader())
    with pytest.raises(ValueError, match=r"no forward\(\) for the guard's subset; pass probe_fn="):
        _trainer([NeVeCallback(probe_module="encoder")], max_epochs=1).fit(NoForward(), _loader())
    torch.manual_seed(0)
    encoder = NeVeCallback(probe_module="encoder", pc_patience=None, threshold=1e-9)
    _trainer([encoder], max_epochs=2).fit(NoForward(), _loader())
    assert set(encoder.neve.velocity.layers) == {"model.encoder.0"} and len(encoder.history) == 2
    torch.manual_seed(0)
    whole = NeVeCallback(
        probe_fn=lambda m, x: m.head(m.encoder(x)), threshold=1e-9
    )  # the guard's subset too
    _trainer([whole], max_epochs=2).fit(NoForward(), _loader())
    assert set(whole.neve.velocity.layers) == {"model.encoder.0", "model.head"}
    assert isinstance(whole.history[1]["prediction_changes"], int)
    named = NeVeCallback(
        probe_fn=lambda m, x: m.head(m.encoder(x)), layers=["head"], pc_patience=None
    )
    _trainer([named], max_epochs=1).fit(NoForward(), _loader())
    assert set(named.neve.velocity.layers) == {"model.head"}
    with pytest.raises(ValueError, match="probe_module='decoder' is not a submodule"):
        _trainer([NeVeCallback(probe_module="decoder", pc_patience=None)], max_epochs=1).fit(
            NoForward(), _loader()
        )
    with pytest.raises(ValueError, match="not both"):
        NeVeCallback(probe_module="encoder", probe_fn=lambda m, x: x)


def test_two_callbacks_in_one_trainer_keep_their_own_state(tmp_path):
    def run(ckpt=None, max_epochs=3):
        torch.manual_seed(0)
        a, b = NeVeCallback(threshold=1e-9), NeVeCallback(threshold=1e-8, pc_patience=None)
        trainer = _trainer([a, b], max_epochs=max_epochs)
        trainer.fit(Net(lr=0.5), _loader(), ckpt_path=ckpt)
        return trainer, a, b

    assert NeVeCallback(threshold=1e-9).state_key != NeVeCallback(threshold=1e-8).state_key
    assert NeVeCallback().state_key == NeVeCallback().state_key  # a configuration, not an instance
    trainer, a, b = run()
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    saved = torch.load(tmp_path / "two.ckpt", weights_only=False)["callbacks"]
    assert {a.state_key, b.state_key} <= set(saved) and saved[a.state_key]["neve"][
        "threshold"
    ] == 1e-9
    _, a2, b2 = run(ckpt=str(tmp_path / "two.ckpt"), max_epochs=4)
    assert (
        a2.neve.threshold == 1e-9
        and b2.neve.threshold == 1e-8
        and len(a2.history) == len(b2.history) == 4
    )
    with pytest.raises(
        RuntimeError, match="state_key"
    ):  # Lightning's own check: the same configuration twice
        _trainer([NeVeCallback(), NeVeCallback()], max_epochs=1).fit(Net(), _loader())


class _Hparams(pl.loggers.logger.Logger):
    """Records what is logged, as a real logger would write it."""

    def __init__(self) -> None:
        super().__init__()
        self.hparams: dict = {}

    name = "record"
    version = 0

    def log_hyperparams(self, params, *args, **kwargs):
        self.hparams.update(params)

    def log_metrics(self, metrics, step=None):
        pass


def test_the_stop_is_printed_with_verbose_and_logged(capsys):
    torch.manual_seed(0)
    record = _Hparams()
    neve = NeVeCallback(threshold=1e-2, min_epochs=2, verbose=True)
    _trainer([neve], logger=record).fit(Net(lr=0.5), _loader())
    stop = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("NeVeCallback")
    ]
    ratio = neve.velocities[-1] / max(v for v in neve.velocities if v is not None)
    assert stop == [
        f"NeVeCallback: stopped by velocity at epoch {len(neve.history)} "
        f"(V / peak V = {ratio:.3g} < threshold 0.01 (relative))"
    ]
    assert record.hparams["neve_stopped_by"] == "velocity" and record.hparams[
        "neve_stop_epoch"
    ] == len(neve.history)
    torch.manual_seed(0)
    quiet = NeVeCallback(threshold=1e-2, min_epochs=2)
    _trainer([quiet], max_epochs=MAX_EPOCHS).fit(Net(lr=0.5), _loader())
    assert "stopped by" not in capsys.readouterr().out
    with pytest.raises(TypeError, match="verbose must be a bool"):
        NeVeCallback(verbose="yes")


def test_controller_options_change_the_run():
    def run(**options):
        torch.manual_seed(0)
        neve = NeVeCallback(**{"threshold": 1e-2, "pc_patience": None, **options})
        _trainer([neve], max_epochs=MAX_EPOCHS).fit(Net(lr=0.5), _loader())
        return neve

    base = run()
    assert base.stopped_by == "velocity"
    assert len(run(min_epochs=len(base.history) + 2).history) == len(base.history) + 2
    assert run(max_epochs=2).stopped_by == "max_epochs"
    relative = run(
        threshold_mode="relative", threshold=0.05
    )  # V / peak V < 0.05, whatever V's scale
    ratios = [v / max(relative.velocities[: i + 1]) for i, v in enumerate(relative.velocities)]
    assert relative.stopped_by == "velocity" and ratios[-1] < 0.05 <= min(ratios[:-1])
    assert relative.velocities[-1] > 1e-2 or len(relative.history) != len(base.history)
    assert (
        run(num_classes=2, stall_margin=0.9).stopped_by == "stalled"
    )  # loss not under 10% of chance
    assert run(stall_margin=0.99).stopped_by == "stalled"
    assert _lrs_with(None, factor=0.25)[0] == [8.0, 8.0, 8.0, 2.0, 2.0]


def test_probe_options():
    torch.manual_seed(0)
    seeded = NeVeCallback(probe_seed=3, probe_samples=20, pc_patience=None)
    _trainer([seeded], max_epochs=1).fit(Net(), _loader())
    assert seeded.neve.velocity.probe.equal(neve_tune.gaussian_probe((8,), 20, seed=3))
    layers = NeVeCallback(layers=["net.2"], pc_patience=None)
    _trainer([layers], max_epochs=1).fit(Net(), _loader())
    assert list(layers.neve.velocity.layers) == ["net.2"]
    with pytest.raises(ValueError, match="probe_samples sizes a built probe"):
        NeVeCallback(probe=torch.zeros(4, 8), probe_samples=4)
    with pytest.raises(
        TypeError, match=r"trial must be an optuna trial \(optuna.Trial\) or None, got str"
    ):
        NeVeCallback(trial="not a trial")
    with pytest.raises(TypeError, match="index_key must be"):
        NeVeCallback(index_key=1.5)
