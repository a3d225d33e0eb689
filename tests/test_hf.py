"""NeVeTrainerCallback on a real ``transformers.Trainer`` with a tiny randomly initialised
BERT built from a config (nothing downloaded): it stops by velocity at epoch ends or every
N steps, follows the Trainer's LR scheduler, and prunes inside
``Trainer.hyperparameter_search(backend="optuna")`` with NeVePruner."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import torch
import transformers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import neve_tune
from neve_tune.hf import STATE_FILE, KeywordInput, NeVeTrainerCallback, token_probe
from neve_tune.hf._state import read_state
from neve_tune.optuna import NeVePruner, trial_history

try:
    from tests._controller_options import REFUSED_BY_NEVE
except ImportError:  # tests/ on sys.path (pytest's default import mode)
    from _controller_options import REFUSED_BY_NEVE  # type: ignore[no-redef]

transformers.logging.set_verbosity_error()

VOCAB, SEQ = 50, 8


class Tokens(torch.utils.data.Dataset):
    """128 random sequences; the label is whether the first token is in the lower half."""

    def __init__(self, n: int = 128) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        self.y = (self.x[:, 0] < VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.y[i]}


def tiny_bert(trial=None) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    return BertForSequenceClassification(config)


def _args(tmp_path, **kwargs) -> TrainingArguments:
    base = dict(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=15,
        per_device_train_batch_size=32,  # 4 steps per epoch
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        logging_steps=2,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    base.update(kwargs)
    return TrainingArguments(**base)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def test_token_probe_is_seeded_and_in_range():
    a = token_probe(VOCAB, SEQ, num_samples=30, seed=3)
    assert a.shape == (30, SEQ) and a.dtype == torch.long
    assert 0 <= int(a.min()) and int(a.max()) < VOCAB
    assert a.equal(token_probe(VOCAB, SEQ, 30, seed=3)) and not a.equal(
        token_probe(VOCAB, SEQ, 30, seed=4)
    )
    state = torch.random.get_rng_state()
    token_probe(VOCAB, SEQ)
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(ValueError, match="vocab_size must be an int >= 1"):
        token_probe(0, SEQ)
    with pytest.raises(TypeError, match="seq_len must be an int"):
        token_probe(VOCAB, 2.5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="every_n_steps must be an int >= 1"):
        NeVeTrainerCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="threshold must be"):
        NeVeTrainerCallback(threshold=-1.0)
    with pytest.raises(TypeError, match="unknown NeVeTrainerCallback options"):
        NeVeTrainerCallback(min_epoch=2)


def test_track_trial_names_a_model_init_that_is_no_function():
    for bad in (None, tiny_bert()):  # a model instead of the function that builds one
        with pytest.raises(TypeError, match="model_init must be a function"):
            NeVeTrainerCallback().track_trial(bad)


def test_keyword_input_feeds_input_ids():
    model = tiny_bert().eval()
    ids = token_probe(VOCAB, SEQ, 4)
    with torch.no_grad():
        assert torch.equal(
            KeywordInput(model, "input_ids")(ids).logits, model(input_ids=ids).logits
        )


def test_trainer_stops_by_velocity_at_epoch_end(tmp_path):
    neve = NeVeTrainerCallback(threshold=1e-2, threshold_mode="absolute", min_epochs=2)
    trainer = Trainer(
        model=tiny_bert(), args=_args(tmp_path), train_dataset=Tokens(), callbacks=[neve]
    )
    trainer.train()
    assert neve.stopped_by == "velocity"
    n = len(neve.history)
    assert 2 <= n < 15 and trainer.state.global_step == 4 * n
    assert [m["step"] for m in neve.history] == [4 * (i + 1) for i in range(n)]
    assert neve.velocities[-1] < 1e-2 <= min(neve.velocities[:-1])
    assert neve.history[-1]["neve_stop"] is True
    assert neve.history[-1]["train_loss"] < neve.history[0]["train_loss"]
    # the probe built from train_dataset[0]: token ids of the model's vocabulary, its length
    probe = neve.neve.velocity.probe
    assert probe.equal(token_probe(VOCAB, SEQ, 100, seed=0))
    monitored = set(neve.neve.velocity.layers)
    assert "model.classifier" in monitored and any("LayerNorm" in name for name in monitored)


def test_every_n_steps_and_the_lr_follows_the_trainer_schedule(tmp_path):
    # measured every 2 steps, logged every 3: the callback asks the Trainer to log at each point
    neve = NeVeTrainerCallback(
        threshold=1e-9, every_n_steps=2, lr_patience=0, lr_signal="velocity", max_epochs=6
    )
    args = _args(tmp_path, logging_steps=3, num_train_epochs=5, learning_rate=5e-2)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(), callbacks=[neve])
    trainer.train()
    assert [m["step"] for m in neve.history] == [2, 4, 6, 8, 10, 12]
    assert neve.stopped_by == "max_epochs" and trainer.state.global_step == 12
    lrs = [m["lr"] for m in neve.history]
    assert lrs[0] == 5e-2 and lrs[-1] < 5e-2  # decayed by NeVe, kept by the constant schedule
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
        trainer.lr_scheduler.base_lrs[0]
    )


def test_missing_probe_key_is_a_clear_error(tmp_path):
    neve = NeVeTrainerCallback(probe_key="pixel_values")
    trainer = Trainer(
        model=tiny_bert(), args=_args(tmp_path), train_dataset=Tokens(), callbacks=[neve]
    )
    with pytest.raises(ValueError, match=r"train_dataset\[0\]\['pixel_values'\]"):
        trainer.train()


def test_hyperparameter_search_optuna_prunes(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    neve = NeVeTrainerCallback(threshold=1e-2, min_epochs=2, pc_veto_margin=0.1)
    storage = optuna.storages.InMemoryStorage()
    data = Tokens()
    trainer = Trainer(
        model_init=neve.track_trial(tiny_bert),
        args=_args(tmp_path, num_train_epochs=10),
        train_dataset=data,
        eval_dataset=data,  # the objective: the final training-set loss, no validation split
        callbacks=[neve],
    )
    lrs = [
        3e-2,
        2e-2,
        3e-4,
        2e-4,
    ]  # in this order: the low LRs lose at the first rung on training loss

    def hp_space(trial: optuna.Trial) -> dict:
        lr = lrs[trial.number]
        return {"learning_rate": trial.suggest_float("learning_rate", lr, lr)}

    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        backend="optuna",
        direction="minimize",
        n_trials=4,
        storage=storage,
        study_name="hf",
        pruner=NeVePruner(rung_signal="train_loss"),
    )
    study = optuna.load_study(study_name="hf", storage=storage)
    states = {t.params["learning_rate"]: t.state for t in study.trials}
    pruned = [lr for lr, s in states.items() if s == optuna.trial.TrialState.PRUNED]
    assert {2e-4, 3e-4} <= set(pruned), (
        states
    )  # at the first rung; 2e-2 may lose to 3e-2 at the second
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and best.hyperparameters["learning_rate"] == 3e-2
    for t in study.trials:
        history = trial_history(t)
        assert history and [m["epoch"] for m in history] == sorted(t.intermediate_values)
        assert all("train_loss" in m and "velocity" in m for m in history)
    for t in complete:  # each completed trial stopped itself by velocity before 10 epochs
        last = trial_history(t)[-1]
        assert last["neve_stop"] is True and last["epoch"] < 10
        # the evidence the guard's veto reads (docs/design.md, "The guard's veto")
        assert t.user_attrs["stopped_by"] == "velocity"
        kept = trial_history(t)[last["kept_epoch"] - 1]
        assert t.user_attrs["unfit_share"] == pytest.approx(kept["unfit"] / len(data))
    assert neve.neve.veto is not None and neve.neve.veto.examples == len(data)


def test_embedding_level_noise_probe(tmp_path):
    probe = neve_tune.gaussian_probe((SEQ, 16), num_samples=50, seed=0)  # [N, seq, hidden]
    neve = NeVeTrainerCallback(
        probe=probe, probe_key="inputs_embeds", input_key="input_ids", threshold=1e-9
    )
    trainer = Trainer(
        model=tiny_bert(),
        args=_args(tmp_path, num_train_epochs=2),
        train_dataset=Tokens(),
        callbacks=[neve],
    )
    trainer.train()
    assert len(neve.history) == 2 and all(v > 0 for v in neve.velocities)
    assert not any("word_embeddings" in name for name in neve.neve.velocity.layers)


@pytest.mark.ray
@pytest.mark.slow  # about 20 s: a local Ray and two Trainer runs
def test_hyperparameter_search_ray_trials_stop_by_velocity(tmp_path):
    script = Path(__file__).with_name("_hf_ray_search.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["trials"]) == 2 and all(t["status"] == "TERMINATED" for t in report["trials"])
    for t in report[
        "trials"
    ]:  # the Trainer's final evaluation comes after the callback stopped training
        assert t["epoch"] < 15 and t["objective"] < 0.1
        # one callback state per trial run, in its run-<trial id> folder, measured at that
        # trial's LR
        assert t["states"] and all(
            f"/run-{t['trial_id']}/checkpoint-" in path for path in t["states"]
        )
        assert t["state_lr"] == t["lr"] and t["state_measurements"] == t["epoch"]
    assert report["best_lr"] in (1e-2, 2e-2)


class _KillAfter(TrainerCallback):
    """Ends training after ``epochs`` epochs, as a killed job would (its last checkpoint stays)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.epoch >= self.epochs:
            control.should_training_stop = True
        return control


