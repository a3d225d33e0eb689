"""``NeVeASHAScheduler(rung_signal="consensus")``: successive halving on each trial's agreement
with the other trials' vote at the rung, in Ray's style (fake trials and results), and a
real Ray search through ``compare(backend="ray")`` that prunes and picks by it."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

pytest.importorskip("ray.tune")

from ray.tune.schedulers import TrialScheduler  # noqa: E402

from neve_tune import load_study  # noqa: E402
from neve_tune.ray import NeVeASHAScheduler  # noqa: E402
from neve_tune.ray._consensus import ConsensusRungs, ended_trial  # noqa: E402

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def go(it: int, preds: str | None, **extra) -> dict:
    r = {
        "training_iteration": it,
        "velocity": 0.5,
        "train_loss": 1.0 / it,
        "neve_stop": False,
        **extra,
    }
    if preds is not None:
        r["subset_pred"] = preds
    return r


def sched(**kw) -> NeVeASHAScheduler:
    return NeVeASHAScheduler(
        rung_signal="consensus", max_t=16, min_resource=1, reduction_factor=2, **kw
    )


def added(s: NeVeASHAScheduler, *ids: str) -> list[SimpleNamespace]:
    trials = [SimpleNamespace(trial_id=i, status="PENDING") for i in ids]
    for t in trials:
        s.on_trial_add(None, t)
    return trials


def test_rungs_by_hand():
    """Four trials at rung 1 (reduction factor 2: the median of the earlier trials'
    agreements is the cutoff). a=0123, b=0120, c=0100: agreements 0.5/0.75/0.75 (the
    selection module's doctest), c is above the median 0.625 of a and b; d=3333 agrees with
    nothing the others vote (0, 1, 2, 0), so it is stopped."""
    rungs = ConsensusRungs([[4.0, 1.0]])
    assert rungs.decide(0, "a", 1, "0123", 0.5) is False  # the first trial at a rung continues
    assert rungs.decide(0, "b", 1, "0120", 0.5) is False  # two trials agree equally: at the cutoff
    assert rungs.decide(0, "c", 1, "0100", 0.5) is False
    assert rungs.decide(0, "d", 1, "3333", 0.5) is True
    assert rungs.decide(0, "a", 2, "0123", 0.5) is False  # no new rung reached
    # d's votes split the third and fourth examples: each of a, b, c now agrees on two
    assert rungs.agreements(0, 1.0) == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.5, "d": 0.0})


def test_scheduler_prunes_the_trial_that_disagrees_and_ranks_no_metric():
    s = sched()
    a, b, c, d = added(s, "a", "b", "c", "d")
    # the training loss would prune d's rivals; the consensus ignores it
    assert s.on_trial_result(None, a, go(1, "0123", train_loss=5.0)) == CONTINUE
    assert s.on_trial_result(None, b, go(1, "0120", train_loss=9.0)) == CONTINUE
    assert s.on_trial_result(None, c, go(1, "0100", train_loss=9.0)) == CONTINUE
    assert s.on_trial_result(None, d, go(1, "3333", train_loss=0.1)) == STOP
    assert s.outcome("d") == "pruned" and s.num_pruned == 1
    assert s.rung_values()[-1][1] == {}  # no metric recorded: the rung holds predictions


def test_converged_trials_vote_at_the_rung_they_reached():
    s = sched()
    a, b, c = added(s, "a", "b", "c")
    done = go(2, "0000", neve_stop=True)
    assert s.on_trial_result(None, a, done) == STOP and s.outcome("a") == "converged"
    s.on_trial_complete(None, a, done)
    assert s.on_trial_result(None, b, go(2, "0000")) == CONTINUE
    assert s.on_trial_result(None, c, go(2, "1111")) == STOP  # a's vote counts at rung 2
    assert sorted(s.state_dict()["votes"]["rungs"][0][-2][1]) == ["a", "b", "c"]


def test_state_round_trip_and_pickle():
    s = sched()
    a, b, c = added(s, "a", "b", "c")
    s.on_trial_result(None, a, go(1, "0011"))
    s.on_trial_result(None, b, go(1, "0011"))
    fresh = sched()
    fresh.load_state_dict(s.state_dict())
    for other in (fresh, pickle.loads(pickle.dumps(s))):
        assert other.state_dict() == s.state_dict()
        assert (
            other.on_trial_result(None, c, go(1, "1100")) == STOP
        )  # judged against a and b's votes


def test_missing_predictions_are_a_clear_error():
    s = sched()
    (a,) = added(s, "a")
    with pytest.raises(
        ValueError,
        match=r"rung_signal='consensus'\) needs each result's 'subset_pred'.*SelectionSubset",
    ):
        s.on_trial_result(None, a, go(1, None))
    with pytest.raises(ValueError, match="'preds'"):
        sched(predictions_key="preds").on_trial_result(None, a, go(1, "01"))
    with pytest.raises(ValueError, match="signal"):
        NeVeASHAScheduler(rung_signal="agreement")


def test_ray_search_needs_the_subset():
    from neve_tune.ray import run_search

    with pytest.raises(ValueError, match="selection_subset > 0"):
        run_search(
            load_study("digits").replace(selection_subset=0, selection="objective"),
            rung_signal="consensus",
        )


def test_compare_on_ray_prunes_and_picks_by_consensus():
    """A real local Ray search (``compare(backend="ray")``): each trial reports its subset
    predictions, the scheduler ranks them at the rungs, and the final pick is the finished
    trial that agrees most with the other finished trials' vote."""
    from neve_tune.compare import compare

    study = load_study("digits").replace(
        data="synthetic", max_epochs=4, lr_patience=1, selection_subset=32, selection="consensus"
    )
    r = compare(
        study,
        backend="ray",
        trials=4,
        seed=2,
        searches=("neve",),
        rung_signal="consensus",
        progress=False,
    )
    neve = r["runs"][0]["neve"]
    done = [t for t in neve["trials"] if t["state"] == "COMPLETE"]
    # the objective stays the training loss; the agreement has its own field
    assert done and all(t["objective"] > 0 and 0.0 <= t["agreement"] <= 1.0 for t in done)
    assert neve["test_acc"] == max(done, key=lambda t: t["agreement"])["test_acc"]
    assert neve["selection"]["rule"] == "consensus" and neve["selection"]["finished"] == len(done)


@pytest.mark.parametrize(
    "fit, ended_by, stopped",
    [(0.99, "prediction_changes", "b"), (0.7, "velocity", "b"), (0.7, "prediction_changes", "c")],
)
def test_auto_ranks_on_the_consensus_once_finished_trials_look_noisy(
    fit: float, ended_by: str, stopped: str
):
    """A finished trial that fit 99% of the subset's labels leaves the rungs on the metric
    (b, the higher loss, stops); one that fit 70% and was stopped by the memorisation guard
    turns them to the consensus (c, which disagrees with the vote, stops); one that fit 70%
    and stopped on its velocity reads as underfit, the metric decides. All are recorded."""
    s = NeVeASHAScheduler(rung_signal="auto", max_t=16, min_resource=1, reduction_factor=2)
    done, a, b, c = added(s, "done", "a", "b", "c")
    end = go(1, "0000", subset_fit=fit, train_loss=0.1, stopped_by=ended_by)
    s.on_trial_complete(None, done, end)
    assert s.on_trial_result(None, a, go(1, "0000", train_loss=0.05)) == CONTINUE
    verdicts = {
        "b": s.on_trial_result(None, b, go(1, "0000", train_loss=5.0)),
        "c": s.on_trial_result(None, c, go(1, "1111", train_loss=0.05)),
    }
    assert {k for k, v in verdicts.items() if v == STOP} == {stopped}
    assert sorted(s.rung_values()[-1][1]) == ["a", "b", "c", "done"]  # the metric is recorded too


def test_the_guards_stop_survives_the_schedulers_state():
    """The evidence ``auto`` reads (which finished trials the guard stopped) is part of the
    scheduler's state: a restored scheduler decides on the consensus as the one it replaces
    (c stops); a state saved before it was kept reads no guard stop (b stops)."""

    def stopped_after_restore(state: dict) -> set[str]:
        restored = NeVeASHAScheduler(
            rung_signal="auto", max_t=16, min_resource=1, reduction_factor=2
        )
        restored.load_state_dict(state)
        a, b, c = added(restored, "a", "b", "c")
        assert restored.on_trial_result(None, a, go(1, "0000", train_loss=0.05)) == CONTINUE
        verdicts = {
            "b": restored.on_trial_result(None, b, go(1, "0000", train_loss=5.0)),
            "c": restored.on_trial_result(None, c, go(1, "1111", train_loss=0.05)),
        }
        return {k for k, v in verdicts.items() if v == STOP}

    s = NeVeASHAScheduler(rung_signal="auto", max_t=16, min_resource=1, reduction_factor=2)
    (done,) = added(s, "done")
    end = go(1, "0000", subset_fit=0.7, train_loss=0.1, stopped_by="prediction_changes")
    s.on_trial_complete(None, done, end)
    assert stopped_after_restore(s.state_dict()) == {"c"}
    state = s.state_dict()
    del state["votes"]["guarded"]
    assert stopped_after_restore(state) == {"b"}


def test_summarize_picks_by_the_studys_selection():
    """``neve-tune ray`` reports the winner by the study's selection: a, the lowest
    objective, disagrees with b and c, which agree equally. With fits of 70% (30% estimated
    noise) and c stopped by the memorisation guard, ``auto`` takes the consensus and c wins
    the tie (restored to before it memorised); with 99%, or 70% and no guard stop
    (underfit), the objective. The consensus asked for breaks a tie without a guard stop
    to the first (b)."""
    from neve_tune.ray import summarize

    def trial(tid, objective, preds, fit, stopped_by="velocity"):
        result = {
            "objective": objective,
            "subset_pred": preds,
            "subset_fit": fit,
            "epochs_equiv": 1.0,
            "stopped_by": stopped_by,
        }
        return SimpleNamespace(trial_id=tid, config={}, last_result=result, error_file=None)

    for fit, guard, auto_pick, consensus_pick in (
        (0.7, "prediction_changes", "c", "c"),
        (0.7, "velocity", "a", "b"),
        (0.99, "prediction_changes", "a", "c"),
    ):
        results = SimpleNamespace(
            trials=[
                trial("a", 0.1, "1111", fit),
                trial("b", 0.5, "0000", fit),
                trial("c", 0.9, "0000", fit, guard),
            ]
        )
        assert summarize(results)["best"]["trial_id"] == "a"
        assert summarize(results, "consensus")["best"]["trial_id"] == consensus_pick
        assert summarize(results, "auto")["best"]["trial_id"] == auto_pick
    with pytest.raises(ValueError, match="selection must be one of"):
        summarize(results, "vote")


def test_summarize_auto_without_the_subsets_fit_warns_and_picks_by_the_objective():
    """As ``pick_trial(study, "auto")`` does: no finished trial recorded ``subset_fit``."""
    import warnings

    from neve_tune.ray import summarize

    def trial(tid, objective, fit=None):
        result = {"objective": objective, **({} if fit is None else {"subset_fit": fit})}
        return SimpleNamespace(trial_id=tid, config={}, last_result=result, error_file=None)

    bare = SimpleNamespace(trials=[trial("a", 0.3), trial("b", 0.1)])
    with pytest.warns(UserWarning, match="no finished trial reported subset_fit") as caught:
        assert summarize(bare, "auto")["best"]["trial_id"] == "b"
    assert len(caught) == 1 and "SelectionSubset" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with the fit recorded, or another rule: no warning
        summarize(SimpleNamespace(trials=[trial("a", 0.3, 0.99), trial("b", 0.1)]), "auto")
        summarize(bare, "objective")


def test_summarize_reads_numpy_and_tensor_scalars_a_trainable_reported():
    """A trainable's own ``tune.report`` keeps ``np.float32(0.5)`` as it is in the ResultGrid:
    such a trial is finished and, with the lowest objective, the pick."""
    import numpy as np
    import torch

    from neve_tune.ray import summarize

    def result(tid, objective, fit):
        metrics = {"trial_id": tid, "objective": objective, "stopped_by": "velocity"}
        return SimpleNamespace(metrics={**metrics, "subset_fit": fit}, config={}, error=None)

    for scalar in (np.float32, torch.tensor):
        grid = [result("a", scalar(0.5), scalar(0.9)), result("b", 0.9, 0.9)]
        out = summarize(grid)
        assert out["best"]["trial_id"] == "a"
        assert out["selection"]["finished"] == 2 and out["selection"]["fits"] == 2
        # the scheduler's "auto" reads the trials it saw end by the same rule
        seen = ended_trial(
            "a", "converged", {"objective": scalar(0.5), "subset_fit": scalar(0.9)}, "x"
        )
        assert (seen.objective, seen.subset_fit) == (0.5, pytest.approx(0.9))
