"""Validation-free selection criteria: which trial of a search wins, from training signals only.

Each criterion is a plain function of what a trial records while it trains (its per-epoch
history, see :data:`neve_tune.records.METRIC_NAMES`) or, for the cross-trial consensus, of
the trials' predicted classes on a fixed, seeded subset of training examples (the same
subset for every trial). Every ``*_score`` is lower-is-better, like a trial objective, and
NaN where the trial has no value (it diverged, or is too short). No criterion reads a
validation or test set. docs/design.md, "Selection criteria", gives the rules.

- :func:`final_loss`: today's objective, the training loss at the stop or restore epoch;
- :func:`pc_min`: the lowest moving average of the prediction changes;
- :func:`tse`: the sum of the training losses over a fixed first ``k`` epochs (Ru et al.,
  NeurIPS 2021);
- :func:`susceptibility`: the running mean ``zeta`` of the loss drop that one SGD step on
  a batch with random labels achieves from a copy of the model (Forouzesh, Sedghi and
  Thiran, ICLR 2023); measured each epoch by :func:`random_label_drop`;
- :func:`consensus_agreement`: agreement of each trial's predictions with the majority
  vote of the other trials; :func:`noise_rate_estimate` (``eps``) and :func:`fit_excess`
  (the trial's fit of the given labels minus the vote's, ``1 - eps``);
- :func:`selection_mode`: the fit half of the data-decided rule (``"auto"``): the consensus
  when the finished trials' fit of the given labels says the labels are noisy
  (:func:`noise_from_fits` >= :data:`NOISE_THRESHOLD`), else the objective;
  :class:`~neve_tune.selection_policy.SelectionPolicy` also asks for a memorisation-guard stop.

    >>> import torch
    >>> preds = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0, 0]])
    >>> consensus_agreement(preds, num_classes=4).tolist()
    [0.5, 0.75, 0.75]
    >>> tse([{"train_loss": 2.0}, {"train_loss": 1.0}], k=3)  # padded with the last loss
    4.0
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._pc_inputs import logit_classes
from ._prediction_codes import decode_predictions, encode_predictions

__all__ = [
    "NOISE_THRESHOLD",
    "SelectionSubset",
    "consensus_agreement",
    "consensus_scores",
    "decode_predictions",
    "encode_predictions",
    "fit_excess",
    "final_loss",
    "majority_vote",
    "noise_from_fits",
    "noise_rate_estimate",
    "pick_by_consensus",
    "consensus_winner",
    "pc_min",
    "random_label_drop",
    "selection_mode",
    "subset_predictions",
    "susceptibility",
    "tse",
    "zeta_gate",
]

History = Sequence[Mapping[str, Any]]
NAN = float("nan")
#: ``"auto"`` ranks by the consensus from this estimated label-noise rate on (the replay's
#: "consensus if eps >= 10%" rule, docs/measurements.md, "Which trial wins")
NOISE_THRESHOLD = 0.1


def _upto(history: History, epoch: int | None) -> History:
    return history if epoch is None else history[: int(epoch)]


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def final_loss(history: History, epoch: int | None = None) -> float:
    """The mean training loss of ``epoch`` (default: the last one): today's objective
    (``tse_e1`` at the stop or restore epoch)."""
    h = _upto(history, epoch)
    if not h or not _finite(h[-1].get("train_loss")):
        return NAN
    return float(h[-1]["train_loss"])


def pc_min(history: History, window: int = 3, epoch: int | None = None) -> float:
    """The lowest ``window``-epoch moving average of ``prediction_changes`` up to ``epoch``
    (NaN before ``window`` measured epochs): how settled the predictions became."""
    pcs = [m.get("prediction_changes") for m in _upto(history, epoch)]
    levels = [
        sum(pcs[i - window + 1 : i + 1]) / window
        for i in range(window - 1, len(pcs))
        if None not in pcs[i - window + 1 : i + 1]
    ]
    return float(min(levels)) if levels else NAN


def tse(history: History, k: int) -> float:
    """The sum of the first ``k`` epochs' mean training losses, the same ``k`` for every
    trial (Ru et al. 2021). A run that ended before ``k`` epochs counts its last loss for
    each missing epoch (its model stays where it stopped); NaN if a loss is not finite."""
    losses = [m.get("train_loss") for m in history[:k]]
    if not losses or not all(_finite(x) for x in losses):
        return NAN
    losses = [float(x) for x in losses]
    return float(sum(losses) + (k - len(losses)) * losses[-1])


def susceptibility(history: History, epoch: int | None = None, key: str = "zeta_drop") -> float:
    """``zeta``: the mean over epochs (up to ``epoch``) of the per-epoch random-label loss
    drop ``history[i][key]`` (:func:`random_label_drop`). Low: the model resists fitting
    random labels (Forouzesh et al. 2023). NaN when no epoch has a finite value."""
    drops = [float(m[key]) for m in _upto(history, epoch) if _finite(m.get(key))]
    return float(sum(drops) / len(drops)) if drops else NAN


def zeta_gate(train_acc: Sequence[float], zeta: Sequence[float]) -> list[bool]:
    """The susceptibility gate: keep trials with training accuracy >= the mean and
    ``zeta`` <= the mean (means over the trials with finite values; others are dropped)."""
    ok = [_finite(a) and _finite(z) for a, z in zip(train_acc, zeta)]
    accs = [float(a) for a, k in zip(train_acc, ok) if k]
    zs = [float(z) for z, k in zip(zeta, ok) if k]
    if not accs:
        return [False] * len(ok)
    mean_acc, mean_z = sum(accs) / len(accs), sum(zs) / len(zs)
    return [
        k and float(a) >= mean_acc - 1e-12 and float(z) <= mean_z + 1e-12
        for a, z, k in zip(train_acc, zeta, ok)
    ]


def majority_vote(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The most predicted class of each example over trials (rows); ties go to the
    lowest class index. ``predictions``: (trials, examples) class indices."""
    counts = F.one_hot(predictions.long(), num_classes).sum(0)
    return counts.argmax(1)