def _resumable_run(tmp_path, name, *, kill_after=None, resume=None, epochs=8):
    neve = NeVeTrainerCallback(threshold=1e-9, lr_patience=0, lr_signal="velocity")
    callbacks = [neve] + ([_KillAfter(kill_after)] if kill_after else [])
    args = _args(
        tmp_path, output_dir=str(tmp_path / name), num_train_epochs=epochs, save_strategy="epoch"
    )
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, neve


def test_resume_from_checkpoint_keeps_the_velocity_series(tmp_path):
    _, whole = _resumable_run(tmp_path, "whole")
    assert len(whole.history) == 8 and whole.stopped_by == "max_epochs"
    lrs = [m["lr"] for m in whole.history]
    # the velocity rose at the 3rd measurement: ReduceLROnPlateau halves the LR only if it
    # remembers the best velocity of the first two, which the resumed run must restore
    assert lrs[:3] == [1e-2] * 3 and lrs[3:] == [5e-3] * 5

    _, killed = _resumable_run(tmp_path, "killed", kill_after=2)
    checkpoint = tmp_path / "killed" / "checkpoint-8"  # 4 steps per epoch
    assert len(killed.history) == 2 and (checkpoint / STATE_FILE).is_file()
    trainer, resumed = _resumable_run(tmp_path, "killed", resume=str(checkpoint))
    assert resumed.resumed_from == str(checkpoint / STATE_FILE)
    assert trainer.state.global_step == 32 and len(resumed.history) == 8
    # the whole series: the first two measurements restored, the rest measured after the resume
    assert resumed.velocities == pytest.approx(
        whole.velocities, rel=1e-9, abs=0
    )  # bitwise equal on CPU
    assert [m["lr"] for m in resumed.history] == lrs
    assert [m["step"] for m in resumed.history] == [4 * (i + 1) for i in range(8)]
    assert [m["train_loss"] for m in resumed.history] == pytest.approx(
        [m["train_loss"] for m in whole.history], rel=1e-9
    )
    assert (
        resumed.neve.epoch == resumed.neve.velocity.epoch == 8
        and resumed.stopped_by == "max_epochs"
    )
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
        trainer.lr_scheduler.base_lrs[0]
    )


