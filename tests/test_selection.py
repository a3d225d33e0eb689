"""Validation-free selection criteria on hand-checkable histories, and the replay harness
(benchmarks/selection.py) against a real Optuna search on the same trials."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from neve_tune import load_study, run_trial
from neve_tune import selection as sel
from neve_tune.optuna import NeVePruner, make_objective, report_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import selection as harness  # noqa: E402
import selection_replay as replay  # noqa: E402

H = [  # a tiny history: four epochs
    {"train_loss": 2.0, "train_acc": 0.3, "prediction_changes": None, "zeta_drop": 0.4},
    {"train_loss": 1.0, "train_acc": 0.6, "prediction_changes": 30, "zeta_drop": 0.2},
    {"train_loss": 0.5, "train_acc": 0.8, "prediction_changes": 10, "zeta_drop": None},
    {"train_loss": 0.25, "train_acc": 0.9, "prediction_changes": 20, "zeta_drop": 0.6},
]


def test_final_loss_at_stop_or_restore_epoch():
    assert sel.final_loss(H) == 0.25
    assert sel.final_loss(H, epoch=2) == 1.0
    assert math.isnan(sel.final_loss([]))
    assert math.isnan(sel.final_loss([{"train_loss": float("nan")}]))


def test_pc_min_moving_average():
    assert sel.pc_min(H, window=2) == 15.0  # (30+10)/2=20, (10+20)/2=15
    assert sel.pc_min(H, window=2, epoch=3) == 20.0
    assert sel.pc_min(H, window=3) == 20.0
    assert math.isnan(sel.pc_min(H, window=4))  # the first epoch has none


def test_tse_sums_a_fixed_first_k_epochs():
    assert sel.tse(H, 2) == 3.0
    assert sel.tse(H, 4) == 3.75
    assert sel.tse(H, 6) == 4.25  # two missing epochs at the last loss 0.25
    assert math.isnan(sel.tse([{"train_loss": None}], 3))


def test_susceptibility_is_the_running_mean_of_the_drops():
    assert sel.susceptibility(H) == pytest.approx(0.4)  # (0.4+0.2+0.6)/3, the missing one skipped
    assert sel.susceptibility(H, epoch=2) == pytest.approx(0.3)
    assert math.isnan(sel.susceptibility([{"zeta_drop": None}]))


def test_zeta_gate_keeps_accurate_and_unsusceptible_trials():
    acc = [0.9, 0.9, 0.5, 0.8, float("nan")]
    zeta = [0.1, 0.5, 0.1, 0.2, 0.0]
    # means over the four finite trials: acc 0.775, zeta 0.225
    assert sel.zeta_gate(acc, zeta) == [True, False, False, True, False]
    assert sel.zeta_gate([float("nan")], [1.0]) == [False]


def test_majority_vote_breaks_ties_to_the_lowest_class():
    preds = torch.tensor([[0, 1, 2], [1, 1, 2], [2, 0, 2]])
    assert sel.majority_vote(preds, 3).tolist() == [0, 1, 2]


def test_consensus_agreement_leave_one_out():
    preds = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 0]])
    # votes (ties to the lower class): of trials 1, 2 [0, 1, 0, 0] -> trial 0 agrees on 2/4;
    # of 0, 2 [0, 1, 0, 0] -> trial 1 on 3/4; of 0, 1 [0, 1, 2, 0] -> trial 2 on 3/4
    assert sel.consensus_agreement(preds, 4).tolist() == [0.5, 0.75, 0.75]
    assert math.isnan(float(sel.consensus_agreement(preds[:1], 4)[0]))


def test_noise_rate_estimate_and_fit_excess():
    preds = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 0]])
    labels = torch.tensor([0, 1, 2, 3])
    # vote [0, 1, 2, 0] disagrees with one label of four
    assert sel.noise_rate_estimate(preds, labels, 4) == 0.25
    # fits 4/4, 3/4, 2/4 against the vote's 3/4
    assert sel.fit_excess(preds, labels, 4).tolist() == [0.25, 0.0, -0.25]


def test_random_label_drop_leaves_the_model_and_rng_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert sel.random_label_drop(model, x, y, lr=0.0) == 0.0
    drop = sel.random_label_drop(model, x, y, lr=0.1)
    assert drop > 0.0  # a small gradient step lowers the loss it is taken on
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


class _Augmenting(torch.utils.data.Dataset):
    """(input, label) items drawn with the global RNG, as a random augmentation does."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.randn(3), self.labels[i]


