import json

import pytest
import torch

from neve_tune import load_study, run_trial
from neve_tune.checkpoint import CheckpointError, load_checkpoint, load_state_file, save_checkpoint
from neve_tune.cli import main
from neve_tune.data import data_identity, get_dataset
from neve_tune.records import Cost

SMALL = dict(data="synthetic", max_epochs=8, lr_patience=0)


class Killed(Exception):
    pass


def _study(**kw):
    return load_study("digits").replace(**{**SMALL, **kw})


def test_resumed_run_continues_the_same_velocity_and_lr_series(tmp_path):
    study = _study()
    cfg = {"lr": 0.2, "threshold": 1e-6, "batch_size": 32}
    full = run_trial(study, cfg, seed=3, evaluate_test=False)
    assert len({m["lr"] for m in full.history}) > 1, "the run should decay its LR at least once"

    ckpt = tmp_path / "trial.pt"
    seen = []

    def die_at_4(m):
        seen.append(m["epoch"])
        if m["epoch"] == 4:
            raise Killed

    with pytest.raises(Killed):
        run_trial(study, cfg, seed=3, checkpoint_path=ckpt, on_epoch=die_at_4, evaluate_test=False)
    assert load_checkpoint(ckpt)["epoch"] == 4
    resumed_seen = []
    resumed = run_trial(
        study, cfg, seed=3, checkpoint_path=ckpt, on_epoch=lambda m: resumed_seen.append(m["epoch"])
    )
    assert seen == [1, 2, 3, 4] and resumed_seen == list(range(5, full.epochs + 1))
    for key in ("velocity", "velocity_change", "lr", "train_loss"):
        assert [m[key] for m in resumed.history] == [m[key] for m in full.history], key
    assert resumed.stopped_by == full.stopped_by


def test_cost_counters_add_up():
    study = _study(max_epochs=3, probe_samples=7)
    cfg = {"lr": 0.05, "threshold": 1e-9, "batch_size": 50}
    rec = run_trial(study, cfg, seed=0, evaluate_test=True)
    n_train = len(get_dataset("synthetic").train)
    assert rec.epochs == 3 and rec.stopped_by == "max_epochs"
    assert rec.cost.train_samples == 3 * n_train
    subset = min(
        study.selection_subset, n_train
    )  # the selection subset, forwarded after each epoch
    assert rec.cost.probe_samples == 4 * 7 + 3 * subset  # velocity: reference + one per epoch
    assert rec.cost.eval_samples == 0
    assert rec.cost.epochs_equiv(rec.train_size) == pytest.approx(
        (3 * n_train + (28 + 3 * subset) / 3) / n_train
    )
    assert [m["train_samples"] for m in rec.history] == [n_train, 2 * n_train, 3 * n_train]

    asha = run_trial(study, cfg, method="asha", seed=0, evaluate_test=False)
    n_fit, n_val = n_train - round(0.1 * n_train), round(0.1 * n_train)
    assert asha.cost.train_samples == 3 * n_fit
    assert asha.cost.eval_samples == 3 * n_val
    assert asha.cost.probe_samples == 0
    assert all("val_loss" in m for m in asha.history)
    assert Cost(1, 2, 3, 1.0) + Cost(1, 1, 1, 0.5) == Cost(2, 3, 4, 1.5)


def test_retrain_replays_the_lr_schedule_on_all_data():
    study = _study()
    rec = run_trial(
        study,
        {"lr": 0.1, "batch_size": 64},
        method="retrain",
        lr_schedule=[0.1, 0.1, 0.05],
        evaluate_test=False,
    )
    assert [m["lr"] for m in rec.history] == [0.1, 0.1, 0.05]
    assert rec.cost.train_samples == 3 * len(get_dataset("synthetic").train)


def test_divergence_ends_the_trial_without_raising():
    rec = run_trial(_study(), {"lr": 1e6, "threshold": 1e-3, "batch_size": 32}, seed=0)
    assert rec.stopped_by == "diverged" and rec.history[-1]["diverged"]


