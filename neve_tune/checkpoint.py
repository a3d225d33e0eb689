"""The checkpoint format of :func:`neve_tune.train.fit`: atomic writes, checked reads, and
the run guard that keeps a checkpoint from being resumed by another run.

A checkpoint file is a header line (a magic word, the SHA-256 and the length of the payload)
followed by the payload, a ``torch.save`` dict read back with ``weights_only=True`` only
once its bytes match the header's checksum. The dict holds
:data:`CHECKPOINT_KEYS` (format ``version``, last finished ``epoch``, ``model``,
``optimizer``, ``controller`` with its velocity state, ``history``, ``cost``, ``rng``) plus
``scaler``, ``predictions`` and ``meta``: the run guard (configuration, method, seed,
data, model and controller settings; :func:`neve_tune.trial.run_guard`). Resuming
refuses, as a :class:`CheckpointError` of one line naming ``checkpoint_path``, a file that
is not such a checkpoint, one whose guard differs from the run's (naming each difference),
and one without a guard when the run has one. A file that starts with the header but
whose payload is cut short or changed is a :class:`DamagedCheckpointError` (its bytes are
not those written: :func:`neve_tune.train.fit` starts the run over, never resumes from
it); a torch file without the header (a checkpoint of a neve_tune before 0.1.0, or no
neve_tune checkpoint at all) is refused, since nothing can vouch for its bytes. A write
that fails (disk full, read-only folder) raises :class:`CheckpointWriteError`, naming the
file, and leaves the previous checkpoint whole.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.pt")
    >>> save_checkpoint(path, {"epoch": 1})
    >>> load_state_file(path, ("epoch",), "state file")
    {'epoch': 1}
    >>> check_guard(path, {"seed": 0}, {"seed": 1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    neve_tune.checkpoint.CheckpointError: checkpoint_path '...c.pt' belongs to another run ...
"""

from __future__ import annotations

import errno
import hashlib
import io
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
    "CheckpointWriteError",
    "DamagedCheckpointError",
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

    def __init__(
        self,
        path: str | os.PathLike,
        problem: str,
        advice: str = "delete it to start over, or pass another path",
    ) -> None:
        self.path, self.problem, self.advice = str(path), problem, advice
        super().__init__(self.message())

    def message(self, name: str = "checkpoint_path") -> str:
        return f"{name} {self.path!r} {self.problem}; {self.advice}"

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Ray ships exceptions between processes)
        return type(self), (self.path, self.problem, self.advice)


class DamagedCheckpointError(CheckpointError):
    """A neve_tune checkpoint whose bytes are not those written: truncated, or changed
    (its SHA-256 differs from the one its header holds). Nothing in it can be trusted."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (disk full, read-only storage, ...): one
    line naming the file; ``errno`` is the cause's. The previous checkpoint is whole."""

    def __init__(self, path: str | os.PathLike, code: int | None, reason: str) -> None:
        super().__init__(code, reason)
        self.path, self.reason = str(path), reason

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno or 0, "")
        said = f"cannot write checkpoint {self.path!r}: {self.reason}"
        return said + (f" ({name})" if name else "")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.errno, self.reason)


# the header line: magic word, SHA-256 of the payload, payload length (fixed width)
_MAGIC = b"neve_tune checkpoint "
_HEADER_LEN = len(_MAGIC) + len(b"sha256=") + 64 + len(b" bytes=") + 20 + 1


def _header(payload: bytes) -> bytes:
    line = f"sha256={hashlib.sha256(payload).hexdigest()} bytes={len(payload):020d}\n".encode()
    return _MAGIC + line


def _verified_payload(path: str | os.PathLike, data: bytes, advice: str) -> bytes | None:
    """The payload of a file's bytes ``data`` once its header vouches for it; None when
    the file has no header; :class:`DamagedCheckpointError` when the bytes do not match."""
    if 0 < len(data) < len(_MAGIC) and _MAGIC.startswith(data):
        raise DamagedCheckpointError(
            path, "is damaged (cut short inside its checksum header)", advice
        )
    if not data.startswith(_MAGIC):
        return None
    header = data[:_HEADER_LEN]
    match = header[len(_MAGIC) :].decode("ascii", "replace").split()
    try:
        digest, size = match[0].removeprefix("sha256="), int(match[1].removeprefix("bytes="))
    except (IndexError, ValueError):
        raise DamagedCheckpointError(
            path, "is damaged (its checksum header is cut short or garbled)", advice
        ) from None
    payload = data[_HEADER_LEN:]
    if len(payload) != size:
        raise DamagedCheckpointError(
            path,
            f"is damaged ({len(payload)} bytes after its header, "
            f"{size} written: truncated or grown)",
            advice,
        )
    if hashlib.sha256(payload).hexdigest() != digest:
        raise DamagedCheckpointError(
            path, "is damaged (its SHA-256 differs from the one written with it)", advice
        )
    return payload


