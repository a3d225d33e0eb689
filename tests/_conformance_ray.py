"""The conformance suite's Ray door: the own-loop recipe as a Ray Tune function trainable
(``neve_tune.ray.report_epoch`` with a ``tune.Checkpoint`` every epoch, resuming from
``tune.get_checkpoint()``), stopped by ``NeVeStopper``. One local Ray session runs every
Ray cell's trials: :func:`search` returns their outcomes."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

try:
    from tests import _conformance as C
except ImportError:  # tests/ on sys.path (pytest's default import mode)
    import _conformance as C  # type: ignore[no-redef]


def trainable(config: dict[str, Any]) -> None:
    """The own loop of :class:`_conformance.OwnLoop`, reported to Tune each epoch with a
    checkpoint; ``crash_after``: fail once after that epoch (Ray retries from the last
    checkpoint); ``subset``: record the fixed subset's predictions and fit (the ``auto`` pick)."""
    from ray import tune

    from neve_tune.ray import report_epoch
    from neve_tune.selection import SelectionSubset

    case = C.Case(config["lr"], noise=config["noise"], guard=config["guard"])
    loop = C.OwnLoop(case)
    subset = SelectionSubset.from_dataset(C.dataset(case.noise), 500, seed=0)
    rows: list[dict[str, Any]] = []  # what was reported, kept in the checkpoint (see _outcome)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(os.path.join(folder, "loop.pt"), weights_only=False)
        loop.load(saved)
        rows = saved["rows"]
    while not loop.neve.should_stop:
        if loop.neve.epoch == config.get("crash_after") and not os.path.exists(config["marker"]):
            Path(config["marker"]).touch()
            raise RuntimeError("killed")  # once: the retry resumes from the checkpoint
        metrics = loop.epoch()
        metrics["objective"] = metrics["kept_train_loss"]
        if config.get("subset"):
            codes = subset.predict(loop.model)
            metrics.update(subset_pred=codes, subset_fit=subset.fit(codes))
        if "crash_after" not in config:  # only the run killed once needs its checkpoints
            report_epoch(metrics)
            continue
        rows.append({k: metrics.get(k) for k in ROW})
        with tempfile.TemporaryDirectory() as folder:
            torch.save({**loop.state(), "rows": rows}, os.path.join(folder, "loop.pt"))
            report_epoch(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


#: the per-epoch metrics an outcome compares across doors
ROW = ("epoch", "velocity", "lr", "train_loss", "prediction_changes", "kept_epoch")
ROW += ("kept_train_loss", "neve_stop", "stalled", "stopped_by")


def _reported(result: Any) -> list[dict[str, Any]]:
    """The rows of Ray's progress file, as ``neve.step()`` returned them."""
    frame = result.metrics_dataframe.drop_duplicates("epoch", keep="last").sort_values("epoch")
    history = [{k: row[k] for k in ROW} for row in frame.to_dict("records")]
    for m in history:
        changes = m["prediction_changes"]
        m["prediction_changes"] = None if changes is None or changes != changes else int(changes)
        if m["stopped_by"] != m["stopped_by"]:  # NaN: not stopped yet
            m["stopped_by"] = None
    return history


def _outcome(result: Any) -> C.Outcome:
    """A trial's outcome. A retried trial's series comes from its last checkpoint: on a
    retry Ray copies the progress file back from storage, which can lag the driver's copy
    and drop the rows before the failure; the rows Ray kept must match it."""
    history = _reported(result)
    if "crash_after" in result.config["run"]:
        with result.checkpoint.as_directory() as folder:
            rows = torch.load(os.path.join(folder, "loop.pt"), weights_only=False)["rows"]
        assert rows[-1]["epoch"] == history[-1]["epoch"], (rows[-1], history[-1])
        assert all(row in rows for row in history), (history, rows)
        history = rows
    last = result.metrics
    return C.Outcome(last.get("stopped_by"), history, {"stopped_by": last.get("stopped_by")})


def _config(case: C.Case, **extra: Any) -> dict[str, Any]:
    return {"lr": case.lr, "noise": case.noise, "guard": case.guard, **extra}


def _tune(name: str, runs: list[dict[str, Any]], tmp: Path, **tune_config: Any) -> Any:
    from ray import tune

    from neve_tune.ray import NeVeStopper

    callbacks = tune_config.pop("callbacks", [])
    return tune.Tuner(
        tune.with_resources(lambda config: trainable(config["run"]), {"cpu": 0.5}),
        param_space={"run": tune.grid_search(runs)},
        tune_config=tune.TuneConfig(reuse_actors=True, **tune_config),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(tmp),
            stop=NeVeStopper(num_classes=C.CLASSES),
            failure_config=tune.FailureConfig(max_failures=1),
            callbacks=callbacks,
            verbose=0,
        ),
    ).fit()