def consensus_agreement(predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each trial's fraction of examples on which it predicts the majority vote of the
    *other* trials (NaN for a single trial). Trials that fit the shared signal agree;
    those that fit noise or failed to learn do not."""
    preds = predictions.long()
    t = preds.shape[0]
    if t < 2:
        return torch.full((t,), NAN)
    counts = F.one_hot(preds, num_classes).sum(0)  # (examples, classes)
    out = torch.empty(t)
    for i in range(t):
        others = counts - F.one_hot(preds[i], num_classes)
        out[i] = (others.argmax(1) == preds[i]).float().mean()
    return out


def noise_rate_estimate(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """``eps``: the fraction of given labels that the trials' majority vote disagrees with,
    an estimate of the label-noise rate of the training set."""
    vote = majority_vote(predictions, num_classes)
    return float((vote != labels.long()).float().mean())


def fit_excess(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """How far each trial's fit of the given labels exceeds the vote's (``1 - eps``):
    positive when it fitted labels the consensus calls noise, negative when it fits less
    than the consensus. Rank by the absolute value (lower is better)."""
    fit = (predictions.long() == labels.long()).float().mean(1)
    return fit - (1.0 - noise_rate_estimate(predictions, labels, num_classes))


def noise_from_fits(fits: Sequence[float | None]) -> float:
    """The label-noise rate the finished trials suggest: one minus the median of their fit
    of the given labels on the subset (``subset_fit``; trials that stopped before the
    memorisation guard let them fit the flipped labels fit about ``1 - noise``). NaN
    without a finite fit.

    >>> noise_from_fits([0.99, 0.78, 0.81, None])
    0.19
    """
    xs = sorted(float(f) for f in fits if _finite(f))
    if not xs:
        return NAN
    mid = len(xs) // 2
    median = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
    return round(1.0 - median, 12)


def selection_mode(fits: Sequence[float | None], threshold: float = NOISE_THRESHOLD) -> str:
    """``"consensus"`` when :func:`noise_from_fits` is at least ``threshold``, else
    ``"objective"`` (also without any finished trial's fit: nothing says the labels are
    noisy yet).

    >>> selection_mode([0.99, 1.0]), selection_mode([0.8, 0.85]), selection_mode([])
    ('objective', 'consensus', 'objective')

    The fit half of :class:`neve_tune.selection_policy.SelectionPolicy`'s rule, which also
    decides which trials are finished (only their fits count), asks that the memorisation
    guard stopped one of them (a low fit without it reads as underfitting), and records why.
    """
    eps = noise_from_fits(fits)
    return "consensus" if math.isfinite(eps) and eps >= threshold else "objective"


@torch.no_grad()
def subset_predictions(
    model: nn.Module, inputs: torch.Tensor, batch_size: int = 500
) -> torch.Tensor:
    """The classes ``model`` predicts for ``inputs`` (the fixed subset) in eval mode; the
    model's mode is restored. Forward only: ``len(inputs)`` forward samples of cost."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = [
            logit_classes("the model's output", model(inputs[i : i + batch_size].to(device)))
            for i in range(0, len(inputs), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out)


def random_label_drop(
    model: nn.Module, inputs: torch.Tensor, random_labels: torch.Tensor, lr: float
) -> float:
    """The loss drop on ``(inputs, random_labels)`` after one plain SGD step at ``lr`` from
    a copy of ``model`` (the model itself is untouched): how easily it fits labels that
    carry no signal. Losses are measured in eval mode; the step is taken in train mode.
    Cost: ``len(inputs)`` trained samples plus twice as many forward ones."""
    clone = copy.deepcopy(model)
    device = next(clone.parameters()).device
    x, y = inputs.to(device), random_labels.to(device).long()
    with torch.random.fork_rng(devices=[]):  # the trial's RNG stream stays as it was
        clone.eval()
        with torch.no_grad():
            before = float(F.cross_entropy(clone(x), y))
        clone.train()
        clone.zero_grad(set_to_none=True)
        F.cross_entropy(clone(x), y).backward()
        with torch.no_grad():
            for p in clone.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-float(lr))
        clone.eval()
        with torch.no_grad():
            after = float(F.cross_entropy(clone(x), y))
    return before - after