def test_default_digits_run_stops_on_velocity_with_97_percent(tmp_path):
    out = tmp_path / "run.json"
    assert main(["train", "--json", str(out), "--quiet"]) == 0
    rec = json.loads(out.read_text())
    assert rec["stopped_by"] == "velocity"
    assert rec["epochs"] < load_study("digits").max_epochs
    assert rec["test_acc"] >= 0.97
    assert set(rec["history"][0]) >= {
        "epoch",
        "velocity",
        "velocity_change",
        "train_loss",
        "train_acc",
        "lr",
        "neve_stop",
        "diverged",
        "epoch_time_s",
        "train_samples",
        "probe_samples",
        "eval_samples",
    }
    assert (tmp_path / "run.png").stat().st_size > 10_000

    low = tmp_path / "low.json"
    assert (
        main(
            [
                "train",
                "--lr",
                str(load_study("digits").defaults["lr"] / 100),
                "--json",
                str(low),
                "--quiet",
            ]
        )
        == 0
    )
    low_rec = json.loads(low.read_text())
    assert low_rec["history"][-1]["train_loss"] > 10 * rec["history"][-1]["train_loss"]


def test_cli_bad_input_is_one_clear_line(capsys):
    assert main(["train", "--threshold", "0"]) == 2
    assert "--threshold must be a finite number > 0" in capsys.readouterr().err
    assert main(["train", "no_such_study"]) == 2
    assert "study file 'no_such_study' not found" in capsys.readouterr().err
    assert main(["train", "--data", "cifar10", "--data-root", "/nonexistent"]) == 2
    assert "put the python version" in capsys.readouterr().err


def test_checkpoint_loads_with_weights_only(tmp_path):
    ckpt = tmp_path / "c.pt"
    run_trial(
        _study(max_epochs=2),
        {"lr": 0.05, "batch_size": 64},
        checkpoint_path=ckpt,
        evaluate_test=False,
    )
    state = load_checkpoint(ckpt)  # verified, then read with torch.load(weights_only=True)
    assert state["epoch"] == 2 and "velocity" in state["controller"]


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    ckpt = tmp_path / "c.pt"
    run_trial(
        _study(max_epochs=2),
        {"lr": 0.05, "batch_size": 64},
        checkpoint_path=ckpt,
        evaluate_test=False,
    )
    with pytest.raises(ValueError, match="belongs to another run"):
        run_trial(
            _study(max_epochs=2),
            {"lr": 0.01, "batch_size": 64},
            checkpoint_path=ckpt,
            evaluate_test=False,
        )


