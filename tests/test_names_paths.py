"""Names and paths stay inside their folders: a Ray experiment name or a study name that
would leave ``--storage-path`` (``../``, ``/``, absolute) or that no file system holds is
refused in one line naming it, before any work; an output path is checked whole (its
implicit plot too) before training."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from neve_tune import load_study
from neve_tune._names import MAX_COMPONENT_BYTES, check_folder_name, check_path_fits
from neve_tune.cli import main
from neve_tune.optuna import checkpoint_path_for

FAST = ["--data", "synthetic", "--max-epochs", "1", "--device", "cpu"]
LONG = "n" * 300


def _ray(storage: str, *flags: str) -> list[str]:
    return ["ray", "run", "--max-epochs", "1", "--storage-path", storage, *flags]


# (argv with {d} the test's folder, a substring of the one error line)
CASES = [
    pytest.param(
        ["--name", "../../escape"],
        "--name must be a plain folder name (no '/', '\\\\', '.' or '..'), got '../../escape'",
        id="name-escapes",
    ),
    pytest.param(["--name", "a/b"], "--name must be a plain folder name", id="name-with-slash"),
    pytest.param(
        ["--name", "/tmp/elsewhere"], "--name must be a plain folder name", id="name-absolute"
    ),
    pytest.param(["--name", ".."], "--name must be a plain folder name", id="name-dot-dot"),
    pytest.param(["--name", ""], "--name must be a non-empty folder name, got ''", id="name-empty"),
    pytest.param(
        ["--name", LONG],
        "--name must be at most 200 characters (it names a folder), got 300",
        id="name-long",
    ),
    pytest.param(
        ["--json", "{d}/" + LONG + ".json"],
        "is 305 bytes long; file systems hold at most 255",
        id="json-name-long",
    ),
    pytest.param(["--json", ""], "--json '': give a file path", id="json-empty"),
]


@pytest.mark.parametrize("flags, message", CASES)
def test_ray_run_refuses_names_and_paths_before_any_work(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "results"
    argv = _ray(str(storage), *(f.format(d=tmp_path) for f in flags))
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert out == "" and not storage.exists() and sorted(tmp_path.iterdir()) == [], (
        "nothing written anywhere"
    )


@pytest.mark.parametrize(
    "make, flags, message",
    [
        pytest.param(
            lambda d: (d / "r.png").mkdir(),
            ["--json", "{d}/r.json"],
            "--json (the plot beside it) {d}/r.png: is a directory",
            id="json-plot-is-a-folder",
        ),
        pytest.param(
            lambda d: (d / "plots" / "history.png").mkdir(parents=True),
            ["--out", "{d}/plots"],
            "--out (its history.png) {d}/plots/history.png: is a directory",
            id="out-plot-is-a-folder",
        ),
        pytest.param(
            lambda d: None,
            ["--json", "{d}/" + LONG + ".json"],
            "is 305 bytes long; file systems hold at most 255",
            id="json-name-long",
        ),
        pytest.param(
            lambda d: None, ["--json", ""], "--json '': give a file path", id="json-empty"
        ),
        pytest.param(lambda d: None, ["--out", ""], "--out '': give a folder path", id="out-empty"),
    ],
)
def test_train_checks_every_output_before_training(
    make,
    flags: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr(
        "neve_tune.trial.fit", lambda *a, **k: pytest.fail("trained despite a bad output path")
    )
    capsys.readouterr()
    assert main(["train", *FAST, *(f.format(d=tmp_path) for f in flags)]) == 2
    out, err = capsys.readouterr()
    assert message.format(d=tmp_path) in err and len(err.strip().splitlines()) == 1, err
    assert out == "" and sorted(tmp_path.rglob("*")) == before


def test_worker_checks_the_plot_files_of_out_before_any_storage(tmp_path: Path, capsys) -> None:
    (tmp_path / "plots" / "velocity_curves.png").mkdir(parents=True)
    db = tmp_path / "s.db"
    assert (
        main(
            [
                "optuna",
                "worker",
                "digits",
                "--trials",
                "1",
                "--create",
                "--storage",
                f"sqlite:///{db}",
                "--out",
                str(tmp_path / "plots"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        f"--out {tmp_path}/plots/velocity_curves.png: is a directory" in err
        and len(err.strip().splitlines()) == 1
    )
    assert not db.exists()


def test_ray_search_arguments_refuse_names_that_leave_their_folder() -> None:
    """The API: ``run_search(run_config=RunConfig(name=...))`` and the study's own name (it
    names the trials' folders when no name is given), checked with the other arguments
    before Ray starts."""
    pytest.importorskip("ray.tune")
    from ray.tune import RunConfig

    from neve_tune.ray._search import check_search_args

    study = load_study("digits")
    check_search_args(study, run_config=RunConfig(name="digits-neve-0"))
    with pytest.raises(
        ValueError, match=r"^run_config.name must be a plain folder name .*got '\.\./x'$"
    ):
        check_search_args(study, run_config=RunConfig(name="../x"))
    with pytest.raises(
        ValueError, match=r"^study 'a/b''s name \(it names the trials' folders\) must be a plain"
    ):
        check_search_args(study.replace(name="a/b"), run_config=RunConfig(name="ok"))
    with pytest.raises(
        ValueError, match=r"study '.*\.\.\. \(600 characters\)'s name .* at most 200 characters"
    ):
        check_search_args(study.replace(name="s" * 600))
    with pytest.raises(ValueError, match="run_config.storage_path .* is 300 bytes long"):
        check_search_args(study, run_config=RunConfig(storage_path=f"/tmp/{LONG}"))


def test_names_and_path_parts() -> None:
    assert check_folder_name("name", "a..b c") == "a..b c"  # dots inside a name stay inside
    for bad in ("..", ".", "a\\b", "x\0y", "/abs"):
        with pytest.raises(ValueError, match="^name must be a plain folder name"):
            check_folder_name("name", bad)
    with pytest.raises(TypeError, match="name must be a string, got 5"):
        check_folder_name("name", 5)
    assert check_path_fits("--json", "/tmp/" + "é" * 127) == Path("/tmp/" + "é" * 127)
    with pytest.raises(
        ValueError, match=f"is 256 bytes long; file systems hold at most {MAX_COMPONENT_BYTES}"
    ):
        check_path_fits("--json", "/tmp/" + "é" * 128)  # 2 bytes each in UTF-8


def test_a_long_or_odd_study_name_makes_one_short_checkpoint_folder(tmp_path: Path) -> None:
    """Optuna holds study names of up to 512 characters; the checkpoint folder made of one
    stays one path component the file system holds, distinct per name."""
    folders = []
    for name in ("x" * 511 + "a", "x" * 511 + "b", "../../up", "digits"):
        trial = optuna.create_study(study_name=name).ask()
        path = checkpoint_path_for(tmp_path, trial)
        assert path.parent.parent == tmp_path and len(path.parent.name.encode()) <= 100
        path.parent.mkdir()  # the file system takes it
        folders.append(path.parent.name)
    assert len(set(folders)) == 4 and folders[2] == "up" and folders[3] == "digits"
