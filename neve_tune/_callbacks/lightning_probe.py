"""What a :class:`~neve_tune.lightning.NeVeCallback` measures a ``LightningModule`` with: the
module (or its submodule, or a function of it) the probe goes through, the probe shaped on
the first training batch, and where the guard's prediction changes come from (a fixed
subset, or the training batches themselves)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from ..prediction_changes import PredictionChanges
from ..probe import gaussian_probe
from .forward import ProbeForward, batch_inputs, has_forward
from .pc_source import PCSource

__all__ = ["pc_source", "probe_forward", "probe_from_batch"]

# LightningModule.forward only passes on to nn.Module's: a module without its own has none
PLACEHOLDERS = (pl.LightningModule.forward,)


def probe_forward(
    pl_module: pl.LightningModule, probe_module: str | None, probe_fn: Any
) -> torch.nn.Module:
    """What the probe goes through (see :mod:`neve_tune._callbacks.forward`): the module itself, or
    ``probe_module``/``probe_fn`` of it; a module without a ``forward`` of its own is refused."""
    if probe_module is not None or probe_fn is not None:
        return ProbeForward(pl_module, probe_module, probe_fn)
    if not has_forward(pl_module, PLACEHOLDERS):
        raise ValueError(
            f"{type(pl_module).__name__} has no forward() for the probe; pass "
            "NeVeCallback(probe_module='<submodule>') or probe_fn=lambda module, x: ..."
        )
    return pl_module


def pc_source(
    spec: Any,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    *,
    probe_fn: Any,
    seed: int,
    input_key: Any,
    who: str,
) -> PCSource | None:
    """The run's prediction-change counter for ``spec`` (the callback's ``source_spec``):
    none, a counter given by the user, the training batches (``"batch"``, one process
    only) or a fixed subset of the training set (``"subset"``)."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return PCSource(spec)
    dataset = getattr(trainer.train_dataloader, "dataset", None)
    if spec == "batch":
        if trainer.world_size > 1:
            raise ValueError(
                "prediction_changes='batch' sees one process's batches only; under DDP use "
                "prediction_changes='subset'"
            )
        return PCSource(PredictionChanges(len(dataset)))  # type: ignore[arg-type]
    if probe_fn is None and not has_forward(pl_module, PLACEHOLDERS):
        raise ValueError(
            f"{type(pl_module).__name__} has no forward() for the guard's subset; pass "
            "probe_fn= (returning logits), or pc_patience=None to turn the guard off"
        )
    return PCSource.subset(dataset, seed=seed, input_key=input_key, who=who, forward=probe_fn)


def probe_from_batch(batch: Any, input_key: Any, samples: int, seed: int) -> torch.Tensor:
    """A Gaussian probe of ``samples`` inputs shaped (and typed) like one input of the
    training ``batch``; token ids are refused (noise does not fit them)."""
    x = batch_inputs(batch, input_key)
    if x.ndim < 2:
        raise ValueError(
            f"the training batch's inputs have shape {tuple(x.shape)}; a probe needs "
            "[batch, ...] inputs, pass probe="
        )
    if not x.is_floating_point():
        raise ValueError(
            f"the training batch's inputs are {x.dtype} (token ids?): Gaussian noise does not "
            "fit them; pass probe= with ids, e.g. torch.randint(vocab_size, (100, seq_len), "
            "generator=torch.Generator().manual_seed(0))"
        )
    return gaussian_probe(tuple(int(s) for s in x.shape[1:]), samples, seed, x.dtype)
