"""The checkpoint format of :func:`neve_tune.train.fit`: atomic writes, checked reads, and
the run guard that keeps a checkpoint from being resumed by another run.

A checkpoint is a ``torch.save`` dict, read back with ``weights_only=True``, holding
:data:`CHECKPOINT_KEYS` (format ``version``, last finished ``epoch``, ``model``,
``optimizer``, ``controller`` with its velocity state, ``history``, ``cost``, ``rng``) plus
``scaler``, ``predictions`` and ``meta``: the run guard (configuration, method, seed,
data, model and controller settings; :func:`neve_tune.trial.run_guard`). Resuming
refuses, as a :class:`CheckpointError` of one line naming ``checkpoint_path``, a file that
is not such a checkpoint, one whose guard differs from the run's (naming each difference),
and one without a guard when the run has one.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.pt")
    >>> save_checkpoint(path, {"epoch": 1})
    >>> load_state_file(path, ("epoch",), "state file")
    {'epoch': 1}
    >>> check_guard(path, {"seed": 0}, {"seed": 1})
    Traceback (most recent call last):
    ...
    neve_tune.checkpoint.CheckpointError: checkpoint_path '...c.pt' belongs to another run (seed: 0 in the checkpoint, 1 now); delete it to start over, or use another path
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .records import Cost

__all__ = [
    "CHECKPOINT_KEYS",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "check_guard",
    "fit_payload",
    "load_checkpoint",
    "load_state_file",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_VERSION = 1
# what every checkpoint fit writes holds; anything else is not a neve_tune checkpoint
CHECKPOINT_KEYS = ("version", "epoch", "model", "optimizer", "controller", "history", "cost", "rng")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: unreadable, not a neve_tune checkpoint,
    or made by another run. Its text is one line: the parameter, the path, what is wrong
    and what to do; :meth:`message` words it for another name (the CLI's ``--checkpoint``)."""

    def __init__(self, path: str | os.PathLike, problem: str,
                 advice: str = "delete it to start over, or pass another path") -> None:
        self.path, self.problem, self.advice = str(path), problem, advice
        super().__init__(self.message())

    def message(self, name: str = "checkpoint_path") -> str:
        return f"{name} {self.path!r} {self.problem}; {self.advice}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Ray ships exceptions between processes)
        return type(self), (self.path, self.problem, self.advice)


def first_line(error: BaseException, limit: int = 120) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters."""
    text = (str(error).strip().splitlines() or [""])[0].strip()
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomic write: the payload goes to a temporary file in the same folder, flushed to
    disk, which then replaces ``path`` (``os.replace``), so a run killed mid-save leaves
    the previous checkpoint whole, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_state_file(path: str | os.PathLike, required: tuple[str, ...], kind: str,
                    advice: str = "delete it to start over, or pass another path") -> dict[str, Any]:
    """The dict a state file written by :func:`save_checkpoint` holds (``weights_only``
    loading); a :class:`CheckpointError` when ``path`` is missing, a folder, empty,
    truncated, not a torch file, or not a ``kind`` (a dict without the ``required`` keys)."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(path, "is a folder, not a checkpoint file", "pass the path of a checkpoint file")
    if not p.is_file():
        raise CheckpointError(path, "does not exist", "pass the path of an existing checkpoint")
    if p.stat().st_size == 0:
        raise CheckpointError(path, "is empty", advice)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to unpickle: truncated, text, another format
        raise CheckpointError(path, "cannot be read as a torch checkpoint (truncated or another format; "
                                    f"{first_line(e)})", advice) from None
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a {kind}", advice)
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(path, f"is not a {kind} (it has no {', '.join(map(repr, missing))})", advice)
    return state


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by :func:`~neve_tune.train.fit`; a :class:`CheckpointError` when
    it cannot be one (see :func:`load_state_file`) or has another format version."""
    ckpt = load_state_file(path, CHECKPOINT_KEYS, "neve_tune checkpoint")
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(path, f"has version {ckpt['version']!r}; this neve_tune reads version {CHECKPOINT_VERSION}")
    return ckpt


def fit_payload(epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, controller: Any,
                history: list[dict[str, Any]], cost: Cost, scaler: Any, predictions: dict[str, Any],
                meta: dict[str, Any] | None) -> dict[str, Any]:
    """What :func:`~neve_tune.train.fit` saves after ``epoch``: everything to resume the run
    (``predictions``: the prediction-change counter's own entries)."""
    return {
        "version": CHECKPOINT_VERSION,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "controller": controller.state_dict(),
        "history": history,
        "cost": asdict(cost),
        "rng": rng_state(),
        "scaler": None if scaler is None else scaler.state_dict(),
        **predictions,
        "meta": meta,
    }


_ABSENT = "absent"


def meta_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's run guard and this run's, one phrase each
    (``key: old in the checkpoint, new now``; a dict field by its entries). A field that
    only one of them holds differs too."""
    out: list[str] = []
    for key in [*current, *(k for k in stored if k not in current)]:
        old, new = stored.get(key, _ABSENT), current.get(key, _ABSENT)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            for sub in sorted(set(old) | set(new), key=str):
                if old.get(sub) != new.get(sub):
                    out.append(f"{key} {sub}: {old.get(sub)!r} in the checkpoint, {new.get(sub)!r} now")
        else:
            out.append(f"{key}: {_shown(old)} in the checkpoint, {_shown(new)} now")
    return out


def _shown(value: Any) -> str:
    return value if value is _ABSENT else repr(value)


def check_guard(path: str | os.PathLike, stored: Any, current: dict[str, Any] | None) -> None:
    """Refuse a checkpoint whose run guard ``stored`` is not this run's ``current`` (None:
    the run has no guard, anything resumes), naming what differs; a checkpoint without a
    guard is refused when the run has one, since nothing says it is the same run."""
    if current is None:
        return
    if not isinstance(stored, dict):
        raise CheckpointError(path, "has no run record ('meta'), so nothing says it belongs to this run",
                              "delete it to start over, or use another path")
    differences = meta_differences(stored, current)
    if differences:
        raise CheckpointError(path, f"belongs to another run ({'; '.join(differences)})",
                              "delete it to start over, or use another path")


def rng_state() -> dict[str, Any]:
    """The CPU (and, once initialised, CUDA) random state, as a checkpoint holds it."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
