"""``neve-tune compare``: NeVe search vs validation-based ASHA (see :mod:`neve_tune.compare`)."""

from __future__ import annotations

import argparse

from ..compare._api import BACKENDS, NEVE_SIGNALS
from ..records import SEARCH_METHODS
from ._args import (
    CLIError,
    add_device,
    add_json,
    add_max_epochs,
    add_out,
    add_quiet,
    add_seed,
    add_study,
    add_trials,
    check_device,
    check_output_paths,
    positive_int,
    study_from_args,
)

__all__ = ["add_cli"]


def _int(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CLIError(f"{flag} must be an int or 'auto', got {text!r}") from None


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    import neve_tune.compare as compare_module

    p = subparsers.add_parser("compare", help="NeVe search vs validation-based ASHA", description=compare_module.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study(p)
    p.add_argument("--backend", choices=BACKENDS, default="optuna")
    add_trials(p, "trials per search (default 20)", 20)
    add_seed(p)
    p.add_argument("--repeats", type=positive_int, default=1, help="run the comparison K times, seeds seed..seed+K-1")
    add_max_epochs(p)
    p.add_argument("--searches", default=",".join(SEARCH_METHODS), help="comma-separated subset of neve,asha,asha_es")
    p.add_argument("--neve-signal", choices=NEVE_SIGNALS, default="train_loss",
                   help="rung signal of the NeVe search's pruner/scheduler (default train_loss, measured better on digits)")
    p.add_argument("--objective", help="NeVe's validation-free objective: tse_e1 (default), tse_e<N>, tse_ema")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=True,
                   help="retrain the validation searches' best configuration on all training data (default on)")
    g = p.add_argument_group("data (the same for every search; the test set is never touched)")
    g.add_argument("--train-fraction", type=float, help="keep this stratified fraction of the training set (default 1)")
    g.add_argument("--label-noise", type=float, help="flip this fraction of the training labels to another class")
    g.add_argument("--noise-seed", type=int, help="seed of the flipped labels (default 0)")
    c = p.add_argument_group("trial control (a rule the searches share applies to all of them)")
    c.add_argument("--lr-patience", help="ReduceLROnPlateau patience in epochs, or 'auto' (max(2, max_epochs // 20))")
    c.add_argument("--threshold-mode", choices=["absolute", "relative"], help="NeVe's velocity stop: V < t, or V / peak V < t")
    c.add_argument("--pc-patience", type=int, help="NeVe's memorisation guard: stop when prediction changes "
                                                    "have not reached a new low for this many epochs (0: off)")
    add_device(p)
    p.add_argument("--data-root", help="folder holding the data set files (CIFAR, imagefolder)")
    add_json(p, "write the full record here")
    add_out(p, "folder for the PNG plots (anytime.png, velocity.png)")
    add_quiet(p)
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    """Run the comparison; print its table; write its JSON and plots."""
    from ..compare import compare, summary_table, write_outputs

    device = check_device(args.device)
    check_output_paths(files={"--json": args.json_path}, dirs={"--out": args.out})
    study = study_from_args(args, objective=args.objective, threshold_mode=args.threshold_mode)
    data = {k: v for k, v in (("train_fraction", args.train_fraction), ("label_noise", args.label_noise),
                              ("noise_seed", args.noise_seed)) if v is not None}
    changes: dict = {}
    if data:
        changes["data_options"] = {**study.data_options, **data}
    if args.lr_patience is not None:
        changes["lr_patience"] = "auto" if args.lr_patience == "auto" else _int("--lr-patience", args.lr_patience)
    if args.pc_patience is not None:
        changes["pc_patience"] = args.pc_patience or None
    if changes:
        study = study.replace(**changes)
    searches = [s.strip() for s in args.searches.split(",") if s.strip()]
    result = compare(study, backend=args.backend, trials=args.trials, seed=args.seed, repeats=args.repeats,
                     retrain=args.retrain, device=device, neve_signal=args.neve_signal, searches=searches,
                     progress=not args.quiet)
    print(summary_table(result))
    for path in write_outputs(result, args.out, args.json_path):
        print(f"wrote {path}")
    return 0
