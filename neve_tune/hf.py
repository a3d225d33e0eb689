"""Hugging Face ``transformers.Trainer``: NeVe as a ``TrainerCallback``, token probes, Optuna.

:class:`NeVeTrainerCallback` measures the velocity at each epoch end (or every
``every_n_steps`` optimizer steps, since fine-tuning epochs are long), decays the learning
rate through :class:`neve_tune.NeVe` and ends training with
``control.should_training_stop`` once the velocity is under ``threshold``. Token models
get a :func:`token_probe` (seeded random token ids, passed as ``input_ids``).

Example::

    from transformers import Trainer, TrainingArguments
    from neve_tune.hf import NeVeTrainerCallback

    neve = NeVeTrainerCallback(threshold=1e-3)
    args = TrainingArguments("out", num_train_epochs=50, lr_scheduler_type="constant", logging_steps=10)
    Trainer(model=model, args=args, train_dataset=train_set, callbacks=[neve]).train()
    print(neve.stopped_by)

With ``Trainer.hyperparameter_search(backend="optuna", pruner=NeVePruner(), ...)`` wrap the
``model_init`` with :meth:`NeVeTrainerCallback.track_trial`: the Trainer passes each Optuna
trial to ``model_init``, and the callback then reports every measurement to it
(:func:`neve_tune.optuna.report_epoch`) and raises ``optuna.TrialPruned`` when the pruner says so.
With ``backend="ray"`` each trial stops itself by velocity and the Trainer reports its final
evaluation to Tune (pass the training set as ``eval_dataset`` for a validation-free objective).

Resuming: every Trainer checkpoint gets the callback's state (``neve_state.pt``, see
:data:`STATE_FILE`), and ``trainer.train(resume_from_checkpoint=...)`` continues the same
velocity series, LR decay and history from it.

Importing this module needs ``transformers`` (``pip install neve_tune[hf]``);
``import neve_tune`` does not.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import warnings
from typing import Any, Callable

import torch
from torch import nn

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("neve_tune.hf needs transformers: pip install 'neve_tune[hf]' (or transformers>=4.40)") from e

from ._callbacks import CallbackSettings
from ._checks import check_int
from .control import NeVe
from .probe import gaussian_probe
from .train import CheckpointError, load_state_file, save_checkpoint
from .velocity import NeuralVelocity

__all__ = ["STATE_FILE", "KeywordInput", "NeVeTrainerCallback", "token_probe"]

#: The callback's state in each Trainer checkpoint folder (``checkpoint-<global_step>``).
STATE_FILE = "neve_state.pt"
_STATE_KEYS = ("format", "global_step", "log_digest", "neve", "history", "probe", "probe_digest", "loss")


def _log_digest(log_history: list[dict[str, Any]]) -> str:
    """Fingerprint of ``TrainerState.log_history``: the same before ``trainer_state.json`` is
    written and after it is read back (JSON keeps Python floats exactly)."""
    text = json.dumps(log_history, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _probe_digest(probe: torch.Tensor) -> str:
    x = probe.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(x.shape)} {x.dtype}".encode())
    h.update(x.view(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b"")
    return h.hexdigest()


def _read_state(path: str) -> dict[str, Any]:
    """A NeVe state file, or a ValueError naming it."""
    try:
        return load_state_file(path, _STATE_KEYS, "NeVeTrainerCallback state",
                               "delete it to start the velocity series over from this checkpoint, "
                               "or resume from another checkpoint")
    except CheckpointError as e:
        raise ValueError(e.message("NeVe state file")) from None


def token_probe(vocab_size: int, seq_len: int, num_samples: int = 100, seed: int = 0) -> torch.Tensor:
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

    :class:`neve_tune.NeuralVelocity` calls ``model(probe)``; Hugging Face models take
    ``input_ids=``, ``pixel_values=`` or ``inputs_embeds=``. The wrapped model is a
    submodule, so its layers are monitored under ``model.<name>``.

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


class NeVeTrainerCallback(CallbackSettings, TrainerCallback):
    """NeVe LR decay and stopping for ``transformers.Trainer`` (optionally with Optuna).

    Measurement points are every epoch end, or every ``every_n_steps`` optimizer steps.
    At each one the callback takes the mean training loss since the previous point (the
    Trainer's logged ``loss``, weighted by steps; it asks the Trainer to log at that point
    with ``control.should_log``), then :meth:`neve_tune.NeVe.step` measures the velocity
    and steps the LR. NeVe's decay multiplies the Trainer's LR scheduler ``base_lrs``, so
    it composes with any ``lr_scheduler_type`` (``"constant"`` gives the NeVe schedule
    itself). When the controller stops (``stopped_by``: ``"velocity"``,
    ``"max_epochs"``, ``"diverged"``, ...) ``control.should_training_stop`` is set.
    Every measurement's metrics (with ``train_loss`` and ``step``) go to :attr:`history`.

    Checkpoints: at every Trainer save (``on_save``, on the process that writes checkpoints)
    the callback writes its state to :data:`STATE_FILE` in the checkpoint folder
    (``<output_dir>/checkpoint-<global_step>``; ``<output_dir>/<run>/checkpoint-<step>`` in
    a hyperparameter search), atomically: the controller (references, velocity series,
    ``ReduceLROnPlateau``), :attr:`history`, the loss logged since the last measurement and a
    probe built from the data; it asks the Trainer to log at each save, since the Trainer's
    checkpoint drops the loss it has not logged yet. When ``trainer.train(resume_from_checkpoint=...)`` resumes,
    ``on_train_begin`` finds that file and loads it before any measurement, so the series
    goes on as if never interrupted. The file is looked for in
    ``args.resume_from_checkpoint`` (set it for a checkpoint outside ``output_dir``) and in
    ``output_dir``'s ``checkpoint-<global_step>``, and used only if it was saved at the
    resumed step with the same Trainer log history. A checkpoint without it (saved without
    this callback) gives one warning and a fresh series from the resumed weights; an
    unreadable one raises ``ValueError`` naming the file. A given ``probe`` is not saved:
    pass the same one when resuming (another raises ``ValueError``). A run that had
    stopped by the controller ends again after the Trainer's first resumed step; one
    stopped by the ``max_epochs`` cap goes on when the resumed run has more epochs.

    With a ``trial`` (given here, or learnt through :meth:`track_trial` under
    ``Trainer.hyperparameter_search``) each measurement is reported with
    :func:`neve_tune.optuna.report_epoch` (its ``epoch`` counts measurements) and
    ``optuna.TrialPruned`` is raised when ``trial.should_prune()``. Keep
    ``eval_strategy="no"``: the Trainer would otherwise report its own evaluation to the
    same trial.

    With ``probe=None`` the probe is built from the first training example's
    ``probe_key`` entry (``train_dataset[0]``, read without touching the data order):
    integer ids give :func:`token_probe` over ``model.config.vocab_size`` with that
    sequence length; floats give a seeded Gaussian probe of that shape. The probe goes to
    the model as ``probe_key=`` (see :class:`KeywordInput`).

    Args:
        probe: probe inputs ``[N, ...]`` or None.
        threshold: velocity under which the run has converged.
        every_n_steps: measure every N optimizer steps instead of at epoch ends.
        trial: an Optuna trial to report to and prune.
        probe_key: the model's keyword argument that receives the probe.
        probe_samples, probe_seed: size and seed of the built probe.
        layers: monitored layers (see :class:`neve_tune.NeuralVelocity`).
        **controller_options: more :class:`neve_tune.NeVe` options (``min_epochs``,
            ``max_epochs`` (counted in measurements; default: as many as the run has),
            ``factor``, ``patience``, ``lr_signal``).
    """

    def __init__(
        self,
        probe: torch.Tensor | None = None,
        threshold: float = 1e-3,
        every_n_steps: int | None = None,
        *,
        trial: Any = None,
        probe_key: str = "input_ids",
        probe_samples: int = 100,
        probe_seed: int = 0,
        layers: Any = None,
        **controller_options: Any,
    ) -> None:
        if not isinstance(probe_key, str) or not probe_key:
            raise TypeError(f"probe_key must be a non-empty str, got {probe_key!r}")
        self._settings("NeVeTrainerCallback", probe, threshold, trial, probe_samples, probe_seed, layers,
                       controller_options)
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1, allow_none=True)
        self.probe_key = probe_key
        self.resumed_from: str | None = None
        self._warned: set[str] = set()
        self._reset_run()

    def _reset_run(self) -> None:
        self.neve = None
        self.history = []
        self.resumed_from = None  # the state file this run continued, if any
        self._built_probe: torch.Tensor | None = None
        self._probe_digest: str | None = None
        self._lr_scheduler: Any = None
        self._loss_sum = 0.0  # logged loss x steps since the last measurement
        self._loss_steps = 0
        self._last_log_step = 0
        self._pending = False

    # ------------------------------------------------------------ results
    @property
    def stopped_by(self) -> str | None:
        return None if self.neve is None else self.neve.stopped_by

    @property
    def velocities(self) -> list[float | None]:
        return [m.get("velocity") for m in self.history]

    def track_trial(self, model_init: Callable[..., nn.Module]) -> Callable[[Any], nn.Module]:
        """Wrap a Trainer ``model_init`` so this callback learns each search trial.

        ``Trainer.hyperparameter_search`` calls ``model_init(trial)`` at the start of every
        trial (``model_init(None)`` when the Trainer is built); the wrapper records the
        trial and calls ``model_init`` with it if it takes an argument.
        """
        takes_trial = len(inspect.signature(model_init).parameters) >= 1

        def wrapped(trial: Any = None) -> nn.Module:
            self.trial = trial
            return model_init(trial) if takes_trial else model_init()

        return wrapped

    # ------------------------------------------------------------ setup
    def _build_probe(self, model: nn.Module, train_dataloader: Any) -> torch.Tensor:
        dataset = getattr(train_dataloader, "dataset", None)
        try:
            example = dataset[0]  # type: ignore[index]
        except Exception as e:  # iterable datasets, or none
            raise ValueError(f"probe=None needs an indexable train_dataset to shape the probe; pass probe= ({e})") from e
        if not isinstance(example, dict) or self.probe_key not in example:
            keys = sorted(example) if isinstance(example, dict) else type(example).__name__
            raise ValueError(
                f"probe=None shapes the probe on train_dataset[0][{self.probe_key!r}], but the example holds {keys}; "
                "pass probe_key= or probe="
            )
        x = torch.as_tensor(example[self.probe_key])
        if x.ndim == 0:
            raise ValueError(f"train_dataset[0][{self.probe_key!r}] is a scalar; a probe needs one input's shape")
        if x.is_floating_point():
            return gaussian_probe(tuple(x.shape), self.probe_samples, self.probe_seed)
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is None:
            raise ValueError("token inputs need model.config.vocab_size to draw a token probe; pass probe=")
        return token_probe(vocab, x.shape[-1], self.probe_samples, self.probe_seed)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None,
                       train_dataloader=None, **kwargs):
        if model is None or optimizer is None:
            raise RuntimeError("NeVeTrainerCallback needs the Trainer's model and optimizer at on_train_begin")
        self._reset_run()
        saved = self._find_saved_state(args, state) if state.global_step > 0 else None
        if self.probe is not None:
            probe = self.probe
            if saved is not None and saved["probe_digest"] not in (None, _probe_digest(probe)):
                raise ValueError(
                    f"the probe given to NeVeTrainerCallback differs from the one the velocity series in "
                    f"{self.resumed_from!r} was measured on; pass the same probe= to resume it"
                )
        elif saved is not None and saved["probe"] is not None:
            probe = self._built_probe = saved["probe"]
        else:
            probe = self._built_probe = self._build_probe(model, train_dataloader)
        self._probe_digest = _probe_digest(probe)
        options = dict(self.controller_options)
        if "max_epochs" not in options:
            if self.every_n_steps:
                options["max_epochs"] = max(1, math.ceil(state.max_steps / self.every_n_steps))
            else:
                options["max_epochs"] = max(1, math.ceil(state.num_train_epochs))
        velocity = NeuralVelocity(KeywordInput(model, self.probe_key), probe, layers=self.layers)
        self.neve = NeVe(optimizer, velocity, threshold=self.threshold, **options)
        self._lr_scheduler = lr_scheduler
        self._last_log_step = state.global_step
        if saved is not None:
            self.neve.load_state_dict(saved["neve"])
            self.history = [dict(m) for m in saved["history"]]
            loss = saved["loss"]
            self._loss_sum, self._loss_steps = float(loss["sum"]), int(loss["steps"])
            self._pending = bool(loss.get("pending", False))
            if self.neve.should_stop:  # the run had ended by the controller: end it again
                control.should_training_stop = True
        self.neve.start()
        return control

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, state: Any = None) -> dict[str, Any]:
        """What :data:`STATE_FILE` holds (``state``: the Trainer's ``TrainerState``, whose
        ``global_step`` and log history identify the checkpoint)."""
        if self.neve is None:
            raise RuntimeError("NeVeTrainerCallback has no state before on_train_begin")
        return {
            "format": 1,
            "global_step": None if state is None else int(state.global_step),
            "log_digest": None if state is None else _log_digest(state.log_history),
            "neve": self.neve.state_dict(),
            "history": [dict(m) for m in self.history],
            "probe": self._built_probe,
            "probe_digest": self._probe_digest,
            "loss": {"sum": self._loss_sum, "steps": self._loss_steps, "pending": self._pending},
        }

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)

    @staticmethod
    def _run_dirs(args: Any, state: Any, trial: Any) -> list[str]:
        """Where the Trainer puts its ``checkpoint-<step>`` folders: ``output_dir``, or a
        per-trial folder in it during a hyperparameter search (``hp_name(trial)``, else
        ``run-<trial number>``)."""
        dirs = [args.output_dir]
        if getattr(state, "trial_name", None):
            dirs.append(os.path.join(args.output_dir, str(state.trial_name)))
        number = getattr(trial, "number", None)
        if isinstance(number, int):
            dirs.append(os.path.join(args.output_dir, f"run-{number}"))
        return dirs

    def _checkpoint_folder(self, args: Any, state: Any) -> str | None:
        """The folder the Trainer has just saved: ``checkpoint-<global_step>`` in a run
        folder, holding a ``trainer_state.json`` of this very state."""
        name = f"checkpoint-{state.global_step}"
        digest = _log_digest(state.log_history)
        for run_dir in self._run_dirs(args, state, self.trial):
            folder = os.path.join(run_dir, name)
            try:
                with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
                    written = json.load(f)
            except (OSError, ValueError):
                continue
            if written.get("global_step") == state.global_step and _log_digest(written.get("log_history", [])) == digest:
                return folder
        return None

    def on_save(self, args, state, control, **kwargs):
        if self.neve is None or not args.should_save:  # only the process that writes the checkpoint
            return control
        folder = self._checkpoint_folder(args, state)
        if folder is None:
            self._warn_once(
                f"NeVeTrainerCallback found no checkpoint-{state.global_step} folder with this run's trainer_state.json "
                f"under {args.output_dir!r}; the NeVe state is not saved, a resumed run will start a new velocity series"
            )
            return control
        save_checkpoint(os.path.join(folder, STATE_FILE), self.state_dict(state))
        return control

    def _find_saved_state(self, args: Any, state: Any) -> dict[str, Any] | None:
        """The saved state of the checkpoint this run resumes (``state.global_step`` > 0 at
        ``on_train_begin`` only after the Trainer restored a checkpoint's ``TrainerState``)."""
        name = f"checkpoint-{state.global_step}"
        folders = []
        if isinstance(args.resume_from_checkpoint, str) and args.resume_from_checkpoint:
            folders.append(args.resume_from_checkpoint)
        folders += [os.path.join(d, name) for d in self._run_dirs(args, state, self.trial)]
        digest = _log_digest(state.log_history)
        other = []
        for folder in dict.fromkeys(folders):
            path = os.path.join(folder, STATE_FILE)
            if not os.path.isfile(path):
                continue
            saved = _read_state(path)
            if saved["global_step"] == state.global_step and saved["log_digest"] == digest:
                self.resumed_from = path
                return saved
            other.append(path)
        where = f"{STATE_FILE} in {sorted(set(folders))}" + (f" (found {other}, saved by other runs or steps)" if other else "")
        self._warn_once(
            f"NeVeTrainerCallback resumes at step {state.global_step} but found no NeVe state of this checkpoint "
            f"({where}); the velocity series starts over from the resumed weights. For a checkpoint outside output_dir, "
            "set TrainingArguments(resume_from_checkpoint=...) to its folder"
        )
        return None

    # ------------------------------------------------------------ measurement points
    def _measure_point(self, state, control):
        if self.neve is None or self.neve.should_stop:
            return control
        if self._last_log_step == state.global_step and self._loss_steps > 0:
            return self._measure(state, control)
        self._pending = True
        control.should_log = True  # the Trainer logs the loss right after this hook
        return control

    def _log_before_save(self, control):
        """The Trainer's loss since its last log is not in its checkpoint: have it logged
        (into this callback's saved loss) before a save that the Trainer has decided on."""
        if control.should_save and self.neve is not None and not self.neve.should_stop:
            control.should_log = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            control = self._measure_point(state, control)
        return self._log_before_save(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if not self.every_n_steps:
            control = self._measure_point(state, control)
        return self._log_before_save(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and state.global_step > self._last_log_step:
            steps = state.global_step - self._last_log_step
            self._loss_sum += float(logs["loss"]) * steps
            self._loss_steps += steps
            self._last_log_step = state.global_step
        if self._pending:
            if self._loss_steps == 0:  # no training step since the last point: nothing to measure
                self._pending = False
                return control
            return self._measure(state, control)
        return control

    def _measure(self, state, control):
        self._pending = False
        train_loss = self._loss_sum / self._loss_steps
        self._loss_sum, self._loss_steps = 0.0, 0
        neve = self.neve
        before = [float(g["lr"]) for g in neve.optimizer.param_groups]
        metrics = dict(neve.step(train_loss=train_loss))
        metrics.setdefault("train_loss", train_loss)
        metrics["step"] = state.global_step
        self.history.append(metrics)
        self._follow_lr(before)
        if self.trial is not None and state.is_world_process_zero:
            from .optuna import report_epoch

            report_epoch(self.trial, metrics)
            if self.trial.should_prune():
                import optuna

                raise optuna.TrialPruned(f"pruned at measurement {metrics['epoch']} (step {state.global_step})")
        if neve.should_stop:
            control.should_training_stop = True
        return control

    def _follow_lr(self, before: list[float]) -> None:
        """Scale the Trainer's scheduler so its next step keeps NeVe's decay."""
        base_lrs = getattr(self._lr_scheduler, "base_lrs", None)
        if not isinstance(base_lrs, list):
            return
        after = [float(g["lr"]) for g in self.neve.optimizer.param_groups]
        for i, (old, new) in enumerate(zip(before, after)):
            if i < len(base_lrs) and old > 0 and new != old:
                base_lrs[i] *= new / old
