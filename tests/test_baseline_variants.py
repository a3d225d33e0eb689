"""The validation baselines as a careful practitioner runs them: the metric they decide on
(loss or accuracy), their final model (retrain or best checkpoint), the strongest variant
and the notes of the comparison."""

import json

import optuna
import pytest
import torch
from torch import nn

from neve_tune import Study, ValidationControl, load_study, run_trial
from neve_tune.cli import main
from neve_tune.compare import compare
from neve_tune.compare._records import SearchTrial
from neve_tune.compare._variants import final_model_note, parse_variants
from neve_tune.optuna import make_objective
from neve_tune.records import Cost
from neve_tune.trial import trial_objective

TINY = dict(data="synthetic", max_epochs=3, early_stopping=1, lr_patience=1)


def _study(**changes):
    return load_study("digits").replace(**{**TINY, **changes})


def _nudge(model, scale):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale)


# ------------------------------------------------------------------ the controller
def test_early_stopping_on_accuracy_stops_where_accuracy_stopped_improving():
    """Noisy held-out labels: the loss is best at epoch 1 while accuracy climbs to epoch 4.
    On the loss the run stops at epoch 1 + patience; on accuracy at 4 + patience, a tie
    (0.80 again at epoch 6) not counting as better, and the LR plateau follows accuracy."""
    losses = [2.30, 2.35, 2.40, 2.45, 2.50, 2.55, 2.60, 2.70]
    accs = [0.20, 0.60, 0.75, 0.80, 0.78, 0.80, 0.79, 0.81]

    def run(metric):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        ctl = ValidationControl(opt, max_epochs=30, lr_patience=1, early_stopping=3, metric=metric)
        lrs = []
        for v, a in zip(losses, accs):
            lrs.append(ctl.step(0.1, v, val_acc=a)["lr"])
            if ctl.should_stop:
                break
        return ctl, lrs

    by_loss, _ = run("loss")
    assert (by_loss.best_epoch, by_loss.epoch, by_loss.stopped_by) == (1, 4, "early_stopping")
    by_acc, lrs = run("acc")
    assert (by_acc.best_epoch, by_acc.epoch, by_acc.stopped_by) == (4, 7, "early_stopping")
    assert by_acc.best == 0.80 and by_acc.state_dict()["best_acc"] == 0.80
    # mode max, patience 1: epochs 5 and 6 without a better accuracy halve the LR after epoch 6
    assert lrs == [1.0] * 6 + [0.5]
    with pytest.raises(ValueError, match="val_acc is required"):
        ValidationControl(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0), metric="acc").step(
            0.1, 2.3
        )


def test_best_checkpoint_is_the_weights_of_the_best_epoch_and_survives_a_resume():
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ctl = ValidationControl(opt, max_epochs=10, metric="acc", keep_best_weights=True, model=model)
    weights = {}
    for epoch, acc in enumerate([0.5, 0.9, 0.7, 0.8], start=1):
        _nudge(model, 0.1)  # "training": the weights of this epoch
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        ctl.step(0.1, 1.0, val_acc=acc)
    assert ctl.best_epoch == 2
    assert all(torch.equal(ctl.best_weights[k], weights[2][k]) for k in weights[2])
    # the live model trains on: it still holds the last epoch's weights
    assert all(torch.equal(v, weights[4][k]) for k, v in model.state_dict().items())
    other = nn.Linear(3, 2)
    again = ValidationControl(
        torch.optim.SGD(other.parameters(), lr=1.0),
        max_epochs=10,
        metric="acc",
        keep_best_weights=True,
        model=other,
    )
    again.load_state_dict(ctl.state_dict())
    assert again.best_epoch == 2 and all(
        torch.equal(again.best_weights[k], weights[2][k]) for k in weights[2]
    )


def test_a_best_checkpoint_trial_ends_holding_its_best_epoch_and_is_scored_there():
    study = _study(max_epochs=4, val_metric="acc", final="best_checkpoint")
    held, per_epoch = [], {}

    def model_fn():
        held.append(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)))
        return held[-1]

    def on_epoch(m):
        per_epoch[m["epoch"]] = (
            {k: v.clone() for k, v in held[-1].state_dict().items()},
            m["val_acc"],
        )

    r = run_trial(study, {"lr": 0.3}, method="asha", on_epoch=on_epoch, model_fn=model_fn)
    best = max(per_epoch, key=lambda e: (per_epoch[e][1], -e))
    assert r.best_epoch == best and r.epochs == 4
    assert r.objective == pytest.approx(1.0 - per_epoch[best][1])
    assert all(torch.equal(v, per_epoch[best][0][k]) for k, v in held[-1].state_dict().items())
    # not the weights training ended with: the model was set back
    assert not all(torch.equal(v, per_epoch[4][0][k]) for k, v in held[-1].state_dict().items())


