"""The conformance suite's callback doors: :class:`neve_tune.lightning.NeVeCallback` in a real
``lightning.Trainer`` and :class:`neve_tune.hf.NeVeTrainerCallback` in a real
``transformers.Trainer``, each training the suite's MLP (tests/_conformance.py)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

try:
    from tests import _conformance as C
except ImportError:  # tests/ on sys.path (pytest's default import mode)
    import _conformance as C  # type: ignore[no-redef]


# ---------------------------------------------------------------- Lightning
def lightning_run(
    case: C.Case,
    *,
    trial: Any = None,
    max_epochs: int = C.MAX_EPOCHS,
    ckpt: str | None = None,
    save: Path | None = None,
    subset: Any = None,
) -> C.Outcome:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import Logger
    from torch.utils.data import DataLoader

    from neve_tune.lightning import NeVeCallback

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = C.mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=case.lr)

    class Recorder(Logger):
        """A logger that keeps what it is given (the stop reason goes to hyperparameters)."""

        def __init__(self) -> None:
            super().__init__()
            self.hyperparams: dict[str, Any] = {}

        name, version = "recorder", 0

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            self.hyperparams.update(dict(params))

        def log_metrics(self, metrics, step=None) -> None:
            pass

    ds = C.dataset(case.noise)
    loader = DataLoader(ds, batch_size=C.BATCH, sampler=C.EpochSampler(C.N))
    neve = NeVeCallback(
        trial=trial,
        selection_subset=subset,
        prediction_changes="subset" if case.guard else None,
        **{k: v for k, v in C.rules(case).items() if case.guard or k != "pc_patience"},
    )
    recorder = Recorder()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        callbacks=[neve],
        logger=recorder,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*log_every_n_steps.*")
        try:
            trainer.fit(Net(), loader, ckpt_path=ckpt)
        except optuna.TrialPruned:
            pass
    if save is not None:
        trainer.save_checkpoint(save)
    record = {k: v for k, v in recorder.hyperparams.items() if k.startswith("neve_")}
    return C.Outcome(neve.stopped_by, neve.history, record)


def lightning_resumed(tmp: Path) -> C.Outcome:
    path = tmp / "four.ckpt"
    lightning_run(C.CASES["clean"], max_epochs=C.STOPPED_AT, save=path)
    return lightning_run(C.CASES["clean"], ckpt=str(path))


# ---------------------------------------------------------------- Hugging Face
def hf_run(
    case: C.Case,
    tmp: Path,
    *,
    trial: Any = None,
    save: bool = False,
    stop_after: int | None = None,
    resume: str | None = None,
    subset: Any = None,
) -> C.Outcome:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.modeling_outputs import SequenceClassifierOutput

    from neve_tune.hf import NeVeTrainerCallback

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = C.mlp()

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
            logits = self.net(x)
            loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    class Items(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x, self.y = C.tensors(case.noise)

        def __len__(self) -> int:
            return C.N

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": self.x[i], "labels": self.y[i]}

    class StopAfter(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            if state.epoch >= stop_after:
                control.should_training_stop = True
            return control

    neve = NeVeTrainerCallback(
        trial=trial,
        selection_subset=subset,
        probe_key="x",
        prediction_changes="subset" if case.guard else None,
        **{k: v for k, v in C.rules(case).items() if case.guard or k != "pc_patience"},
    )
    args = TrainingArguments(
        output_dir=str(tmp / "hf"),
        num_train_epochs=C.MAX_EPOCHS,
        per_device_train_batch_size=C.BATCH,
        learning_rate=case.lr,
        lr_scheduler_type="constant",
        logging_steps=8,
        save_strategy="epoch" if save else "no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_drop_last=False,
    )
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=case.lr)
    callbacks = [neve] + ([StopAfter()] if stop_after else [])
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Items(),
        callbacks=callbacks,
        optimizers=(optimizer, None),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer.train(resume_from_checkpoint=resume)
        except optuna.TrialPruned:
            pass
    record = next(
        (e for e in trainer.state.log_history if "neve_stopped_by" in e), {}
    )  # the stop, in the Trainer's log history
    return C.Outcome(neve.stopped_by, neve.history, dict(record))


def hf_resumed(tmp: Path) -> C.Outcome:
    clean = C.CASES["clean"]
    hf_run(clean, tmp, save=True, stop_after=C.STOPPED_AT)
    steps = C.STOPPED_AT * (C.N // C.BATCH)
    return hf_run(clean, tmp, save=True, resume=str(tmp / "hf" / f"checkpoint-{steps}"))


# ---------------------------------------------------------------- the `auto` pick
def callback_search(door: str, noise: float, lrs: tuple[float, ...], tmp: Path, record: bool):
    """An Optuna search over ``lrs`` through a callback door (the callback reports every epoch
    to the trial; no pruning, as in the own-loop door); with ``record``, the callback records
    the fixed subset's predictions and fit (``selection_subset=``)."""
    from neve_tune.selection import SelectionSubset

    study = optuna.create_study(pruner=optuna.pruners.NopPruner())

    def objective(trial: optuna.Trial) -> float:
        case = C.Case(trial.suggest_categorical("lr", lrs), noise=noise)
        subset = SelectionSubset.from_dataset(C.dataset(noise), 500, seed=0) if record else None
        if door == "lightning":
            out = lightning_run(case, trial=trial, subset=subset)
        else:
            out = hf_run(case, tmp / f"t{trial.number}", trial=trial, subset=subset)
        return out.history[-1]["kept_train_loss"]  # the objective of the weights kept

    for lr in lrs:
        study.enqueue_trial({"lr": lr})
    study.optimize(objective, n_trials=len(lrs))
    return study


def callback_picks(door: str, tmp: Path) -> dict[str, Any]:
    """:func:`_conformance_doors.optuna_picks` through a callback door."""
    from neve_tune.optuna import pick_trial, select_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out: dict[str, Any] = {}
    for name, noise in (("clean", 0.0), ("noisy", 0.2)):
        study = callback_search(door, noise, C.PICK_LRS, tmp / name, record=True)
        best, decision = select_trial(study, "auto")
        out[name] = (decision.rule, best.number)
        for rule in ("objective", "consensus"):
            out[f"{name}_{rule}"] = pick_trial(study, rule).number
    bare = callback_search(door, 0.0, C.PICK_LRS[:2], tmp / "bare", record=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pick_trial(bare, "auto")
    out["without_data_warns"] = any("subset_fit" in str(w.message) for w in caught)
    return out
