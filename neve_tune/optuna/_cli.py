"""``neve-tune optuna worker|plot``: the command line of the Optuna backend."""

from __future__ import annotations

import argparse
import math
from typing import Any

from ..cli import CLIError
from ._storage import StorageError, redact_url
from ._worker import StudyNotFoundError

__all__ = ["add_cli"]


class OptunaCLIError(CLIError, ValueError):
    """A one-line CLI error. Also a ValueError, so ``neve_tune.cli.main`` reports it even
    when the CLI runs as ``python -m neve_tune.cli`` (where its CLIError is another class)."""


def _error(message: str) -> Exception:
    return OptunaCLIError(message)

_WORKER_DOC = """Run trials of a study file against a shared Optuna study, as on any machine of a
distributed Optuna search:

  optuna create-study --study-name digits --storage postgresql://... --direction minimize
  neve-tune optuna worker studies/digits.py --study-name digits --storage postgresql://... --trials 20

Every trial samples the study's search space (TPE), trains on the whole training set under
NeVe control and reports its velocity each epoch to the NeVePruner. The first worker
stores the pruner's settings in the study; the others adopt them and refuse conflicting
ones. With an RDB storage (sqlite:///..., postgresql://...) trials send heartbeats, and a
trial whose worker died is retried by the next worker and resumes from its checkpoint."""


def _pos_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        help="sqlite:///FILE, postgresql://USER:PW@HOST/DB, mysql+pymysql://..., journal:FILE or FILE.log "
        "(default: in-memory, this process only)",
    )


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``neve-tune optuna`` and its subcommands."""
    top = subparsers.add_parser("optuna", help="Optuna: workers on a shared study, NeVe pruner", description=__doc__)
    top.set_defaults(func=lambda args: (top.print_help(), 2)[1])
    sub = top.add_subparsers(dest="optuna_command", metavar="SUBCOMMAND")

    w = sub.add_parser(
        "worker", help="run trials against a shared study", description=_WORKER_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument("study", help="study file (studies/digits.py) or bundled name (digits)")
    w.add_argument("--study-name", help="name of the Optuna study (default: the study file's name)")
    _storage_arg(w)
    w.add_argument("--trials", type=_pos_int, help="trials this worker runs (default: until --timeout or --total-trials)")
    w.add_argument("--total-trials", type=_pos_int, help="stop once the study holds this many complete+pruned trials")
    w.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    w.add_argument("--create", action="store_true", help="create the study if it does not exist")
    w.add_argument("--direction", choices=["minimize", "maximize"], default="minimize", help="with --create")
    w.add_argument("--method", choices=["neve", "asha", "asha_es"], default="neve",
                   help="neve (default), or the validation-based baselines with SuccessiveHalvingPruner")
    w.add_argument("--seed", type=int, default=0, help="training seed of every trial (default 0)")
    w.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler")
    w.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    w.add_argument("--threads", type=_pos_int, help="torch CPU threads of this worker (default: torch's)")
    w.add_argument("--max-epochs", type=_pos_int, help="override the study file's max_epochs")
    w.add_argument("--checkpoint-dir", default="neve_checkpoints",
                   help="per-trial checkpoints, so a retried trial resumes (shared storage across machines; "
                        "default: ./neve_checkpoints)")
    w.add_argument("--no-checkpoints", action="store_true", help="do not checkpoint trials")
    w.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints of finished trials")
    g = w.add_argument_group("NeVePruner (default: the settings stored in the study, else the defaults)")
    g.add_argument("--signal", choices=["velocity", "train_loss"])
    g.add_argument("--min-resource", type=_pos_int)
    g.add_argument("--reduction-factor", type=int)
    g.add_argument("--min-early-stopping-rate", type=int)
    g.add_argument("--divergence-bound", type=float)
    g.add_argument("--divergence-patience", type=_pos_int)
    h = w.add_argument_group("recovery (RDB storages)")
    h.add_argument("--heartbeat-interval", type=_pos_int, default=60, help="seconds (default 60)")
    h.add_argument("--grace-period", type=_pos_int, help="seconds without heartbeat before a trial is failed (default 2x)")
    h.add_argument("--max-retry", type=int, default=3, help="retries of a trial whose worker died (default 3)")
    h.add_argument("--no-heartbeat", action="store_true", help="no heartbeats, no retries")
    w.add_argument("--plots", help="write velocity_curves.png and search_history.png here when done")
    w.add_argument("--quiet", action="store_true", help="no per-trial lines")
    w.set_defaults(func=_worker)

    p = sub.add_parser("plot", help="velocity curves of all trials and the search history (PNG)")
    p.add_argument("--study-name", required=True)
    _storage_arg(p)
    p.add_argument("--out", default="plots", help="output folder (default: plots)")
    p.set_defaults(func=_plot)


def _pruner_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("signal", "min_resource", "reduction_factor", "min_early_stopping_rate", "divergence_bound", "divergence_patience")
    opts = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if "divergence_bound" in opts and math.isinf(opts["divergence_bound"]):
        opts["divergence_bound"] = math.inf
    return opts


def _worker(args: argparse.Namespace) -> int:
    import optuna

    from ._plots import plot_study
    from ._worker import run_worker

    if args.trials is None and args.timeout is None and args.total_trials is None:
        raise _error("give --trials N, --total-trials N or --timeout SECONDS")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        search = run_worker(
            args.study,
            study_name=args.study_name,
            storage=args.storage,
            n_trials=args.trials,
            timeout=args.timeout,
            total_trials=args.total_trials,
            method=args.method,
            seed=args.seed,
            device=args.device,
            checkpoint_dir=None if args.no_checkpoints else args.checkpoint_dir,
            keep_checkpoints=args.keep_checkpoints,
            pruner_options=_pruner_options(args),
            sampler_seed=args.sampler_seed,
            create=args.create,
            direction=args.direction,
            heartbeat_interval=None if args.no_heartbeat else args.heartbeat_interval,
            grace_period=args.grace_period,
            max_retry=args.max_retry,
            torch_threads=args.threads,
            changes={"max_epochs": args.max_epochs} if args.max_epochs else None,
            log=None if args.quiet else (lambda line: print(line, flush=True)),
        )
    except (StorageError, StudyNotFoundError) as e:
        raise _error(str(e.args[0]) if e.args else str(e)) from None
    except ValueError as e:
        raise ValueError(redact_url(args.storage, str(e))) from None
    if args.plots:
        for path in plot_study(search, args.plots).values():
            print(f"wrote {path}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    import optuna

    from ._plots import plot_study
    from ._worker import open_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.storage is None:
        raise _error("--storage is required: an in-memory study has nothing to plot")
    try:
        search = open_study(args.study_name, args.storage, heartbeat_interval=None)
    except (StorageError, StudyNotFoundError) as e:
        raise _error(str(e)) from None
    for path in plot_study(search, args.out).values():
        print(f"wrote {path}")
    return 0