def test_a_run_the_cap_ended_continues_under_a_larger_cap_as_the_whole_run(tmp_path):
    _, whole = _resumable_run(tmp_path, "whole")
    _, capped = _resumable_run(tmp_path, "capped", epochs=2)
    assert capped.stopped_by == "max_epochs" and capped.history[-1]["stopped_by"] == "max_epochs"
    _, resumed = _resumable_run(tmp_path, "capped", resume=str(tmp_path / "capped/checkpoint-8"))
    # epoch 2 is no longer the run's end (the cap of 2 was a setting): as uninterrupted
    assert [m["stopped_by"] for m in resumed.history] == [m["stopped_by"] for m in whole.history]
    assert resumed.velocities == pytest.approx(whole.velocities, rel=1e-9, abs=0)


class _KillAtStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_resume_between_measurement_points(tmp_path):
    # measured every 3 steps, checkpoints every 5: the checkpoint at step 10 falls between
    # the points at 9 and 12, so the loss of step 10 is saved with the callback (the
    # Trainer logs it before saving; its own checkpoint would drop it)
    def run(name, resume=None, kill_at=None) -> NeVeTrainerCallback:
        neve = NeVeTrainerCallback(
            threshold=1e-9, every_n_steps=3, lr_patience=0, lr_signal="velocity"
        )
        args = _args(
            tmp_path,
            output_dir=str(tmp_path / name),
            num_train_epochs=5,
            logging_steps=4,
            save_strategy="steps",
            save_steps=5,
        )
        callbacks = [neve] + ([_KillAtStep(kill_at)] if kill_at else [])
        Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(), callbacks=callbacks).train(
            resume_from_checkpoint=resume
        )
        return neve

    whole = run("whole")
    run("killed", kill_at=10)
    resumed = run("killed", resume=str(tmp_path / "killed" / "checkpoint-10"))
    assert (
        [m["step"] for m in resumed.history]
        == [m["step"] for m in whole.history]
        == [3, 6, 9, 12, 15, 18]
    )
    for key in ("velocity", "train_loss", "lr"):
        assert [m[key] for m in resumed.history] == pytest.approx(
            [m[key] for m in whole.history], rel=1e-9, abs=0
        ), key


