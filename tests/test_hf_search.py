"""``Trainer.hyperparameter_search`` with NeVeTrainerCallback and no ``eval_dataset``: every
trial's objective is NeVe's (the training loss of the measurement whose weights it keeps),
with the NeVe pruner (Optuna) or NeVeASHAScheduler (Ray) passed through."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest
import transformers
from transformers import Trainer
from transformers.integrations import integration_utils

from neve_tune.hf import NeVeTrainerCallback
from neve_tune.hf._compat import CHECKED_TRANSFORMERS, search_backend
from neve_tune.optuna import NeVePruner, trial_history

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hf import Tokens, _args, tiny_bert  # noqa: E402

transformers.logging.set_verbosity_error()
WHERE = (
    f"(checked against transformers {CHECKED_TRANSFORMERS}; installed {transformers.__version__})"
)


def test_the_search_hooks_the_compat_module_relies_on():
    # each runner evaluates only when trainer.objective is still None, and returns/reports it
    for runner in (integration_utils.run_hp_search_optuna, integration_utils.run_hp_search_ray):
        source = inspect.getsource(runner)
        assert (
            'getattr(trainer, "objective", None) is None' in source
            or 'getattr(local_trainer, "objective", None) is None' in source
        ), f"{runner.__name__} {WHERE}"
        assert ".objective = None" in source, (
            f"{runner.__name__} no longer resets the objective {WHERE}"
        )
    trainer = Trainer(model=tiny_bert(), args=_args(Path("/nonexistent")), train_dataset=Tokens())
    assert search_backend(trainer) is None, (
        f"Trainer.hp_search_backend is not None outside a search {WHERE}"
    )


def test_attach_refuses_what_it_cannot_use(tmp_path):
    neve = NeVeTrainerCallback()
    with pytest.raises(TypeError, match="transformers.Trainer"):
        neve.attach(object())
    trainer = Trainer(model=tiny_bert(), args=_args(tmp_path), train_dataset=Tokens())
    with pytest.raises(ValueError, match="not among the Trainer's callbacks"):
        neve.attach(trainer)


def test_hyperparameter_search_optuna_without_eval_dataset_takes_neves_objective(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    neve = NeVeTrainerCallback(threshold=1e-2, min_epochs=2)
    storage = optuna.storages.InMemoryStorage()
    trainer = Trainer(
        model_init=neve.track_trial(tiny_bert),
        args=_args(tmp_path, num_train_epochs=10),
        train_dataset=Tokens(),
        callbacks=[neve],
    )  # no eval_dataset
    neve.attach(trainer)
    lrs = [3e-2, 2e-2, 2e-4]  # the low LR loses at the first rung

    def hp_space(trial: optuna.Trial) -> dict:
        lr = lrs[trial.number]
        return {"learning_rate": trial.suggest_float("learning_rate", lr, lr)}

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        best = trainer.hyperparameter_search(
            hp_space=hp_space,
            backend="optuna",
            direction="minimize",
            n_trials=3,
            storage=storage,
            study_name="hf",
            pruner=NeVePruner(),
        )
    study = optuna.load_study(study_name="hf", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and any(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    for t in complete:  # the value is the kept measurement's training loss, no evaluation ran
        last = trial_history(t)[-1]
        assert last["stopped_by"] is not None and t.value == pytest.approx(last["kept_train_loss"])
        assert t.value == pytest.approx(trial_history(t)[last["kept_epoch"] - 1]["train_loss"])
    assert not any("eval_loss" in entry for entry in trainer.state.log_history)
    assert best.objective == pytest.approx(min(t.value for t in complete))


@pytest.mark.ray
@pytest.mark.slow  # 1-3 min on 2 shared cores: a local Ray, two Trainer runs, a fresh process
def test_hyperparameter_search_ray_without_eval_dataset_takes_neves_objective(tmp_path):
    script = Path(__file__).with_name("_hf_ray_search.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "neve-objective"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["trials"]) == 2 and all(t["status"] == "TERMINATED" for t in report["trials"])
    for t in report["trials"]:  # every measurement reached Tune, the last with NeVe's objective
        assert t["epoch"] is not None and t["objective"] == pytest.approx(t["kept_train_loss"])
        assert t["eval_loss"] is None
    best = min(report["trials"], key=lambda t: t["objective"])
    assert report["best_lr"] == best["lr"] and report["best_objective"] == pytest.approx(
        best["objective"]
    )