def test_trial_objective_follows_the_metric_and_the_final_model():
    history = [
        {"val_loss": 2.3, "val_acc": 0.2},
        {"val_loss": 2.4, "val_acc": 0.9},
        {"val_loss": 2.5, "val_acc": 0.8},
    ]
    loss_state = {"best_loss": 2.3, "best_epoch": 1}
    acc_state = {"best_acc": 0.9, "best_epoch": 2}
    study = _study()
    assert trial_objective(study, "asha", history, loss_state) == (2.5, 3)
    assert trial_objective(study, "asha_es", history, loss_state) == (2.3, 1)
    acc = study.replace(val_metric="acc")
    assert trial_objective(acc, "asha", history, acc_state) == (pytest.approx(0.2), 3)
    assert trial_objective(acc, "asha_es", history, acc_state) == (pytest.approx(0.1), 2)
    kept = acc.replace(final="best_checkpoint")
    assert trial_objective(kept, "asha", history, acc_state) == (pytest.approx(0.1), 2)


# ------------------------------------------------------------------ the backends
def test_optuna_reports_the_validation_error_so_the_study_still_minimises():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _study(val_metric="acc")
    search = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    search.optimize(make_objective(study, method="asha_es"), n_trials=1)
    t = search.trials[0]
    accs = {
        int(k[len("epoch_") :]): v["val_acc"]
        for k, v in t.user_attrs.items()
        if k.startswith("epoch_")
    }
    assert t.intermediate_values == {e: pytest.approx(1.0 - a) for e, a in accs.items()}
    assert t.value == pytest.approx(1.0 - accs[t.user_attrs["best_epoch"]])
    assert t.value == pytest.approx(1.0 - max(accs.values()))


def test_ray_scheduler_decides_on_the_studys_validation_metric():
    from neve_tune.ray import asha_scheduler

    s = asha_scheduler(_study())
    assert (s.metric, s._mode) == ("val_loss", "min")
    s = asha_scheduler(_study(val_metric="acc"))
    assert (s.metric, s._mode) == ("val_acc", "max")


def test_the_run_guard_holds_a_variant_that_is_not_the_default():
    from neve_tune.trial import controller_settings

    assert "val_metric" not in controller_settings(_study(), "asha_es")
    assert (
        controller_settings(_study(val_metric="acc", final="best_checkpoint"), "asha")["final"]
        == "best_checkpoint"
    )


