"""Prediction changes: the index-carrying count and the subset form, by hand."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import neve_tune
from neve_tune.prediction_changes import PredictionChanges, SubsetPredictionChanges

try:
    from tests._controllers import CountingController
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from _controllers import CountingController


class _Fixed(nn.Module):
    """Predicts the class stored in feature 0 of each input (shifted by ``shift``)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.classes, self.shift = classes, 0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = (x[:, 0].long() + self.shift) % self.classes
        return nn.functional.one_hot(ids, self.classes).float() + 0 * self.dummy


def test_public_names():
    assert neve_tune.SubsetPredictionChanges is SubsetPredictionChanges
    assert neve_tune.PredictionChanges is PredictionChanges
    from neve_tune.train import PredictionChanges as old  # the old import keeps working

    assert old is PredictionChanges


def test_subset_counts_by_hand():
    x = torch.tensor([[0.0], [1.0], [2.0], [0.0], [1.0]])
    model = _Fixed()
    pc = SubsetPredictionChanges(x, batch_size=2)  # three batches: 2, 2, 1
    assert pc.num_examples == 5
    assert pc.measure(model) is None
    assert pc.measure(model) == 0
    model.shift = 1  # every prediction moves
    assert pc.measure(model) == 5
    x[1, 0] = 2.0  # now example 1 (and 2) give class 0 with shift 1
    pc.inputs = x
    assert pc.measure(model) == 1  # only example 1 changed (2 -> 0)
    assert torch.equal(pc.predictions, torch.tensor([1, 0, 0, 1, 2]))


def test_subset_with_dict_inputs_and_forward():
    ids = torch.tensor([[0.0], [1.0], [2.0], [1.0]])
    model = _Fixed()
    pc = SubsetPredictionChanges(
        {"input_ids": ids, "mask": torch.ones(4, 1)},
        forward=lambda m, batch: m(batch["input_ids"] * batch["mask"]),
    )
    assert pc.measure(model) is None
    model.shift = 2
    assert pc.measure(model) == 4


def test_from_dataset_is_seeded_and_takes_all_when_fewer():
    data = TensorDataset(torch.arange(50.0).unsqueeze(1), torch.zeros(50, dtype=torch.long))
    a = SubsetPredictionChanges.from_dataset(data, num_examples=10, seed=3)
    b = SubsetPredictionChanges.from_dataset(data, num_examples=10, seed=3)
    c = SubsetPredictionChanges.from_dataset(data, num_examples=10, seed=4)
    assert (
        a.num_examples == 10
        and torch.equal(a.inputs, b.inputs)
        and not torch.equal(a.inputs, c.inputs)
    )
    assert len(set(a.inputs[:, 0].tolist())) == 10  # without replacement
    assert SubsetPredictionChanges.from_dataset(data, num_examples=1000).num_examples == 50


class _Dicts(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"input_ids": [i, i + 1], "attention_mask": [1, 1], "labels": i % 2, "text": "a"}


def test_from_dataset_of_dicts():
    every = SubsetPredictionChanges.from_dataset(_Dicts(), num_examples=4, input_key=None)
    assert sorted(every.inputs) == ["attention_mask", "input_ids"] and every.num_examples == 4
    one = SubsetPredictionChanges.from_dataset(_Dicts(), num_examples=4, input_key="input_ids")
    assert one.inputs.shape == (4, 2)
    with pytest.raises(KeyError, match="input_key 'pixels'"):
        SubsetPredictionChanges.from_dataset(_Dicts(), input_key="pixels")


def test_measure_restores_modes_and_leaves_batchnorm_and_rng_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[2].eval()  # a user's own mixed modes
    bn = {k: v.clone() for k, v in model[1].state_dict().items()}
    pc = SubsetPredictionChanges(torch.randn(40, 4), batch_size=16)
    rng = torch.get_rng_state()
    assert pc.measure(model) is None
    assert pc.measure(model) == 0  # eval mode: no dropout, fixed BN statistics
    assert [m.training for m in model] == [True, True, False, True]
    assert all(torch.equal(v, model[1].state_dict()[k]) for k, v in bn.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())