def consensus_scores(
    predictions: Mapping[Any, str], candidates: Sequence[Any] | None = None
) -> dict[Any, float]:
    """Minus :func:`consensus_agreement` (lower is better) of each of ``candidates`` (default:
    every trial), from the encoded predictions of the same subset by each trial (key: any
    trial id); every trial in ``predictions`` votes. One trial alone scores 0; predictions
    of another length than the others raise a ``ValueError``.

    >>> consensus_scores({"a": "0123", "b": "0120", "c": "0100"}, candidates=["b", "c"])
    {'b': -0.75, 'c': -0.75}
    """
    keys = list(predictions)
    wanted = keys if candidates is None else list(candidates)
    if len(keys) < 2:
        return {k: 0.0 for k in wanted}
    lengths = {len(predictions[k]) for k in keys}
    if len(lengths) != 1:
        raise ValueError(
            f"predictions must cover the same subset in every trial, got lengths {sorted(lengths)}"
        )
    preds = torch.stack([decode_predictions(predictions[k]) for k in keys])
    agree = dict(zip(keys, consensus_agreement(preds, int(preds.max()) + 1).tolist()))
    return {k: -float(agree[k]) for k in wanted}


def pick_by_consensus(last_predictions: Mapping[Any, str], candidates: Sequence[Any]) -> Any:
    """The candidate (a finished trial) whose predictions agree most with the majority vote
    of all the other trials (``last_predictions``: every trial's latest predictions on the
    subset, pruned ones included); ties go to the first candidate (the selection policy's
    pick gives a tie to a memorisation-guard stop first). None without candidates.

    >>> pick_by_consensus({1: "0123", 2: "0120", 3: "0100", 4: "0100"}, candidates=[1, 2])
    2
    """
    if not candidates:
        return None
    scores = consensus_scores(last_predictions, candidates)
    return min(candidates, key=lambda k: scores[k])