def test_resume_without_or_with_an_unreadable_neve_state(tmp_path):
    args = _args(tmp_path, num_train_epochs=2, save_strategy="epoch")
    Trainer(model=tiny_bert(), args=args, train_dataset=Tokens()).train()  # no NeVe: no state saved
    checkpoint = tmp_path / "out" / "checkpoint-8"
    assert checkpoint.is_dir() and not (checkpoint / STATE_FILE).exists()

    def resume() -> NeVeTrainerCallback:
        neve = NeVeTrainerCallback(threshold=1e-9)
        trainer = Trainer(
            model=tiny_bert(),
            args=_args(tmp_path, num_train_epochs=3, save_strategy="no"),
            train_dataset=Tokens(),
            callbacks=[neve],
        )
        trainer.train(resume_from_checkpoint=str(checkpoint))
        return neve

    with pytest.warns(UserWarning, match="no NeVe state of this checkpoint.*starts over") as caught:
        fresh = resume()
    assert sum("NeVe state" in str(w.message) for w in caught) == 1
    assert fresh.resumed_from is None and [m["step"] for m in fresh.history] == [
        12
    ]  # one new measurement

    (checkpoint / STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(
        ValueError, match=rf"NeVe state file '.*checkpoint-8/{STATE_FILE}' cannot be read"
    ):
        resume()


def test_resume_needs_the_same_given_probe(tmp_path):
    def run(probe, resume=None, kill_after=None) -> NeVeTrainerCallback:
        neve = NeVeTrainerCallback(probe=probe, threshold=1e-9)
        args = _args(tmp_path, num_train_epochs=2, save_strategy="epoch")
        callbacks = [neve] + ([_KillAfter(kill_after)] if kill_after else [])
        Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(), callbacks=callbacks).train(
            resume_from_checkpoint=resume
        )
        return neve

    probe = token_probe(VOCAB, SEQ, 20, seed=1)
    first = run(probe, kill_after=1)
    resumed = run(probe.clone(), resume=True)  # the last checkpoint in output_dir: checkpoint-4
    assert (
        resumed.resumed_from.endswith(f"checkpoint-4/{STATE_FILE}")
        and resumed.velocities[:1] == first.velocities
    )
    assert len(resumed.history) == 2
    with pytest.raises(ValueError, match="differs from the one the velocity series"):
        run(token_probe(VOCAB, SEQ, 20, seed=2), resume=str(tmp_path / "out" / "checkpoint-4"))


