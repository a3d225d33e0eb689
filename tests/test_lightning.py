"""NeVeCallback on a real Lightning Trainer: a tiny MLP on synthetic data stops by velocity,
drives the LR, prunes inside an Optuna study, feeds Ray Tune's Lightning reporting and
NeVeStopper, and resumes from a Lightning checkpoint with the same velocity series."""

from __future__ import annotations

import sys
import warnings

import lightning.pytorch as pl
import optuna
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import neve_tune
from neve_tune.lightning import NeVeCallback, batch_inputs
from neve_tune.optuna import NeVePruner, trial_history

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from _subset_stub import install as install_subset  # noqa: E402

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
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

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


def _trainer(callbacks, max_epochs: int = MAX_EPOCHS, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    install_subset(monkeypatch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LightningModule.*sanity.*")
        yield


def test_import_neve_tune_needs_no_lightning():
    assert "NeVeCallback" not in dir(neve_tune)


def test_run_stops_by_velocity_and_logs_metrics():
    torch.manual_seed(0)
    neve = NeVeCallback(threshold=1e-2, min_epochs=2, patience=1)
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
    neve = NeVeCallback(threshold=1e-9, patience=0, factor=0.5, lr_signal="velocity")
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
    assert neve.history[-1]["diverged"] is True and float(trainer.callback_metrics["diverged"]) == 1.0


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


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"threshold": 0.0}, "threshold must be"),
        ({"probe": [[1.0]]}, "probe must be a torch.Tensor"),
        ({"loss_key": ""}, "loss_key must be"),
        ({"patients": 3}, "unknown NeVeCallback options"),
        ({"probe_samples": 0}, "probe_samples must be"),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises((TypeError, ValueError), match=error):
        NeVeCallback(**kwargs)


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
    assert resumed.neve.epoch == resumed.neve.velocity.epoch == 6


def test_resume_from_a_model_checkpoint_saved_mid_run(tmp_path):
    # ModelCheckpoint saves after this callback's epoch end: the checkpoint holds that epoch's measurement
    def run(max_epochs, callbacks, ckpt=None, **kwargs):
        torch.manual_seed(0)
        neve = NeVeCallback(threshold=1e-9)
        trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[neve, *callbacks], logger=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                             default_root_dir=str(tmp_path), **kwargs)
        trainer.fit(Net(lr=0.5), _loader(), ckpt_path=ckpt)
        return neve

    every = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_epochs=1,
                                         filename="{epoch}")
    whole = run(5, [every])
    resumed = run(5, [], ckpt=str(tmp_path / "ck" / "epoch=1.ckpt"), enable_checkpointing=False)  # after 2 epochs
    assert len(resumed.history) == 5
    assert resumed.velocities == pytest.approx(whole.velocities, rel=1e-5)


def test_optuna_study_prunes_and_converges():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=NeVePruner(signal="train_loss"))
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
    trainer = pl.Trainer(max_epochs=MAX_EPOCHS, callbacks=[neve, _DestroyProcessGroup()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=2,
                         strategy="ddp_spawn")
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

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this module
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
