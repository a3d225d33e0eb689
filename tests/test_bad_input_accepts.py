"""Bad input that used to be accepted in silence (or end in a traceback), one table each
for the command line and the Python API: every row is refused before any work, in one
line naming the option or parameter (exit status 2 on the command line), with nothing
stored: no database created, no trial, no file written.

The companion of ``tests/test_bad_input.py``; a row fails as soon as its refusal
disappears (the command would then train, print to stdout or write a file).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from neve_tune import (
    Choice,
    IntUniform,
    LogUniform,
    Study,
    Uniform,
    evaluate,
    load_study,
    run_trial,
)
from neve_tune.cli import main
from neve_tune.optuna import (
    NeVePruner,
    last_fits,
    last_predictions,
    make_storage,
    pick_trial,
    plot_study,
    redact_url,
    report_epoch,
    run_worker,
    suggest_config,
    trial_history,
)
from neve_tune.optuna._worker_checks import IDENTITY_ATTR, study_identity

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAST = ["--data", "synthetic", "--max-epochs", "1"]
LONG_NAME = "s" * 600

STUDY = """
from neve_tune import Choice, IntUniform, LogUniform, Study, Uniform

STUDY = Study(name={name!r}, data="synthetic", max_epochs=1, {fields})
"""
# study files a trial could not train with as meant; each refused when it loads
STUDIES = {
    "batch_uniform": 'search_space={"lr": LogUniform(1e-3, 0.1), "batch_size": Uniform(16, 64)}',
    "nested_choice": 'search_space={"lr": LogUniform(1e-3, 0.1), "widths": Choice([[1, 2], [3]])}',
    "data_option_typo": 'data_options={"label_nosie": 0.2}',
    "no_threshold": (
        'search_space={"lr": LogUniform(1e-3, 0.1)}, defaults={"lr": 0.05, "batch_size": 32}'
    ),
    "unknown_model": 'model="resnet999"',
    "torchvision_unknown": 'model="torchvision:no_such_net"',
    "threshold_above_one": 'search_space={"threshold": LogUniform(1e-3, 2.0)}',
    "resources_word": 'resources="cpu"',
    "objective_long": 'objective="tse_e5"',
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bad files the tables point at, made once."""
    d = tmp_path_factory.mktemp("accepts")
    for name, fields in STUDIES.items():
        (d / f"{name}.py").write_text(STUDY.format(name=name, fields=fields))
    (d / "long_name.py").write_text(STUDY.format(name=LONG_NAME, fields="data_options={}"))
    (d / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (d / "latin1.py").write_bytes(
        "# caf\xe9\nfrom neve_tune import Study\nSTUDY = Study(name='x')\n".encode("latin-1")
    )
    # an SQLite file of another program, holding a table named like Optuna's
    con = sqlite3.connect(d / "foreign.db")
    con.execute("CREATE TABLE trials (id INTEGER, name TEXT)")
    con.commit()
    con.close()
    # an Optuna study created by a `digits` worker with --max-epochs 1
    url = f"sqlite:///{d}/shared.db"
    search = optuna.create_study(study_name="shared", storage=url)
    search.set_user_attr(IDENTITY_ATTR, study_identity(load_study("digits").replace(max_epochs=1)))
    return d


def _worker(*extra: str, db: str = "w") -> list[str]:
    return [
        "optuna",
        "worker",
        *extra,
        "--trials",
        "1",
        "--create",
        "--device",
        "cpu",
        "--storage",
        f"sqlite:///{{d}}/{db}.db",
    ]


# (argv, a substring of the one error line; {d} is the inputs folder)
CLI_CASES = [
    pytest.param(
        ["train", "{d}/batch_uniform.py"],
        "search space 'batch_size': batch_size is an int: "
        "use IntUniform(16, 64) or a Choice of ints",
        id="batch-size-uniform",
    ),
    pytest.param(
        [*_worker("{d}/batch_uniform.py")], "batch_size is an int", id="worker-batch-size-uniform"
    ),
    pytest.param(
        ["train", "{d}/nested_choice.py"],
        "search space 'widths': Choice values must be None, bool, int, float or str "
        "(what Optuna can store), got [1, 2]",
        id="choice-nested",
    ),
    pytest.param(
        ["train", "{d}/data_option_typo.py"],
        "data_options has unknown key 'label_nosie' for data 'synthetic'; known: [",
        id="data-options-typo",
    ),
    pytest.param(
        ["train", "--lr", "1e-320", *FAST],
        "--lr must be a normal float32 (>= 1.17549e-38",
        id="lr-subnormal",
    ),
    pytest.param(
        ["train", "--threshold", "1e308", *FAST],
        "--threshold must be a finite number > 0 and <= 1 "
        "(relative rule: a ratio to the peak velocity), got 1e+308",
        id="threshold-huge-relative",
    ),
    pytest.param(
        ["train", "--threshold-mode", "absolute", "--threshold", "1e308", *FAST],
        "--threshold must be a finite number > 0 and <= 3.40282e+38 "
        "(absolute rule: the velocity), got 1e+308",
        id="threshold-huge-absolute",
    ),
    pytest.param(
        ["train", "{d}/threshold_above_one.py"],
        "search space 'threshold': high: threshold must be a finite number > 0 and <= 1 "
        "(relative rule",
        id="study-threshold-above-one",
    ),
    pytest.param(
        ["optuna", "worker", "digits", "--trials", "1", "--storage", ""],
        "--storage is empty; omit it for an in-memory study",
        id="worker-storage-empty",
    ),
    pytest.param(
        [
            "compare",
            "--objective",
            "tse_e99999999999999999999",
            "--trials",
            "1",
            "--max-epochs",
            "1",
        ],
        "objective 'tse_e99999999999999999999' averages the last 99999999999999999999 epochs; "
        "N must be <= max_epochs (1)",
        id="compare-objective-huge",
    ),
    pytest.param(
        ["train", "{d}/objective_long.py"],
        "objective 'tse_e5' averages the last 5 epochs; N must be <= max_epochs (1)",
        id="study-objective-above-budget",
    ),
    pytest.param(
        ["train", "{d}/exits.py"],
        "study file '{d}/exits.py' called sys.exit(0) while loading",
        id="study-calls-sys-exit",
    ),
    pytest.param(
        ["train", "{d}/latin1.py"],
        "study file '{d}/latin1.py' is not UTF-8 text",
        id="study-not-utf8",
    ),
    pytest.param(
        [*_worker("digits", "--study-name", LONG_NAME)],
        "--study-name must be at most 512 characters (what Optuna's storages hold), got 600",
        id="worker-study-name-600",
    ),
    pytest.param(
        [*_worker("{d}/long_name.py")],
        "the study file's name (Study.name, the default study_name) must be at most 512 characters",
        id="worker-study-file-name-600",
    ),
    pytest.param(
        [
            "optuna",
            "worker",
            "digits",
            "--trials",
            "1",
            "--create",
            "--storage",
            "sqlite:///{d}/foreign.db",
        ],
        "holds tables Optuna did not create (trials); give another file",
        id="worker-foreign-sqlite",
    ),
    pytest.param(
        [*_worker("{d}/no_threshold.py")],
        "'threshold' is neither in defaults nor in search_space",
        id="worker-study-without-threshold",
    ),
    pytest.param(
        [*_worker("{d}/unknown_model.py")], "model must be one of", id="worker-unknown-model"
    ),
    pytest.param(
        [*_worker("{d}/torchvision_unknown.py")],
        "model 'torchvision:no_such_net': torchvision has no architecture 'no_such_net'",
        id="worker-torchvision-unknown-model",
    ),
    pytest.param(
        ["train", "{d}/unknown_model.py"], "model must be one of", id="train-unknown-model"
    ),
    pytest.param(
        ["train", "{d}/resources_word.py"],
        "resources must be a dict like {{'cpu': 1, 'gpu': 0.5}}, got 'cpu'",
        id="study-resources-word",
    ),
    pytest.param(
        [*_worker("digits", "--threads", "100000")],
        "--threads must be at most",
        id="worker-threads-huge",
    ),
    pytest.param(
        [
            "optuna",
            "plot",
            "--study-name",
            "x",
            "--storage",
            "sqlite:///{d}/missing.db",
            "--out",
            "{d}/plots",
        ],
        "--storage: {d}/missing.db does not exist; nothing to plot",
        id="plot-missing-database",
    ),
    pytest.param(
        [
            "optuna",
            "plot",
            "--study-name",
            "x",
            "--storage",
            "{d}/missing.log",
            "--out",
            "{d}/plots",
        ],
        "--storage: {d}/missing.log does not exist; nothing to plot",
        id="plot-missing-journal",
    ),
    # a study carries its identity: study file, data, epoch budget
    pytest.param(
        [
            "optuna",
            "worker",
            "mnist1d",
            "--study-name",
            "shared",
            "--max-epochs",
            "1",
            "--trials",
            "1",
            "--device",
            "cpu",
            "--storage",
            "sqlite:///{d}/shared.db",
        ],
        "study 'shared' was created from another study "
        "(study file: 'digits' in the storage, 'mnist1d' here;",
        id="worker-other-study-file",
    ),
    pytest.param(
        [
            "optuna",
            "worker",
            "digits",
            "--study-name",
            "shared",
            "--max-epochs",
            "2",
            "--trials",
            "1",
            "--device",
            "cpu",
            "--storage",
            "sqlite:///{d}/shared.db",
        ],
        "(max_epochs: 1 in the storage, 2 here)",
        id="worker-other-max-epochs",
    ),
    pytest.param(
        [
            "optuna",
            "worker",
            "digits",
            "--study-name",
            "shared",
            "--max-epochs",
            "1",
            "--label-noise",
            "0.2",
            "--trials",
            "1",
            "--device",
            "cpu",
            "--storage",
            "sqlite:///{d}/shared.db",
        ],
        "(data: {{'name': 'digits', 'label_noise': 0.0,",
        id="worker-other-data",
    ),
]


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("argv, message", CLI_CASES)
def test_cli_refuses_before_any_work(
    argv: list[str],
    message: str,
    inputs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = _snapshot(inputs)
    argv = [a.format(d=inputs) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert message.format(d=inputs) in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert "--create" not in err or argv[:2] != ["optuna", "plot"]
    assert out == "", "refused before any work: nothing on stdout"
    # nothing stored: no database created, the existing ones (and every other file) unchanged
    assert _snapshot(inputs) == before


def test_plot_of_a_missing_study_does_not_suggest_create(
    inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``plot`` has no ``--create``: its error names the studies there, no hint to create."""
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/p.db")
    assert (
        main(
            [
                "optuna",
                "plot",
                "--study-name",
                "x",
                "--storage",
                f"sqlite:///{tmp_path}/p.db",
                "--out",
                str(tmp_path / "plots"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "study 'x' does not exist in storage" in err and "(studies there: ['other'])" in err
    assert "--create" not in err and "create-study" not in err


def _trial() -> optuna.Trial:
    return optuna.create_study().ask()


def _twice() -> None:
    trial = _trial()
    report_epoch(trial, {"epoch": 1, "velocity": 0.2, "train_loss": 0.5})
    report_epoch(trial, {"epoch": 1, "velocity": 0.1, "train_loss": 0.4})


def _frozen() -> None:
    search = optuna.create_study()
    search.tell(search.ask(), 1.0)
    report_epoch(search.trials[0], {"epoch": 1, "velocity": 0.2, "train_loss": 0.5})


def _study(**changes: Any) -> Study:
    return load_study("digits").replace(data="synthetic", max_epochs=1, **changes)


def _ray(name: str) -> Callable[[], Any]:
    def call() -> Any:
        pytest.importorskip("ray")
        from neve_tune import ray as nr

        if name == "scheduler_signal":
            return nr.NeVeASHAScheduler(rung_signal="val_loss")
        if name == "report_negative_velocity":
            from neve_tune.ray._report import check_epoch_metrics

            return check_epoch_metrics({"epoch": 1, "velocity": -0.5, "train_loss": 0.3})
        if name == "verdict_none":
            return nr.velocity_verdict(None)
        if name == "stopper_none":
            return nr.NeVeStopper()("t", None)
        return nr.summarize(["x"])

    return call


# (call, expected exception, a substring of its message naming the parameter);
# calls take the inputs folder
API_CASES = [
    pytest.param(
        lambda d: _study(search_space={"lr": LogUniform(1e-3, 0.1), "batch_size": Uniform(16, 64)}),
        TypeError,
        "batch_size is an int: use IntUniform(16, 64) or a Choice of ints",
        id="batch-size-uniform",
    ),
    pytest.param(
        lambda d: _study(search_space={"batch_size": IntUniform(16, 64)}).replace(
            search_space={"batch_size": LogUniform(16, 64)}
        ),
        TypeError,
        "batch_size is an int",
        id="batch-size-loguniform",
    ),
    pytest.param(
        lambda d: run_trial(_study(), {"batch_size": 33.7}),
        TypeError,
        "config['batch_size'] must be an int >= 1, got 33.7",
        id="run-trial-batch-size-float",
    ),
    pytest.param(
        lambda d: run_trial(_study(), {"threshold": 5.0}),
        ValueError,
        "config['threshold'] must be a finite number > 0 and <= 1 (relative rule",
        id="run-trial-threshold",
    ),
    pytest.param(
        lambda d: run_trial(_study(), {"lr": 1e-320}),
        ValueError,
        "config['lr'] must be a normal float32",
        id="run-trial-lr-subnormal",
    ),
    pytest.param(
        lambda d: _study(search_space={"lr": LogUniform(1e-3, 0.1), "w": Choice([[1, 2], [3]])}),
        TypeError,
        "search space 'w': Choice values must be None, bool, int, float or str",
        id="choice-nested",
    ),
    pytest.param(
        lambda d: Choice(5),
        TypeError,
        "Choice values must be a list of values, like Choice([32, 64]), got 5",
        id="choice-int",
    ),
    pytest.param(
        lambda d: Choice("abc"),
        TypeError,
        "Choice values must be a list of values",
        id="choice-str",
    ),
    pytest.param(
        lambda d: _study(data_options={"label_nosie": 0.2}),
        ValueError,
        "data_options has unknown key 'label_nosie' for data 'synthetic'; known: [",
        id="data-options-typo",
    ),
    pytest.param(
        lambda d: _study(data_options=None),
        TypeError,
        "data_options must be a dict, got None",
        id="data-options-none",
    ),
    pytest.param(
        lambda d: _study(resources="cpu"),
        TypeError,
        "resources must be a dict like",
        id="resources-str",
    ),
    pytest.param(
        lambda d: _study(objective="tse_e99999999999999999999"),
        ValueError,
        "N must be <= max_epochs (1)",
        id="objective-huge",
    ),
    pytest.param(
        lambda d: _study(model="resnet999"), ValueError, "model must be one of", id="model-unknown"
    ),
    pytest.param(lambda d: _study(model=5), ValueError, "model must be one of", id="model-int"),
    pytest.param(
        lambda d: _study(model_options=None),
        TypeError,
        "model_options must be a dict",
        id="model-options-none",
    ),
    pytest.param(
        lambda d: _study(defaults=None),
        TypeError,
        "defaults must be a dict, got None",
        id="defaults-none",
    ),
    pytest.param(
        lambda d: _study(search_space=[1]),
        TypeError,
        "search_space must be a dict of names to distributions",
        id="search-space-list",
    ),
    pytest.param(
        lambda d: _study(
            defaults={"lr": 0.1, "batch_size": 32}, search_space={"lr": LogUniform(1e-3, 0.1)}
        ),
        ValueError,
        "'threshold' is neither in defaults nor in search_space",
        id="no-threshold",
    ),
    pytest.param(
        lambda d: _study(pc_restore="yes"),
        TypeError,
        "pc_restore must be 'mean', 'epoch' or None (no restore), got 'yes'",
        id="pc-restore-str",
    ),
    pytest.param(
        lambda d: _study(pc_restore=True),
        TypeError,
        "pc_restore must be 'mean', 'epoch' or None (no restore), got True",
        id="pc-restore-bool",
    ),
    pytest.param(
        lambda d: load_study(d / "exits.py"),
        ValueError,
        "called sys.exit(0) while loading",
        id="study-file-exits",
    ),
    pytest.param(
        lambda d: load_study(d / "latin1.py"),
        ValueError,
        "latin1.py' is not UTF-8 text",
        id="study-not-utf8",
    ),
    pytest.param(
        lambda d: _twice(),
        ValueError,
        "metrics['epoch'] 1 was just reported for trial 0",
        id="report-twice",
    ),
    pytest.param(
        lambda d: report_epoch(_trial(), {"epoch": 1, "velocity": -0.1, "train_loss": 0.5}),
        ValueError,
        "metrics['velocity'] must be >= 0",
        id="report-negative-velocity",
    ),
    pytest.param(
        lambda d: report_epoch(
            _trial(), {"epoch": 1, "velocity": 0.1, "train_loss": 0.5, "stalld": True}
        ),
        ValueError,
        "metrics has 'stalld': did you mean 'stalled'?",
        id="report-misspelled-extra-key",
    ),
    pytest.param(
        lambda d: _frozen(),
        TypeError,
        "trial must be the running optuna.Trial the objective received, got a FrozenTrial",
        id="report-frozen-trial",
    ),
    pytest.param(
        lambda d: report_epoch(None, {"epoch": 1, "train_loss": 0.5}),
        TypeError,
        "trial must be an optuna.Trial",
        id="report-trial-none",
    ),
    pytest.param(
        lambda d: pick_trial(None),
        TypeError,
        "search must be an optuna.Study",
        id="pick-trial-none",
    ),
    pytest.param(
        lambda d: last_fits(None), TypeError, "search must be an optuna.Study", id="last-fits-none"
    ),
    pytest.param(
        lambda d: last_predictions(None),
        TypeError,
        "search must be an optuna.Study",
        id="last-predictions-none",
    ),
    pytest.param(
        lambda d: trial_history(None),
        TypeError,
        "trial must be an optuna trial",
        id="trial-history-none",
    ),
    pytest.param(
        lambda d: plot_study(None, d / "plots"),
        TypeError,
        "study must be an optuna.Study",
        id="plot-study-none",
    ),
    pytest.param(
        lambda d: suggest_config(None, _study()),
        TypeError,
        "trial must be an optuna.Trial",
        id="suggest-config-trial-none",
    ),
    pytest.param(
        lambda d: suggest_config(_trial(), None),
        TypeError,
        "study must be a neve_tune.Study",
        id="suggest-config-study-none",
    ),
    pytest.param(
        lambda d: make_storage(5), TypeError, "storage must be a URL string", id="make-storage-int"
    ),
    pytest.param(
        lambda d: redact_url(5), TypeError, "url must be a storage URL string", id="redact-url-int"
    ),
    pytest.param(
        lambda d: NeVePruner().prune(None, None),
        TypeError,
        "study must be an optuna.Study",
        id="pruner-prune-none",
    ),
    pytest.param(
        lambda d: run_trial(None, {}),
        TypeError,
        "study must be a neve_tune.Study",
        id="run-trial-study-none",
    ),
    pytest.param(
        lambda d: run_trial(_study(), [1]),
        TypeError,
        "config must be a dict of hyperparameters",
        id="run-trial-config-list",
    ),
    pytest.param(
        lambda d: evaluate(None, None),
        TypeError,
        "model must be a torch.nn.Module",
        id="evaluate-none",
    ),
    pytest.param(
        lambda d: run_worker(
            "digits",
            study_name=LONG_NAME,
            n_trials=1,
            create=True,
            log=None,
            storage=f"sqlite:///{d}/api_long.db",
        ),
        ValueError,
        "study_name must be at most 512 characters",
        id="worker-study-name-600",
    ),
    pytest.param(
        lambda d: run_worker("digits", torch_threads=100000, n_trials=1, log=None),
        ValueError,
        "torch_threads must be at most",
        id="worker-threads-huge",
    ),
    pytest.param(
        lambda d: _ray("scheduler_signal")(),
        ValueError,
        "rung_signal must be one of ('train_loss', 'velocity', 'consensus', 'auto'), "
        "got 'val_loss'",
        id="ray-scheduler-rung-signal",
    ),
    pytest.param(
        lambda d: _ray("report_negative_velocity")(),
        ValueError,
        "metrics['velocity'] must be >= 0",
        id="ray-report-negative-velocity",
    ),
    pytest.param(
        lambda d: _ray("verdict_none")(),
        TypeError,
        "result must be a dict",
        id="ray-velocity-verdict-none",
    ),
    pytest.param(
        lambda d: _ray("stopper_none")(), TypeError, "result must be a dict", id="ray-stopper-none"
    ),
    pytest.param(
        lambda d: _ray("summarize")(),
        TypeError,
        "results must be a Tune ResultGrid",
        id="ray-summarize-list",
    ),
]


@pytest.mark.parametrize("call, error, message", API_CASES)
def test_api_refuses_naming_the_parameter(
    call: Callable[[Path], Any], error: type[Exception], message: str, inputs: Path
) -> None:
    before = _snapshot(inputs)
    with pytest.raises(error) as caught:
        call(inputs)
    text = str(caught.value)
    assert message.format(d=inputs) in text
    assert "\n" not in text
    assert _snapshot(inputs) == before, "nothing stored: no database, no file"


def test_a_worker_stores_the_identity_its_study_was_created_with(tmp_path: Path) -> None:
    """The first worker stores study file, data and epoch budget; a worker that agrees
    joins (and runs its trial)."""
    url = f"sqlite:///{tmp_path}/s.db"
    study = _study()
    search = run_worker(study, storage=url, n_trials=1, create=True, log=None, device="cpu")
    assert search.user_attrs[IDENTITY_ATTR] == study_identity(study)
    assert search.user_attrs[IDENTITY_ATTR]["max_epochs"] == 1
    again = run_worker(study, storage=url, n_trials=1, log=None, device="cpu")
    assert len(again.trials) == 2
    with pytest.raises(ValueError, match=r"max_epochs: 1 in the storage, 2 here"):
        run_worker(
            study.replace(max_epochs=2),
            storage=url,
            n_trials=1,
            log=None,
            device="cpu",
        )
    assert len(optuna.load_study(study_name=study.name, storage=url).trials) == 2


def test_an_empty_storage_string_in_the_api_says_in_memory() -> None:
    """The API keeps ``storage=""`` as in-memory (documented); its line says so, where it
    printed ``study 'x' in ,`` (the command line refuses ``--storage ''``)."""
    lines: list[str] = []
    run_worker(_study(), storage="", n_trials=1, log=lines.append, device="cpu")
    assert "study 'digits' in <in-memory>, method=neve" in lines[0]
