"""Bad input, one table: every case ends with exit status 2 (CLI) or one clear exception
(Python API), one line naming the option or parameter, and no traceback.

The CLI cases run ``neve_tune.cli.main`` in-process with CUDA hidden, so the table means the
same on a GPU machine. Where training could start, ``--data synthetic --max-epochs 1``
keeps a wrongly accepted case short; since none of them may train, a case also asserts
that nothing reached stdout (no epoch line, no worker line, no result).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from neve_tune import NeuralVelocity, NeVe, gaussian_probe, load_study, run_trial
from neve_tune.cli import main
from neve_tune.compare import compare, compare_searches
from neve_tune.optuna import RecoveryConfig, make_objective, report_epoch, run_worker
from neve_tune.train import load_checkpoint

optuna.logging.set_verbosity(optuna.logging.WARNING)

FAST = ["--data", "synthetic", "--max-epochs", "1"]

BAD_STUDY = """
from neve_tune import Choice, LogUniform, Study, Uniform

STUDY = Study(name="bad", data="synthetic", max_epochs=1, {fields})
"""
# study files whose search space or defaults no trial could train with
BAD_STUDIES = {
    "batch_choice": 'search_space={"lr": LogUniform(1e-3, 0.1), "batch_size": Choice([0, -5])}',
    "lr_negative": 'search_space={"lr": Uniform(-1, -0.5)}',
    "lr_infinite": 'search_space={"lr": LogUniform(1e-3, float("inf"))}',
    "lr_word": (
        'search_space={"threshold": LogUniform(1e-4, 1e-2)}, '
        'defaults={"lr": "fast", "batch_size": 64}'
    ),
    # a name one typo away from a hyperparameter: sampled, then never read by any trial
    "threshold_typo": (
        'search_space={"lr": LogUniform(1e-3, 0.1), "treshold": LogUniform(1e-3, 0.1)}'
    ),
    "model_option_typo": 'model="small_cnn", model_options={"widht": 16}',
    "momentum_typo": 'defaults={"lr": 0.1, "batch_size": 64, "threshold": 1e-2, "momentun": 0.5}',
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bad files the table points at, made once: study files, checkpoints, a file
    standing where a folder should be."""
    d = tmp_path_factory.mktemp("bad")
    (d / "syntax_error.py").write_text("from neve_tune import Study\nSTUDY = Study(name='x'\n")
    (d / "raises.py").write_text("raise RuntimeError('no GPU quota today')\n")
    (d / "empty.pt").write_bytes(b"")
    (d / "text.pt").write_text("epoch,loss\n1,0.5\n")
    torch.save(torch.ones(3), d / "tensor.pt")
    torch.save({"weights": torch.ones(2), "step": 3}, d / "other_dict.pt")
    (d / "folder.pt").mkdir()
    (d / "a_file").write_text("not a folder\n")
    for name, fields in BAD_STUDIES.items():
        (d / f"{name}.py").write_text(BAD_STUDY.format(fields=fields))
    # a real checkpoint of `train --data synthetic --max-epochs 1`, and its payload without the
    # checksum header (as neve_tune wrote checkpoints before 0.1.0)
    assert (
        main(["train", *FAST, "--device", "cpu", "--checkpoint", str(d / "good.pt"), "--quiet"])
        == 0
    )
    torch.save(load_checkpoint(d / "good.pt"), d / "unchecked.pt")
    return d


def _no_fail_trial(url: str) -> None:
    """The worker refused before any trial: no FAIL trial in its storage."""
    for summary in optuna.get_all_study_summaries(url, include_best_trial=False):
        trials = optuna.load_study(study_name=summary.study_name, storage=url).get_trials(
            deepcopy=False
        )
        assert not [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL]


def _worker(device: str, db: str) -> list[str]:
    return [
        "optuna",
        "worker",
        "digits",
        "--device",
        device,
        "--trials",
        "1",
        "--create",
        "--storage",
        f"sqlite:///{{d}}/{db}.db",
        "--max-epochs",
        "1",
    ]


