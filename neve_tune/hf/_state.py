"""The callback's state file in Trainer checkpoints, and finding it again on resume.

Every Trainer checkpoint folder (``checkpoint-<global_step>``, named with transformers'
public ``PREFIX_CHECKPOINT_DIR``; ``TRAINER_STATE_NAME`` likewise) gets :data:`STATE_FILE`. The
folder is found without re-deriving the Trainer's own naming (a hyperparameter search puts each
trial's folders under ``<output_dir>/<run name>``, ``run-<trial id>`` by default): the candidates
are ``<output_dir>/checkpoint-<step>`` and ``<output_dir>/<any folder>/checkpoint-<step>``,
and the one that belongs to this run is the one whose ``trainer_state.json`` holds this
very state (same ``global_step``, same log history: :func:`log_digest`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import warnings
import weakref
from typing import Any

import torch
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .._controller import reopened_history
from ..checkpoint import CheckpointError, load_state_file, save_checkpoint

__all__ = [
    "STATE_FILE",
    "candidate_folders",
    "claim",
    "find_saved",
    "log_digest",
    "probe_digest",
    "read_state",
    "resume_folders",
    "saved_folder",
    "state_file_name",
]

#: The callback's state in each Trainer checkpoint folder (``checkpoint-<global_step>``).
STATE_FILE = "neve_state.pt"
STATE_KEYS = (
    "format",
    "global_step",
    "log_digest",
    "neve",
    "history",
    "probe",
    "probe_digest",
    "loss",
)


def state_file_name(state_key: Any) -> str:
    """The file a callback saves its state in: :data:`STATE_FILE`, or
    ``neve_state-<state_key>.pt`` for a second callback of one Trainer (``state_key``: a
    name of letters, digits, '_', '.' or '-', so the file stays in its folder)."""
    if state_key is None:
        return STATE_FILE
    if not (isinstance(state_key, str) and re.fullmatch(r"[\w.-]+", state_key)):
        raise ValueError(
            f"state_key must be a name of letters, digits, '_', '.' or '-', got {state_key!r}"
        )
    return f"neve_state-{state_key}.pt"


def log_digest(log_history: list[dict[str, Any]]) -> str:
    """Fingerprint of ``TrainerState.log_history``: the same before ``trainer_state.json`` is
    written and after it is read back (JSON keeps Python floats exactly)."""
    text = json.dumps(log_history, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def probe_digest(probe: torch.Tensor) -> str:
    x = probe.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(x.shape)} {x.dtype}".encode())
    h.update(x.view(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


def read_state(path: str) -> dict[str, Any]:
    """A NeVe state file, or a ValueError naming it."""
    try:
        return load_state_file(
            path,
            STATE_KEYS,
            "NeVeTrainerCallback state",
            "delete it to start the velocity series over from this checkpoint, "
            "or resume from another checkpoint",
        )
    except CheckpointError as e:
        raise ValueError(e.message("NeVe state file")) from None


def candidate_folders(output_dir: str, global_step: int) -> list[str]:
    """``checkpoint-<global_step>`` in ``output_dir`` and in each folder directly under it."""
    name = f"{PREFIX_CHECKPOINT_DIR}-{global_step}"
    inside = sorted(glob.glob(os.path.join(glob.escape(output_dir), "*", name)))
    return [os.path.join(output_dir, name), *inside]


def resume_folders(resume_from_checkpoint: Any, output_dir: str, global_step: int) -> list[str]:
    """Where a resumed run's state file may lie: the folder given as the Trainer's
    ``resume_from_checkpoint`` (a non-empty str), then :func:`candidate_folders`."""
    folders = []
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint:
        folders.append(resume_from_checkpoint)
    return folders + candidate_folders(output_dir, global_step)


def _written_state(folder: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, TRAINER_STATE_NAME), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def saved_folder(output_dir: str, state: Any) -> str | None:
    """The checkpoint folder the Trainer has just saved ``state`` in: of the candidates,
    the one whose ``trainer_state.json`` is this state (the newest, should two runs match)."""
    digest = log_digest(state.log_history)
    found = []
    for folder in candidate_folders(output_dir, state.global_step):
        written = _written_state(folder)
        if (
            written is not None
            and written.get("global_step") == state.global_step
            and log_digest(written.get("log_history", [])) == digest
        ):
            found.append((os.path.getmtime(os.path.join(folder, TRAINER_STATE_NAME)), folder))
    return max(found)[1] if found else None


def find_saved(
    folders: list[str], state: Any, state_file: str
) -> tuple[str | None, dict[str, Any] | None, list[str]]:
    """(path, saved state) of the first ``state_file`` in ``folders`` saved at this very
    ``state`` (same ``global_step`` and log history), else ``(None, None, [other files])``."""
    digest = log_digest(state.log_history)
    other = []
    for folder in dict.fromkeys(folders):
        path = os.path.join(folder, state_file)
        if not os.path.isfile(path):
            continue
        saved = read_state(path)
        if saved["global_step"] == state.global_step and saved["log_digest"] == digest:
            return path, saved, other
        other.append(path)
    return None, None, other


# (id of a TrainerState, state file) -> (the state, the callback saving that file), both weakly held
_CLAIMS: dict[tuple[int, str], tuple[Any, Any]] = {}


def claim(state: Any, state_file: str, owner: Any) -> None:
    """Refuse a second callback of one Trainer (one ``TrainerState``) saving ``state_file``."""
    key = (id(state), state_file)
    held = _CLAIMS.get(key)
    if held is not None and held[0]() is state and held[1]() not in (None, owner):
        raise ValueError(
            f"another NeVeTrainerCallback of this Trainer already saves {state_file}; "
            "pass state_key='<name>' to one of them (its state goes to neve_state-<name>.pt)"
        )
    for k in [k for k, v in _CLAIMS.items() if v[0]() is None]:
        del _CLAIMS[k]
    _CLAIMS[key] = (weakref.ref(state), weakref.ref(owner))


def save_path(output_dir: str, state: Any, state_file: str) -> tuple[str | None, str]:
    """Where the callback saves its state for the checkpoint the Trainer has just written
    (:func:`saved_folder`), or ``(None, the warning saying it cannot)``."""
    folder = saved_folder(output_dir, state)
    if folder is not None:
        return os.path.join(folder, state_file), ""
    return None, (
        f"NeVeTrainerCallback found no checkpoint-{state.global_step} folder with this "
        f"run's trainer_state.json under {output_dir!r}; the NeVe state is not saved, "
        "a resumed run will start a new velocity series"
    )


def resume_state(
    args: Any, state: Any, state_file: str
) -> tuple[str | None, dict[str, Any] | None, str]:
    """(path, saved state, "") of the checkpoint a run resumes (:func:`resume_folders`,
    :func:`find_saved`), or ``(None, None, the warning saying none was found)``."""
    folders = resume_folders(args.resume_from_checkpoint, args.output_dir, state.global_step)
    path, saved, other = find_saved(folders, state, state_file)
    if saved is not None:
        return path, saved, ""
    where = f"{state_file} in {sorted(set(folders))}" + (
        f" (found {other}, saved by other runs or steps)" if other else ""
    )
    return (
        None,
        None,
        (
            f"NeVeTrainerCallback resumes at step {state.global_step} but found no NeVe state of "
            f"this checkpoint ({where}); the velocity series starts over from the resumed weights. "
            "For a checkpoint outside output_dir, set "
            "TrainingArguments(resume_from_checkpoint=...) to its folder"
        ),
    )


class StateInCheckpoints:
    """The :class:`~neve_tune.hf.NeVeTrainerCallback` side of its state file: what it holds
    (:meth:`state_dict`), saving it with each Trainer checkpoint (``on_save``), finding and
    loading it when a run resumes. The callback provides ``neve``, ``history``,
    ``state_file`` and the run's probe, loss sums and prediction-change source."""

    def _load(self, saved: dict[str, Any], control: Any) -> None:
        assert self.neve is not None
        self.neve.load_state_dict(saved["neve"])
        self.history = reopened_history([dict(m) for m in saved["history"]], self.neve)
        if saved.get("prediction_changes") is not None and self._source is not None:
            self._source.load_state_dict(saved["prediction_changes"])
        loss = saved["loss"]
        self._loss_sum, self._loss_steps = float(loss["sum"]), int(loss["steps"])
        self._pending = bool(loss.get("pending", False))
        if self.neve.should_stop:  # the run had ended by the controller: end it again
            control.should_training_stop = True

    def state_dict(self, state: Any = None) -> dict[str, Any]:
        """What :data:`neve_tune.hf.STATE_FILE` holds (``state``: the Trainer's
        ``TrainerState``, whose ``global_step`` and log history identify the checkpoint)."""
        if self.neve is None:
            raise RuntimeError("NeVeTrainerCallback has no state before on_train_begin")
        return {
            "format": 1,
            "global_step": None if state is None else int(state.global_step),
            "log_digest": None if state is None else log_digest(state.log_history),
            "neve": self.neve.state_dict(),
            "history": [dict(m) for m in self.history],
            "probe": self._built_probe,
            "probe_digest": self._probe_digest,
            "loss": {"sum": self._loss_sum, "steps": self._loss_steps, "pending": self._pending},
            "prediction_changes": None if self._source is None else self._source.state_dict(),
        }

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)

    def on_save(self, args, state, control, **kwargs):
        if self.neve is None or not args.should_save:  # only the process that writes the checkpoint
            return control
        path, problem = save_path(args.output_dir, state, self.state_file)
        if path is None:
            self._warn_once(problem)
        else:
            save_checkpoint(path, self.state_dict(state))
        return control

    def _find_saved_state(self, args: Any, state: Any) -> dict[str, Any] | None:
        """The saved state of the checkpoint this run resumes (``state.global_step`` > 0 at
        ``on_train_begin`` only after the Trainer restored a checkpoint's ``TrainerState``)."""
        self.resumed_from, saved, problem = resume_state(args, state, self.state_file)
        if saved is None:
            self._warn_once(problem)
        return saved
