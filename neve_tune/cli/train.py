"""``neve-tune train``: one NeVe-controlled training run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .._checks import check_int
from .._json import write_json
from ..control import LR_SIGNALS
from ..space import check_hyperparameter
from . import _args as cli

__all__ = ["add_cli"]


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="one NeVe-controlled training run", description=_train.__doc__)
    cli.add_study(p)
    p.add_argument(
        "--data",
        help="data set: digits, mnist1d, cifar10, cifar100, imagefolder, synthetic (default: the "
        "study's)",
    )
    p.add_argument("--data-root", help="folder holding the data set files (CIFAR, imagefolder)")
    p.add_argument(
        "--model",
        help="small_cnn, small_cnn1d, resnet20, resnet32, timm:<name>, torchvision:<name>",
    )
    p.add_argument("--lr", type=float, help="initial learning rate (default: the study's)")
    p.add_argument(
        "--threshold",
        type=float,
        help="velocity threshold under which training stops "
        "(under the default relative rule, a ratio to the peak velocity)",
    )
    p.add_argument("--batch-size", type=int)
    cli.add_max_epochs(p)
    p.add_argument("--min-epochs", type=int)
    p.add_argument(
        "--lr-signal",
        choices=list(LR_SIGNALS),
        help="what NeVe's ReduceLROnPlateau watches (default: the study's)",
    )
    p.add_argument("--seed", type=int, default=0)
    cli.add_data_changes(p)
    cli.add_trial_control(p)
    cli.add_device(p)
    p.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision")
    p.add_argument(
        "--checkpoint", help="checkpoint file: written every epoch, resumed from if it exists"
    )
    cli.add_json(p, "write the run's record here")
    cli.add_out(
        p,
        "folder for history.png: velocity, LR and loss per epoch (default: beside --json, named "
        "as it with .png, else none)",
    )
    cli.add_quiet(p)
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    """Train one configuration under NeVe control: velocity decays the LR and stops the run."""
    from tqdm.auto import tqdm

    from ..checkpoint import CheckpointError
    from ..trial import run_trial

    device = cli.check_device(args.device)
    cli.check_output_paths(
        files={"--json": args.json_path, "--checkpoint": args.checkpoint},
        dirs={"--out": args.out},
    )
    plot_path = _plot_path(args)
    if plot_path:  # the implicit plot, checked before training like the flags
        label = "--out (its history.png)" if args.out else "--json (the plot beside it)"
        cli.check_output_paths(files={label: plot_path})
    if args.min_epochs is not None:
        check_int("--min-epochs", args.min_epochs, minimum=0)
    study = cli.study_from_args(
        args,
        data=args.data,
        model=args.model,
        min_epochs=args.min_epochs,
        lr_signal=args.lr_signal,
        amp=args.amp,
    )
    # one run has no other trials to vote with: no selection subset to forward
    study = study.replace(selection_subset=0, selection="objective")
    config = study.config()
    for key in (
        "lr",
        "threshold",
        "batch_size",
    ):  # the study's own values were checked when it loaded
        if getattr(args, key) is not None:
            flag = "--" + key.replace("_", "-")
            config[key] = check_hyperparameter(
                key, getattr(args, key), flag, threshold_mode=study.threshold_mode
            )
    if args.checkpoint:
        cli.clean_stale_temporaries(args.checkpoint)

    data = study.load_data()  # a missing or bad data set fails here, before any output
    bar: Any = None
    trained: list[int] = []

    def on_epoch(m: dict[str, Any]) -> None:
        nonlocal bar
        if bar is None:  # created on the first trained epoch: a refused checkpoint prints no bar
            bar = tqdm(
                total=study.max_epochs,
                initial=m["epoch"] - 1,
                desc="epochs",
                unit="ep",
                disable=args.quiet,
                file=sys.stderr,
            )
        trained.append(m["epoch"])
        bar.update(1)
        if not args.quiet:
            v = "nan" if m["velocity"] is None else f"{m['velocity']:.5f}"
            bar.write(
                f"epoch {m['epoch']:3d}  velocity {v}  train_loss {m['train_loss']:.4f}  "
                f"train_acc {m['train_acc']:.4f}  lr {m['lr']:.4g}  {m['epoch_time_s']:.2f}s"
            )

    try:
        result = run_trial(
            study,
            config,
            method="neve",
            seed=args.seed,
            device=device,
            checkpoint_path=args.checkpoint,
            on_epoch=on_epoch,
            data=data,
        )
    except CheckpointError as e:
        raise cli.CLIError(e.message("--checkpoint")) from None
    finally:
        if bar is not None:
            bar.close()
    if args.checkpoint and not trained and result.history:
        hint = " (a larger --max-epochs continues it)" if _capped(args.checkpoint) else ""
        print(
            f"the run already stopped by {result.stopped_by} at epoch {result.epochs}; nothing to "
            f"continue{hint}"
        )
    print(
        f"stopped_by={result.stopped_by} epochs={result.epochs} test_acc={result.test_acc:.4f} "
        f"train_samples={result.cost.train_samples} probe_samples={result.cost.probe_samples} "
        f"wall_s={result.cost.wall_s:.1f}"
    )
    if args.json_path:
        write_json(args.json_path, result.to_dict())
        print(f"wrote {args.json_path}")
    if plot_path:
        from ..plots import plot_history

        plot_history(
            result.history,
            plot_path,
            title=f"{study.name}: lr={config['lr']:g}, threshold={config['threshold']:g}",
        )
        print(f"wrote {plot_path}")
    return 0


def _capped(checkpoint: str) -> bool:
    """Whether the checkpointed run's stop was the cap's alone (``"max_epochs"``, or
    ``"stalled"`` at the cap before it learned): a larger ``--max-epochs`` continues it."""
    from ..checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint).get("controller") or {}
    return bool(state.get("capped")) or state.get("stopped_by") == "max_epochs"


def _plot_path(args: argparse.Namespace) -> str | None:
    """Where the history plot goes: --out/history.png, else beside --json."""
    if args.out:
        return str(Path(args.out) / "history.png")
    return str(Path(args.json_path).with_suffix(".png")) if args.json_path else None