def test_resume_equals_uninterrupted():
    torch.manual_seed(1)
    x = torch.randn(64, 4)
    weights = [torch.randn(3, 4) for _ in range(5)]

    def series(pc, model, ws):
        out = []
        for w in ws:
            with torch.no_grad():
                model.weight.copy_(w)
            out.append(pc.measure(model))
        return out

    model = nn.Linear(4, 3)
    whole = series(SubsetPredictionChanges(x), model, weights)
    first = SubsetPredictionChanges(x)
    head = series(first, model, weights[:2])
    state = first.state_dict()
    again = SubsetPredictionChanges(x.clone())
    again.load_state_dict(state)
    assert head + series(again, model, weights[2:]) == whole
    assert any(n for n in whole[1:])  # the series is not trivially all zeros
    with pytest.raises(ValueError, match="other inputs"):
        SubsetPredictionChanges(x + 1).load_state_dict(state)
    with pytest.raises(ValueError, match="64 examples"):
        SubsetPredictionChanges(x[:10]).load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"inputs": [1, 2, 3]}, TypeError, "inputs must be"),
        ({"inputs": torch.zeros(0, 4)}, ValueError, "inputs must be a batch"),
        ({"inputs": torch.tensor(1.0)}, ValueError, "inputs must be a batch"),
        (
            {"inputs": {"a": torch.zeros(3, 1), "b": torch.zeros(2, 1)}},
            ValueError,
            "inputs must hold one",
        ),
        ({"inputs": torch.zeros(3, 1), "batch_size": 0}, ValueError, "batch_size must be"),
        ({"inputs": torch.zeros(3, 1), "batch_size": 2.5}, TypeError, "batch_size must be"),
        ({"inputs": torch.zeros(3, 1), "forward": "model"}, TypeError, "forward must be"),
    ],
)
def test_subset_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        SubsetPredictionChanges(**kwargs)


def test_from_dataset_refuses_bad_arguments():
    data = TensorDataset(torch.zeros(5, 1), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="num_examples must be"):
        SubsetPredictionChanges.from_dataset(data, num_examples=0)
    with pytest.raises(ValueError, match="seed must be"):
        SubsetPredictionChanges.from_dataset(data, seed=-1)
    with pytest.raises(ValueError, match="input_key must be"):
        SubsetPredictionChanges.from_dataset(data, input_key=5)
    with pytest.raises(ValueError, match="dataset is empty"):
        SubsetPredictionChanges.from_dataset(TensorDataset(torch.zeros(0, 1)))


def test_measure_refuses_a_model_without_logits():
    pc = SubsetPredictionChanges(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="model must be"):
        pc.measure("model")
    with pytest.raises(ValueError, match="forward must return logits"):
        pc.measure(nn.Flatten(0))


# PredictionChanges.update: every malformed index or class id is refused, naming it
@pytest.mark.parametrize(
    "index, output, error, match",
    [
        (torch.tensor([0.0, 1.7]), torch.tensor([0, 1]), TypeError, "index must hold integer"),
        (
            torch.tensor([True, False]),
            torch.tensor([0, 1]),
            TypeError,
            "index must hold integer.*bool",
        ),
        (
            torch.tensor([0, 1]),
            torch.tensor([0, -1]),
            ValueError,
            "output must hold class ids >= 0",
        ),
        (torch.tensor([0, 1]), torch.tensor([True, False]), TypeError, "output must hold integer"),
        ([0, 1], torch.tensor([0, 1]), TypeError, "index must be a tensor"),
        (torch.tensor([0, 1]), [0, 1], TypeError, "output must be a tensor"),
        (
            torch.tensor([0, 4]),
            torch.tensor([0, 1]),
            IndexError,
            r"index must hold example indices in \[0, 4\)",
        ),
        (torch.tensor([0, 1]), torch.tensor([0, 1, 2]), ValueError, "index has shape"),
    ],
)
def test_update_refuses_malformed_input(index, output, error, match):
    pc = PredictionChanges(4)
    with pytest.raises(error, match=match):
        pc.update(index, output)
    assert bool((pc.predictions == -1).all())  # nothing was written


