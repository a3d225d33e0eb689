import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from neve_tune import load_study
from neve_tune.cli import main
from neve_tune.compare import SEARCHES, compare, compare_searches, epochs_by_rung
from neve_tune.data import get_dataset

TINY = dict(data="synthetic", max_epochs=5, early_stopping=2, lr_patience=1)


def _study():
    return load_study("digits").replace(**TINY)


class GuardedTestSet(Dataset):
    """Counts reads; ``allowed`` is switched off while any training epoch runs."""

    def __init__(self, base: Dataset):
        self.base, self.reads, self.allowed = base, 0, True

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        assert self.allowed, "the test set was read while a trial was still training"
        self.reads += 1
        return self.base[i]


DATA_KEYED = {"stopped_by", "config", "best_config"}


def _schema_diff(a, b, path="") -> list[str]:
    """Where two records differ in keys or value types (None fits any type: a search with no
    finished trial has null scores on either backend; ints and floats are both numbers)."""
    if a is None or b is None:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        if path.rsplit("/", 1)[-1] in DATA_KEYED:  # keys are data (how trials ended, best configs)
            return []
        out = [f"{path}/{k}: only in one" for k in set(a) ^ set(b)]
        for k in set(a) & set(b):
            out += _schema_diff(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        return _schema_diff(a[0], b[0], f"{path}[0]") if a and b else []
    num = (int, float)
    if (
        isinstance(a, num)
        and isinstance(b, num)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return []
    return [] if type(a) is type(b) else [f"{path}: {type(a).__name__} vs {type(b).__name__}"]


def test_cost_of_a_search_adds_up_over_its_trials_and_retrain():
    res = compare(_study(), trials=3, seed=0, progress=False)
    run = res["runs"][0]
    n = len(get_dataset("synthetic").train)
    for m in SEARCHES:
        rec = run[m]
        assert rec["search_cost"]["train_samples"] == sum(
            t["cost"]["train_samples"] for t in rec["trials"]
        )
        assert rec["search_cost"]["probe_samples"] == sum(
            t["cost"]["probe_samples"] for t in rec["trials"]
        )
        assert rec["search_cost"]["eval_samples"] == sum(
            t["cost"]["eval_samples"] for t in rec["trials"]
        )
        epochs = sum(t["epochs"] for t in rec["trials"])
        assert sum(rec["epochs_by_rung"].values()) == epochs
        if m == "neve":
            assert rec["retrain"] is None and rec["cost"] == rec["search_cost"]
            assert rec["search_cost"]["eval_samples"] == 0
            # every NeVe epoch trains on all n samples; every ASHA epoch on 90%
            assert rec["search_cost"]["train_samples"] == epochs * n
        else:
            assert rec["search_cost"]["train_samples"] == epochs * (n - round(0.1 * n))
            assert rec["search_cost"]["probe_samples"] == 0
            rt = rec["retrain"]
            assert rt["cost"]["train_samples"] == rt["epochs"] * n
            assert (
                rec["cost"]["train_samples"]
                == rec["search_cost"]["train_samples"] + rt["cost"]["train_samples"]
            )
            assert rec["test_acc"] == rt["test_acc"]
        assert rec["cost"]["epochs_equiv"] == pytest.approx(
            (
                rec["cost"]["train_samples"]
                + (rec["cost"]["probe_samples"] + rec["cost"]["eval_samples"]) / 3
            )
            / n
        )
    assert res["cost_ratio"] == pytest.approx(
        run["neve"]["cost"]["epochs_equiv"] / run["asha"]["cost"]["epochs_equiv"]
    )
    assert res["vs_asha_es"]["test_acc_diff"] == pytest.approx(
        run["neve"]["test_acc"] - run["asha_es"]["test_acc"]
    )


def test_test_set_is_never_read_while_training_and_decides_nothing(monkeypatch):
    import neve_tune.train as train_mod
    import neve_tune.trial as study_mod
    from neve_tune.data import DataBundle

    base = get_dataset("synthetic")
    guarded = GuardedTestSet(base.test)
    real_epoch, real_evaluate = train_mod.train_epoch, study_mod.evaluate

    def train_epoch(*a, **kw):
        guarded.allowed = False  # no test read from here until the trial's final evaluation
        return real_epoch(*a, **kw)

    def evaluate(model, dataset, **kw):
        if dataset is guarded:
            guarded.allowed = True
        return real_evaluate(model, dataset, **kw)

    monkeypatch.setattr(train_mod, "train_epoch", train_epoch)
    monkeypatch.setattr(study_mod, "evaluate", evaluate)
    bundle = DataBundle("synthetic", base.train, guarded, base.input_shape, base.num_classes)
    a = compare(_study(), trials=3, seed=1, data=bundle, progress=False)
    assert guarded.reads >= len(base.test)
    # the same searches against a test set with shuffled labels make the same decisions
    shuffled = TensorDataset(base.test.tensors[0], base.test.tensors[1].roll(1))
    b = compare(
        _study(),
        trials=3,
        seed=1,
        data=DataBundle("synthetic", base.train, shuffled, base.input_shape, base.num_classes),
        progress=False,
    )
    for m in SEARCHES:
        ta, tb = a["runs"][0][m]["trials"], b["runs"][0][m]["trials"]
        assert [(t["config"], t["state"], t["epochs"], t["objective"]) for t in ta] == [
            (t["config"], t["state"], t["epochs"], t["objective"]) for t in tb
        ]
        assert a[m]["best_config"] == b[m]["best_config"]
        assert a[m]["test_acc"] != b[m]["test_acc"] or a[m]["test_acc"] is None


def test_repeats_give_means_with_spread_and_one_run_per_seed(tmp_path):
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
                "--repeats",
                "2",
                "--max-epochs",
                "3",
                "--seed",
                "5",
                "--json",
                str(out),
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["seeds"] == [5, 6] and [r["seed"] for r in res["runs"]] == [5, 6]
    for m in SEARCHES:
        assert set(res[m]) >= {
            "cost",
            "best_config",
            "test_acc",
            "trials",
            "anytime",
            "test_acc_std",
        }
        assert set(res[m]["cost"]) == {
            "train_samples",
            "probe_samples",
            "eval_samples",
            "wall_s",
            "epochs_equiv",
        }
        accs = [r[m]["test_acc"] for r in res["runs"]]
        assert res[m]["test_acc"] == pytest.approx(sum(accs) / 2)
    assert {"cost_ratio", "test_acc_diff", "search_cost_ratio", "cost_ratio_std"} <= set(res)
    assert {"cost_ratio", "test_acc_diff", "search_cost_ratio"} <= set(res["vs_asha_es"])
    assert (tmp_path / "anytime.png").exists() and (tmp_path / "velocity.png").exists()


def test_python_api_on_a_user_dataset_and_model():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    train, test = TensorDataset(x[:200], y[:200]), TensorDataset(x[200:], y[200:])

    def model_fn():
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))

    res = compare_searches(train, test, model_fn, trials=3, seed=0, max_epochs=4, early_stopping=2)
    assert res["train_size"] == 200
    for m in SEARCHES:
        assert 0.5 < res[m]["test_acc"] <= 1.0
        assert len(res[m]["trials"]) == 3


