"""Every recipe the docs show runs as written: each ``docs/*.py`` file is shown whole in a
``python`` block of a docs page (``tests/test_docs.py`` checks those blocks against the
files) and a test here runs it. The plain loop, the plain loop in an Optuna study, the
Lightning and Hugging Face examples run fast; a trainable of your own under Ray Tune runs
in the slow suite."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import optuna
import pytest
import torch

from neve_tune import NeuralVelocity, NeVe, gaussian_probe
from neve_tune.optuna import NeVePruner, report_epoch, trial_history

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SNIPPET = DOCS / "plain_loop.py"

#: the docs files the pages show; each has a test below that runs it as written
RECIPES = (
    "plain_loop.py",
    "optuna_loop.py",
    "lightning_example.py",
    "hf_example.py",
    "ray_trainable.py",
)


def _page_blocks() -> list[str]:
    return [
        b.strip()
        for page in sorted(DOCS.rglob("*.md"))
        for b in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    ]


def _run(name: str, capsys) -> tuple[dict, str]:
    scope = runpy.run_path(str(DOCS / name), run_name="__main__")
    return scope, capsys.readouterr().out


@pytest.mark.parametrize("name", RECIPES)
def test_a_docs_page_shows_the_recipe_as_written(name):
    code = (DOCS / name).read_text().strip()
    assert code in _page_blocks(), f"a docs page must show docs/{name} in a python block as written"


def test_every_docs_python_file_is_a_recipe_run_here():
    shown = {p.name for p in DOCS.glob("*.py")}
    assert set(RECIPES) == shown, "every docs/*.py is a recipe run here"


def test_plain_loop_runs_as_written_and_stops_by_velocity(capsys):
    scope, out = _run("plain_loop.py", capsys)
    neve = scope["neve"]
    assert neve.stopped_by == "velocity"
    assert scope["metrics"]["velocity"] < 1e-2 and scope["metrics"]["epoch"] < neve.max_epochs
    assert out.startswith("velocity ")


def test_plain_loop_in_optuna_runs_as_written(capsys):
    scope, out = _run("optuna_loop.py", capsys)
    trials = scope["study"].trials
    states = [t.state for t in trials]
    assert len(trials) == 8 and optuna.trial.TrialState.PRUNED in states
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(trial_history(t)[-1]["neve_stop"] for t in done)
    # one meaning per value: a complete trial returned the training loss of the weights it
    # kept (its last epoch's, or the one the guard restored), a pruned one was left with the
    # training loss of its last epoch (the loss step() handed back)
    for t in trials:
        last = trial_history(t)[-1]
        want = (
            last["kept_train_loss"]
            if t.state == optuna.trial.TrialState.COMPLETE
            else last["train_loss"]
        )
        assert t.value == pytest.approx(want)
    assert scope["study"].best_params["lr"] > 0.1 and out.startswith("{'lr': ")


@pytest.mark.parametrize("name", ["lightning_example.py", "hf_example.py"])
def test_integration_snippets_run_as_written(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the HF example writes under runs/
    scope, out = _run(name, capsys)
    assert scope["neve"].stopped_by == "velocity" and scope["neve"].velocities[-1] < 1e-2
    assert out.splitlines()[-1].startswith("velocity ")


@pytest.mark.ray
@pytest.mark.slow  # a local Ray: 30-120 s on a shared 2-core machine
def test_ray_trainable_runs_as_written(tmp_path, monkeypatch, capsys):
    import ray
    import ray.train.constants

    monkeypatch.setattr(
        ray.train.constants, "DEFAULT_STORAGE_PATH", str(tmp_path)
    )  # not ~/ray_results
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        scope, out = _run("ray_trainable.py", capsys)
    finally:
        ray.shutdown()
    stopper, results = scope["stopper"], scope["results"]
    assert not results.errors and len(results) == 2
    ended = {r.config["lr"]: stopper.stopped_by(r.metrics["trial_id"]) for r in results}
    assert ended == {1e-05: "stalled", 0.5: "converged"}
    assert (
        out.splitlines()[-1] == "{1e-05: ('stalled', 1), 0.5: ('converged', 7)}"
    )  # docs/ray.md quotes it


def _objective(trial: optuna.Trial) -> float:
    """The plain loop with two more lines per epoch: report, then maybe prune."""
    torch.manual_seed(0)
    x = torch.randn(512, 20)
    y = (x[:, :2].sum(1) > 0).long()
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=trial.suggest_float("lr", 1e-3, 1.0, log=True)
    )
    neve = NeVe(
        optimizer,
        NeuralVelocity(model, gaussian_probe((20,), 100, seed=0)),
        threshold=1e-2,
        min_epochs=2,
    )
    neve.start()
    while not neve.should_stop:
        total = 0.0
        for xb, yb in zip(x.split(64), y.split(64)):
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        metrics = neve.step(train_loss=total / 8)  # step() hands the loss back
        report_epoch(trial, metrics)
        if trial.should_prune():
            raise optuna.TrialPruned()
    trial.set_user_attr("stopped_by", neve.stopped_by)
    return metrics["train_loss"]


def test_plain_loop_in_an_optuna_study_prunes():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", pruner=NeVePruner(rung_signal="train_loss"))
    for lr in (0.3, 0.5, 0.003, 0.002):  # the low LRs lose at the first rung on training loss
        study.enqueue_trial({"lr": lr})
    study.optimize(_objective, n_trials=4)
    states = {t.params["lr"]: t.state for t in study.trials}
    assert {lr for lr, s in states.items() if s == optuna.trial.TrialState.PRUNED} == {
        0.003,
        0.002,
    }, states
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(t.user_attrs["stopped_by"] == "velocity" for t in done)
    assert all(trial_history(t)[-1]["neve_stop"] for t in done)
