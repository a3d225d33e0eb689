"""Tune's ``ray.tune.RunConfig`` in a search: what :func:`~neve_tune.ray.run_search` takes
from it (where the experiment lives, its callbacks, output and retries), what it refuses
(the fields the search sets itself) and how it passes it to either Tune API.

    >>> from ray import tune
    >>> check_run_config(tune.RunConfig(name="digits-neve"))
    >>> check_run_config(tune.RunConfig(stop={"training_iteration": 5}))
    Traceback (most recent call last):
    ...
    ValueError: run_config.stop is the search's own (run_search(stopper=...)); leave it None
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ray import tune

from .._checks import check_int
from .._names import check_folder_name, check_path_fits

__all__ = ["KEEP_CHECKPOINTS", "check_run_config", "run_config_for", "run_kwargs"]

KEEP_CHECKPOINTS = 2  # per trial: the last one is what a retried or restored trial resumes from


def check_run_config(run_config: Any) -> None:
    """A ``ray.tune.RunConfig`` or None, each field named in its error: a plain folder
    ``name``, a ``storage_path`` whose parts fit the file system, ``max_failures`` >= -1, and
    neither ``stop`` nor ``checkpoint_config`` set (the search sets them: refused rather than
    overridden in silence)."""
    if run_config is None:
        return
    if not isinstance(run_config, tune.RunConfig):
        raise TypeError(
            "run_config must be a ray.tune.RunConfig (not ray.train.RunConfig) or None, "
            f"got {type(run_config).__module__}.{type(run_config).__name__}"
        )
    if run_config.stop is not None:
        raise ValueError(
            "run_config.stop is the search's own (run_search(stopper=...)); leave it None"
        )
    if run_config.checkpoint_config != tune.CheckpointConfig():
        raise ValueError(
            f"run_config.checkpoint_config is the search's own (the last {KEEP_CHECKPOINTS} "
            "checkpoints of each trial, which a retried trial resumes from); leave it unset"
        )
    if run_config.name is not None:
        check_folder_name("run_config.name", run_config.name)
    if run_config.storage_path is not None and "://" not in str(run_config.storage_path):
        check_path_fits("run_config.storage_path", run_config.storage_path)
    failures = run_config.failure_config.max_failures
    check_int("run_config.failure_config.max_failures", failures, minimum=-1)


def run_config_for(
    run_config: tune.RunConfig, stop: Any, callbacks: list[tune.Callback]
) -> tune.RunConfig:
    """``run_config`` with the search's ``stop``, its checkpoint policy and its own
    ``callbacks`` before the given ones; a local ``storage_path`` made absolute."""
    storage = run_config.storage_path
    if storage is not None and "://" not in str(storage):
        storage = str(Path(storage).resolve())
    return dataclasses.replace(
        run_config,
        storage_path=storage,
        stop=stop,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
        callbacks=[*callbacks, *(run_config.callbacks or [])],
    )


def run_kwargs(run_config: tune.RunConfig) -> dict[str, Any]:
    """The ``tune.run`` arguments that say what ``run_config`` says (``tune.run`` takes
    each field on its own; the failure config as ``max_failures`` and ``fail_fast``)."""
    return {
        "name": run_config.name,
        "storage_path": run_config.storage_path,
        "storage_filesystem": run_config.storage_filesystem,
        "stop": run_config.stop,
        "checkpoint_config": run_config.checkpoint_config,
        "sync_config": run_config.sync_config,
        "verbose": run_config.verbose,
        "progress_reporter": run_config.progress_reporter,
        "log_to_file": run_config.log_to_file,
        "callbacks": run_config.callbacks,
        "max_failures": run_config.failure_config.max_failures,
        "fail_fast": run_config.failure_config.fail_fast,
    }
