"""``neve-tune compare``: NeVe search vs validation-based ASHA (see :mod:`neve_tune.compare`)."""

from __future__ import annotations

import argparse

from .._checks import check_seed
from ..compare._api import BACKENDS
from ..records import RUNG_SIGNALS, SEARCH_METHODS
from . import _args as cli

__all__ = ["add_cli"]


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    import neve_tune.compare as compare_module

    p = subparsers.add_parser(
        "compare",
        help="NeVe search vs validation-based ASHA",
        description=compare_module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_study(p)
    p.add_argument("--backend", choices=BACKENDS, default="optuna")
    cli.add_trials(p, "trials per search (default 20)", 20)
    cli.add_seed(p)
    p.add_argument(
        "--repeats",
        type=cli.positive_int,
        default=1,
        help="run the comparison K times, seeds seed..seed+K-1",
    )
    cli.add_max_epochs(p)
    p.add_argument(
        "--searches",
        default=",".join(SEARCH_METHODS),
        help="comma-separated subset of neve,asha,asha_es",
    )
    p.add_argument(
        "--rung-signal",
        choices=RUNG_SIGNALS,
        help="rung signal of the NeVe search's pruner/scheduler (default: the study's, auto: the "
        "consensus once the finished trials' subset fit is low and the guard stopped one of them, "
        "else train_loss; "
        'docs/measurements.md, "Which trial wins")',
    )
    p.add_argument(
        "--reduction-factor",
        type=int,
        default=4,
        help="every search's successive halving: rungs at epochs 1, rf, rf^2, ..., each keeping "
        "the best 1/rf (default 4)",
    )
    p.add_argument(
        "--objective",
        help="NeVe's validation-free objective: tse_e1 (default), tse_e<N>, tse_ema, pc_min",
    )
    p.add_argument(
        "--retrain",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="retrain the validation searches' best configuration on all training data (default "
        "on)",
    )
    p.add_argument(
        "--baseline-variants",
        metavar="METHOD:METRIC:FINAL,...",
        help="also run these validation searches, each named METHOD:METRIC:FINAL in full in "
        "the table and the JSON: method asha|asha_es, the validation metric its rungs, early "
        "stopping, LR plateau and pick decide on (loss|acc), its final model "
        "(retrain: on all data; best_checkpoint: the winner's weights of its best "
        "validation epoch); parts left out are the study's, e.g. "
        "asha_es:acc:best_checkpoint,asha:acc",
    )
    cli.add_data_changes(p)
    cli.add_trial_control(p)
    cli.add_selection(p)
    cli.add_device(p)
    p.add_argument("--data-root", help="folder holding the data set files (CIFAR, imagefolder)")
    cli.add_json(p, "write the full record here")
    cli.add_out(p, "folder for the PNG plots (anytime.png, velocity.png)")
    cli.add_quiet(p)
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    """Run the comparison; print its table; write its JSON and plots."""
    from ..compare import compare, summary_table, write_outputs

    device = cli.check_device(args.device)
    cli.check_output_paths(files={"--json": args.json_path}, dirs={"--out": args.out})
    check_seed("--seed", args.seed)
    check_seed("--seed + --repeats - 1", args.seed + args.repeats - 1)  # the last repeat's seed
    study = cli.study_from_args(args, objective=args.objective)
    searches = [s.strip() for s in args.searches.split(",") if s.strip()]
    result = compare(
        study,
        backend=args.backend,
        trials=args.trials,
        seed=args.seed,
        repeats=args.repeats,
        retrain=args.retrain,
        device=device,
        rung_signal=args.rung_signal,
        searches=searches,
        reduction_factor=args.reduction_factor,
        baseline_variants=args.baseline_variants,
        progress=not args.quiet,
    )
    print(summary_table(result))
    for path in write_outputs(result, args.out, args.json_path):
        print(f"wrote {path}")
    return 0
