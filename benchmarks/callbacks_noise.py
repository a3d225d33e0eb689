"""The Lightning and Hugging Face callbacks against ``neve-tune train``, on noisy and clean digits.

Each run trains the digits study's small CNN with the configuration ``neve-tune train
digits`` uses (SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, the study's
velocity threshold rule, 60 epochs, ``lr_patience="auto"``, the memorisation guard with
``pc_patience=3``, ``pc_window=3``, weight restore, ``num_classes=10``, the Gaussian probe
of 100 samples seeded by the run's seed), seed ``s`` fixing the initialisation, the data
order and the flipped labels (``--noise-seed s``). Three ways:

- ``train``: :func:`neve_tune.run_trial`, what ``neve-tune train digits --label-noise 0.25
  --seed s --noise-seed s`` runs (prediction changes counted on every training example in
  the training pass);
- ``lightning``: a ``LightningModule`` around the same model with :class:`NeVeCallback`
  (prediction changes on a seeded subset of 1,000 training inputs);
- ``train_subset``: the same with ``Study(prediction_changes="subset")`` (``neve-tune train
  ... --prediction-changes subset``): the callbacks' source of prediction changes in ``fit``,
  which separates the source's effect from the loop's;
- ``hf``: a ``transformers.Trainer`` (``optimizers=(SGD, None)``, ``lr_scheduler_type=
  "constant"``, no gradient clipping) with :class:`NeVeTrainerCallback` (the same subset).

Printed per run: stop epoch, stop reason, the epoch whose weights the model holds, and the
test accuracy of that (restored) model; then the mean and standard deviation over seeds
per setting. The clean rows compare the guard on (default) and off (``pc_patience=None``).

    python benchmarks/callbacks_noise.py                       # 3 seeds, 25% noise and clean
    python benchmarks/callbacks_noise.py --seeds 0 --noise 0.25 --only noisy
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import torch


def _study(noise: float, seed: int, guard: bool, prediction_changes: str = "in_pass"):
    from neve_tune import load_study

    options = {"label_noise": noise, "noise_seed": seed} if noise > 0 else {}
    return load_study("digits").replace(
        data_options=options,
        pc_patience=3 if guard else None,
        prediction_changes=prediction_changes,
    )


def run_train(
    noise: float, seed: int, guard: bool, prediction_changes: str = "in_pass"
) -> dict[str, Any]:
    from neve_tune import run_trial

    study = _study(noise, seed, guard, prediction_changes)
    result = run_trial(study, study.config(), seed=seed, device="cpu")
    return {
        "epochs": result.epochs,
        "stopped_by": result.stopped_by,
        "best_epoch": result.best_epoch,
        "test_acc": result.test_acc,
    }


def _parts(noise: float, seed: int, guard: bool):
    from neve_tune import gaussian_probe
    from neve_tune.models import create_model
    from neve_tune.trial import make_optimizer

    study = _study(noise, seed, guard)
    bundle = study.load_data()
    torch.manual_seed(seed)
    model = create_model(study.model, bundle.num_classes, bundle.input_shape)
    optimizer = make_optimizer(model, study.config())
    probe = gaussian_probe(bundle.input_shape, study.probe_samples, seed=seed)
    options = {
        "threshold": study.config()["threshold"],
        "threshold_mode": study.threshold_mode,
        "num_classes": bundle.num_classes,
        "pc_patience": 3 if guard else None,
    }
    return study, bundle, model, optimizer, probe, options


def run_lightning(noise: float, seed: int, guard: bool) -> dict[str, Any]:
    import lightning.pytorch as pl

    from neve_tune.lightning import NeVeCallback
    from neve_tune.train import evaluate

    study, bundle, model, optimizer, probe, options = _parts(noise, seed, guard)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return optimizer

    loader = torch.utils.data.DataLoader(
        bundle.train,
        batch_size=int(study.config()["batch_size"]),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    neve = NeVeCallback(probe=probe, **options)
    trainer = pl.Trainer(
        max_epochs=study.max_epochs,
        callbacks=[neve],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Module(), loader)
    _, acc, _ = evaluate(model, bundle.test)
    return {
        "epochs": neve.neve.epoch,
        "stopped_by": neve.stopped_by,
        "best_epoch": neve.neve.best_epoch,
        "test_acc": acc,
    }


def trainer_args(out: str, epochs: int, lr: float, seed: int, **options: Any) -> Any:
    """The ``TrainingArguments`` of a benchmark run: batch 64 on the CPU, no checkpoints,
    reports or progress bars; ``options`` set the rest."""
    from transformers import TrainingArguments

    return TrainingArguments(
        out,
        num_train_epochs=epochs,
        per_device_train_batch_size=64,
        learning_rate=lr,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
        dataloader_num_workers=0,
        **options,
    )


def run_hf(noise: float, seed: int, guard: bool) -> dict[str, Any]:
    from transformers import PrinterCallback, Trainer
    from transformers.modeling_outputs import SequenceClassifierOutput

    from neve_tune.hf import NeVeTrainerCallback
    from neve_tune.train import evaluate

    study, bundle, model, optimizer, probe, options = _parts(noise, seed, guard)

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, pixel_values, labels=None):
            logits = self.net(pixel_values)
            loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
            return SequenceClassifierOutput(loss=loss, logits=logits)

    train = [{"pixel_values": x, "labels": y} for x, y in bundle.train]
    neve = NeVeTrainerCallback(probe=probe, probe_key="pixel_values", **options)
    with tempfile.TemporaryDirectory() as out:
        args = trainer_args(
            out,
            study.max_epochs,
            float(study.config()["lr"]),
            seed,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            logging_steps=5,
        )
        trainer = Trainer(
            model=Classifier(),
            args=args,
            train_dataset=train,
            callbacks=[neve],
            optimizers=(optimizer, None),
        )
        trainer.remove_callback(PrinterCallback)  # the Trainer's per-log prints
        trainer.train()
    _, acc, _ = evaluate(model, bundle.test)
    return {
        "epochs": neve.neve.epoch,
        "stopped_by": neve.stopped_by,
        "best_epoch": neve.neve.best_epoch,
        "test_acc": acc,
    }


def run_train_subset(noise: float, seed: int, guard: bool) -> dict[str, Any]:
    return run_train(noise, seed, guard, prediction_changes="subset")


RUNNERS = {
    "train": run_train,
    "train_subset": run_train_subset,
    "lightning": run_lightning,
    "hf": run_hf,
}


def settings(noise: float, only: str | None) -> list[tuple[str, float, str, bool]]:
    """(label, noise, runner, guard) for every row of the table."""
    noisy = [(f"{int(noise * 100)}% noise", noise, r, True) for r in RUNNERS]
    clean = [("clean", 0.0, r, g) for r in RUNNERS if r != "train_subset" for g in (True, False)]
    return noisy if only == "noisy" else clean if only == "clean" else noisy + clean


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, default=0.25)
    p.add_argument("--only", choices=["noisy", "clean"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()
    print(
        f"{'data':<10} {'loop':<12} {'guard':<6} {'seed':>4} {'epochs':>6} {'stopped_by':<19} "
        f"{'restored':>8} "
        f"{'test_acc':>8} {'wall_s':>7}",
        flush=True,
    )
    summary = []
    for label, noise, runner, guard in settings(args.noise, args.only):
        accs = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            r = RUNNERS[runner](noise, seed, guard)
            accs.append(100 * r["test_acc"])
            print(
                f"{label:<10} {runner:<12} {'on' if guard else 'off':<6} {seed:>4} "
                f"{r['epochs']:>6} "
                f"{r['stopped_by']:<19} {r['best_epoch']:>8} {100 * r['test_acc']:>8.2f} "
                f"{time.perf_counter() - t0:>7.1f}",
                flush=True,
            )
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        summary.append(
            f"{label:<10} {runner:<12} {'on' if guard else 'off':<6} test_acc "
            f"{statistics.mean(accs):6.2f}"
            f" +- {sd:.2f} over seeds {args.seeds}"
        )
    print("\nmean test accuracy (%) of the model each run ends with")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