def test_train_takes_the_shared_data_and_control_flags(tmp_path, capsys):
    # 20% noisy labels at LR 0.05: the guard stops within 12 epochs; without it the run goes on
    # memorising
    args = ["train", "--label-noise", "0.2", "--lr", "0.05", "--max-epochs", "30", "--quiet"]
    guarded, free = tmp_path / "guard.json", tmp_path / "free.json"
    assert main(args + ["--pc-patience", "3", "--json", str(guarded)]) == 0
    assert main(args + ["--pc-patience", "0", "--lr-patience", "10", "--json", str(free)]) == 0
    g, f = json.loads(guarded.read_text()), json.loads(free.read_text())
    assert g["stopped_by"] == "prediction_changes" and g["epochs"] <= 15
    assert f["stopped_by"] != "prediction_changes" and f["epochs"] > g["epochs"]
    assert g["test_acc"] > f["test_acc"]
    assert all(m["prediction_changes"] is not None for m in g["history"][1:])


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--pc-patience", "-1", "--pc-patience must be >= 0 (0: off), got -1"),
        ("--lr-patience", "soon", "--lr-patience must be an int or 'auto', got 'soon'"),
        ("--label-noise", "1.5", "label_noise must be a finite number >= 0 and < 1, got 1.5"),
        ("--train-fraction", "0", "train_fraction must be a finite number > 0 and <= 1, got 0.0"),
    ],
)
def test_shared_flags_refuse_bad_values_naming_them(flag, value, message, capsys):
    assert main(["train", flag, value, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_a_larger_max_epochs_continues_a_run_stopped_by_the_cap(tmp_path):
    cfg = {"lr": 0.2, "threshold": 1e-6, "batch_size": 32}
    full = run_trial(_study(), cfg, seed=3, evaluate_test=False)
    assert full.epochs > 4
    ckpt = tmp_path / "trial.pt"
    capped = run_trial(_study(max_epochs=4), cfg, seed=3, checkpoint_path=ckpt, evaluate_test=False)
    assert (capped.stopped_by, capped.epochs) == ("max_epochs", 4)
    seen = []
    more = run_trial(
        _study(),
        cfg,
        seed=3,
        checkpoint_path=ckpt,
        on_epoch=lambda m: seen.append(m["epoch"]),
        evaluate_test=False,
    )
    assert seen == list(range(5, full.epochs + 1))
    for key in (
        "velocity",
        "velocity_change",
        "lr",
        "train_loss",
        "prediction_changes",
        "stopped_by",
    ):
        assert [m[key] for m in more.history] == [m[key] for m in full.history], key
    assert (more.stopped_by, more.epochs) == (full.stopped_by, full.epochs)


def test_a_larger_max_epochs_continues_a_run_the_cap_ended_before_it_learned(tmp_path):
    """A cap of 1 ends this run ``"stalled"`` (no run has learned at epoch 1); that stop is the
    cap's, so a larger cap continues it with the uninterrupted run's series (docs/cli.md)."""
    cfg = {"lr": 0.2, "threshold": 1e-6, "batch_size": 32}
    full = run_trial(_study(max_epochs=3), cfg, seed=3, evaluate_test=False)
    ckpt = tmp_path / "trial.pt"
    capped = run_trial(_study(max_epochs=1), cfg, seed=3, checkpoint_path=ckpt, evaluate_test=False)
    assert (capped.stopped_by, capped.epochs) == ("stalled", 1)
    more = run_trial(_study(max_epochs=3), cfg, seed=3, checkpoint_path=ckpt, evaluate_test=False)
    for key in ("velocity", "lr", "train_loss", "stalled", "stopped_by"):
        assert [m[key] for m in more.history] == [m[key] for m in full.history], key
    assert (more.stopped_by, more.epochs) == (full.stopped_by, 3)


def test_the_cli_says_a_larger_cap_continues_a_run_the_cap_ended_stalled(tmp_path, capsys):
    """The hint was given for ``max_epochs`` stops only, not for the cap's ``stalled`` one."""
    ckpt = tmp_path / "ck.pt"
    base = ["train", "--data", "synthetic", "--checkpoint", str(ckpt), "--quiet"]
    assert main(base + ["--max-epochs", "1", "--json", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["stopped_by"] == "stalled"
    capsys.readouterr()
    assert main(base + ["--max-epochs", "1"]) == 0
    assert (
        "the run already stopped by stalled at epoch 1; nothing to continue (a larger "
        "--max-epochs continues it)" in capsys.readouterr().out
    )


def test_a_finished_run_is_not_continued_and_the_cli_says_why(tmp_path, capsys):
    ckpt = tmp_path / "ck.pt"
    base = [
        "train",
        "--data",
        "synthetic",
        "--threshold",
        "0.05",
        "--lr-patience",
        "0",
        "--checkpoint",
        str(ckpt),
        "--quiet",
    ]
    assert main(base + ["--max-epochs", "10", "--json", str(tmp_path / "a.json")]) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    assert first["stopped_by"] == "velocity" and first["epochs"] < 10
    capsys.readouterr()
    assert main(base + ["--max-epochs", "20", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert (
        f"the run already stopped by velocity at epoch {first['epochs']}; nothing to continue\n"
        in out
    )
    again = json.loads((tmp_path / "b.json").read_text())
    assert (
        again["history"] == first["history"] and load_checkpoint(ckpt)["epoch"] == first["epochs"]
    )

    # stopped by the cap: the same cap says so, a larger one trains on
    capped = tmp_path / "capped.pt"
    base[base.index(str(ckpt))] = str(capped)
    assert main(base + ["--max-epochs", "2"]) == 0
    assert main(base + ["--max-epochs", "2"]) == 0
    assert (
        "the run already stopped by max_epochs at epoch 2; nothing to continue "
        "(a larger --max-epochs" in capsys.readouterr().out
    )
    assert main(base + ["--max-epochs", "3", "--json", str(tmp_path / "c.json")]) == 0
    assert "nothing to continue" not in capsys.readouterr().out
    assert [m["epoch"] for m in json.loads((tmp_path / "c.json").read_text())["history"]] == [
        1,
        2,
        3,
    ]


def test_a_checkpoint_of_another_model_or_data_is_refused_naming_what_differs(tmp_path):
    ckpt = tmp_path / "c.pt"
    cfg = {"lr": 0.05, "batch_size": 64}
    run_trial(_study(max_epochs=2), cfg, checkpoint_path=ckpt, evaluate_test=False)
    for changes, differs in [
        ({"model_options": {"width": 16}}, "model width: None in the checkpoint, 16 now"),
        (
            {"data_options": {"label_noise": 0.2}},
            "data label_noise: 0.0 in the checkpoint, 0.2 now",
        ),
        (
            {"data_options": {"train_fraction": 0.5}},
            "data train_fraction: 1.0 in the checkpoint, 0.5 now",
        ),
        ({"data": "digits"}, "data name: 'synthetic' in the checkpoint, 'digits' now"),
    ]:
        with pytest.raises(CheckpointError, match="belongs to another run") as caught:
            run_trial(
                _study(max_epochs=2, **changes), cfg, checkpoint_path=ckpt, evaluate_test=False
            )
        assert differs in str(caught.value) and "delete it" in str(caught.value)
    # moving the data is fine: data_root is not part of the guard (synthetic data reads no
    # files, so data_root is refused there; the guard's data identity leaves it out)
    assert data_identity("cifar10", {"data_root": str(tmp_path)}) == data_identity("cifar10", {})
    more = run_trial(_study(max_epochs=3), cfg, checkpoint_path=ckpt, evaluate_test=False)
    assert more.epochs == 3  # and a larger cap continues


@pytest.mark.parametrize(
    "changes, differs",
    [
        ({"lr_patience": 3}, "controller lr_patience: 0 in the checkpoint, 3 now"),
        ({"pc_patience": 5}, "controller pc_patience: 3 in the checkpoint, 5 now"),
        ({"pc_patience": None}, "controller pc_patience: 3 in the checkpoint, None now"),
        (
            {"threshold_mode": "absolute"},
            "controller threshold_mode: 'relative' in the checkpoint, 'absolute' now",
        ),
        (
            {"lr_signal": "velocity"},
            "controller lr_signal: 'velocity_change' in the checkpoint, 'velocity' now",
        ),
        ({"probe_samples": 50}, "controller probe_samples: 100 in the checkpoint, 50 now"),
    ],
)
def test_a_checkpoint_of_other_controller_settings_is_refused_naming_the_setting(
    tmp_path, changes, differs
):
    ckpt = tmp_path / "c.pt"
    cfg = {"lr": 0.05, "threshold": 1e-6, "batch_size": 64}
    run_trial(_study(max_epochs=2), cfg, checkpoint_path=ckpt, evaluate_test=False)
    with pytest.raises(CheckpointError, match="belongs to another run") as caught:
        run_trial(_study(max_epochs=3, **changes), cfg, checkpoint_path=ckpt, evaluate_test=False)
    assert differs in str(caught.value) and "\n" not in str(caught.value)
    assert load_checkpoint(ckpt)["epoch"] == 2, "nothing trained"
    # the same settings with a larger cap continue
    assert (
        run_trial(_study(max_epochs=3), cfg, checkpoint_path=ckpt, evaluate_test=False).epochs == 3
    )


def test_a_validation_run_guard_holds_its_early_stopping_and_split(tmp_path):
    ckpt = tmp_path / "c.pt"
    cfg = {"lr": 0.05, "batch_size": 64}
    run_trial(
        _study(max_epochs=2), cfg, method="asha_es", checkpoint_path=ckpt, evaluate_test=False
    )
    for changes, differs in [
        ({"early_stopping": 4}, "controller early_stopping: 10 in the checkpoint, 4 now"),
        ({"val_fraction": 0.2}, "controller val_fraction: 0.1 in the checkpoint, 0.2 now"),
    ]:
        with pytest.raises(CheckpointError, match="belongs to another run") as caught:
            run_trial(
                _study(max_epochs=3, **changes),
                cfg,
                method="asha_es",
                checkpoint_path=ckpt,
                evaluate_test=False,
            )
        assert differs in str(caught.value)


def test_the_cli_refuses_a_checkpoint_of_other_controller_settings_in_one_line(tmp_path, capsys):
    ckpt = tmp_path / "ck.pt"
    base = [
        "train",
        "--data",
        "synthetic",
        "--max-epochs",
        "2",
        "--checkpoint",
        str(ckpt),
        "--quiet",
    ]
    assert main(base + ["--lr-patience", "0"]) == 0
    capsys.readouterr()
    assert main(base + ["--lr-patience", "4", "--max-epochs", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and "--checkpoint" in err
        and "controller lr_patience: 0 in the checkpoint, 4 now" in err
    )
    assert load_checkpoint(ckpt)["epoch"] == 2


def test_a_checkpoint_without_its_run_record_is_refused(tmp_path):
    ckpt = tmp_path / "c.pt"
    cfg = {"lr": 0.05, "batch_size": 64}
    run_trial(_study(max_epochs=2), cfg, checkpoint_path=ckpt, evaluate_test=False)
    state = load_checkpoint(ckpt)
    del state["meta"]
    save_checkpoint(ckpt, state)
    # resumed with another LR it would train at the old one while its record claims the new one
    for lr in (0.01, 0.05):
        with pytest.raises(CheckpointError) as caught:
            run_trial(
                _study(max_epochs=3), {**cfg, "lr": lr}, checkpoint_path=ckpt, evaluate_test=False
            )
        assert "has no run record ('meta')" in str(caught.value) and "\n" not in str(caught.value)
    assert load_checkpoint(ckpt)["epoch"] == 2, "nothing trained"


def test_a_run_guard_missing_a_field_is_refused_naming_it(tmp_path):
    ckpt = tmp_path / "c.pt"
    cfg = {"lr": 0.05, "batch_size": 64}
    run_trial(_study(max_epochs=2), cfg, checkpoint_path=ckpt, evaluate_test=False)
    state = load_checkpoint(ckpt)
    state["meta"] = {k: v for k, v in state["meta"].items() if k != "model"}
    save_checkpoint(ckpt, state)
    with pytest.raises(
        CheckpointError, match=r"belongs to another run \(model: absent in the checkpoint, \{'name'"
    ):
        run_trial(_study(max_epochs=3), cfg, checkpoint_path=ckpt, evaluate_test=False)


def test_a_model_that_does_not_fit_the_checkpoint_is_refused_in_one_line(tmp_path):
    from neve_tune import NeuralVelocity, NeVe, fit, gaussian_probe
    from neve_tune.models import create_model

    data = get_dataset("synthetic")
    ckpt = tmp_path / "c.pt"
    for width, epochs in ((32, 1), (16, 2)):
        torch.manual_seed(0)
        model = create_model("small_cnn", data.num_classes, data.input_shape, width=width)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        control = NeVe(
            opt, NeuralVelocity(model, gaussian_probe(data.input_shape, 8)), max_epochs=epochs
        )
        if width == 32:
            fit(
                model, opt, data.train, control, batch_size=64, checkpoint_path=ckpt
            )  # no run guard at all
            continue
        with pytest.raises(
            CheckpointError,
            match=r"does not fit this run \(RuntimeError: Error\(s\) in loading state_dict",
        ):
            fit(model, opt, data.train, control, batch_size=64, checkpoint_path=ckpt)


def test_saving_a_checkpoint_is_atomic(tmp_path, monkeypatch):
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, {"epoch": 1})

    def killed_mid_write(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt, {"epoch": 2})
    assert load_state_file(ckpt, ("epoch",), "state") == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"], "no temporary file left behind"
