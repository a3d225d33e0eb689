"""One pass over a data set: batches in a seeded order (in-memory tensors sliced directly), a
training pass (loss, accuracy, each example's predicted class), an evaluation pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .prediction_changes import PredictionChanges

__all__ = ["batches", "evaluate", "train_epoch"]


def _tensor_source(dataset: Dataset) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None] | None:
    """(tensors, indices) when ``dataset`` is a TensorDataset or a Subset of one."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors, None
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorDataset):
        return dataset.dataset.tensors, torch.as_tensor(list(dataset.indices), dtype=torch.long)
    return None


def batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    with_positions: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches of ``(inputs, targets)`` in a seeded order (``+ (positions,)`` with
    ``with_positions``: each example's index in ``dataset``); in-memory tensor datasets
    are sliced directly, anything else goes through a ``DataLoader``."""
    gen = torch.Generator().manual_seed(int(seed))
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    source = _tensor_source(dataset)
    if source is not None:
        tensors, idx = source
        rows = order if idx is None else idx[order]
        for start in range(0, n, batch_size):
            sel = rows[start : start + batch_size]
            batch = (tensors[0][sel], tensors[1][sel])
            yield (*batch, order[start : start + batch_size]) if with_positions else batch
        return
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=order.tolist(), num_workers=num_workers
    )
    for start, (x, y) in zip(range(0, n, batch_size), loader):
        yield (x, y, order[start : start + batch_size]) if with_positions else (x, y)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    batch_size: int,
    *,
    device: torch.device,
    seed: int,
    loss_fn: Callable = F.cross_entropy,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    num_workers: int = 0,
    predictions: PredictionChanges | None = None,
) -> tuple[float, float, int]:
    """One pass over ``dataset``: (mean loss, accuracy, samples).

    With ``predictions`` (a :class:`PredictionChanges` of ``len(dataset)``), the class each
    example was predicted as in this pass is recorded at its position: what the training
    pass already computes, so prediction changes between epochs cost no extra forward.
    """
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y, pos in batches(
        dataset, batch_size, shuffle=True, seed=seed, num_workers=num_workers, with_positions=True
    ):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with torch.autocast(
            device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ):
            out = model(x)
            loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        b = y.shape[0]
        pred = out.detach().argmax(1)
        loss_sum += loss.detach().float() * b
        correct += (pred == y).sum()
        if predictions is not None:
            predictions.update(pos, pred, y)
        n += b
    return float(loss_sum) / max(n, 1), float(correct) / max(n, 1), n


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    loss_fn: Callable = F.cross_entropy,
    amp_dtype: torch.dtype | None = None,
) -> tuple[float, float, int]:
    """(mean loss, accuracy, samples) of ``model`` on ``dataset`` in eval mode."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {model!r}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    try:
        for x, y in batches(dataset, batch_size):
            x, y = x.to(device), y.to(device)
            with torch.autocast(
                device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None
            ):
                out = model(x)
            loss_sum += float(loss_fn(out.float(), y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += int(y.shape[0])
    finally:
        model.train(was_training)
    return loss_sum / max(n, 1), correct / max(n, 1), n
