"""The README's integration snippets (``docs/plain_loop.py``, ``docs/lightning_example.py``,
``docs/hf_example.py``) run as written and stop by velocity; the plain loop inside an
Optuna study with NeVePruner gets pruned."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import optuna
import pytest
import torch

from neve_tune import NeVe, NeuralVelocity, gaussian_probe
from neve_tune.optuna import NeVePruner, report_epoch, trial_history

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = ROOT / "docs" / "plain_loop.py"


def test_plain_loop_runs_as_written_and_stops_by_velocity(capsys):
    scope = runpy.run_path(str(SNIPPET), run_name="__main__")
    neve = scope["neve"]
    assert neve.stopped_by == "velocity"
    assert scope["metrics"]["velocity"] < 1e-2 and scope["metrics"]["epoch"] < neve.max_epochs
    assert capsys.readouterr().out.startswith("velocity ")


@pytest.mark.parametrize("name", ["lightning_example.py", "hf_example.py"])
def test_integration_snippets_run_as_written(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the HF example writes under runs/
    scope = runpy.run_path(str(ROOT / "docs" / name), run_name="__main__")
    assert scope["neve"].stopped_by == "velocity" and scope["neve"].velocities[-1] < 1e-2
    assert capsys.readouterr().out.splitlines()[-1].startswith("velocity ")


@pytest.mark.parametrize("name", ["plain_loop.py", "lightning_example.py", "hf_example.py"])
def test_readme_shows_the_same_snippet(name):
    code = (ROOT / "docs" / name).read_text().strip()
    marker = next(line for line in code.splitlines() if line.startswith("from neve_tune"))
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    last = code.splitlines()[-1]
    shown = [b for b in blocks if marker + "\n" in b and b.strip().splitlines()[-1] == last]
    assert shown, f"README must show docs/{name} in a python block, as written"
    assert shown[0].strip() == code


def _objective(trial: optuna.Trial) -> float:
    """The README loop with two more lines per epoch: report, then maybe prune."""
    torch.manual_seed(0)
    x = torch.randn(512, 20); y = (x[:, :2].sum(1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=trial.suggest_float("lr", 1e-3, 1.0, log=True))
    neve = NeVe(optimizer, NeuralVelocity(model, gaussian_probe((20,), 100, seed=0)), threshold=1e-2, min_epochs=2)
    neve.start()
    while not neve.should_stop:
        total = 0.0
        for xb, yb in zip(x.split(64), y.split(64)):
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad(); loss.backward(); optimizer.step(); total += loss.item()
        metrics = {**neve.step(train_loss=total / 8), "train_loss": total / 8}
        report_epoch(trial, metrics)
        if trial.should_prune():
            raise optuna.TrialPruned()
    trial.set_user_attr("stopped_by", neve.stopped_by)
    return metrics["train_loss"]


def test_plain_loop_in_an_optuna_study_prunes():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=NeVePruner(signal="train_loss"))
    for lr in (0.3, 0.5, 0.003, 0.002):  # the low LRs lose at the first rung on training loss
        study.enqueue_trial({"lr": lr})
    study.optimize(_objective, n_trials=4)
    states = {t.params["lr"]: t.state for t in study.trials}
    assert {lr for lr, s in states.items() if s == optuna.trial.TrialState.PRUNED} == {0.003, 0.002}, states
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(t.user_attrs["stopped_by"] == "velocity" for t in done)
    assert all(trial_history(t)[-1]["neve_stop"] for t in done)