# ---------------------------------------------------------------- the whole controller


class NoisyTokens(Tokens):
    """Tokens with 20% of the labels flipped: the tiny BERT memorises them."""

    def __init__(self, noise: float = 0.2) -> None:
        super().__init__()
        flip = torch.rand(len(self.y), generator=torch.Generator().manual_seed(1)) < noise
        self.y = torch.where(flip, 1 - self.y, self.y)


class _Weights(TrainerCallback):
    """Keeps the model's weights at every epoch end, before the callbacks listed after it."""

    def __init__(self) -> None:
        self.saved: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self.saved.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def test_guard_stops_on_noisy_labels_and_restores_its_restore_point(tmp_path):
    weights, neve = _Weights(), NeVeTrainerCallback(threshold=1e-9)  # the studies' guard
    trainer = Trainer(
        model=tiny_bert(),
        args=_args(tmp_path, num_train_epochs=30),
        train_dataset=NoisyTokens(),
        callbacks=[weights, neve],
    )
    trainer.train()
    assert neve.stopped_by == "prediction_changes" and neve.neve.epoch < 30
    best = neve.neve.best_epoch
    final = trainer.model.state_dict()
    assert best < neve.neve.epoch
    window = weights.saved[best - 3 : best]  # pc_restore="mean": the window's mean weights
    mean = {k: torch.stack([s[k] for s in window]).mean(0) for k in final}
    assert all(
        torch.equal(final[k], mean[k] if final[k].is_floating_point() else window[-1][k])
        for k in final
    )
    assert not all(torch.equal(final[k], weights.saved[-1][k]) for k in final)
    changes = [m["prediction_changes"] for m in neve.history]
    assert changes[0] is None and all(
        isinstance(c, int) for c in changes[1:]
    )  # the subset: all 128 examples
    guard = neve.neve.guard  # it read the subset's class fit at its minimum, every class learned
    assert guard.best_class_fit is not None and guard.classes_learned
    logged = [e for e in trainer.state.log_history if "neve_stopped_by" in e]
    assert logged == [
        {
            "neve_stopped_by": "prediction_changes",
            "neve_stop_measurement": neve.neve.epoch,
            "neve_best_measurement": best,
            "neve_kept_train_loss": neve.history[best - 1]["train_loss"],
            "step": trainer.state.global_step,
        }
    ]
    assert (neve.history[-1]["kept_epoch"], neve.history[-1]["kept_train_loss"]) == (
        best,
        neve.history[best - 1]["train_loss"],
    )