def _one_trial_worker(*flags: str) -> list[str]:
    """``neve-tune optuna worker digits --trials 1`` with ``flags``."""
    return ["optuna", "worker", "digits", "--trials", "1", *flags]


# (argv, expected exit status, a substring of the one error line; {d} is the inputs folder)
CLI_CASES = [
    pytest.param(
        ["train", "{d}/syntax_error.py"],
        2,
        "study file '{d}/syntax_error.py' has a syntax error at line 2",
        id="study-syntax-error",
    ),
    pytest.param(
        ["train", "{d}/raises.py"],
        2,
        "study file '{d}/raises.py' failed to load: RuntimeError: no GPU quota",
        id="study-raises-on-import",
    ),
    pytest.param(
        ["train", "--device", "cuda", *FAST],
        2,
        "--device cuda: CUDA is not available",
        id="train-device-cuda",
    ),
    pytest.param(
        ["train", "--device", "banana", *FAST],
        2,
        "--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'banana'",
        id="train-device-banana",
    ),
    pytest.param(
        ["compare", "--device", "cuda", "--trials", "1", "--max-epochs", "1"],
        2,
        "--device cuda: CUDA is not available",
        id="compare-device-cuda",
    ),
    pytest.param(
        ["compare", "--device", "banana", "--trials", "1", "--max-epochs", "1"],
        2,
        "--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'banana'",
        id="compare-device-banana",
    ),
    pytest.param(
        _worker("cuda", "w_cuda"),
        2,
        "--device cuda: CUDA is not available",
        id="worker-device-cuda",
    ),
    pytest.param(
        _worker("banana", "w_banana"),
        2,
        "--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'banana'",
        id="worker-device-banana",
    ),
    pytest.param(
        ["train", *FAST, "--checkpoint", "{d}/empty.pt"],
        2,
        "--checkpoint '{d}/empty.pt' is empty; delete it to start over",
        id="checkpoint-empty",
    ),
    pytest.param(
        ["train", *FAST, "--checkpoint", "{d}/unchecked.pt"],
        2,
        "--checkpoint '{d}/unchecked.pt' has no checksum (a neve_tune checkpoint of a "
        "neve_tune before 0.1.0?)",
        id="checkpoint-without-checksum",
    ),
    pytest.param(
        ["train", *FAST, "--checkpoint", "{d}/text.pt"],
        2,
        "--checkpoint '{d}/text.pt' cannot be read as a torch checkpoint",
        id="checkpoint-text",
    ),
    pytest.param(
        ["train", *FAST, "--checkpoint", "{d}/tensor.pt"],
        2,
        "--checkpoint '{d}/tensor.pt' holds a Tensor, not a neve_tune checkpoint; delete it",
        id="checkpoint-tensor",
    ),
    pytest.param(
        ["train", *FAST, "--checkpoint", "{d}/other_dict.pt"],
        2,
        "--checkpoint '{d}/other_dict.pt' is not a neve_tune checkpoint",
        id="checkpoint-other-dict",
    ),
    pytest.param(
        ["train", *FAST, "--checkpoint", "{d}/folder.pt"],
        2,
        "--checkpoint {d}/folder.pt: is a directory",
        id="checkpoint-directory",
    ),
    pytest.param(
        ["train", *FAST, "--checkpoint", "{d}/good.pt", "--label-noise", "0.2"],
        2,
        "--checkpoint '{d}/good.pt' belongs to another run "
        "(data label_noise: 0.0 in the checkpoint, 0.2 now)",
        id="checkpoint-other-data-options",
    ),
    pytest.param(
        ["train", *FAST, "--checkpoint", "{d}/good.pt", "--model", "resnet20"],
        2,
        "belongs to another run (model name: 'small_cnn' in the checkpoint, 'resnet20' now)",
        id="checkpoint-other-model",
    ),
    pytest.param(
        ["train", "--max-epochs", "1", "--checkpoint", "{d}/good.pt"],
        2,
        "belongs to another run (data name: 'synthetic' in the checkpoint, 'digits' now)",
        id="checkpoint-other-data",
    ),
    pytest.param(
        ["train", "--lr", "inf", *FAST],
        2,
        "--lr must be a finite number > 0 and <= 3.40282e+38, got inf",
        id="lr-inf",
    ),
    pytest.param(
        ["train", "--lr", "-1", *FAST],
        2,
        "--lr must be a finite number > 0 and <= 3.40282e+38, got -1.0",
        id="lr-negative",
    ),
    pytest.param(
        ["train", "--threshold", "0", *FAST],
        2,
        "--threshold must be a finite number > 0 and <= 1 "
        "(relative rule: a ratio to the peak velocity), got 0.0",
        id="threshold-zero",
    ),
    pytest.param(
        ["optuna", "worker", "digits", "--timeout", "-5", "--max-epochs", "1"],
        2,
        "--timeout must be a finite number > 0, got -5.0",
        id="worker-timeout-negative",
    ),
    pytest.param(
        ["train", *FAST, "--json", "{d}/a_file/run.json"],
        2,
        "--json {d}/a_file/run.json: {d}/a_file is not a folder",
        id="json-unwritable",
    ),
    pytest.param(
        ["train", *FAST, "--out", "{d}/a_file/plots"],
        2,
        "--out {d}/a_file/plots: {d}/a_file is not a folder",
        id="out-unwritable",
    ),
    pytest.param(
        _one_trial_worker("--max-epochs", "1", "--checkpoint-dir", "{d}/a_file/ck"),
        2,
        "--checkpoint-dir {d}/a_file/ck: {d}/a_file is not a folder",
        id="checkpoint-dir-unwritable",
    ),
    pytest.param(
        ["train", "--lr-patience", "soon", *FAST],
        2,
        "--lr-patience must be an int or 'auto', got 'soon'",
        id="lr-patience-word",
    ),
    pytest.param(
        ["train", "--pc-patience", "-1", *FAST],
        2,
        "--pc-patience must be >= 0 (0: off), got -1",
        id="pc-patience-negative",
    ),
    pytest.param(
        ["train", "--label-noise", "1.5", *FAST],
        2,
        "label_noise must be a finite number >= 0 and < 1, got 1.5",
        id="label-noise-above-1",
    ),
    pytest.param(
        ["train", "--train-fraction", "0", *FAST],
        2,
        "train_fraction must be a finite number > 0 and <= 1, got 0.0",
        id="train-fraction-zero",
    ),
    # outputs that could not take the record: refused before training, not after it
    pytest.param(
        ["train", *FAST, "--json", "/proc/x.json"],
        2,
        "--json /proc/x.json: /proc is not writable",
        id="json-proc",
    ),
    pytest.param(
        ["train", *FAST, "--json", "/dev/full"],
        2,
        "--json /dev/full: is not a regular file",
        id="json-dev-full",
    ),
    pytest.param(
        ["train", *FAST, "--out", "/proc/plots"],
        2,
        "--out /proc/plots: /proc is not writable",
        id="out-proc",
    ),
    pytest.param(
        ["train", *FAST, "--checkpoint", "/proc/ck.pt"],
        2,
        "--checkpoint /proc/ck.pt: /proc is not writable",
        id="checkpoint-proc",
    ),
    pytest.param(
        [
            "optuna",
            "plot",
            "--study-name",
            "x",
            "--storage",
            "sqlite:///{d}/plot.db",
            "--out",
            "{d}/a_file",
        ],
        2,
        "--out {d}/a_file: is a file, expected a folder",
        id="plot-out-is-a-file",
    ),
    pytest.param(
        [
            "optuna",
            "plot",
            "--study-name",
            "x",
            "--storage",
            "sqlite:///{d}/plot.db",
            "--out",
            "/proc/plots",
        ],
        2,
        "--out /proc/plots: /proc is not writable",
        id="plot-out-unwritable",
    ),
    pytest.param(
        _one_trial_worker("--max-epochs", "1", "--out", "/proc/plots"),
        2,
        "--out /proc/plots: /proc is not writable",
        id="worker-out-unwritable",
    ),
    # numbers out of range, named by their flag
    pytest.param(
        ["train", "--lr", "1e39", *FAST],
        2,
        "--lr must be a finite number > 0 and <= 3.40282e+38, got 1e+39",
        id="lr-overflows-float32",
    ),
    pytest.param(
        ["train", "--batch-size", "0", *FAST],
        2,
        "--batch-size must be an int >= 1, got 0",
        id="batch-size-zero",
    ),
    pytest.param(
        ["train", "--seed", "99999999999999999999", *FAST],
        2,
        "--seed must be an int in [0, 4294967295], got 99999999999999999999",
        id="train-seed-huge",
    ),
    pytest.param(
        ["train", "--noise-seed", "-1", *FAST],
        2,
        "--noise-seed must be an int in [0, 4294967295], got -1",
        id="noise-seed-negative",
    ),
    pytest.param(
        ["compare", "--seed", "4294967295", "--repeats", "2", "--trials", "1", "--max-epochs", "1"],
        2,
        "--seed + --repeats - 1 must be an int in [0, 4294967295], got 4294967296",
        id="compare-last-seed-huge",
    ),
    pytest.param(
        [*_worker("cpu", "w_seed"), "--seed", "99999999999999999999"],
        2,
        "--seed must be an int in [0, 4294967295], got 99999999999999999999",
        id="worker-seed-huge",
    ),
    pytest.param(
        [*_worker("cpu", "w_sseed"), "--sampler-seed", "-3"],
        2,
        "--sampler-seed must be an int in [0, 4294967295], got -3",
        id="worker-sampler-seed-negative",
    ),
    pytest.param(
        [*_worker("cpu", "w_retry"), "--max-retry", "-1"],
        2,
        "--max-retry must be an int >= 0, got -1",
        id="worker-max-retry-negative",
    ),
    pytest.param(
        [*_worker("cpu", "w_dir"), "--direction", "maximize"],
        2,
        "--direction must be 'minimize': the objective is a loss",
        id="worker-direction-maximize",
    ),
    # devices torch cannot train on here
    pytest.param(
        ["train", "--device", "meta", *FAST],
        2,
        "--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'meta'",
        id="train-device-meta",
    ),
    pytest.param(
        ["train", "--device", "mps", *FAST],
        2,
        "--device mps: Apple's MPS backend is not available",
        id="train-device-mps",
    ),
    pytest.param(
        _worker("meta", "w_meta"),
        2,
        "got 'meta' (torch cannot train on a 'meta' device here)",
        id="worker-device-meta",
    ),
    # storages
    pytest.param(
        _one_trial_worker(
            "--max-epochs", "1", "--storage", "postgresql://neve:p@ss@127.0.0.1:1/db"
        ),
        2,
        "storage 'postgresql://neve:***@127.0.0.1:1/db' is not a valid URL: "
        "its user or password holds an unencoded '@'",
        id="storage-password-with-at",
    ),
    # study files: one line naming the field, in every verb, before storage or training
    pytest.param(
        ["train", "{d}/batch_choice.py"],
        2,
        "study 'bad': search space 'batch_size': Choice value 0: "
        "batch_size must be an int >= 1, got 0",
        id="study-batch-size-choice",
    ),
    pytest.param(
        ["train", "{d}/lr_negative.py"],
        2,
        "study 'bad': search space 'lr': low: lr must be a finite number > 0",
        id="study-lr-negative",
    ),
    pytest.param(
        ["train", "{d}/lr_infinite.py"],
        2,
        "study 'bad': search space 'lr': LogUniform high must be a finite number, got inf",
        id="study-lr-infinite",
    ),
    pytest.param(
        ["train", "{d}/lr_word.py"],
        2,
        "study 'bad': defaults['lr'] must be a finite number > 0",
        id="study-default-lr-word",
    ),
    pytest.param(
        ["train", "{d}/threshold_typo.py"],
        2,
        "study 'bad': search space 'treshold' is no hyperparameter a trial reads: "
        "did you mean 'threshold'?",
        id="study-search-space-typo",
    ),
    pytest.param(
        ["train", "{d}/momentum_typo.py"],
        2,
        "study 'bad': defaults['momentun'] is no hyperparameter a trial reads: "
        "did you mean 'momentum'?",
        id="study-default-typo",
    ),
    pytest.param(
        [
            "optuna",
            "worker",
            "{d}/model_option_typo.py",
            "--trials",
            "1",
            "--create",
            "--storage",
            "sqlite:///{d}/w_model.db",
        ],
        2,
        "study 'bad': model_options has 'widht', which model 'small_cnn' does not take; "
        "it takes ['width']",
        id="worker-study-model-option-typo",
    ),
    pytest.param(
        _one_trial_worker("--no-checkpoints", "--checkpoint-dir", "x"),
        2,
        "--no-checkpoints and --checkpoint-dir contradict each other: give one of them",
        id="worker-no-checkpoints-with-a-folder",
    ),
    pytest.param(
        _one_trial_worker("--no-heartbeat", "--heartbeat-interval", "5"),
        2,
        "--no-heartbeat and --heartbeat-interval contradict each other: give one of them",
        id="worker-no-heartbeat-with-an-interval",
    ),
    pytest.param(
        _one_trial_worker("--storage", "journal:{d}/search.log", "--heartbeat-grace-period", "30"),
        2,
        "--heartbeat-grace-period needs an RDB storage (sqlite:///FILE, postgresql://...): a "
        "journal file or an in-memory study sends no heartbeats",
        id="worker-journal-with-a-heartbeat",
    ),
    pytest.param(
        [
            "optuna",
            "worker",
            "{d}/batch_choice.py",
            "--trials",
            "1",
            "--create",
            "--storage",
            "sqlite:///{d}/w_study.db",
        ],
        2,
        "search space 'batch_size': Choice value 0",
        id="worker-study-batch-size-choice",
    ),
    pytest.param(
        ["compare", "{d}/lr_infinite.py", "--trials", "1"],
        2,
        "search space 'lr': LogUniform high must be a finite number",
        id="compare-study-lr-infinite",
    ),
    pytest.param(
        ["compare", "--selection", "consensus", "--selection-subset", "0", "--trials", "1"],
        2,
        "--selection-subset 0 leaves no predictions for the consensus",
        id="compare-consensus-no-subset",
    ),
    pytest.param(
        ["compare", "--searches", "neve,neve", "--trials", "1"],
        2,
        "searches must be a non-empty subset of ('neve', 'asha', 'asha_es'), each once, "
        "got ['neve', 'neve']",
        id="compare-search-twice",
    ),
    pytest.param(
        ["compare", "--selection-subset", "-5", "--trials", "1"],
        2,
        "--selection-subset must be >= 0 (0: off), got -5",
        id="compare-selection-subset-negative",
    ),
    pytest.param(
        [*_worker("cpu", "w_cons"), "--rung-signal", "consensus", "--selection-subset", "0"],
        2,
        "--selection-subset 0 leaves no predictions for the consensus",
        id="worker-consensus-no-subset",
    ),
]