def test_selection_subset_from_dataset_draws_class_ids_and_leaves_the_rng_alone():
    y = torch.arange(40) % 3
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    sub = sel.SelectionSubset.from_dataset(_Augmenting(y), 10, seed=4)
    assert torch.equal(torch.rand(2), expected)  # training's RNG untouched
    pos = torch.randperm(40, generator=torch.Generator().manual_seed(4))[:10].sort().values
    assert torch.equal(sub.labels, y[pos])  # the same draw as ever, for the same seed
    # a label [1] is one class id (no broadcast in fit); a whole float is one too
    column = torch.utils.data.TensorDataset(torch.randn(40, 3), y[:, None].float())
    assert torch.equal(sel.SelectionSubset.from_dataset(column, 10, seed=4).labels, y[pos])


@pytest.mark.parametrize(
    "dataset, seed, error",
    [
        ([(torch.zeros(3), 1)] * 4, "0", "seed must be an int"),
        ([(torch.zeros(3), 1)] * 4, 1.5, "seed must be an int"),
        ([{"input_ids": torch.zeros(3), "labels": 1}] * 4, 0, "needs \\(input, label\\) items"),
        ([(torch.zeros(3), 0.5)] * 4, 0, "must hold integer class ids"),
        ([(torch.zeros(3), torch.tensor([0, 1]))] * 4, 0, "the label one class id"),
    ],
)
def test_selection_subset_from_dataset_refuses_what_it_would_misread(dataset, seed, error):
    with pytest.raises((TypeError, ValueError), match=error):
        sel.SelectionSubset.from_dataset(dataset, 2, seed=seed)


@pytest.mark.parametrize(
    "inputs, labels, error",
    [
        (torch.zeros(3, 2), [1], r"one class id per input \(3\), got shape \(1,\)"),
        (torch.zeros(3, 2), [0.5, 1.7, 2.2], "must hold integer class ids"),
        ([[0.0, 0.0]], [0], "inputs must be a tensor"),
    ],
)
def test_selection_subset_refuses_labels_its_fit_would_misread(inputs, labels, error):
    # one label for three inputs broadcast in fit(); 0.5 was truncated to class 0
    with pytest.raises((TypeError, ValueError), match=error):
        sel.SelectionSubset(inputs, labels)
    whole = sel.SelectionSubset(torch.zeros(3, 2), [0.0, 1.0, 2.0])  # whole floats are ids
    assert whole.labels.tolist() == [0, 1, 2] and whole.labels.dtype == torch.long


def test_subset_predictions_restore_the_mode():
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(7, 4)
    model.train()
    out = sel.subset_predictions(model, x, batch_size=3)
    assert model.training and out.tolist() == model(x).argmax(1).tolist()


def test_gated_ranking_and_pick():
    assert replay.pick(replay._gated([False, True, True], [0.1, 0.5, 0.3]), [7, 8, 9]) == 9
    assert replay.pick([float("nan"), 2.0], [0, 1]) == 1
    assert replay._promotable(1.0, [1.0, 2.0, 3.0], 4) and not replay._promotable(
        2.0, [1.0, 2.0, 3.0], 4
    )