def test_an_untrained_run_ends_stalled(tmp_path, capsys):
    neve = NeVeTrainerCallback(threshold=1e-2, num_classes=2, verbose=True)
    trainer = Trainer(
        model=tiny_bert(),
        args=_args(tmp_path, learning_rate=1e-7),
        train_dataset=Tokens(),
        callbacks=[neve],
    )
    trainer.train()
    assert (
        neve.stopped_by == "stalled"
        and neve.history[-1]["stalled"] is True
        and not neve.history[-1]["neve_stop"]
    )
    out = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("NeVeTrainerCallback")
    ]
    assert len(out) == 1 and out[0].startswith(
        f"NeVeTrainerCallback: stopped by stalled at epoch {neve.neve.epoch} "
        "(did not learn: training loss "
    )
    assert "threshold" not in out[0]  # the velocity did not end this run: no velocity comparison
    assert [e["neve_stopped_by"] for e in trainer.state.log_history if "neve_stopped_by" in e] == [
        "stalled"
    ]


def test_a_pruned_run_records_and_prints_its_stop(tmp_path, capsys):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0)).ask()
    neve = NeVeTrainerCallback(trial=trial, verbose=True)
    trainer = Trainer(
        model=tiny_bert(), args=_args(tmp_path), train_dataset=Tokens(), callbacks=[neve]
    )
    with pytest.raises(optuna.TrialPruned):
        trainer.train()
    # the pruner stopped it at the first measurement, the controller had not: "pruned"
    assert neve.stopped_by is None and neve.history[-1]["stopped_by"] == "pruned"
    logged = [e["neve_stopped_by"] for e in trainer.state.log_history if "neve_stopped_by" in e]
    assert logged == ["pruned"]
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("NeVeTrainer")]
    assert lines == ["NeVeTrainerCallback: stopped by the trial's pruner at epoch 1 (pruned)"]


def test_patience_auto_follows_the_trainer_budget(tmp_path):
    for epochs, every, options, budget, expected in [
        (100, None, {}, 100, 5),
        (60, None, {"lr_patience": 4}, 60, 4),
        (15, 1, {}, 60, 3),
    ]:  # 60 steps: 60 measurement points
        neve = NeVeTrainerCallback(threshold=1e-9, pc_patience=None, every_n_steps=every, **options)
        trainer = Trainer(
            model=tiny_bert(),
            args=_args(tmp_path, num_train_epochs=epochs),
            train_dataset=Tokens(),
            callbacks=[neve, _KillAtStep(1)],
        )
        trainer.train()
        assert (neve.neve.max_epochs, neve.neve.scheduler.patience) == (budget, expected), (
            epochs,
            every,
            options,
        )


def test_a_scheduler_that_cannot_compose_is_refused(tmp_path):
    model = tiny_bert()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)
    trainer = Trainer(
        model=model,
        args=_args(tmp_path),
        train_dataset=Tokens(),
        callbacks=[NeVeTrainerCallback()],
        optimizers=(opt, cycle),
    )
    with pytest.raises(
        ValueError, match="cannot compose NeVe's LR decay with OneCycleLR.*remove the OneCycleLR"
    ):
        trainer.train()


def test_a_submodule_or_a_function_is_probed(tmp_path):
    probe = neve_tune.gaussian_probe((SEQ, 16), num_samples=20, seed=0)
    encoder = NeVeTrainerCallback(
        probe=probe,
        probe_key="inputs_embeds",
        probe_module="bert",
        input_key="input_ids",
        threshold=1e-9,
    )
    Trainer(
        model=tiny_bert(),
        args=_args(tmp_path, num_train_epochs=2),
        train_dataset=Tokens(),
        callbacks=[encoder],
    ).train()
    layers = set(encoder.neve.velocity.layers)
    assert (
        layers
        and all(n.startswith("model.bert.") for n in layers)
        and "model.classifier" not in layers
    )
    fn = NeVeTrainerCallback(
        probe_fn=lambda m, x: m(input_ids=x).logits, layers=["classifier"], threshold=1e-9
    )
    Trainer(
        model=tiny_bert(),
        args=_args(tmp_path, num_train_epochs=2),
        train_dataset=Tokens(),
        callbacks=[fn],
    ).train()
    assert list(fn.neve.velocity.layers) == ["model.classifier"] and isinstance(
        fn.history[1]["prediction_changes"], int
    )