def _picks(results: list[Any]) -> dict[str, Any]:
    """``summarize``'s picks of two searches (clean, noisy) by each rule, and whether
    ``auto`` warns on results without the subset's fit."""
    from neve_tune.ray import summarize

    out: dict[str, Any] = {}
    for name, noise in (("clean", 0.0), ("noisy", 0.2)):
        mine = [
            r
            for r in results
            if r.config["run"].get("subset") and r.config["run"]["noise"] == noise
        ]
        assert len(mine) == len(C.PICK_LRS) and not any(r.error for r in mine)
        auto = summarize(mine, "auto")
        out[name] = (auto["selection"]["rule"], auto["best"]["config"]["run"]["lr"])
        for rule in ("objective", "consensus"):
            out[f"{name}_{rule}"] = summarize(mine, rule)["best"]["config"]["run"]["lr"]
    bare = [r for r in results if not r.config["run"].get("subset")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summarize(bare, "auto")
    out["without_data_warns"] = any("subset_fit" in str(w.message) for w in caught)
    return out


def search(tmp: Path) -> dict[str, Any]:
    """Every Ray cell's trials in one local Ray session: the four cases, the clean run
    killed once after epoch 4, two searches for the ``auto`` pick, and a scheduler's stop."""
    import ray

    from neve_tune.ray import NeVeASHAScheduler

    runs = [{**_config(case), "case": name} for name, case in C.CASES.items()]
    killed = _config(C.CASES["clean"], crash_after=C.STOPPED_AT, marker=str(tmp / "killed"))
    runs.append({**killed, "case": "resumed"})
    runs += [_config(C.Case(lr, noise=n), subset=True) for n in (0.0, 0.2) for lr in C.PICK_LRS]
    if ray.is_initialized():
        ray.shutdown()
    # the workers import this module (and tests/_conformance.py) by name, as the driver did
    root = Path(__file__).resolve().parents[1]
    path = [str(root), str(root / "tests"), os.environ.get("PYTHONPATH", "")]
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in path if p)}},
    )
    try:
        results = list(_tune("cells", runs, tmp, max_concurrent_trials=4))
        # a scheduler's stop: the slow learner loses to the clean run at the first rung
        sched = NeVeASHAScheduler(max_t=C.MAX_EPOCHS, min_resource=1, reduction_factor=2)
        slow = C.Case(0.02)
        rung = _tune(
            "rung",
            [_config(C.CASES["clean"]), _config(slow)],
            tmp,
            scheduler=sched,
            max_concurrent_trials=1,
            callbacks=[sched.callback()],
        )
    finally:
        ray.shutdown()
    by_case = {r.config["run"]["case"]: r for r in results if "case" in r.config["run"]}
    assert not any(r.error for r in by_case.values()), [r.error for r in by_case.values()]
    pruned = next(r for r in rung if r.config["run"]["lr"] == slow.lr)
    return {
        "runs": {name: _outcome(by_case[name]) for name in C.CASES},
        "resumed": _outcome(by_case["resumed"]),
        "pruned": _outcome(pruned),
        "picks": _picks(results),
    }