# ------------------------------------------------------------------ the comparison
def test_compare_runs_the_variants_names_the_strongest_and_reports_against_each(tmp_path, capsys):
    out = tmp_path / "c.json"
    study_file = tmp_path / "tiny.py"
    study_file.write_text(
        "from neve_tune import load_study\n"
        f"STUDY = load_study('digits').replace(name='tiny', **{TINY!r})\n"
    )
    assert (
        main(
            [
                "compare",
                str(study_file),
                "--trials",
                "2",
                "--searches",
                "neve,asha_es",
                "--quiet",
                "--baseline-variants",
                "asha_es:acc:best_checkpoint,asha:acc",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    res = json.loads(out.read_text())
    names = ["neve", "asha_es", "asha_es:acc:best_checkpoint", "asha:acc:retrain"]
    assert res["searches"] == names and set(res["vs"]) == set(names[1:])
    kept, run = res["asha_es:acc:best_checkpoint"], res["runs"][0]
    assert (kept["method"], kept["val_metric"], kept["final"]) == (
        "asha_es",
        "acc",
        "best_checkpoint",
    )
    # the winner's own checkpoint: no retrain, no cost beyond the search, its trial's score
    rec = run["asha_es:acc:best_checkpoint"]
    winner = [
        t for t in rec["trials"] if t["config"] == rec["best_config"] and t["state"] == "COMPLETE"
    ][0]
    assert (
        rec["retrain"] is None
        and rec["cost"] == rec["search_cost"]
        and rec["test_acc"] == winner["test_acc"]
    )
    assert run["asha:acc:retrain"]["retrain"]["epochs"] >= 1
    assert res["vs"]["asha_es:acc:best_checkpoint"]["test_acc_diff"] == pytest.approx(
        run["neve"]["test_acc"] - rec["test_acc"]
    )
    # the strongest: highest mean test accuracy, ties by lower cost
    ranked = sorted(names[1:], key=lambda b: (-res[b]["test_acc"], res[b]["cost"]["epochs_equiv"]))
    assert res["strongest_baseline"] == ranked[0]
    assert f"* strongest baseline: {ranked[0]}" in table and f"NeVe vs {ranked[-1]}" in table


def test_notes_reach_the_json_and_the_table(monkeypatch):
    """With no gap allowed, every baseline whose winner has a validation accuracy gets a
    note, per seed, naming the search (the rule itself: the next test)."""
    from neve_tune.compare import _variants
    from neve_tune.compare._report import summary_table

    monkeypatch.setattr(_variants, "NOTE_GAP", -1.0)
    res = compare(
        _study(),
        trials=2,
        seed=3,
        searches=["asha_es"],
        baseline_variants=["asha_es:acc:best_checkpoint"],
        progress=False,
    )
    assert {(n["seed"], n["search"]) for n in res["notes"]} == {
        (3, "asha_es"),
        (3, "asha_es:acc:best_checkpoint"),
    }
    assert "retrained for" in res["runs"][0]["asha_es"]["note"]["text"]
    assert "the kept checkpoint" in res["runs"][0]["asha_es:acc:best_checkpoint"]["note"]["text"]
    table = summary_table(res)
    assert all(f"note (seed 3): {n['text']}" in table for n in res["notes"])


def _trial(val_acc, best_epoch, epochs):
    return SearchTrial(
        number=0,
        config={"lr": 0.1},
        state="COMPLETE",
        stopped_by="early_stopping",
        epochs=epochs,
        best_epoch=best_epoch,
        objective=2.3,
        test_acc=None,
        cost=Cost(),
        train_size=100,
        val_acc=val_acc,
    )


def test_a_final_model_far_below_its_winner_is_explained():
    # the known case: the best validation loss at epoch 1, so a one-epoch retrain
    winner = _trial([0.22, 0.85, 0.93, 0.92], best_epoch=1, epochs=4)
    note = final_model_note(
        "asha_es", "asha_es", "loss", "retrain", winner, {"epochs": 1, "train_acc": 0.18}
    )
    assert note["final_acc"] == 0.18 and note["winner_val_acc"] == 0.93
    assert note["text"] == (
        "asha_es: the final model, retrained for 1 epoch (up to its best validation loss, "
        "epoch 1), fits 18.0% of the training labels; the winner reached 93.0% validation "
        "accuracy (epoch 3 of 4)"
    )
    kept = final_model_note("v", "asha_es", "loss", "best_checkpoint", winner, None)
    assert (
        kept["final_acc"] == 0.22
        and "the kept checkpoint (epoch 1, its best validation loss)" in kept["text"]
    )
    # within the gap, or nothing to judge by: no note
    assert (
        final_model_note(
            "asha", "asha", "loss", "retrain", winner, {"epochs": 4, "train_acc": 0.90}
        )
        is None
    )
    assert (
        final_model_note(
            "asha", "asha", "loss", "retrain", _trial([], 1, 1), {"epochs": 1, "train_acc": 0.1}
        )
        is None
    )


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    "spec, match",
    [
        ("asha_es:accuracy", "baseline_variants: 'asha_es:accuracy' has val_metric 'accuracy'"),
        ("hyperband:acc", "baseline_variants: 'hyperband:acc' has method 'hyperband'"),
        ("asha:acc:last", "baseline_variants: 'asha:acc:last' has final 'last'"),
        ("asha:acc:retrain:x", "baseline_variants: 'asha:acc:retrain:x' is not method"),
        ("asha:acc,asha:acc:retrain", "baseline_variants: 'asha:acc:retrain' is given twice"),
        (
            "asha_es:loss:retrain",
            "baseline_variants: 'asha_es:loss:retrain' is the search 'asha_es' already run",
        ),
        ("asha,", "baseline_variants: '' is not method"),
    ],
)
def test_bad_variants_are_refused_naming_the_parameter(spec, match):
    with pytest.raises(ValueError, match=match):
        compare(_study(), baseline_variants=spec, progress=False)


def test_bad_values_of_the_new_settings_name_them(tmp_path, capsys):
    with pytest.raises(ValueError, match="val_metric must be one of"):
        Study(name="x", val_metric="accuracy")
    with pytest.raises(ValueError, match="final must be one of"):
        Study(name="x", final="last")
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    with pytest.raises(ValueError, match="metric must be one of"):
        ValidationControl(opt, metric="f1")
    with pytest.raises(ValueError, match="keep_best_weights needs model"):
        ValidationControl(opt, keep_best_weights=True)
    with pytest.raises(TypeError, match="baseline_variants must be a string or a list"):
        parse_variants([1], _study())
    out = tmp_path / "c.json"
    assert main(["compare", "digits", "--baseline-variants", "asha_es:f1", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "baseline_variants" in err[0] and not out.exists()


# ------------------------------------------------------------------ the held-out labels
def test_the_flipped_labels_are_not_the_held_out_ones():
    """Label noise draws its flips from a random stream of its own: with the seeds alike,
    the validation split (and the selection subset) hold about the noise rate of flipped
    labels, not all of them (seed 0 once held out only flipped labels)."""
    from neve_tune.data import dataset_labels, get_dataset, validation_split
    from neve_tune.selection import SelectionSubset

    clean = dataset_labels(get_dataset("digits").train)
    for noise_seed in (0, 1):
        noisy = get_dataset("digits", label_noise=0.2, noise_seed=noise_seed)
        flipped = set(noisy.flipped.tolist())
        for seed in range(4):
            _, held_out = validation_split(noisy.train, 0.1, seed=seed)
            share = sum(i in flipped for i in held_out.indices) / len(held_out.indices)
            assert 0.1 < share < 0.3, (noise_seed, seed, share)
            subset = SelectionSubset.from_dataset(noisy.train, 500, seed=seed)
            truth = SelectionSubset.from_dataset(
                torch.utils.data.TensorDataset(noisy.train.tensors[0], clean), 500, seed=seed
            )
            assert 0.1 < float((subset.labels != truth.labels).float().mean()) < 0.3
