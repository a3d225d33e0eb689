"""The one selection policy (neve_tune.selection_policy): which trials are finished, the rule
``auto`` applies and why, the pick; and every backend's adapter giving the same decision on
the same trials (Optuna's ``select_trial``, Ray's ``summarize`` and the scheduler's rungs,
compare's records)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import optuna
import pytest

from neve_tune import SelectionPolicy, TrialOutcome
from neve_tune.selection_policy import NOT_FINISHED

optuna.logging.set_verbosity(optuna.logging.WARNING)

# (objective, how it ended, subset_fit, subset_pred): three finished trials and two that are not
NOISY = [
    (0.10, "velocity", 0.70, "1111"),
    (0.50, "prediction_changes", 0.75, "0000"),
    (0.90, "max_epochs", 0.72, "0000"),
    (0.01, "pruned", 0.99, "1111"),
    (0.02, "stalled", 0.99, "1111"),
]
CLEAN = [(o, e, 0.99, p) for o, e, _, p in NOISY]
#: NOISY's fits without a memorisation-guard stop: underfit trials, not flipped labels
#: two finished trials agree equally with each other: the guard stop (second) wins the tie
TIE = [(0.10, "velocity", 0.70, "0120"), (0.50, "prediction_changes", 0.72, "0123")]
UNDERFIT = [(o, "velocity" if e == "prediction_changes" else e, f, p) for o, e, f, p in NOISY]


def rows(spec) -> list[TrialOutcome]:
    return [TrialOutcome(i, o, e, f, p) for i, (o, e, f, p) in enumerate(spec)]


# ---------------------------------------------------------------- the policy's rule
def test_finished_is_ended_by_its_own_rule_with_a_finite_objective():
    own = ("velocity", "prediction_changes", "max_epochs", "early_stopping", "max_t", None)
    assert all(TrialOutcome(0, 1.0, e).finished for e in own)
    assert not any(TrialOutcome(0, 1.0, e).finished for e in NOT_FINISHED)
    assert not TrialOutcome(0, float("nan"), "velocity").finished
    assert not TrialOutcome(0, None, "velocity").finished


def test_auto_takes_the_consensus_when_the_finished_trials_look_noisy():
    winner, d = SelectionPolicy().pick(rows(NOISY), "auto")
    # the pruned and stalled trials fit 99% but do not count: median of 0.70, 0.72, 0.75
    assert (d.rule, d.noise, d.finished, d.fits) == ("consensus", pytest.approx(0.28), 3, 3)
    assert d.reason == (
        "auto: the finished trials' subset fit suggests 28% label noise, so by the consensus"
    )
    assert winner == 1  # agrees with the other finished trial; the lowest objective does not


def test_auto_reads_a_low_fit_without_a_guard_stop_as_underfitting():
    """The same fits, but no finished trial was stopped by the memorisation guard: nothing
    says labels were memorised, so the low fit reads as underfit trials and the objective
    picks; asked for, the consensus still applies."""
    winner, d = SelectionPolicy().pick(rows(UNDERFIT), "auto")
    assert (winner, d.rule, d.noise, d.finished) == (0, "objective", pytest.approx(0.28), 3)
    assert d.reason == (
        "auto: the finished trials' subset fit suggests 28% label noise, but the memorisation "
        "guard stopped none of them: read as underfitting, so by the objective"
    )
    assert SelectionPolicy().pick(rows(UNDERFIT), "consensus")[0] == 1  # asked for, it applies


def test_auto_takes_the_objective_on_clean_labels_and_without_fits():
    winner, d = SelectionPolicy().pick(rows(CLEAN), "auto")
    assert (winner, d.rule, d.noise) == (0, "objective", pytest.approx(0.01))
    bare = [TrialOutcome(i, o, e) for i, (o, e, _, _) in enumerate(NOISY)]
    winner, d = SelectionPolicy().pick(bare, "auto")
    assert (winner, d.rule, d.noise, d.fits) == (0, "objective", None, 0)
    assert "no finished trial recorded subset_fit" in d.reason


def test_the_threshold_and_an_asked_rule():
    policy = SelectionPolicy(threshold=0.3)
    assert policy.decide(rows(NOISY), "auto").rule == "objective"  # 28% < 30%
    d = SelectionPolicy().decide(rows(CLEAN), "consensus")
    assert (d.rule, d.reason) == ("consensus", "by the consensus")
    assert SelectionPolicy().pick(rows(CLEAN), "consensus")[0] == 1
    with pytest.raises(ValueError, match="threshold"):
        SelectionPolicy(threshold=0.0)
    with pytest.raises(ValueError, match="selection must be one of"):
        SelectionPolicy().decide(rows(NOISY), "vote")


def test_nothing_finished_and_a_consensus_without_predictions():
    winner, d = SelectionPolicy().pick(rows(NOISY)[3:], "auto")
    assert winner is None and d.finished == 0
    with pytest.raises(ValueError, match="no 'subset_pred' on the finished trials"):
        SelectionPolicy().pick([TrialOutcome(0, 1.0, "velocity", 0.5)], "consensus")


# ---------------------------------------------------------------- every adapter, one decision
def _optuna_study(spec) -> optuna.Study:
    from neve_tune.optuna import report_epoch

    study = optuna.create_study()
    for objective, ended, fit, preds in spec:
        t = study.ask()
        epoch = {"epoch": 1, "train_loss": objective, "velocity": 0.1}
        epoch.update(subset_pred=preds, subset_fit=fit, stopped_by=None)
        if ended not in ("pruned",):
            epoch.update(stopped_by=ended, neve_stop=ended == "velocity")
            epoch.update(stalled=ended == "stalled")
        report_epoch(t, epoch)
        if ended == "pruned":
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(t, objective)  # a stalled trial that completed is still not finished
    return study


def _ray_results(spec) -> SimpleNamespace:
    trials = [
        SimpleNamespace(
            trial_id=f"t{i}",
            config={"i": i},
            last_result={
                "objective": o,
                "stopped_by": e,
                "subset_fit": f,
                "subset_pred": p,
                "epochs_equiv": 1.0,
            },
            error_file=None,
        )
        for i, (o, e, f, p) in enumerate(spec)
    ]
    return SimpleNamespace(trials=trials)


def _compare_records(spec) -> list:
    from neve_tune._search_records import SearchTrial
    from neve_tune.records import Cost

    return [
        SearchTrial(
            number=i,
            config={"i": i},
            state="PRUNED" if e == "pruned" else "COMPLETE",
            stopped_by=e,
            epochs=1,
            best_epoch=1,
            objective=None if e == "pruned" else o,
            test_acc=0.5,
            cost=Cost(),
            train_size=10,
            subset_fit=f,
            subset_pred=p,
        )
        for i, (o, e, f, p) in enumerate(spec)
    ]


@pytest.mark.parametrize(
    "spec, selection",
    [(NOISY, "auto"), (CLEAN, "auto"), (UNDERFIT, "auto"), (TIE, "auto"), (NOISY, "objective")],
)
def test_every_adapter_gives_the_same_decision(spec, selection):
    from neve_tune._search_records import select_trials
    from neve_tune.compare._records import anytime_curve
    from neve_tune.optuna import select_trial
    from neve_tune.ray import summarize

    want_key, want = SelectionPolicy().pick(rows(spec), selection)
    best, optuna_decision = select_trial(_optuna_study(spec), selection)
    ray = summarize(_ray_results(spec), selection)
    records = _compare_records(spec)
    compare_decision = select_trials(records, selection)
    _, compare_best = anytime_curve(records, compare_decision.rule)
    assert optuna_decision == want and best.number == want_key
    assert ray["selection"] == want.as_dict() and ray["best"]["trial_id"] == f"t{want_key}"
    assert compare_decision == want and compare_best.number == want_key
    # the objective is never overwritten: the agreement has its own field
    assert [r.objective for r in records if r.state == "COMPLETE"] == [
        o for o, e, _, _ in spec if e != "pruned"
    ]
    assert all((r.agreement is not None) == (want.rule == "consensus") for r in records[:3])


def test_the_ray_schedulers_auto_counts_only_finished_trials():
    """A trial the scheduler pruned (its fit says 70%) does not count; one that ran to
    ``max_t`` (the budget's end) does, and the rungs turn to the consensus once a finished
    trial was stopped by the memorisation guard (a converged trial's ``stopped_by``)."""
    from neve_tune.ray._consensus import ConsensusRungs, ended_trial

    votes = ConsensusRungs([[4.0, 1.0]])
    votes.add_outcome(ended_trial("p", "pruned", {"train_loss": 0.3, "subset_fit": 0.7}, "x"))
    votes.add_outcome(ended_trial("s", "stalled", {"train_loss": 0.3, "subset_fit": 0.7}, "x"))
    assert not votes.noisy() and votes.state_dict()["fits"] == {}
    votes.add_outcome(
        ended_trial("m", "max_t", {"train_loss": 0.3, "subset_fit": 0.7}, "train_loss")
    )
    assert not votes.noisy() and votes.state_dict()["fits"] == {"m": 0.7}
    guarded = {"train_loss": 0.3, "stopped_by": "prediction_changes"}  # no fit of its own
    votes.add_outcome(ended_trial("g", "converged", guarded, "train_loss"))
    state = votes.state_dict()
    assert votes.noisy() and state["guarded"] == ["g"] and state["fits"] == {"m": 0.7}


def test_summarize_auto_warns_only_with_finished_trials_and_no_fit():
    from neve_tune.ray import summarize

    bare = [(o, e, None, None) for o, e, _, _ in NOISY]
    with pytest.warns(UserWarning, match="subset_fit"):
        out = summarize(_ray_results(bare), "auto")
    assert out["selection"]["rule"] == "objective" and out["best"]["trial_id"] == "t0"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert summarize(_ray_results(bare[3:]), "auto")["best"] is None  # nothing finished


def test_a_consensus_tie_goes_to_the_trial_the_guard_stopped():
    """Two finished trials always agree equally with each other's vote: the vote cannot
    rank them, and the one the memorisation guard stopped (restored to before it memorised
    labels) wins, wherever it stands in the order; without a guard stop, the first."""
    pair = [
        TrialOutcome(0, 1.47, "velocity", 0.60, "0120"),
        TrialOutcome(1, 1.45, "prediction_changes", 0.61, "0123"),
    ]
    winner, d = SelectionPolicy().pick(pair, "auto")
    assert (winner, d.rule) == (1, "consensus")
    assert SelectionPolicy().agreements(pair) == {0: 0.75, 1: 0.75}
    both_velocity = [
        TrialOutcome(t.key, t.objective, "velocity", t.subset_fit, t.subset_pred) for t in pair
    ]
    assert SelectionPolicy().pick(both_velocity, "consensus")[0] == 0