def test_the_guard_refuses_a_model_without_class_logits(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    data = [{"input_ids": x, "labels": x} for x in Tokens().x]
    trainer = Trainer(
        model=model, args=_args(tmp_path), train_dataset=data, callbacks=[NeVeTrainerCallback()]
    )
    with pytest.raises(
        ValueError, match=r"output for one example is \(1, 8, 50\), not logits.*pc_patience=None"
    ):
        trainer.train()
    off = NeVeTrainerCallback(pc_patience=None, threshold=1e-9)
    Trainer(
        model=model, args=_args(tmp_path, num_train_epochs=1), train_dataset=data, callbacks=[off]
    ).train()
    assert len(off.history) == 1


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"trial": "not a trial"}, "trial must be an optuna trial"),
        (
            {"probe": torch.zeros(2, SEQ, dtype=torch.long), "probe_samples": 2},
            "probe_samples sizes a built probe",
        ),
        ({"prediction_changes": "batch"}, "prediction_changes must be one of"),
        (
            {"prediction_changes": None, "pc_patience": 3},
            r"pc_patience=\.\.\.\) needs prediction changes",
        ),
        (
            {"prediction_changes": None, "lr_signal": "prediction_changes"},
            "lr_signal='prediction_changes'",
        ),
        ({"pc_patience": None, "pc_window": 2}, "unused with the guard off"),
        ({"pc_patience": None, "input_key": "input_ids"}, "input_key names the data set's input"),
        ({"input_key": ""}, "input_key must be a non-empty str"),
        ({"probe_fn": "f"}, "probe_fn must be a function"),
        ({"probe_module": 3}, "probe_module must be a submodule name"),
        ({"verbose": 1}, "verbose must be a bool"),
        # values NeVe refuses: refused when the callback is built, not when training starts
        *REFUSED_BY_NEVE,
    ],
)
def test_options_it_cannot_honour_are_refused(kwargs, error):
    with pytest.raises((TypeError, ValueError), match=error):
        NeVeTrainerCallback(**kwargs)


def test_a_users_prediction_changes_and_the_guard_off(tmp_path):
    counter = neve_tune.PredictionChanges(128)
    neve = NeVeTrainerCallback(threshold=1e-9, prediction_changes=counter)
    Trainer(
        model=tiny_bert(),
        args=_args(tmp_path, num_train_epochs=2),
        train_dataset=Tokens(),
        callbacks=[neve],
    ).train()
    assert [m["prediction_changes"] for m in neve.history] == [
        None,
        None,
    ]  # never updated: nothing to compare
    off = NeVeTrainerCallback(threshold=1e-9, pc_patience=None, probe_samples=20, probe_seed=3)
    Trainer(
        model=tiny_bert(),
        args=_args(tmp_path, num_train_epochs=2),
        train_dataset=NoisyTokens(),
        callbacks=[off],
    ).train()
    assert off.neve.pc_patience is None and off.stopped_by == "max_epochs"
    assert off.neve.velocity.probe.equal(token_probe(VOCAB, SEQ, 20, seed=3))


def test_controller_options_reach_the_controller(tmp_path):
    options = {
        "min_epochs": 4,
        "max_epochs": 9,
        "lr_factor": 0.3,
        "lr_patience": 1,
        "lr_signal": "velocity",
        "threshold_mode": "relative",
        "num_classes": 2,
        "stall_margin": 0.2,
        "pc_patience": 5,
        "pc_window": 2,
        "pc_restore": None,
    }
    neve = NeVeTrainerCallback(threshold=0.5, **options)
    Trainer(
        model=tiny_bert(),
        args=_args(tmp_path),
        train_dataset=Tokens(),
        callbacks=[neve, _KillAtStep(1)],
    ).train()
    c = neve.neve
    got = {
        "min_epochs": c.min_epochs,
        "max_epochs": c.max_epochs,
        "lr_factor": c.scheduler.factor,
        "lr_patience": c.scheduler.patience,
        "lr_signal": c.lr_signal,
        "threshold_mode": c.threshold_mode,
        "num_classes": c.num_classes,
        "stall_margin": c.stall_margin,
        "pc_patience": c.pc_patience,
        "pc_window": c.pc_window,
        "pc_restore": c.pc_restore,
    }
    assert got == options and c.threshold == 0.5


