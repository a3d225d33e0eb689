"""Token probes and keyword inputs: what a Hugging Face model is probed with.

:class:`neve_tune.NeuralVelocity` calls ``model(probe)``; Hugging Face models take
``input_ids=``, ``pixel_values=`` or ``inputs_embeds=`` and return a ``ModelOutput``.
:class:`KeywordInput` bridges the two; :func:`token_probe` draws seeded token ids;
:func:`probe_from_example` shapes a probe on one training example.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_int
from ..probe import gaussian_probe
from ._state import probe_digest

__all__ = ["KeywordInput", "choose_probe", "logits_forward", "probe_from_example", "token_probe"]


def token_probe(
    vocab_size: int, seq_len: int, num_samples: int = 100, seed: int = 0
) -> torch.Tensor:
    """``num_samples`` sequences of ``seq_len`` token ids drawn uniformly from
    ``[0, vocab_size)`` by a seeded generator (the global RNG is untouched).

    >>> token_probe(50, seq_len=8, num_samples=4, seed=0).shape
    torch.Size([4, 8])
    >>> bool(token_probe(50, 8, 4, seed=1).equal(token_probe(50, 8, 4, seed=1)))
    True
    """
    vocab_size = check_int("vocab_size", vocab_size, minimum=1)
    seq_len = check_int("seq_len", seq_len, minimum=1)
    num_samples = check_int("num_samples", num_samples, minimum=1)
    gen = torch.Generator().manual_seed(check_int("seed", seed))
    return torch.randint(0, vocab_size, (num_samples, seq_len), generator=gen, dtype=torch.long)


class KeywordInput(nn.Module):
    """Forwards a probe tensor to ``model`` as the keyword argument ``key``.

    The wrapped model is a submodule, so its layers are monitored under ``model.<name>``
    and its whole state is the wrapper's (what the memorisation guard restores).

    >>> import torch
    >>> m = KeywordInput(torch.nn.Linear(3, 2), "input")
    >>> m(torch.zeros(4, 3)).shape
    torch.Size([4, 2])
    """

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(**{self.key: x})


class logits_forward:  # noqa: N801 - a picklable function object (Ray pickles the Trainer's callbacks)
    """``forward(model, inputs)`` for :class:`neve_tune.SubsetPredictionChanges`: the
    model's ``logits`` for ``inputs`` passed as ``key=``.

    >>> import torch, types
    >>> model = lambda **kw: types.SimpleNamespace(logits=kw["x"] * 2)
    >>> logits_forward("x")(model, torch.ones(1, 2))
    tensor([[2., 2.]])
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, model: Any, inputs: torch.Tensor) -> torch.Tensor:
        out = model(**{self.key: inputs})
        return (
            out.logits
            if hasattr(out, "logits")
            else out[0]
            if isinstance(out, (tuple, list))
            else out
        )


def probe_from_example(
    example: Any, key: str, model: nn.Module, num_samples: int, seed: int
) -> torch.Tensor:
    """A probe shaped like ``example[key]``: integer ids give :func:`token_probe` over
    ``model.config.vocab_size`` with that sequence length; floats a seeded Gaussian probe."""
    if not isinstance(example, dict) or key not in example:
        keys = sorted(example) if isinstance(example, dict) else type(example).__name__
        raise ValueError(
            f"probe=None shapes the probe on train_dataset[0][{key!r}], but the example holds "
            f"{keys}; pass probe_key= or probe="
        )
    x = torch.as_tensor(example[key])
    if x.ndim == 0:
        raise ValueError(f"train_dataset[0][{key!r}] is a scalar; a probe needs one input's shape")
    if x.is_floating_point():
        return gaussian_probe(tuple(x.shape), num_samples, seed)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None:
        raise ValueError(
            "token inputs need model.config.vocab_size to draw a token probe; pass probe="
        )
    return token_probe(vocab, x.shape[-1], num_samples, seed)


def choose_probe(
    given: torch.Tensor | None,
    saved: dict[str, Any] | None,
    dataset: Any,
    model: nn.Module,
    *,
    key: str,
    samples: int | None,
    seed: int,
    resumed_from: str | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the run's probe, the probe built here, None when given): the ``given`` one (on a
    resumed run, the one its velocity series was measured on), else the ``saved`` one of a
    resumed run, else one shaped on the first example of ``dataset``."""
    if given is not None:
        if saved is not None and saved["probe_digest"] not in (None, probe_digest(given)):
            raise ValueError(
                "the probe given to NeVeTrainerCallback differs from the one the velocity "
                f"series in {resumed_from!r} was measured on; pass the same probe= to "
                "resume it"
            )
        return given, None
    if saved is not None and saved["probe"] is not None:
        return saved["probe"], saved["probe"]
    try:
        example = dataset[0]  # type: ignore[index]
    except Exception as e:  # iterable datasets, or none
        raise ValueError(
            f"probe=None needs an indexable train_dataset to shape the probe; pass probe= ({e})"
        ) from e
    built = probe_from_example(example, key, model, samples, seed)
    return built, built