@pytest.mark.parametrize("signal", ["train_loss", "velocity", "consensus"])
def test_replay_takes_the_decisions_of_a_real_search(signal):
    """The same six configurations trained unpruned (the pool) and searched with
    NeVePruner: the replay prunes the same trials at the same epochs."""
    torch.set_num_threads(1)
    study = load_study("digits").replace(
        data="synthetic", max_epochs=8, lr_patience=1, selection_subset=64
    )
    bundle = study.load_data(seed=3)
    configs = harness.sample_configs(study, 6, seed=3)
    pool = harness.fill_pool(harness.new_pool(study, bundle, 3, configs), study, bundle, 6)
    pruner = NeVePruner(rung_signal=signal, min_resource=1, reduction_factor=2)
    search = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner)
    for cfg in configs:
        search.enqueue_trial(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search.optimize(make_objective(study, seed=3, data=bundle), n_trials=6)
    real = [(t.state.name, int(t.user_attrs["epochs"])) for t in search.trials]
    s = pruner.settings
    mine = replay.replay_search(
        pool, signal, min_resource=s["min_resource"], reduction_factor=s["reduction_factor"]
    )
    assert [(d["state"], d["epochs"]) for d in mine] == real
    assert {st for st, _ in real} == {"COMPLETE", "PRUNED"}  # the check means something
    # the recorded histories are the search's (the extra signals perturb nothing)
    for t, rec in zip(search.trials, pool["trials"]):
        e = int(t.user_attrs["epochs"])
        assert t.user_attrs[f"epoch_{e:04d}"]["train_loss"] == pytest.approx(
            rec["history"][e - 1]["train_loss"], abs=0
        )
        last = t.user_attrs[f"epoch_{e:04d}"]
        if signal == "consensus" or t.state.name == "COMPLETE":
            assert last["subset_pred"] == rec["history"][e - 1]["subset_pred"]
        else:  # rungs that rank on no predictions read none: a pruned trial records none
            assert "subset_pred" not in last


def test_selection_subset_records_predictions_and_counts_their_cost():
    study = load_study("digits").replace(data="synthetic", max_epochs=2)
    assert study.selection_subset == 500 and study.rung_signal == "auto"  # the defaults
    plain = run_trial(
        study.replace(selection_subset=0, selection="objective"), {"lr": 0.05}, seed=1
    )
    rec = run_trial(study.replace(selection_subset=40), {"lr": 0.05}, seed=1)
    assert [len(m["subset_pred"]) for m in rec.history] == [40, 40]
    assert "subset_pred" not in plain.history[-1]
    assert rec.history[-1]["train_loss"] == plain.history[-1]["train_loss"]  # nothing else changes
    assert (
        rec.cost.probe_samples == plain.cost.probe_samples + 80 == rec.history[-1]["probe_samples"]
    )
    with pytest.raises(ValueError, match="selection_subset"):
        study.replace(selection_subset=-1)


def test_subset_is_recorded_only_where_it_is_read():
    """With the search's rung epochs, the predictions are recorded at those and at the last
    epoch, equal to those of a run recording every epoch; nothing else changes, and the
    forwards skipped are not counted."""
    torch.set_num_threads(1)
    study = load_study("digits").replace(
        data="synthetic", max_epochs=6, selection_subset=40, pc_patience=None
    )
    every = run_trial(study, {"lr": 0.05, "threshold": 1e-9}, seed=1)
    rungs = run_trial(study, {"lr": 0.05, "threshold": 1e-9}, seed=1, subset_epochs=(1, 4))
    assert [m["epoch"] for m in rungs.history if "subset_pred" in m] == [1, 4, 6]
    for m, n in zip(every.history, rungs.history):
        assert m["train_loss"] == n["train_loss"]
        if "subset_pred" in n:
            assert (n["subset_pred"], n["subset_fit"]) == (m["subset_pred"], m["subset_fit"])
    assert every.cost.probe_samples - rungs.cost.probe_samples == 3 * 40
    assert rungs.history[-1]["probe_samples"] == rungs.cost.probe_samples


def test_pruner_reads_the_subset_at_its_rung_epochs():
    pruner = NeVePruner(rung_signal="consensus", reduction_factor=2)
    assert pruner.rung_epochs(20) == (1, 2, 4, 8, 16)
    assert NeVePruner(min_resource=3, min_early_stopping_rate=1).rung_epochs(60) == (12, 48)
    search = optuna.create_study(pruner=NeVePruner(rung_signal="consensus"))
    trial = search.ask()
    report_epoch(trial, {"epoch": 1, "velocity": 0.3, "train_loss": 1.0, "subset_pred": "01"})
    trial.should_prune()
    report_epoch(trial, {"epoch": 2, "velocity": 0.3, "train_loss": 0.9})  # no rung: not read
    trial.should_prune()
    report_epoch(trial, {"epoch": 4, "velocity": 0.3, "train_loss": 0.8})
    with pytest.raises(ValueError, match="no 'subset_pred' in epoch 4"):
        trial.should_prune()


def test_consensus_scores_and_encoding():
    codes = {"a": sel.encode_predictions(torch.tensor([0, 1, 2, 3])), "b": "0120", "c": "0100"}
    assert sel.decode_predictions(codes["a"]).tolist() == [0, 1, 2, 3]
    assert sel.consensus_scores(codes) == {"a": -0.5, "b": -0.75, "c": -0.75}
    assert sel.consensus_scores({"a": "01"}) == {"a": 0.0}
    with pytest.raises(ValueError, match="same subset"):
        sel.consensus_scores({"a": "01", "b": "012"})
    with pytest.raises(ValueError, match="classes"):
        sel.encode_predictions(torch.tensor([-1]))


def test_consensus_pruner_refuses_epochs_without_predictions():
    search = optuna.create_study(pruner=NeVePruner(rung_signal="consensus"))
    trial = search.ask()
    report_epoch(trial, {"epoch": 1, "velocity": 0.3, "train_loss": 1.0})
    with pytest.raises(ValueError, match="selection_subset"):
        trial.should_prune()


def test_compare_with_consensus_and_pick():
    """A NeVe search pruning on the consensus and picking the most consensual finished trial."""
    from neve_tune.compare import compare

    study = load_study("digits").replace(
        data="synthetic", max_epochs=4, lr_patience=1, selection_subset=32, selection="consensus"
    )
    r = compare(
        study, trials=4, seed=2, searches=("neve",), rung_signal="consensus", progress=False
    )
    neve = r["runs"][0]["neve"]
    done = [t for t in neve["trials"] if t["state"] == "COMPLETE"]
    # the objective stays the training loss; the agreement has its own field
    assert done and all(t["objective"] > 0 and 0.0 <= t["agreement"] <= 1.0 for t in done)
    best = max(done, key=lambda t: t["agreement"])
    assert neve["test_acc"] == best["test_acc"]
    assert neve["selection"]["rule"] == "consensus" == neve["selection"]["selection"]
    assert neve["selection"]["finished"] == len(done)
    with pytest.raises(ValueError, match="selection_subset"):
        compare(
            study.replace(selection="objective", selection_subset=0),
            trials=1,
            searches=("neve",),
            rung_signal="consensus",
            progress=False,
        )
    with pytest.raises(ValueError, match="selection_subset > 0"):
        study.replace(selection_subset=0)


def test_pick_trial_by_objective_or_consensus_from_the_storage(tmp_path):
    """A distributed search's pick, read back from the storage: the predictions travel in the
    epochs' user attributes, so a fresh handle on the study picks the same trial."""
    from neve_tune.optuna import pick_trial, report_epoch

    storage = f"sqlite:///{tmp_path}/s.db"
    search = optuna.create_study(storage=storage, study_name="s")
    assert (
        pick_trial(search) is None and pick_trial(search, "consensus") is None
    )  # nothing finished
    for preds, loss in (("0123", 0.1), ("0120", 0.3), ("0100", 0.2), ("0100", 0.05)):
        t = search.ask()
        report_epoch(t, {"epoch": 1, "train_loss": loss, "velocity": 0.1, "subset_pred": preds})
        if loss == 0.05:
            search.tell(t, state=optuna.trial.TrialState.PRUNED)  # pruned: no candidate, no vote
        else:
            search.tell(t, loss)
    again = optuna.load_study(study_name="s", storage=storage)
    assert pick_trial(again).number == 0  # the lowest training loss
    assert (
        pick_trial(again, "consensus").number == 1
    )  # agreements 0.5 / 0.75 / 0.75, tie to the first
    with pytest.raises(ValueError, match="selection must be one of"):
        pick_trial(again, "vote")
    bare = optuna.create_study()
    bare.optimize(lambda t: 1.0, n_trials=1)
    with pytest.raises(ValueError, match="no 'subset_pred'.*selection_subset=500"):
        pick_trial(bare, "consensus")


def test_auto_without_the_subsets_fit_says_so_and_picks_by_the_objective():
    """An own-loop objective that records no subset_fit: 'auto' cannot tell noisy labels,
    says what to record, and picks by the objective; with subset_fit recorded it is silent."""
    import warnings

    from neve_tune.optuna import pick_trial, report_epoch

    bare = optuna.create_study()
    bare.optimize(lambda t: float(t.number), n_trials=2)
    with pytest.warns(UserWarning, match=r"no finished trial reported subset_fit.*SelectionSubset"):
        assert pick_trial(bare, "auto").number == 0
    recorded = optuna.create_study()
    for loss in (0.3, 0.1):
        t = recorded.ask()
        report_epoch(
            t,
            {
                "epoch": 1,
                "train_loss": loss,
                "velocity": 0.1,
                "subset_pred": "0123",
                "subset_fit": 0.99,
            },
        )
        recorded.tell(t, loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (
            pick_trial(recorded, "auto").number == 1
        )  # clean labels: by the objective, no warning


def test_worker_prunes_and_picks_by_consensus(tmp_path, capsys):
    """``neve-tune optuna worker --rung-signal consensus --selection consensus``: the flags record
    500 predictions per epoch (the default subset), the pruner ranks on them, and the
    closing line names the consensus pick."""
    from neve_tune.cli import main
    from neve_tune.optuna import epoch_key, pick_trial

    storage = f"sqlite:///{tmp_path}/w.db"
    argv = [
        "optuna",
        "worker",
        "digits",
        "--create",
        "--storage",
        storage,
        "--trials",
        "4",
        "--max-epochs",
        "3",
        "--rung-signal",
        "consensus",
        "--selection",
        "consensus",
        "--no-checkpoints",
        "--no-heartbeat",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    search = optuna.load_study(study_name="digits", storage=storage)
    assert len(search.trials[0].user_attrs[epoch_key(1)]["subset_pred"]) == 500
    # epoch 2 is no rung (1, 4, 16): recorded only by a trial whose last epoch it was
    for t in search.trials:
        if epoch_key(2) in t.user_attrs:
            assert ("subset_pred" in t.user_attrs[epoch_key(2)]) == (t.user_attrs["epochs"] == 2)
    best = pick_trial(search, "consensus")
    assert f"best trial {best.number} (by the consensus)" in out, out
    record = search.user_attrs["neve_selection"]
    assert (record["rule"], record["trial"], record["by"]) == ("consensus", best.number, "worker")


def test_auto_decides_from_the_finished_trials_fit():
    """``"auto"``: 1 - the median fit of the subset's labels over the finished trials is the
    noise estimate; from 10% on, the consensus decides."""
    assert sel.noise_from_fits([1.0, 0.98, 0.5]) == pytest.approx(0.02)
    assert sel.noise_from_fits([0.7, 0.9]) == pytest.approx(
        0.2
    )  # even count: mean of the middle two
    assert math.isnan(sel.noise_from_fits([None, float("nan")]))
    assert sel.selection_mode([0.9]) == "consensus"  # exactly 10% estimated noise
    assert sel.selection_mode([0.91]) == "objective"
    assert sel.selection_mode([0.95], threshold=0.01) == "consensus"
    sub = sel.SelectionSubset(torch.zeros(3, 2), labels=torch.tensor([0, 1, 2]))
    assert sub.fit("012") == 1.0 and sub.fit("010") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no labels"):
        sel.SelectionSubset(torch.zeros(3, 2)).fit("012")
    with pytest.raises(ValueError, match="codes must be this subset's predict.*got 2 codes"):
        sub.fit("01")  # another subset's predictions


def _finished(search: optuna.Study, fit: float, stopped_by: str) -> None:
    from neve_tune.optuna import report_epoch

    t = search.ask()
    last = {"epoch": 1, "train_loss": 3.0, "velocity": 0.1, "subset_pred": "0000"}
    report_epoch(t, {**last, "subset_fit": fit, "stopped_by": stopped_by})
    search.tell(t, 3.0)


@pytest.mark.parametrize(
    "fit, stopped_by, pruned_by",
    [
        (0.99, "prediction_changes", "train_loss"),
        (0.7, "velocity", "train_loss"),
        (0.7, "prediction_changes", "consensus"),
    ],
)
def test_auto_pruner_ranks_on_the_consensus_only_when_labels_look_noisy(
    fit: float, stopped_by: str, pruned_by: str
):
    """At rung 1, trial B has the lower training loss but disagrees with the vote; trial A
    the reverse. With a finished trial that fit 99% of the labels the pruner ranks on the
    loss (A pruned); with one that fit 70% (30% estimated noise) and was stopped by the
    memorisation guard on the consensus (B pruned); with 70% and a velocity stop the low fit
    reads as underfitting, on the loss."""
    from neve_tune.optuna import NeVePruner, report_epoch

    search = optuna.create_study(pruner=NeVePruner(rung_signal="auto", reduction_factor=2))
    _finished(search, fit, stopped_by)
    a, b = search.ask(), search.ask()
    report_epoch(
        a,
        {"epoch": 1, "train_loss": 2.0, "velocity": 0.5, "subset_pred": "0000", "subset_fit": 0.5},
    )
    report_epoch(
        b,
        {"epoch": 1, "train_loss": 0.5, "velocity": 0.5, "subset_pred": "1111", "subset_fit": 0.5},
    )
    # b is judged first: Optuna's halving ranks a trial among those judged at the rung before it
    pruned = {name for name, t in (("consensus", b), ("train_loss", a)) if t.should_prune()}
    assert pruned == {pruned_by}


def test_compare_with_auto_rungs_and_pick():
    from neve_tune.compare import compare

    study = load_study("digits").replace(
        data="synthetic", max_epochs=4, lr_patience=1, selection_subset=32, selection="auto"
    )
    r = compare(study, trials=4, seed=2, searches=("neve",), rung_signal="auto", progress=False)
    done = [t for t in r["runs"][0]["neve"]["trials"] if t["state"] == "COMPLETE"]
    assert done
    # synthetic data has clean labels: the finished trials fit them, so the objective picks
    assert all(t["objective"] > 0 for t in done)
    assert r["runs"][0]["neve"]["test_acc"] == min(done, key=lambda t: t["objective"])["test_acc"]
    with pytest.raises(ValueError, match="selection='auto' needs selection_subset > 0"):
        study.replace(selection_subset=0)


def test_optuna_best_prints_the_pick_and_its_rule(tmp_path, capsys):
    """`neve-tune optuna best`: the study's pick without running a trial, and why."""
    from neve_tune.cli import main
    from neve_tune.optuna import report_epoch

    storage = f"sqlite:///{tmp_path}/s.db"
    search = optuna.create_study(storage=storage, study_name="s")
    rows = (
        ("0123", 0.1, 0.7, "velocity"),
        ("0120", 0.3, 0.75, "prediction_changes"),
        ("0100", 0.2, 0.72, "velocity"),
    )
    for preds, loss, fit, stopped_by in rows:
        t = search.ask()
        report_epoch(
            t,
            {
                "epoch": 1,
                "train_loss": loss,
                "velocity": 0.1,
                "subset_pred": preds,
                "subset_fit": fit,
                "stopped_by": stopped_by,
            },
        )
        search.tell(t, loss)
    assert main(["optuna", "best", "--study-name", "s", "--storage", storage]) == 0
    out = capsys.readouterr().out
    assert (
        "best trial 1 (auto: the finished trials' subset fit suggests 28% label noise, "
        "so by the consensus)" in out
    )
    # the rule applied is recorded in the study, with the pick and who made it
    stored = optuna.load_study(study_name="s", storage=storage).user_attrs["neve_selection"]
    assert stored == {
        "selection": "auto",
        "rule": "consensus",
        "noise": pytest.approx(0.28),
        "finished": 3,
        "fits": 3,
        "reason": "auto: the finished trials' subset fit suggests 28% label noise, so by the "
        "consensus",
        "trial": 1,
        "by": "neve-tune optuna best",
    }
    assert (
        main(
            [
                "optuna",
                "best",
                "--study-name",
                "s",
                "--storage",
                storage,
                "--selection",
                "objective",
            ]
        )
        == 0
    )
    assert "best trial 0 (by the objective) value=0.1" in capsys.readouterr().out
    missing = tmp_path / "none.db"
    assert main(["optuna", "best", "--study-name", "s", "--storage", f"sqlite:///{missing}"]) == 2
    assert (
        "does not exist; nothing to pick from" in capsys.readouterr().err and not missing.exists()
    )


@pytest.mark.parametrize("verb", ["best", "plot"])
def test_best_and_plot_help_says_storage_is_required(verb, capsys) -> None:
    """They read what workers stored: ``--help`` does not promise an in-memory default."""
    from neve_tune.cli import main

    with pytest.raises(SystemExit):
        main(["optuna", verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(required: the storage the workers used)" in text and "in-memory" not in text
    assert main(["optuna", verb, "--study-name", "s"]) == 2
    assert "--storage is required" in capsys.readouterr().err


def test_a_multi_objective_study_is_refused_in_one_line(tmp_path, capsys) -> None:
    """``optuna create-study --directions minimize minimize`` makes a study no pick can
    rank: refused naming it, not Optuna's RuntimeError from ``study.direction``."""
    from neve_tune.cli import main
    from neve_tune.optuna import pick_trial

    storage = f"sqlite:///{tmp_path / 'mo.db'}"
    search = optuna.create_study(study_name="mo", storage=storage, directions=["minimize"] * 2)
    with pytest.raises(ValueError, match="study 'mo' has 2 objectives"):
        pick_trial(search, "objective")
    assert main(["optuna", "best", "--study-name", "mo", "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "has 2 objectives" in err and len(err.strip().splitlines()) == 1