def test_epochs_by_rung_bins():
    trials = [{"epochs": 1}, {"epochs": 4}, {"epochs": 12}, {"epochs": 60}]
    assert epochs_by_rung(trials, 60) == {"1-1": 4, "2-4": 9, "5-16": 8 + 12, "17-60": 44}


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        compare(_study(), backend="hyperopt", progress=False)
    with pytest.raises(ValueError, match="trials"):
        compare(_study(), trials=0, progress=False)
    with pytest.raises(ValueError, match="searches"):
        compare(_study(), searches=["neve", "random"], progress=False)
    with pytest.raises(ValueError, match="reduction_factor must be an int >= 2"):
        compare(_study(), reduction_factor=1, progress=False)


def test_reduction_factor_sets_every_searchs_rungs():
    """rf 2 keeps half of the trials at each rung (epochs 1, 2, 4), rf 8 an eighth (epoch 1):
    with the same sampled trials, a larger factor prunes more of them early, in every search."""
    kept = {}
    for rf in (2, 8):
        r = compare(_study(), trials=8, seed=0, reduction_factor=rf, progress=False)
        assert r["reduction_factor"] == rf
        kept[rf] = {m: sum(t["epochs"] > 1 for t in r["runs"][0][m]["trials"]) for m in SEARCHES}
    assert all(kept[8][m] < kept[2][m] for m in SEARCHES), kept


@pytest.mark.ray
@pytest.mark.slow
def test_both_backends_produce_the_same_json_schema():
    a = compare(_study(), backend="optuna", trials=2, seed=0, progress=False)
    b = compare(_study(), backend="ray", trials=2, seed=0, progress=False)
    assert _schema_diff(a, b) == []
    for m in SEARCHES:
        assert set(a["runs"][0][m]["trials"][0]) == set(b["runs"][0][m]["trials"][0])
    # every search samples the whole space, so trial i draws one configuration in all of them
    # (docs/design.md, section 7); the start-up trials here are the only trials
    for res in (a, b):
        configs = [[t["config"] for t in res["runs"][0][m]["trials"]] for m in SEARCHES]
        assert all(c == configs[0] for c in configs[1:]) and len(configs[0]) == 2
    assert _schema_diff({"x": 1, "y": None}, {"x": 2.5, "y": "s"}) == []
    assert _schema_diff({"x": 1}, {"x": "s", "z": 0}) != []
