"""What velocity and prediction changes show when a network starts memorising wrong labels.

Trains the digits small CNN on training labels with symmetric noise (test labels clean)
for a fixed number of epochs, with no stop, and records per epoch: the velocity, the
prediction changes (training examples whose predicted class changed), the training
accuracy on the examples whose label was flipped (how much of the noise is memorised)
and, for this diagnosis only, the test accuracy. Prints the series and the epochs where
each validation-free signal would stop, and writes docs/memorisation.png.

    python benchmarks/memorisation.py                  # 20% noise, lr 0.05, 60 epochs
    python benchmarks/memorisation.py --noise 0.4 --lr 0.02 --out runs/memorisation40.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "docs" / "memorisation.png"))
    args = p.parse_args(argv)

    from neve_tune import NeuralVelocity, NeVe, gaussian_probe, load_study
    from neve_tune.models import create_model
    from neve_tune.train import evaluate, fit
    from neve_tune.trial import make_optimizer

    torch.set_num_threads(1)
    study = load_study("digits").replace(
        data_options={"label_noise": args.noise}, max_epochs=args.epochs
    )
    bundle = study.load_data(seed=args.seed)
    torch.manual_seed(args.seed)
    model = create_model(study.model, bundle.num_classes, bundle.input_shape)
    optimizer = make_optimizer(model, study.config({"lr": args.lr}))
    # threshold too small to fire: the run goes to the cap, the guard only watches
    neve = NeVe(
        optimizer,
        NeuralVelocity(model, gaussian_probe(bundle.input_shape, 100, seed=args.seed)),
        threshold=1e-12,
        max_epochs=args.epochs,
        lr_patience=study.lr_patience_epochs,
        num_classes=bundle.num_classes,
        pc_patience=None,
    )
    flipped = bundle.flipped
    x_noisy, y_noisy = bundle.train.tensors[0][flipped], bundle.train.tensors[1][flipped]
    rows = []

    def on_epoch(m: dict) -> None:
        _, test_acc, _ = evaluate(model, bundle.test)
        with torch.no_grad():
            model.eval()
            memorised = float((model(x_noisy).argmax(1) == y_noisy).float().mean())
            model.train()
        rows.append({**m, "test_acc": test_acc, "memorised": memorised})

    fit(
        model,
        optimizer,
        bundle.train,
        neve,
        batch_size=args.batch_size,
        seed=args.seed,
        on_epoch=on_epoch,
    )

    # where each rule would have stopped (the guard: pc_window 3, pc_patience 3)
    pcs = [r["prediction_changes"] for r in rows]
    ma = {
        i + 1: sum(pcs[i - 2 : i + 1]) / 3
        for i in range(3, len(pcs))
        if None not in pcs[i - 2 : i + 1]
    }
    best, best_epoch, guard_stop = None, None, None
    for epoch, level in ma.items():  # the first local minimum, as the guard sees it
        if best is None or level < best:
            best, best_epoch = level, epoch
        elif epoch - best_epoch >= 3:
            guard_stop = epoch
            break
    peak_test = max(rows, key=lambda r: r["test_acc"])
    print(
        f"{'epoch':>5s} {'velocity':>9s} {'PC':>5s} {'train acc':>9s} {'noise fit':>9s} "
        f"{'test acc':>8s} {'lr':>7s}"
    )
    for r in rows:
        pc = "-" if r["prediction_changes"] is None else str(r["prediction_changes"])
        print(
            f"{r['epoch']:5d} {r['velocity']:9.5f} {pc:>5s} {r['train_acc']:9.3f} "
            f"{r['memorised']:9.3f} "
            f"{r['test_acc']:8.4f} {r['lr']:7.4f}"
        )
    print(
        f"noise {args.noise:.0%}, lr {args.lr}: best test accuracy {peak_test['test_acc']:.4f} at "
        f"epoch {peak_test['epoch']}; "
        f"prediction-changes minimum at epoch {best_epoch} (test "
        f"{rows[best_epoch - 1]['test_acc']:.4f}), "
        f"guard stop at epoch {guard_stop}; last epoch test {rows[-1]['test_acc']:.4f}, "
        f"{rows[-1]['memorised']:.1%} of the flipped labels memorised"
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].plot(epochs, [r["test_acc"] for r in rows], label="test accuracy (diagnosis only)")
    axes[0].plot(epochs, [r["memorised"] for r in rows], label="flipped labels memorised")
    axes[0].plot(epochs, [r["train_acc"] for r in rows], label="training accuracy (noisy labels)")
    axes[0].set_ylabel("fraction")
    axes[0].legend(loc="center right", fontsize=8)
    axes[1].plot(epochs[1:], pcs[1:], color="tab:red", label="prediction changes")
    axes[1].plot(list(ma), list(ma.values()), color="tab:red", ls="--", label="moving average (3)")
    axes[1].set_ylabel("examples")
    axes[1].legend(fontsize=8)
    axes[2].semilogy(epochs, [r["velocity"] for r in rows], color="tab:green", label="velocity")
    axes[2].set_ylabel("velocity")
    axes[2].set_xlabel("epoch")
    axes[2].legend(fontsize=8)
    for ax in axes:
        if best_epoch:
            ax.axvline(best_epoch, color="gray", ls=":", lw=1)
        if guard_stop:
            ax.axvline(guard_stop, color="black", ls=":", lw=1)
    fig.suptitle(
        f"digits, {args.noise:.0%} symmetric label noise, lr {args.lr}: "
        f"PC minimum (grey) and guard stop (black)",
        fontsize=10,
    )
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
