"""``Trainer.hyperparameter_search(backend="ray")`` with NeVeTrainerCallback, run as a script
by ``tests/test_hf.py``: transformers' Ray backend pickles the Trainer, which fails in a
process where another Trainer already trained (accelerate's shared state then holds a
weakref), so the search gets a fresh process, as a user's search script would.

Prints one JSON line: the trials' status, last epoch and objective, their run folders'
callback states (one ``run-<trial id>`` folder per trial), and the best LR.
"""

from __future__ import annotations

import glob
import json
import sys
import warnings
from pathlib import Path

import ray
from ray import tune
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hf import Tokens, _args, tiny_bert  # noqa: E402

from neve_tune.hf import STATE_FILE, NeVeTrainerCallback  # noqa: E402
from neve_tune.hf._state import read_state  # noqa: E402


def _trial(t, output_dir: Path) -> dict:
    states = sorted(
        glob.glob(
            str(output_dir / f"run-{t.trial_id}" / f"{PREFIX_CHECKPOINT_DIR}-*" / STATE_FILE)
        ),
        key=lambda p: int(Path(p).parent.name.rsplit("-", 1)[1]),
    )
    last = read_state(states[-1]) if states else {"history": [{}]}
    return {
        "status": t.status,
        "epoch": t.last_result.get("epoch"),
        "objective": t.last_result.get("objective"),
        "kept_train_loss": t.last_result.get("kept_train_loss"),
        "eval_loss": t.last_result.get("eval_loss"),
        "trial_id": t.trial_id,
        "lr": t.config["learning_rate"],
        "states": states,
        "state_lr": last["history"][0].get("lr"),
        "state_measurements": len(last["history"]),
    }


def neve_objective(out: Path) -> None:
    """No eval_dataset: the callback, attached to the Trainer, gives each trial NeVe's
    objective and reports every measurement to Tune, ranked by NeVeASHAScheduler."""
    from neve_tune.ray import NeVeASHAScheduler

    warnings.filterwarnings("ignore")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        neve = NeVeTrainerCallback(threshold=1e-2, min_epochs=2)
        trainer = Trainer(
            model_init=tiny_bert,
            args=_args(out, num_train_epochs=15),
            train_dataset=Tokens(),
            callbacks=[neve],
        )
        neve.attach(trainer)
        best = trainer.hyperparameter_search(
            hp_space=lambda _: {"learning_rate": tune.grid_search([1e-2, 2e-2])},
            backend="ray",
            direction="minimize",
            n_trials=1,
            storage_path=str(out / "ray"),
            verbose=0,
            scheduler=NeVeASHAScheduler(max_t=15, min_resource=2, reduction_factor=2),
        )
        trials = [_trial(t, out / "out") for t in best.run_summary.trials]
        print(
            json.dumps(
                {
                    "trials": trials,
                    "best_lr": best.hyperparameters["learning_rate"],
                    "best_objective": best.objective,
                }
            )
        )
    finally:
        ray.shutdown()


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        data = Tokens()
        neve = NeVeTrainerCallback(threshold=1e-2, min_epochs=2)
        args = _args(out, num_train_epochs=15, save_strategy="epoch")
        trainer = Trainer(
            model_init=tiny_bert, args=args, train_dataset=data, eval_dataset=data, callbacks=[neve]
        )  # objective: final training-set loss
        best = trainer.hyperparameter_search(
            hp_space=lambda _: {"learning_rate": tune.grid_search([1e-2, 2e-2])},
            backend="ray",
            direction="minimize",
            n_trials=1,
            storage_path=str(out / "ray"),
            verbose=0,
        )
        trials = [_trial(t, out / "out") for t in best.run_summary.trials]
        print(json.dumps({"trials": trials, "best_lr": best.hyperparameters["learning_rate"]}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    (neve_objective if sys.argv[2:] == ["neve-objective"] else main)(Path(sys.argv[1]))
