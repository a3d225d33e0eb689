"""How many times a Ray trial is retried from its checkpoint when nobody says: on a
cluster (``--address``, or a Ray of several nodes) 2, so a lost node costs no trial; on
one machine 0. And what a trial asking for a share of a GPU requests from Ray. No Ray is
started here: the search and ``ray.init`` are stand-ins."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray.tune")

import ray  # noqa: E402
from ray import tune  # noqa: E402

import neve_tune.ray as neve_ray  # noqa: E402
import neve_tune.ray._search as search_module  # noqa: E402
from neve_tune.cli import main  # noqa: E402
from neve_tune.cli import ray as ray_cli  # noqa: E402
from neve_tune.ray import CLUSTER_MAX_FAILURES, default_max_failures, neve_trainable  # noqa: E402

ARGS = ["ray", "run", "digits", "--trials", "1", "--max-epochs", "1"]


def _nodes(*alive: bool) -> list[dict[str, Any]]:
    return [{"Alive": a, "Resources": {"CPU": 1.0}} for a in alive]


@pytest.mark.parametrize(
    "alive, expected", [((True,), 0), ((True, False), 0), ((True, True), CLUSTER_MAX_FAILURES)]
)
def test_the_default_retries_follow_the_alive_nodes(alive, expected, monkeypatch) -> None:
    monkeypatch.setattr(ray, "nodes", lambda: _nodes(*alive))
    assert default_max_failures() == expected
    assert CLUSTER_MAX_FAILURES == 2


@pytest.fixture
def searches(monkeypatch) -> list[dict[str, Any]]:
    """The ``run_search`` calls ``neve-tune ray run`` makes (Ray itself is not started)."""
    calls: list[dict[str, Any]] = []

    def run_search(study: Any, **kw: Any) -> Any:
        calls.append(kw)
        return "results"

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: _nodes(True))  # a local Ray: one node
    monkeypatch.setattr(ray_cli, "check_address", lambda address: None)
    monkeypatch.setattr(neve_ray, "run_search", run_search)
    monkeypatch.setattr(
        neve_ray,
        "summarize",
        lambda results, selection: {
            "trials": [],
            "errors": 0,
            "total_epochs_equiv": 0.0,
            "best": None,
        },
    )
    return calls


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], 0),  # default_max_failures() of the local Ray of one node
        (["--address", "10.0.0.5:6379"], CLUSTER_MAX_FAILURES),
        (["--address", "10.0.0.5:6379", "--max-failures", "0"], 0),  # said explicitly: kept
        (["--max-failures", "-1"], -1),
    ],
)
def test_ray_run_retries_trials_on_a_cluster_by_default(flags, expected, searches, capsys) -> None:
    assert main([*ARGS, *flags]) == 0
    assert [c["run_config"].failure_config.max_failures for c in searches] == [expected]


def test_ray_run_passes_its_flags_in_a_run_config(searches, tmp_path) -> None:
    """``--name``, ``--storage-path`` and ``--verbose`` reach Tune through one
    ``ray.tune.RunConfig``."""
    flags = ["--name", "exp", "--storage-path", str(tmp_path), "--verbose", "2"]
    assert main([*ARGS, *flags]) == 0
    (config,) = [c["run_config"] for c in searches]
    assert isinstance(config, tune.RunConfig)
    assert (config.name, config.storage_path, config.verbose) == ("exp", str(tmp_path), 2)


def test_run_search_fills_in_the_default_from_the_cluster(monkeypatch) -> None:
    """No ``run_config``: :func:`default_max_failures` of the connected Ray, passed to Tune's
    ``FailureConfig``; a given ``RunConfig``'s ``FailureConfig`` is taken as it is (Tune's
    default: no retries)."""
    given: list[int] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: _nodes(True, True))
    monkeypatch.setattr(
        search_module,
        "_tuner_api",
        lambda *a, run_config, **k: given.append(run_config.failure_config.max_failures),
    )
    neve_ray.run_search("digits", num_samples=1)
    once = tune.RunConfig(failure_config=tune.FailureConfig(max_failures=1))
    neve_ray.run_search("digits", num_samples=1, run_config=once)
    neve_ray.run_search("digits", num_samples=1, run_config=tune.RunConfig())
    assert given == [CLUSTER_MAX_FAILURES, 1, 0]


def test_a_fractional_gpu_trial_asks_ray_for_a_gpu_share() -> None:
    """``{"gpu": 0.5}``: Tune's placement request holds ``GPU: 0.5``, so Ray places the
    trial only on a node that declares GPUs (``ray start --num-gpus=N``), two per GPU."""
    request = neve_trainable(
        "digits", resources={"cpu": 1, "gpu": 0.5}
    )._resources  # set by tune.with_resources
    assert isinstance(request, tune.PlacementGroupFactory)
    assert request.required_resources == {"CPU": 1.0, "GPU": 0.5}
    cpu_only = neve_trainable("digits", resources={"cpu": 1})._resources
    assert "GPU" not in cpu_only.required_resources or cpu_only.required_resources["GPU"] == 0


def test_a_record_whose_progress_file_lost_rows_to_a_retry_says_so() -> None:
    """On a retry Ray copies a trial's progress file back from storage, which can lag the
    driver's copy: the comparison's record warns that its series are partial."""
    import pandas as pd

    from neve_tune.ray._search_trials import _record
    from neve_tune.study import Study

    class Result:
        config = {"lr": 0.05}
        error = None
        metrics = {"epoch": 8, "done": True, "stopped_by": "velocity", "objective": 0.1}
        metrics_dataframe = pd.DataFrame(
            {"training_iteration": [5, 6, 7, 8], "lr": [0.05] * 4, "velocity": [0.1] * 4}
        )

    with pytest.warns(RuntimeWarning, match=r"trial 3: Ray's progress file holds 4 of its 8"):
        record = _record(3, Result(), Study(name="s", data="digits"), 1000)
    assert record.epochs == 8 and len(record.velocity) == 4
