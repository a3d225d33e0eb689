"""``neve-tune``: the command line.

Subcommands:
  train     one NeVe-controlled training run (digits by default)
  optuna    Optuna workers on a shared study            (neve_tune.optuna)
  ray       Ray Tune searches, locally or on a cluster  (neve_tune.ray)
  compare   NeVe search vs validation-based ASHA        (neve_tune.compare)

A backend subcommand imports its module only when used, so ``neve-tune train`` never
imports Optuna or Ray. Each backend module provides ``add_cli(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from ._json import json_safe, write_json

__all__ = ["main", "CLIError", "json_safe", "write_json"]

# subcommand -> (module providing add_cli, one-line help)
PLUGINS: dict[str, tuple[str, str]] = {
    "optuna": ("neve_tune.optuna", "Optuna: workers on a shared study, NeVe pruner"),
    "ray": ("neve_tune.ray", "Ray Tune: searches with NeVeStopper, locally or on a cluster"),
    "compare": ("neve_tune.compare", "NeVe search vs validation-based ASHA: cost and test accuracy"),
}


class CLIError(Exception):
    """A user error: printed as one line, exit status 2, no traceback."""


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="one NeVe-controlled training run", description=_train.__doc__)
    p.add_argument("study", nargs="?", default="digits", help="study file or bundled name (default: digits)")
    p.add_argument("--data", help="data set: digits, cifar10, cifar100, imagefolder, synthetic (default: the study's)")
    p.add_argument("--data-root", help="folder holding the data set files (CIFAR, imagefolder)")
    p.add_argument("--model", help="small_cnn, resnet20, resnet32, timm:<name>, torchvision:<name>")
    p.add_argument("--lr", type=float, help="initial learning rate (default: the study's)")
    p.add_argument("--threshold", type=float, help="velocity threshold under which training stops")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--min-epochs", type=int)
    p.add_argument("--lr-signal", choices=["velocity_change", "velocity"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision")
    p.add_argument("--checkpoint", help="checkpoint file: written every epoch, resumed from if it exists")
    p.add_argument("--json", dest="json_path", help="write the run's record here")
    p.add_argument("--plot", help="PNG of velocity, LR and loss per epoch (default: next to --json, else none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    """Train one configuration under NeVe control: velocity decays the LR and stops the run."""
    from tqdm.auto import tqdm

    from .study import load_study, run_trial

    study = load_study(args.study)
    changes: dict[str, Any] = {}
    if args.data:
        changes["data"] = args.data
    if args.data_root:
        changes["data_options"] = {**study.data_options, "data_root": args.data_root}
    for key in ("model", "max_epochs", "min_epochs", "lr_signal", "amp"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if changes:
        study = study.replace(**changes)
    config = study.config()
    for key in ("lr", "threshold", "batch_size"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if not config["threshold"] > 0:
        raise CLIError(f"--threshold must be > 0, got {config['threshold']}")

    bar = tqdm(total=study.max_epochs, desc="epochs", unit="ep", disable=args.quiet, file=sys.stderr)

    def on_epoch(m: dict[str, Any]) -> None:
        bar.update(1)
        if not args.quiet:
            v = "nan" if m["velocity"] is None else f"{m['velocity']:.5f}"
            bar.write(
                f"epoch {m['epoch']:3d}  velocity {v}  train_loss {m['train_loss']:.4f}  "
                f"train_acc {m['train_acc']:.4f}  lr {m['lr']:.4g}  {m['epoch_time_s']:.2f}s"
            )

    record = run_trial(
        study, config, method="neve", seed=args.seed, device=args.device, checkpoint_path=args.checkpoint, on_epoch=on_epoch
    )
    bar.close()
    print(
        f"stopped_by={record['stopped_by']} epochs={record['epochs']} test_acc={record['test_acc']:.4f} "
        f"train_samples={record['cost']['train_samples']} probe_samples={record['cost']['probe_samples']} "
        f"wall_s={record['cost']['wall_s']:.1f}"
    )
    plot_path = args.plot or (str(Path(args.json_path).with_suffix(".png")) if args.json_path else None)
    if args.json_path:
        write_json(args.json_path, record)
        print(f"wrote {args.json_path}")
    if plot_path:
        from .plots import plot_history

        plot_history(record["history"], plot_path, title=f"{study.name}: lr={config['lr']:g}, threshold={config['threshold']:g}")
        print(f"wrote {plot_path}")
    return 0


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neve-tune", description="Neural Velocity for hyperparameter search.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    wanted = argv[0] if argv else None
    for name, (module, help_) in PLUGINS.items():
        if name == wanted:
            importlib.import_module(module).add_cli(sub)
        else:
            sub.add_parser(name, help=help_, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"neve-tune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m neve_tune.cli`: use the package's module, not a __main__ copy
    from neve_tune.cli import main as _main

    sys.exit(_main())