@pytest.mark.slow  # 20-40 s: two trials and a resumed run of a tiny BERT
def test_hyperparameter_search_optuna_keeps_one_state_per_run_and_resumes_inside_a_run_folder(
    tmp_path,
):
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    neve = NeVeTrainerCallback(threshold=1e-9, lr_signal="velocity", lr_patience=0)
    data = Tokens()
    args = _args(tmp_path, num_train_epochs=3, save_strategy="epoch")
    trainer = Trainer(
        model_init=neve.track_trial(tiny_bert),
        args=args,
        train_dataset=data,
        eval_dataset=data,
        callbacks=[neve],
    )
    lrs = [2e-2, 5e-2]
    storage = optuna.storages.InMemoryStorage()
    trainer.hyperparameter_search(
        hp_space=lambda trial: {
            "learning_rate": trial.suggest_float("learning_rate", *[lrs[trial.number]] * 2)
        },
        backend="optuna",
        direction="minimize",
        n_trials=2,
        storage=storage,
        study_name="runs",
    )
    study = optuna.load_study(study_name="runs", storage=storage)
    out = tmp_path / "out"
    for t in study.trials:  # each trial's run folder holds its own state, measured at its own LR
        states = [
            read_state(out / f"run-{t.number}" / f"{PREFIX_CHECKPOINT_DIR}-{4 * k}" / STATE_FILE)
            for k in (1, 2, 3)
        ]
        assert [len(s["history"]) for s in states] == [1, 2, 3]
        assert states[0]["history"][0]["lr"] == lrs[t.number]
        assert [m["velocity"] for m in states[-1]["history"]] == pytest.approx(
            [m["velocity"] for m in trial_history(t)]
        )
    # resume trial 1 from its run folder: the series goes on from its second measurement
    whole = trial_history(study.trials[1])
    resumed = NeVeTrainerCallback(threshold=1e-9, lr_signal="velocity", lr_patience=0)
    again = Trainer(
        model=tiny_bert(),
        args=_args(tmp_path, num_train_epochs=3, learning_rate=lrs[1]),
        train_dataset=data,
        callbacks=[resumed],
    )
    checkpoint = out / "run-1" / f"{PREFIX_CHECKPOINT_DIR}-8"
    again.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.resumed_from == str(checkpoint / STATE_FILE)
    assert [m["velocity"] for m in resumed.history] == pytest.approx(
        [m["velocity"] for m in whole], rel=1e-6
    )


def test_two_callbacks_in_one_trainer_need_their_own_state_file(tmp_path):
    args = _args(tmp_path, num_train_epochs=1, save_strategy="epoch")
    twins = [NeVeTrainerCallback(threshold=1e-9), NeVeTrainerCallback(threshold=1e-8)]
    with pytest.raises(ValueError, match=r"already saves neve_state.pt; pass state_key="):
        Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(), callbacks=twins).train()
    a, b = (
        NeVeTrainerCallback(threshold=1e-9),
        NeVeTrainerCallback(threshold=1e-8, state_key="strict"),
    )
    Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(), callbacks=[a, b]).train()
    folder = tmp_path / "out" / "checkpoint-4"
    assert read_state(folder / STATE_FILE)["neve"]["threshold"] == 1e-9
    assert read_state(folder / "neve_state-strict.pt")["neve"]["threshold"] == 1e-8
    with pytest.raises(ValueError, match="state_key must be a name"):
        NeVeTrainerCallback(state_key="a/b")
