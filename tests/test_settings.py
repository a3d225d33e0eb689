"""The settings objects of the two search entry points: ``RecoveryConfig`` (``run_worker``'s
checkpoints, heartbeats and retries) and Tune's ``RunConfig`` (``run_search``): a bad value
is refused by the field's name before any work, and what is given reaches Optuna and Tune."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neve_tune.optuna import RecoveryConfig, run_worker

LONG = "x" * 300  # one path component longer than file systems hold


@pytest.mark.parametrize(
    "fields, error, message",
    [
        ({"checkpoint_dir": 5}, TypeError, "RecoveryConfig.checkpoint_dir must be a folder path"),
        ({"checkpoint_dir": ""}, ValueError, "RecoveryConfig.checkpoint_dir is empty"),
        ({"checkpoint_dir": f"/tmp/{LONG}"}, ValueError, "RecoveryConfig.checkpoint_dir '/tmp/"),
        ({"keep_checkpoints": "yes"}, TypeError, "RecoveryConfig.keep_checkpoints must be True"),
        ({"heartbeat_interval": 0}, ValueError, "RecoveryConfig.heartbeat_interval must be an int"),
        ({"heartbeat_interval": 1.5}, TypeError, "RecoveryConfig.heartbeat_interval must be"),
        ({"heartbeat_grace_period": 0}, ValueError, "RecoveryConfig.heartbeat_grace_period must"),
        ({"max_retry": -1}, ValueError, "RecoveryConfig.max_retry must be an int >= 0 or None"),
        ({"max_retry": True}, TypeError, "RecoveryConfig.max_retry must be an int >= 0 or None"),
    ],
)
def test_recovery_config_refuses_a_bad_field_by_name(
    fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        RecoveryConfig(**fields)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_recovery_config_keeps_plain_values_and_is_frozen(tmp_path: Path) -> None:
    config = RecoveryConfig(
        checkpoint_dir=tmp_path, heartbeat_interval=np.int64(5), max_retry=np.int32(0)
    )
    assert config.heartbeat_interval == 5 and type(config.heartbeat_interval) is int
    assert config.max_retry == 0 and type(config.max_retry) is int
    assert (config.keep_checkpoints, config.heartbeat_grace_period) == (False, None)
    assert RecoveryConfig() == RecoveryConfig(None, False, 60, None, 3)  # the worker's defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_retry = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"recovery": {"max_retry": 1}}, TypeError, "recovery must be a neve_tune.optuna."),
        ({"pruner": "neve"}, TypeError, "pruner must be an optuna BasePruner, a dict of NeVe"),
        (
            {"pruner": {"min_resource": 2}, "method": "asha"},
            ValueError,
            "pruner settings ['min_resource'] are NeVePruner's: they apply to method 'neve' only",
        ),
    ],
)
def test_run_worker_refuses_bad_settings_before_the_storage(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    db = tmp_path / "s.db"
    with pytest.raises(error) as caught:
        run_worker("digits", storage=f"sqlite:///{db}", create=True, n_trials=1, log=None, **kwargs)
    assert message in str(caught.value)
    assert not db.exists()  # nothing created, nothing stored


# ------------------------------------------------------------------ Ray: RunConfig
def _tune() -> Any:
    pytest.importorskip("ray.tune")
    from ray import tune

    return tune


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda tune: tune.RunConfig(stop={"training_iteration": 3}),
            ValueError,
            "run_config.stop is the search's own (run_search(stopper=...)); leave it None",
        ),
        (
            lambda tune: tune.RunConfig(checkpoint_config=tune.CheckpointConfig(num_to_keep=5)),
            ValueError,
            "run_config.checkpoint_config is the search's own (the last 2 checkpoints",
        ),
        (
            lambda tune: tune.RunConfig(failure_config=tune.FailureConfig(max_failures=-2)),
            ValueError,
            "run_config.failure_config.max_failures must be an int >= -1, got -2",
        ),
        (
            lambda tune: tune.RunConfig(name="a/b"),
            ValueError,
            "run_config.name must be a plain folder name",
        ),
        (
            lambda tune: tune.RunConfig(storage_path=f"/tmp/{LONG}"),
            ValueError,
            "run_config.storage_path '/tmp/",
        ),
        (
            lambda tune: {"name": "exp"},
            TypeError,
            "run_config must be a ray.tune.RunConfig (not ray.train.RunConfig) or None, got "
            "builtins.dict",
        ),
    ],
)
def test_run_search_refuses_a_run_config_field_before_ray_starts(
    make: Any, error: type[Exception], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused by the field's name, rather than overridden in silence; Ray is not started."""
    tune = _tune()
    import ray

    import neve_tune.ray as neve_ray

    def no_ray(*a: Any, **k: Any) -> None:
        raise AssertionError("Ray started before the arguments were checked")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_ray)
    with pytest.raises(error) as caught:
        neve_ray.run_search("digits", num_samples=1, run_config=make(tune))
    assert message in str(caught.value)


def test_resume_needs_the_experiment_folder() -> None:
    tune = _tune()
    from neve_tune import load_study
    from neve_tune.ray._search import check_search_args

    with pytest.raises(ValueError, match=r"resume needs run_config=RunConfig\(storage_path"):
        check_search_args(load_study("digits"), resume=True, run_config=tune.RunConfig())
    check_search_args(
        load_study("digits"), resume=True, run_config=tune.RunConfig(name="exp", storage_path="s")
    )


def test_the_search_adds_its_own_settings_to_a_copy(tmp_path: Path, monkeypatch) -> None:
    """The search's stop, checkpoint policy and callbacks (before the user's) go into a copy;
    a relative local storage path is made absolute; the user's RunConfig is left as given."""
    tune = _tune()
    from neve_tune.ray._run_config import run_config_for

    class Mine(tune.Callback):
        pass

    class Own(tune.Callback):
        pass

    monkeypatch.chdir(tmp_path)
    mine, own, stop = Mine(), Own(), {"training_iteration": 2}
    given = tune.RunConfig(name="exp", storage_path="runs", callbacks=[mine], verbose=0)
    config = run_config_for(given, stop, [own])
    assert config.callbacks == [own, mine] and config.stop == stop
    assert config.checkpoint_config.num_to_keep == 2
    assert config.storage_path == str(tmp_path / "runs") and os.path.isabs(config.storage_path)
    assert (config.name, config.verbose) == ("exp", 0)
    assert given.callbacks == [mine] and given.stop is None and given.storage_path == "runs"


def test_tune_run_gets_every_field_of_the_run_config() -> None:
    """``api="run"``: each field of the RunConfig is passed to ``tune.run`` under a name it
    takes, with the values given (the failure config as ``max_failures``/``fail_fast``)."""
    tune = _tune()
    from neve_tune.ray._run_config import run_kwargs

    config = tune.RunConfig(
        name="exp",
        storage_path="/tmp/x",
        verbose=1,
        callbacks=[],
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=True),
    )
    kwargs = run_kwargs(config)
    assert set(kwargs) <= set(inspect.signature(tune.run).parameters)
    fields = {f.name for f in dataclasses.fields(tune.RunConfig)}
    # every field is passed but local_dir (deprecated: RunConfig refuses it)
    assert fields - {"failure_config", "local_dir"} <= set(kwargs)
    assert (kwargs["name"], kwargs["storage_path"], kwargs["verbose"]) == ("exp", "/tmp/x", 1)
    assert (kwargs["max_failures"], kwargs["fail_fast"]) == (0, True)
