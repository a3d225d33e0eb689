"""optuna-dashboard shows what a worker reported: a real ``optuna-dashboard`` server over
the SQLite study of a ``neve-tune optuna worker`` run, read through its HTTP API (the JSON
the dashboard's pages are drawn from). The README promises that each epoch's metrics are
"visible in optuna-dashboard": the trial's user attributes ``epoch_0001``, ... and its
intermediate values, as :func:`neve_tune.optuna.report_epoch` wrote them.

optuna-dashboard is in the ``dev`` extra: without it this module fails, it does not skip.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard  # noqa: F401  (a dev dependency: an ImportError here is a failure)
import pytest
import torch
from optuna.study import StudyDirection

import neve_tune.optuna._objective as objective_module
from neve_tune._json import json_safe
from neve_tune.cli import main
from neve_tune.optuna import epoch_key
from neve_tune.optuna._report import direction_sign

optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY_NAME = "dash"
EPOCHS = 3
START_TIMEOUT_S = 60.0


def _dashboard_command() -> str:
    """The ``optuna-dashboard`` script of this interpreter's environment (PATH as a fallback)."""
    here = Path(sys.executable).parent / "optuna-dashboard"
    found = str(here) if here.exists() else shutil.which("optuna-dashboard")
    if found is None:
        pytest.fail("optuna-dashboard is not installed (pip install -e '.[dev]' installs it)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=10) as response:
        assert response.status == 200, (path, response.status)
        assert response.headers.get_content_type() == "application/json", path
        return json.load(response)


@pytest.fixture(scope="module")
def reported(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, dict[int, list[tuple[dict, float]]]]:
    """A 2-trial worker run on digits into an SQLite file: its URL and, per trial number,
    each ``report_epoch`` call as ``(stored metrics, reported value)``."""
    calls: dict[int, list[tuple[dict, float]]] = {}
    original = objective_module.report_epoch

    def recording(trial: optuna.Trial, metrics: dict, **kwargs: Any) -> float:
        value = original(trial, metrics, **kwargs)
        calls.setdefault(trial.number, []).append((json_safe(dict(metrics)), value))
        return value

    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'search.db'}"
    mp = pytest.MonkeyPatch()
    mp.setattr(objective_module, "report_epoch", recording)
    threads = torch.get_num_threads()
    try:
        code = main(
            [
                "optuna",
                "worker",
                "digits",
                "--storage",
                url,
                "--study-name",
                STUDY_NAME,
                "--create",
                "--trials",
                "2",
                "--max-epochs",
                str(EPOCHS),
                "--threads",
                "1",
                "--quiet",
            ]
        )
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    assert code == 0
    assert sorted(calls) == [0, 1] and all(calls.values()), calls
    return url, calls


@pytest.fixture(scope="module")
def dashboard(reported) -> Iterator[str]:
    """A real optuna-dashboard server over the worker's SQLite file; its base URL."""
    url, _ = reported
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            _dashboard_command(),
            url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--server",
            "wsgiref",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"optuna-dashboard exited with {proc.returncode}: {proc.stdout.read()[-2000:]}"
                )
            try:
                _get(base, "/api/meta")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"optuna-dashboard did not answer on {base} within {START_TIMEOUT_S:g} s"
                    )
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _study_id(base: str) -> int:
    studies = _get(base, "/api/studies")["study_summaries"]
    ids = [s["study_id"] for s in studies if s["study_name"] == STUDY_NAME]
    assert len(ids) == 1, studies
    return ids[0]


def _as_float(value: float | str) -> float:
    """The dashboard sends non-finite intermediate values as "nan", "inf", "-inf"."""
    return float(value)


def test_dashboard_shows_every_epoch_as_reported(reported, dashboard) -> None:
    url, calls = reported
    detail = _get(dashboard, f"/api/studies/{_study_id(dashboard)}")
    assert detail["name"] == STUDY_NAME and detail["has_intermediate_values"] is True
    sign = direction_sign(StudyDirection[detail["directions"][0].upper()])
    trials = {t["number"]: t for t in detail["trials"]}
    assert sorted(trials) == sorted(calls)
    for number, epochs in calls.items():
        trial = trials[number]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        shown = {v["step"]: _as_float(v["value"]) for v in trial["intermediate_values"]}
        steps = [metrics["epoch"] for metrics, _ in epochs]
        assert steps == list(range(1, len(epochs) + 1)) and len(steps) <= EPOCHS
        assert sorted(shown) == steps, (number, shown)
        for metrics, value in epochs:
            step = metrics["epoch"]
            # the intermediate value is what report_epoch reported: the oriented training loss
            assert shown[step] == value or (math.isnan(shown[step]) and math.isnan(value)), (
                number,
                step,
            )
            if math.isfinite(value):
                assert value == sign * metrics["train_loss"]
            # the user attribute is the whole epoch's metric dict, complete (the dashboard
            # cuts attribute values at 1024 characters: a cut one would not parse)
            key = epoch_key(step)
            assert key in attrs, (number, sorted(attrs))
            epoch = json.loads(attrs[key])
            assert epoch == metrics
            assert {"epoch", "velocity", "train_loss", "lr"} <= set(epoch)
            assert isinstance(epoch["velocity"], float) and isinstance(epoch["train_loss"], float)
        assert not [
            k for k in attrs if k.startswith("epoch_") and k not in {epoch_key(s) for s in steps}
        ]
    assert {"epoch_0001"} <= {a["key"] for a in detail["union_user_attrs"]}


def test_dashboard_agrees_with_the_storage(reported, dashboard) -> None:
    """What the dashboard serves is what Optuna reads from the same file."""
    url, _ = reported
    stored = optuna.load_study(study_name=STUDY_NAME, storage=url).get_trials(deepcopy=False)
    detail = _get(dashboard, f"/api/studies/{_study_id(dashboard)}")
    trials = {t["number"]: t for t in detail["trials"]}
    for frozen in stored:
        trial = trials[frozen.number]
        assert trial["state"].upper() == frozen.state.name
        assert {
            v["step"]: _as_float(v["value"]) for v in trial["intermediate_values"]
        } == pytest.approx(frozen.intermediate_values, nan_ok=True)
        epochs = {
            a["key"]: json.loads(a["value"])
            for a in trial["user_attrs"]
            if a["key"].startswith("epoch_")
        }
        assert epochs == {k: v for k, v in frozen.user_attrs.items() if k.startswith("epoch_")}
