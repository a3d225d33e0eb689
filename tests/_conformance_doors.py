"""The conformance suite's doors (Ray's is tests/_conformance_ray.py): each trains a
:data:`~_conformance.CASES` case through one entrance to the library and returns an
:class:`~_conformance.Outcome`: the stop reason, the per-epoch metrics and what the door
records about the stop (``record``), in the door's own words."""

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

from neve_tune import fit
from neve_tune.optuna import NeVePruner, report_epoch, trial_history


class Crash(Exception):
    """A run killed after an epoch (its checkpoint written)."""


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


# ---------------------------------------------------------------- fit (the CLI's loop)
def fit_run(case: C.Case, checkpoint: Path | None = None, crash_after: int | None = None):
    model = C.mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=case.lr)

    def on_epoch(metrics: dict[str, Any]) -> None:
        if metrics["epoch"] == crash_after:
            raise Crash

    result = fit(
        model,
        optimizer,
        C.dataset(case.noise),
        C.controller(model, optimizer, case),
        batch_size=C.BATCH,
        prediction_changes="subset",
        checkpoint_path=checkpoint,
        on_epoch=on_epoch,
    )
    record = {"FitResult.stopped_by": result.stopped_by}
    return C.Outcome(result.stopped_by, result.history, record)


def fit_resumed(tmp: Path) -> C.Outcome:
    path = tmp / "run.pt"
    try:
        fit_run(C.CASES["clean"], path, crash_after=C.STOPPED_AT)
    except Crash:
        pass
    return fit_run(C.CASES["clean"], path)


# ---------------------------------------------------------------- own loop + Optuna
def optuna_run(case: C.Case, pruner: Any = None) -> C.Outcome:
    """One trial of the own-loop objective (docs/optuna_loop.py's shape) under ``pruner``
    (default :class:`NeVePruner`)."""
    _quiet_optuna()
    study = optuna.create_study(pruner=pruner or NeVePruner())

    def objective(trial: optuna.Trial) -> float:
        loop = C.OwnLoop(case)
        while not loop.neve.should_stop:
            metrics = loop.epoch()
            report_epoch(trial, metrics)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return metrics["kept_train_loss"]

    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    history = trial_history(trial)
    record = {"trial.state": trial.state.name, "stopped_by": history[-1]["stopped_by"]}
    return C.Outcome(history[-1]["stopped_by"], history, record)


def optuna_resumed() -> C.Outcome:
    """A trial killed after epoch 4; the retry loads the loop's checkpoint, replays the
    history it inherited through ``report_epoch`` (which skips nothing new) and goes on."""
    _quiet_optuna()
    study = optuna.create_study(pruner=NeVePruner())
    saved: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        loop = C.OwnLoop(C.CASES["clean"])
        if saved:
            loop.load(saved["state"])
            for metrics in saved["history"]:
                report_epoch(trial, metrics)
        while not loop.neve.should_stop:
            metrics = loop.epoch()
            report_epoch(trial, metrics)
            if not saved and metrics["epoch"] == C.STOPPED_AT:
                saved.update(state=loop.state(), history=trial_history(trial))
                raise Crash
        return metrics["kept_train_loss"]

    study.optimize(objective, n_trials=2, catch=(Crash,))
    first, retry = study.trials
    assert first.state.name == "FAIL" and retry.state.name == "COMPLETE"
    history = trial_history(retry)
    return C.Outcome(history[-1]["stopped_by"], history)


def optuna_search(noise: float, lrs: tuple[float, ...], record_subset: bool = True):
    """An own-loop search over ``lrs`` on data with ``noise``; each epoch records the fixed
    subset's predictions and fit when ``record_subset`` (docs/own_loop.md, the ``auto`` pick)."""
    from neve_tune.selection import SelectionSubset

    _quiet_optuna()
    study = optuna.create_study(pruner=NeVePruner())

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_categorical("lr", lrs)
        loop = C.OwnLoop(C.Case(lr, noise=noise))
        subset = SelectionSubset.from_dataset(C.dataset(noise), 500, seed=0)
        while not loop.neve.should_stop:
            metrics = loop.epoch()
            if record_subset:
                codes = subset.predict(loop.model)
                metrics.update(subset_pred=codes, subset_fit=subset.fit(codes))
            report_epoch(trial, metrics)
        return metrics["kept_train_loss"]

    for lr in lrs:
        study.enqueue_trial({"lr": lr})
    study.optimize(objective, n_trials=len(lrs))
    return study


def optuna_picks() -> dict[str, Any]:
    """The picks of own-loop searches over :data:`C.PICK_LRS`: by ``auto`` (with the rule the
    recorded fits decide), by each rule, and whether ``auto`` warns without the data."""
    from neve_tune.optuna import last_fits, pick_trial
    from neve_tune.selection import selection_mode

    out: dict[str, Any] = {}
    for name, noise in (("clean", 0.0), ("noisy", 0.2)):
        study = optuna_search(noise, C.PICK_LRS)
        rule = selection_mode(list(last_fits(study, (optuna.trial.TrialState.COMPLETE,)).values()))
        out[name] = (rule, pick_trial(study, "auto").number)
        for rule in ("objective", "consensus"):
            out[f"{name}_{rule}"] = pick_trial(study, rule).number
    bare = optuna_search(0.0, C.PICK_LRS[:2], record_subset=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pick_trial(bare, "auto")
    out["without_data_warns"] = any("subset_fit" in str(w.message) for w in caught)
    return out


# ---------------------------------------------------------------- Lightning
def lightning_run(
    case: C.Case,
    *,
    trial: Any = None,
    max_epochs: int = C.MAX_EPOCHS,
    ckpt: str | None = None,
    save: Path | None = None,
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


def pruner_at_once() -> optuna.pruners.BasePruner:
    """A pruner that prunes a trial at its first report (any loss is above 0)."""
    return optuna.pruners.ThresholdPruner(upper=0.0)


def pruned_at_once() -> optuna.Trial:
    """A running trial of a study whose pruner prunes at the first report (a pruner's stop)."""
    _quiet_optuna()
    return optuna.create_study(pruner=pruner_at_once()).ask()
