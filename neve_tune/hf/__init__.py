"""Hugging Face ``transformers.Trainer``: NeVe as a ``TrainerCallback``, token probes, Optuna.

:class:`NeVeTrainerCallback` measures the velocity at each epoch end (or every
``every_n_steps`` optimizer steps, since fine-tuning epochs are long), counts the
memorisation guard's prediction changes on a fixed subset of training inputs, decays the
learning rate through :class:`neve_tune.NeVe` (on top of the Trainer's LR schedule) and
ends training with ``control.should_training_stop`` once the velocity is under
``threshold`` (by default a ratio to its own peak), the guard fires (restoring its restore
point's weights) or the run stalls.
Token models get a :func:`token_probe` (seeded random token ids, passed as ``input_ids``).

Example::

    from transformers import Trainer, TrainingArguments
    from neve_tune.hf import NeVeTrainerCallback

    neve = NeVeTrainerCallback(threshold=1e-3, num_classes=2, verbose=True)
    args = TrainingArguments("out", num_train_epochs=50, lr_scheduler_type="constant",
                             logging_steps=10)
    Trainer(model=model, args=args, train_dataset=train_set, callbacks=[neve]).train()
    print(neve.stopped_by)

With ``Trainer.hyperparameter_search(backend="optuna", pruner=NeVePruner(), ...)`` wrap the
``model_init`` with :meth:`NeVeTrainerCallback.track_trial`: the Trainer passes each Optuna
trial to ``model_init``, and the callback then reports every measurement to it
(:func:`neve_tune.optuna.report_epoch`) and raises ``optuna.TrialPruned`` when the pruner says so.
With no ``eval_dataset``, :meth:`NeVeTrainerCallback.attach` (``neve.attach(trainer)``)
makes each search trial's objective NeVe's, the training loss of the measurement whose
weights it keeps, with no evaluation; under ``backend="ray"`` every measurement then goes
to Tune, so ``scheduler=NeVeASHAScheduler(...)`` passes through. Either way each trial run
keeps its own callback state, in its own run folder.

Resuming: every Trainer checkpoint gets the callback's state (``neve_state.pt``, see
:data:`STATE_FILE`), and ``trainer.train(resume_from_checkpoint=...)`` continues the same
velocity series, LR decay, prediction changes and history from it.

Importing this module needs ``transformers`` (``pip install neve_tune[hf]``);
``import neve_tune`` does not.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "neve_tune.hf needs transformers: pip install 'neve_tune[hf]' (or transformers>=4.40)"
    ) from e

from ._callback import NeVeTrainerCallback
from ._probe import KeywordInput, token_probe
from ._state import STATE_FILE

__all__ = ["STATE_FILE", "KeywordInput", "NeVeTrainerCallback", "token_probe"]