def consensus_winner(predictions: Mapping[Any, str], finished: Sequence[Any]) -> Any:
    """:func:`pick_by_consensus` among the ``finished`` trials that recorded predictions (the
    finished trials vote); ``ValueError`` when none did, None when nothing finished.

    >>> consensus_winner({"a": "0123", "b": "0120", "c": "0100"}, ["a", "b", "c"])
    'b'
    """
    if not finished:
        return None
    candidates = [k for k in finished if k in predictions]
    if not candidates:
        raise ValueError(
            "the consensus found no 'subset_pred' on the finished trials: record the predictions "
            "on the fixed subset with Study(selection_subset=500)"
        )
    return pick_by_consensus({k: predictions[k] for k in candidates}, candidates)


class SelectionSubset:
    """A fixed, seeded subset of training inputs whose predicted classes a trial records
    (``subset_pred`` in its metrics: each epoch, or at the rung epochs and the last), so
    that trials can be compared with the other trials' majority vote
    (:func:`consensus_scores`). The same ``seed`` and data give
    every trial the same subset; its size bounds what each trial stores.

    >>> from torch.utils.data import TensorDataset
    >>> ds = TensorDataset(torch.randn(20, 4), torch.zeros(20, dtype=torch.long))
    >>> sub = SelectionSubset.from_dataset(ds, num_examples=5, seed=0)
    >>> len(sub.predict(torch.nn.Linear(4, 3)))
    5
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """``inputs`` ``[K, ...]``; ``labels`` None or one class id per input (whole floats
        pass; ``0.5`` or one label for K inputs would give a wrong fit without a word)."""
        from ._pc_inputs import check_labels

        if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0 or len(inputs) == 0:
            raise TypeError(
                f"inputs must be a tensor [K, ...] of K >= 1 inputs, got {inputs!r:.80}"
            )
        self.inputs = inputs
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.is_floating_point() and bool((labels == labels.round()).all()):
                labels = labels.long()
            labels = check_labels(labels, len(inputs))
        self.labels = labels

    @classmethod
    def from_dataset(cls, dataset: Any, num_examples: int = 500, seed: int = 0) -> SelectionSubset:
        """``num_examples`` ``(input, label)`` items drawn with ``seed`` (an int >= 0), labels
        class ids; the training RNG is left as it was (an augmenting data set)."""
        from ._checks import check_int
        from ._pc_inputs import class_id_pairs

        check_int("num_examples", num_examples, minimum=1)
        gen = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
        pos = torch.randperm(len(dataset), generator=gen)[:num_examples].sort().values
        with torch.random.fork_rng(devices=[]):
            items = [dataset[int(i)] for i in pos]
        inputs, labels = class_id_pairs(items, "SelectionSubset.from_dataset")
        return cls(torch.stack([torch.as_tensor(x) for x in inputs]), labels)

    @property
    def num_examples(self) -> int:
        return len(self.inputs)

    def predict(self, model: nn.Module) -> str:
        """The encoded classes ``model`` predicts for the subset (eval mode, no grad)."""
        return encode_predictions(subset_predictions(model, self.inputs))

    def fit(self, codes: str) -> float:
        """The fraction of the subset on which encoded predictions match the given labels
        (``subset_fit``); ``ValueError`` for a subset built without labels."""
        if self.labels is None:
            raise ValueError(
                "this SelectionSubset has no labels: build it with SelectionSubset.from_dataset"
            )
        if not isinstance(codes, str) or len(codes) != len(self.labels):
            got = f"{len(codes)} codes" if isinstance(codes, str) else repr(codes)
            raise ValueError(
                f"codes must be this subset's predict(model), {len(self.labels)} codes; got {got}"
            )
        return float((decode_predictions(codes) == self.labels).float().mean())
