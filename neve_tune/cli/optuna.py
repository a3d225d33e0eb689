"""``neve-tune optuna worker|plot|best``: the command line of the Optuna backend
(:mod:`neve_tune.optuna`)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from .._checks import check_float, check_int, check_seed
from ..records import RUNG_SIGNALS, SEARCH_METHODS
from . import _args as cli

__all__ = ["add_cli"]

_WORKER_DOC = """Run trials of a study (a bundled name or a study file) against a shared Optuna
study, as on any machine of a distributed Optuna search:

  optuna create-study --study-name digits --storage postgresql://... --direction minimize
  neve-tune optuna worker digits --study-name digits \\
      --storage postgresql://... --trials 20

Every trial samples the study's search space (TPE), trains on the whole training set under
NeVe control and reports each epoch (its training loss, velocity and flags) to the
NeVePruner. The first worker stores the pruner's settings in the study; the others adopt
them and refuse conflicting ones. With an RDB storage (sqlite:///..., postgresql://...)
trials send heartbeats, and a trial whose worker died is retried by the next worker and
resumes from its checkpoint."""


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``neve-tune optuna`` and its subcommands."""
    top = subparsers.add_parser(
        "optuna", help="Optuna: workers on a shared study, NeVe pruner", description=__doc__
    )
    top.set_defaults(func=lambda args: (top.print_help(), 2)[1])
    sub = top.add_subparsers(dest="optuna_command", metavar="SUBCOMMAND")

    w = sub.add_parser(
        "worker",
        help="run trials against a shared study",
        description=_WORKER_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_study(w, required=True)
    w.add_argument("--study-name", help="name of the Optuna study (default: the study file's name)")
    cli.add_storage(w)
    cli.add_trials(w, "trials this worker runs (default: until --timeout or --total-trials)")
    w.add_argument(
        "--total-trials",
        type=cli.positive_int,
        help="stop once the study holds this many complete+pruned trials",
    )
    w.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    w.add_argument("--create", action="store_true", help="create the study if it does not exist")
    w.add_argument(
        "--direction",
        default="minimize",
        help="with --create; only 'minimize' is accepted: the objective is a loss",
    )
    w.add_argument(
        "--method",
        choices=SEARCH_METHODS,
        default="neve",
        help="neve (default), or the validation-based baselines with SuccessiveHalvingPruner",
    )
    cli.add_seed(w, "training seed of every trial (default 0)")
    w.add_argument(
        "--sampler-seed",
        type=int,
        help="seed of the TPE sampler; each trial's TPE is seeded from it and the "
        "trial number, so workers given one seed sample apart",
    )
    cli.add_device(w)
    w.add_argument(
        "--threads",
        type=cli.positive_int,
        help="torch CPU threads of this worker, at most 4 per CPU core (default: torch's)",
    )
    cli.add_max_epochs(w)
    cli.add_data_changes(w)
    cli.add_trial_control(w)
    cli.add_selection(w)
    w.add_argument(
        "--checkpoint-dir",
        help="per-trial checkpoints, so a retried trial resumes (shared storage across machines; "
        "default: $NEVE_CHECKPOINT_DIR, else ./neve_checkpoints)",
    )
    w.add_argument("--no-checkpoints", action="store_true", help="do not checkpoint trials")
    w.add_argument(
        "--keep-checkpoints", action="store_true", help="keep checkpoints of finished trials"
    )
    g = w.add_argument_group(
        "NeVePruner (default: the settings stored in the study, else the defaults)"
    )
    g.add_argument(
        "--rung-signal",
        choices=RUNG_SIGNALS,
        help="rung signal (consensus: agreement with the other trials' vote; auto: that when the "
        "finished trials' subset fit is low and the guard stopped one of them, else train_loss; "
        "both record "
        "--selection-subset)",
    )
    g.add_argument("--min-resource", type=cli.positive_int)
    g.add_argument("--reduction-factor", type=int)
    g.add_argument("--min-early-stopping-rate", type=int)
    g.add_argument(
        "--unsettled-bound",
        type=float,
        help="velocity above which a trial counts as unsettled (inf: off)",
    )
    g.add_argument(
        "--unsettled-patience",
        type=cli.positive_int,
        help="epochs in a row above --unsettled-bound that prune a trial",
    )
    h = w.add_argument_group("recovery (RDB storages)")
    h.add_argument("--heartbeat-interval", type=cli.positive_int, help="seconds (default 60)")
    h.add_argument(
        "--heartbeat-grace-period",
        dest="heartbeat_grace_period",
        type=cli.positive_int,
        help="seconds without heartbeat before a trial is failed (default 2x the interval)",
    )
    h.add_argument(
        "--max-retry",
        type=int,
        help="retries of a trial whose worker died or was stopped (Ctrl-C, SIGTERM) (default 3)",
    )
    h.add_argument(
        "--no-heartbeat",
        action="store_true",
        help="no heartbeats: a dead worker's trial is not retried (a stopped one still is)",
    )
    cli.add_out(w, "write velocity_curves.png and search_history.png here when done")
    cli.add_quiet(w)
    w.set_defaults(func=_worker)

    p = sub.add_parser("plot", help="velocity curves of all trials and the search history (PNG)")
    p.add_argument("--study-name", required=True)
    cli.add_storage(p, needed=True)
    cli.add_out(p, "output folder (default: plots)")
    p.set_defaults(out="plots")
    p.set_defaults(func=_plot)

    b = sub.add_parser("best", help="the study's pick and the rule that made it (runs no trial)")
    b.add_argument("--study-name", required=True)
    cli.add_storage(b, needed=True)
    b.add_argument(
        "--selection",
        choices=("auto", "objective", "consensus"),
        default="auto",
        help="how to pick (default: auto, the studies' rule: the consensus when the "
        "finished trials' subset_fit says the labels are noisy and the memorisation guard "
        "stopped one of them, else the objective)",
    )
    b.set_defaults(func=_best)


def _pruner_options(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "rung_signal",
        "min_resource",
        "reduction_factor",
        "min_early_stopping_rate",
        "unsettled_bound",
        "unsettled_patience",
    )
    opts = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if "unsettled_bound" in opts and math.isinf(opts["unsettled_bound"]):
        opts["unsettled_bound"] = math.inf
    return opts


def _recovery_flags(args: argparse.Namespace) -> None:
    """``--no-checkpoints`` and ``--no-heartbeat`` refuse the flags they switch off (one
    would be ignored in silence); then the recovery flags' defaults are filled in."""
    from ..optuna._urls import storage_kind

    def given(*flags: str) -> list[str]:
        values = {f: getattr(args, f[2:].replace("-", "_")) for f in flags}
        return [f for f, v in values.items() if v is not None and v is not False]

    beat = given("--heartbeat-interval", "--heartbeat-grace-period")
    switched_off = {
        "--no-checkpoints": (args.no_checkpoints, given("--checkpoint-dir", "--keep-checkpoints")),
        # --max-retry stays: it also bounds the re-queues of a politely stopped trial
        "--no-heartbeat": (args.no_heartbeat, beat),
    }
    for off, (on, flags) in switched_off.items():
        if on and flags:
            raise cli.CLIError(f"{off} and {flags[0]} contradict each other: give one of them")
    if beat and storage_kind(args.storage) != "rdb":
        raise cli.CLIError(
            f"{beat[0]} needs an RDB storage (sqlite:///FILE, postgresql://...): a journal file "
            "or an in-memory study sends no heartbeats"
        )
    if args.checkpoint_dir is None:
        args.checkpoint_dir = os.environ.get("NEVE_CHECKPOINT_DIR") or "neve_checkpoints"
    args.heartbeat_interval = 60 if args.heartbeat_interval is None else args.heartbeat_interval
    args.max_retry = 3 if args.max_retry is None else args.max_retry


def _check_worker_flags(args: argparse.Namespace) -> str:
    """Every flag of ``worker`` checked under its own name, before any storage or data."""
    from ..optuna._worker_checks import check_direction, check_study_name, check_threads

    _recovery_flags(args)
    device = cli.check_device(args.device)
    if args.storage is not None and not args.storage.strip():
        raise cli.CLIError(
            "--storage is empty; omit it for an in-memory study (this process only), or give a URL"
        )
    cli.check_output_paths(
        dirs={
            "--out": args.out,
            "--checkpoint-dir": None if args.no_checkpoints else args.checkpoint_dir,
        }
    )
    if args.out:
        for name in ("velocity_curves.png", "search_history.png"):  # what plot_study writes there
            cli.check_output_paths(files={"--out": Path(args.out) / name})
    if args.timeout is not None:
        check_float("--timeout", args.timeout, positive=True)
    if args.trials is None and args.timeout is None and args.total_trials is None:
        raise cli.CLIError("give --trials N, --total-trials N or --timeout SECONDS")
    check_seed("--seed", args.seed)
    check_threads("--threads", args.threads)
    if args.study_name is not None:
        check_study_name(args.study_name, "--study-name")
    if args.sampler_seed is not None:
        check_seed("--sampler-seed", args.sampler_seed)
    check_int("--max-retry", args.max_retry, minimum=0)
    check_direction("--direction", args.direction)
    for flag in ("reduction_factor", "min_early_stopping_rate"):
        value = getattr(args, flag)
        check_int(
            "--" + flag.replace("_", "-"),
            value,
            minimum=2 if flag == "reduction_factor" else 0,
            allow_none=True,
        )
    return device


def _worker(args: argparse.Namespace) -> int:
    import optuna

    from ..optuna import (
        RecoveryConfig,
        StorageError,
        StudyNotFoundError,
        TrialLeft,
        plot_study,
        redact_url,
        run_worker,
    )

    device = _check_worker_flags(args)
    recovery = RecoveryConfig(
        checkpoint_dir=None if args.no_checkpoints else args.checkpoint_dir,
        keep_checkpoints=args.keep_checkpoints,
        heartbeat_interval=None if args.no_heartbeat else args.heartbeat_interval,
        heartbeat_grace_period=args.heartbeat_grace_period,
        max_retry=args.max_retry,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        search = run_worker(
            cli.study_from_args(args),
            study_name=args.study_name,
            storage=args.storage,
            n_trials=args.trials,
            timeout=args.timeout,
            total_trials=args.total_trials,
            method=args.method,
            seed=args.seed,
            device=device,
            recovery=recovery,
            pruner=_pruner_options(args),
            sampler_seed=args.sampler_seed,
            create=args.create,
            torch_threads=args.threads,
            log=None if args.quiet else (lambda line: print(line, flush=True)),
        )
    except (StorageError, StudyNotFoundError) as e:
        raise cli.CLIError(str(e.args[0]) if e.args else str(e)) from None
    except TrialLeft as e:  # a checkpoint or storage that failed: the trial waits, re-queued
        print(f"neve-tune optuna: error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        raise ValueError(redact_url(args.storage, str(e))) from None
    if args.out:
        for path in plot_study(search, args.out).values():
            print(f"wrote {path}")
    return 0


def _read_study(args: argparse.Namespace, what: str) -> Any:
    """The Optuna study ``args`` name, opened for reading: a missing database or study is
    one line, and nothing is created."""
    import optuna

    from ..optuna import StorageError, StudyNotFoundError, open_study
    from ..optuna._storage import missing_storage

    if not args.storage:
        raise cli.CLIError(f"--storage is required: an in-memory study has nothing to {what}")
    missing = missing_storage(args.storage)
    if missing:  # opening it would create an empty database
        raise cli.CLIError(f"--storage: {missing}; nothing to {what}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return open_study(args.study_name, args.storage, heartbeat_interval=None)
    except StudyNotFoundError as e:  # a reader: no hint on creating it
        raise cli.CLIError(e.where) from None
    except StorageError as e:
        raise cli.CLIError(str(e)) from None


def _best(args: argparse.Namespace) -> int:
    """One line: the winning trial, its value and parameters, and the rule that picked it
    (also stored in the study user attribute ``neve_selection``)."""
    from ..optuna import record_selection, select_trial
    from ..optuna._objective import STORAGE_WRITE_ERRORS

    search = _read_study(args, "pick from")
    best, decision = select_trial(search, args.selection)
    if best is None:
        raise cli.CLIError(f"study {args.study_name!r} has no finished trial to pick from")
    try:
        record_selection(search, best, decision, by="neve-tune optuna best")
        kept = ""
    except STORAGE_WRITE_ERRORS:  # a read-only storage: the pick is still printed
        kept = "; not recorded: the storage is read-only"
    print(
        f"study {args.study_name!r}: best trial {best.number} ({decision.reason}) "
        f"value={best.value:.5g} params={best.params}{kept}"
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from ..optuna import plot_study

    cli.check_output_paths(dirs={"--out": args.out})
    for name in ("velocity_curves.png", "search_history.png"):  # the files plot_study writes there
        cli.check_output_paths(files={"--out": Path(args.out) / name})
    search = _read_study(args, "plot")
    for path in plot_study(search, args.out).values():
        print(f"wrote {path}")
    return 0