def first_line(error: BaseException, limit: int = 120) -> str:
    """``Type: first line of the message``, cut to ``limit`` characters."""
    text = (str(error).strip().splitlines() or [""])[0].strip()
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomic, checked write: the header (SHA-256 and length of the serialized payload)
    and the payload go to a temporary file in the same folder, flushed to disk, which
    then replaces ``path`` (``os.replace``), so a run killed mid-save leaves the previous
    checkpoint whole, never a truncated one. A failed write (disk full, read-only
    folder) raises :class:`CheckpointWriteError` naming ``path``."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(_header(data))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise CheckpointWriteError(path, e.errno, e.strerror or first_line(e)) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a read-only folder: nothing was written there either
        pass


def load_state_file(
    path: str | os.PathLike,
    required: tuple[str, ...],
    kind: str,
    advice: str = "delete it to start over, or pass another path",
) -> dict[str, Any]:
    """The dict a state file written by :func:`save_checkpoint` holds (``weights_only``
    loading, after its checksum is verified); a :class:`DamagedCheckpointError` when its
    bytes are not those written, a :class:`CheckpointError` when ``path`` is missing, a
    folder, empty, not a torch file, without the checksum header, or not a ``kind`` (a
    dict without the ``required`` keys)."""
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(
            path, "is a folder, not a checkpoint file", "pass the path of a checkpoint file"
        )
    if not p.is_file():
        raise CheckpointError(path, "does not exist", "pass the path of an existing checkpoint")
    if p.stat().st_size == 0:
        raise CheckpointError(path, "is empty", advice)
    try:
        data = p.read_bytes()
    except OSError as e:
        problem = f"cannot be read ({e.strerror or first_line(e)})"
        raise CheckpointError(path, problem, advice) from None
    payload = _verified_payload(path, data, advice)
    try:
        source = io.BytesIO(data if payload is None else payload)
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to unpickle: truncated, text, another format
        raise CheckpointError(
            path,
            f"cannot be read as a torch checkpoint (truncated or another format; {first_line(e)})",
            advice,
        ) from None
    if payload is None and isinstance(state, dict) and all(k in state for k in required):
        raise CheckpointError(
            path,
            f"has no checksum (a {kind} of a neve_tune before 0.1.0?), "
            "so nothing vouches for its bytes",
            advice,
        )
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds a {type(state).__name__}, not a {kind}", advice)
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(
            path, f"is not a {kind} (it has no {', '.join(map(repr, missing))})", advice
        )
    return state


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by :func:`~neve_tune.train.fit`; a :class:`CheckpointError` when
    it cannot be one (see :func:`load_state_file`) or has another format version."""
    ckpt = load_state_file(path, CHECKPOINT_KEYS, "neve_tune checkpoint")
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            path,
            f"has version {ckpt['version']!r}; this neve_tune reads version {CHECKPOINT_VERSION}",
        )
    return ckpt


def fit_payload(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    controller: Any,
    history: list[dict[str, Any]],
    cost: Cost,
    scaler: Any,
    predictions: dict[str, Any],
    meta: dict[str, Any] | None,
) -> dict[str, Any]:
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
                    out.append(
                        f"{key} {sub}: {old.get(sub)!r} in the checkpoint, {new.get(sub)!r} now"
                    )
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
        raise CheckpointError(
            path,
            "has no run record ('meta'), so nothing says it belongs to this run",
            "delete it to start over, or use another path",
        )
    differences = meta_differences(stored, current)
    if differences:
        raise CheckpointError(
            path,
            f"belongs to another run ({'; '.join(differences)})",
            "delete it to start over, or use another path",
        )


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
