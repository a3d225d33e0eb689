"""One trial on noisy labels: which LR decay keeps it from memorising?

Trains the digits small CNN on training labels with symmetric noise (test labels clean)
for a fixed number of epochs, with no stop, under two LR rules, and prints the test
accuracy (for this diagnosis only) every other epoch:

- ``velocity_change``: NeVe's default rule, ``ReduceLROnPlateau`` on the velocity change
  (patience 3, factor 0.5);
- ``prediction_changes``: ``ReduceLROnPlateau`` on the 3-epoch moving average of the
  training examples whose predicted class changed (patience and factor as given).

    python benchmarks/pc_lr_decay.py                       # the three runs of the README
    python benchmarks/pc_lr_decay.py --noise 0.4 --patience 1 --factor 0.5

Figures are deterministic on one machine, not across machines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
# (seed, lr, batch size): learning rates the NeVe search tried on 20% noise, seeds 0-2
CONFIGS = [(2, 0.015, 64), (0, 0.03, 32), (1, 0.013, 64)]


def run(
    seed: int,
    lr: float,
    batch_size: int,
    noise: float,
    rule: str,
    patience: int,
    factor: float,
    epochs: int,
) -> list[tuple[int, float, float]]:
    """(epoch, test accuracy, lr) per epoch of one run under ``rule``."""
    from neve_tune import NeuralVelocity, NeVe, gaussian_probe, load_study
    from neve_tune.models import create_model
    from neve_tune.train import evaluate, fit
    from neve_tune.trial import make_optimizer

    study = load_study("digits").replace(data_options={"label_noise": noise}, max_epochs=epochs)
    bundle = study.load_data(seed=seed)
    torch.manual_seed(seed)
    model = create_model(study.model, bundle.num_classes, bundle.input_shape)
    optimizer = make_optimizer(model, study.config({"lr": lr, "batch_size": batch_size}))
    on_pc = rule == "prediction_changes"
    # threshold too small to fire: the run goes to the cap
    neve = NeVe(
        optimizer,
        NeuralVelocity(model, gaussian_probe(bundle.input_shape, 100, seed=seed)),
        threshold=1e-12,
        max_epochs=epochs,
        num_classes=bundle.num_classes,
        lr_signal=rule,
        lr_patience=patience if on_pc else 3,
        lr_factor=factor if on_pc else 0.5,
        pc_window=3,
    )
    rows: list[tuple[int, float, float]] = []

    def on_epoch(m: dict) -> None:
        rows.append((m["epoch"], evaluate(model, bundle.test)[1], m["lr"]))

    fit(model, optimizer, bundle.train, neve, batch_size=batch_size, seed=seed, on_epoch=on_epoch)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument(
        "--patience", type=int, default=2, help="of the prediction-changes rule (default 2)"
    )
    p.add_argument(
        "--factor", type=float, default=0.2, help="of the prediction-changes rule (default 0.2)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for seed, lr, bs in CONFIGS:
        for rule in ("velocity_change", "prediction_changes"):
            rows = run(seed, lr, bs, args.noise, rule, args.patience, args.factor, args.epochs)
            best = max(rows, key=lambda r: r[1])
            print(
                f"seed {seed} lr {lr} batch {bs} {rule:18s}: best {100 * best[1]:.2f} % at epoch "
                f"{best[0]}, "
                f"last {100 * rows[-1][1]:.2f} % (lr {rows[-1][2]:.2g}) | every other epoch: "
                + " ".join(f"{100 * r[1]:.1f}" for r in rows[::2]),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