def test_update_after_a_refused_class_id_still_counts():
    pc = PredictionChanges(2)
    pc.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert pc.epoch_end() is None
    with pytest.raises(ValueError):
        pc.update(torch.tensor([0, 1]), torch.tensor([-1, 1]))
    pc.update(torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert pc.epoch_end() == 1


# fit(prediction_changes="subset"): the count, its cost, and a resumed run
class _Flipper(nn.Module):
    """In eval mode predicts ``(x + trained epochs) % 2`` for even x and 0 for odd x, the
    epochs counted from its training-mode calls (a buffer, so checkpoints hold it): the
    even examples change class after every training epoch, the odd ones never do."""

    def __init__(self, batches_per_epoch: int = 3) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.batches_per_epoch = batches_per_epoch
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            self.calls += 1
        v = x[:, 0].long()
        cls = torch.where(
            v % 2 == 0, (v + self.calls // self.batches_per_epoch) % 2, torch.zeros_like(v)
        )
        return nn.functional.one_hot(cls, 2).float() * 10 + self.w


def _flip_data(n=20):
    return TensorDataset(
        torch.arange(n, dtype=torch.float32).view(n, 1), torch.zeros(n, dtype=torch.long)
    )


def _fit_flipper(ctl, data, **kw):
    model = _Flipper()  # 20 examples in batches of 8: 3 training calls per epoch
    return neve_tune.fit(
        model, torch.optim.SGD(model.parameters(), lr=0.0), data, ctl, batch_size=8, seed=0, **kw
    )


def test_fit_counts_on_the_subset_and_charges_its_forward():
    data = _flip_data(20)
    ctl = CountingController(4)
    result = _fit_flipper(ctl, data, prediction_changes="subset", pc_subset_size=6)
    sub = SubsetPredictionChanges.from_dataset(data, 6, seed=0)
    evens = int((sub.inputs[:, 0].long() % 2 == 0).sum())
    assert ctl.seen == [None, evens, evens, evens] and evens > 0
    assert [m["probe_samples"] for m in result.history] == [6, 12, 18, 24]
    assert result.cost.probe_samples == 24 and result.cost.train_samples == 80
    whole = _fit_flipper(
        CountingController(4), data, prediction_changes="subset", pc_subset_size=1000
    )
    assert [m["prediction_changes"] for m in whole.history] == [None, 10, 10, 10]
    assert whole.cost.probe_samples == 80


def test_fit_subset_resume_equals_uninterrupted(tmp_path):
    data = _flip_data(20)
    whole = _fit_flipper(CountingController(5), data, prediction_changes="subset", pc_subset_size=7)
    ckpt = tmp_path / "ck.pt"
    _fit_flipper(
        CountingController(2),
        data,
        prediction_changes="subset",
        pc_subset_size=7,
        checkpoint_path=ckpt,
    )
    resumed = _fit_flipper(
        CountingController(5),
        data,
        checkpoint_path=ckpt,
        prediction_changes="subset",
        pc_subset_size=7,
    )
    assert whole.history[1]["prediction_changes"] > 0
    keys = ("epoch", "prediction_changes", "probe_samples", "train_samples")
    assert [{k: m[k] for k in keys} for m in resumed.history] == [
        {k: m[k] for k in keys} for m in whole.history
    ]


def test_fit_refuses_another_source_on_resume_and_bad_options(tmp_path):
    data = _flip_data(20)
    ckpt = tmp_path / "ck.pt"
    _fit_flipper(CountingController(2), data, checkpoint_path=ckpt)
    with pytest.raises(
        neve_tune.train.CheckpointError, match="it counted prediction_changes='in_pass'"
    ):
        _fit_flipper(CountingController(4), data, checkpoint_path=ckpt, prediction_changes="subset")
    with pytest.raises(
        neve_tune.train.CheckpointError, match="measured on 5 examples, this subset has 6"
    ):
        sub = tmp_path / "sub.pt"
        _fit_flipper(
            CountingController(2),
            data,
            checkpoint_path=sub,
            prediction_changes="subset",
            pc_subset_size=5,
        )
        _fit_flipper(
            CountingController(4),
            data,
            checkpoint_path=sub,
            prediction_changes="subset",
            pc_subset_size=6,
        )
    with pytest.raises(ValueError, match="prediction_changes must be one of"):
        _fit_flipper(CountingController(2), data, prediction_changes="subst")
    with pytest.raises(ValueError, match="pc_subset_size must be"):
        _fit_flipper(CountingController(2), data, prediction_changes="subset", pc_subset_size=0)


def test_the_cli_and_the_study_take_the_subset(tmp_path, capsys):
    from neve_tune.cli import main

    out = tmp_path / "run.json"
    args = ["train", "--data", "synthetic", "--max-epochs", "3", "--quiet", "--json", str(out)]
    assert main(args + ["--prediction-changes", "subset", "--pc-subset-size", "50"]) == 0
    record = json.loads(out.read_text())
    inpass = tmp_path / "inpass.json"
    assert main(args[:-1] + [str(inpass)]) == 0
    per_epoch = [m["probe_samples"] for m in record["history"]]
    base = [m["probe_samples"] for m in json.loads(inpass.read_text())["history"]]
    assert [a - b for a, b in zip(per_epoch, base)] == [
        50,
        100,
        150,
    ]  # the subset's forward, counted
    assert (
        record["history"][0]["prediction_changes"] is None
        and record["history"][1]["prediction_changes"] is not None
    )
    capsys.readouterr()
    assert main(args + ["--pc-subset-size", "0"]) == 2
    assert "pc_subset_size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="prediction_changes must be one of"):
        neve_tune.load_study("digits").replace(prediction_changes="batch")


def test_inputs_follow_the_models_dtype():
    model = nn.Linear(4, 3).double()  # float32 inputs, a float64 model
    pc = SubsetPredictionChanges(torch.randn(10, 4))
    assert pc.measure(model) is None and pc.measure(model) == 0
    assert pc.inputs.dtype == torch.float32  # the stored subset is left as it is


def test_one_logit_per_example_is_refused_where_classes_are_read():
    """A binary model's ``[batch, 1]`` logit has argmax 0 for every example: the in-pass
    count, the subset count and the selection subset would see no prediction ever change."""
    from neve_tune.selection import SelectionSubset

    one_logit = torch.nn.Linear(3, 1)
    x, y = torch.randn(6, 3), torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"output has one logit per example \(shape \(6, 1\)\)"):
        PredictionChanges(6).update(torch.arange(6), one_logit(x), y)
    with pytest.raises(ValueError, match="one logit per example"):
        SubsetPredictionChanges(x, labels=y).measure(one_logit)
    with pytest.raises(ValueError, match="one logit per example"):
        SelectionSubset(x, labels=y).predict(one_logit)