@pytest.mark.parametrize("argv, status, message", CLI_CASES)
def test_cli_bad_input(
    argv: list[str],
    status: int,
    message: str,
    inputs: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = sorted(p.name for p in inputs.rglob("*"))
    argv = [a.format(d=inputs) for a in argv]
    capsys.readouterr()
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert message.format(d=inputs) in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert out == "", "refused before any work: nothing on stdout"
    if "--storage" in argv and argv[argv.index("--storage") + 1].startswith("sqlite"):
        _no_fail_trial(argv[argv.index("--storage") + 1])
        (inputs / argv[argv.index("--storage") + 1].rsplit("/", 1)[1]).unlink(missing_ok=True)
    assert sorted(p.name for p in inputs.rglob("*")) == before, "no file written, none removed"


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def _neve(**kw: Any) -> NeVe:
    model = _model()
    return NeVe(
        torch.optim.SGD(model.parameters(), lr=0.1),
        NeuralVelocity(model, gaussian_probe((4,), 8)),
        **kw,
    )


def _step_none() -> None:
    neve = _neve()
    neve.start()
    neve.step(None)  # type: ignore[arg-type]


def _report(metrics: Any) -> None:
    report_epoch(optuna.create_study().ask(), metrics)


def _run_from_checkpoint(name: str) -> Callable[[Path], Any]:
    def run(d: Path) -> Any:
        study = load_study("digits").replace(data="synthetic", max_epochs=1)
        return run_trial(study, {}, checkpoint_path=d / name, evaluate_test=False)

    return run


# (call, expected exception, a substring of its message naming the parameter);
# calls take the inputs folder
API_CASES = [
    pytest.param(
        lambda d: _neve(lr_patience=-1),
        ValueError,
        "lr_patience must be an int >= 0, got -1",
        id="neve-lr-patience",
    ),
    pytest.param(
        lambda d: _step_none(),
        TypeError,
        "train_loss must be a number, got None",
        id="neve-step-none",
    ),
    pytest.param(
        lambda d: NeuralVelocity(_model(), torch.full((8, 4), math.nan)),
        ValueError,
        "probe must be finite: 32 of 32 values are NaN or inf",
        id="probe-nan",
    ),
    pytest.param(
        lambda d: _report({"epoch": 1.7, "velocity": 0.1}),
        TypeError,
        "metrics['epoch'] must be an int >= 0, got 1.7",
        id="report-epoch-float",
    ),
    pytest.param(
        lambda d: _report({"epoch": "x", "velocity": 0.1}),
        TypeError,
        "metrics['epoch'] must be an int >= 0, got 'x'",
        id="report-epoch-str",
    ),
    pytest.param(
        lambda d: _report(None), TypeError, "metrics must be a mapping", id="report-metrics-none"
    ),
    pytest.param(
        _run_from_checkpoint("empty.pt"),
        ValueError,
        "checkpoint_path '{d}/empty.pt' is empty; delete it",
        id="checkpoint-empty",
    ),
    pytest.param(
        _run_from_checkpoint("unchecked.pt"),
        ValueError,
        "checkpoint_path '{d}/unchecked.pt' has no checksum",
        id="checkpoint-without-checksum",
    ),
    pytest.param(
        _run_from_checkpoint("text.pt"),
        ValueError,
        "checkpoint_path '{d}/text.pt' cannot be read",
        id="checkpoint-text",
    ),
    pytest.param(
        _run_from_checkpoint("tensor.pt"),
        ValueError,
        "checkpoint_path '{d}/tensor.pt' holds a Tensor",
        id="checkpoint-tensor",
    ),
    pytest.param(
        _run_from_checkpoint("other_dict.pt"),
        ValueError,
        "checkpoint_path '{d}/other_dict.pt' is not a neve_tune checkpoint",
        id="checkpoint-other-dict",
    ),
    pytest.param(
        _run_from_checkpoint("folder.pt"),
        ValueError,
        "checkpoint_path '{d}/folder.pt' is a folder",
        id="checkpoint-directory",
    ),
    pytest.param(
        lambda d: run_worker(
            "digits",
            device="banana",
            n_trials=1,
            log=None,
            create=True,
            storage=f"sqlite:///{d}/api_worker.db",
        ),
        ValueError,
        "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'banana'",
        id="worker-device-banana",
    ),
    pytest.param(
        lambda d: run_worker("digits", timeout=-5, log=None),
        ValueError,
        "timeout must be a finite number > 0 or None, got -5",
        id="worker-timeout-negative",
    ),
    pytest.param(
        lambda d: run_worker(
            "digits",
            seed=10**20,
            n_trials=1,
            log=None,
            create=True,
            storage=f"sqlite:///{d}/api_worker.db",
        ),
        ValueError,
        "seed must be an int in [0, 4294967295], got 100000000000000000000",
        id="worker-seed-huge",
    ),
    pytest.param(
        lambda d: run_worker("digits", recovery=RecoveryConfig(max_retry=-1), log=None),
        ValueError,
        "RecoveryConfig.max_retry must be an int >= 0 or None, got -1",
        id="worker-max-retry-negative",
    ),
    pytest.param(
        lambda d: run_worker("digits", device="meta", n_trials=1, log=None),
        ValueError,
        "device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'meta'",
        id="worker-device-meta",
    ),
    pytest.param(
        lambda d: load_study("digits").replace(defaults={"lr": "fast", "batch_size": 64}),
        TypeError,
        "study 'digits': defaults['lr'] must be a finite number > 0",
        id="study-default-lr-word",
    ),
    pytest.param(
        lambda d: compare_searches(*_user_data(), _model(), trials=1, max_epochs=1),
        TypeError,
        "model_fn must be a function that builds a fresh model (e.g. lambda: Net()), "
        "got Sequential",
        id="compare-model-not-factory",
    ),
    pytest.param(
        lambda d: make_objective("digits", model_fn=_model()),
        TypeError,
        "model_fn must be a function that builds a fresh model (e.g. lambda: Net()), "
        "got Sequential",
        id="objective-model-not-factory",
    ),
    pytest.param(
        lambda d: run_trial(load_study("digits"), {}, model_fn=_model()),
        TypeError,
        "model_fn must be a function that builds a fresh model (e.g. lambda: Net()), "
        "got Sequential",
        id="run-trial-model-not-factory",
    ),
    pytest.param(
        lambda d: compare("digits", trials=1, searches="neve"),
        TypeError,
        "searches must be a list of names like ['neve', 'asha'], got 'neve'",
        id="compare-searches-string",
    ),
]


def _user_data() -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    x = torch.randn(40, 4)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.TensorDataset(x[:30], y[:30]), torch.utils.data.TensorDataset(
        x[30:], y[30:]
    )


@pytest.mark.parametrize("call, error, message", API_CASES)
def test_api_bad_input(
    call: Callable[[Path], Any],
    error: type[Exception],
    message: str,
    inputs: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(error) as caught:
        call(inputs)
    text = str(caught.value)
    assert message.format(d=inputs) in text
    assert "\n" not in text
    assert "Traceback" not in capsys.readouterr().err
    db = inputs / "api_worker.db"
    if db.exists():
        _no_fail_trial(f"sqlite:///{db}")
        db.unlink()


def test_a_checkpoint_that_cannot_be_read_is_left_in_place(inputs: Path, tmp_path: Path) -> None:
    """Refused, not overwritten (a file of no neve_tune run, or one no checksum vouches for):
    the user decides whether to delete it."""
    for name in ("unchecked.pt", "text.pt"):
        ckpt = tmp_path / name
        shutil.copy(inputs / name, ckpt)
        assert main(["train", *FAST, "--checkpoint", str(ckpt), "--quiet"]) == 2
        assert ckpt.read_bytes() == (inputs / name).read_bytes()


def test_train_removes_what_a_killed_save_left_beside_its_checkpoint(
    inputs: Path, tmp_path: Path
) -> None:
    """A save killed mid-write leaves ``CHECKPOINT.tmp<PID>``; the next run on that
    checkpoint removes it (it is the checkpoint's only writer), and nothing else."""
    ckpt = tmp_path / "run.pt"
    shutil.copy(inputs / "good.pt", ckpt)
    (tmp_path / "run.pt.tmp31337").write_bytes(b"half a save")
    (tmp_path / "other.pt.tmp31337").write_bytes(b"not ours")
    assert main(["train", *FAST, "--device", "cpu", "--checkpoint", str(ckpt), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt.tmp31337", "run.pt"]
