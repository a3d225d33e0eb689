"""``neve-tune``: the command line, one layer over the library.

Subcommands:
  train     one NeVe-controlled training run (digits by default)   (neve_tune.cli.train)
  optuna    Optuna workers on a shared study                        (neve_tune.cli.optuna)
  ray       Ray Tune searches, locally or on a cluster              (neve_tune.cli.ray)
  compare   NeVe search vs validation-based ASHA                    (neve_tune.cli.compare)

Each verb's module provides ``add_cli(subparsers)`` and is imported only when used, so
``neve-tune train`` never imports Optuna or Ray. The shared flags and their one meaning
are in :mod:`neve_tune.cli._args`. The library never imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .._json import json_safe, write_json
from ._args import CLIError

__all__ = ["CLIError", "build_parser", "json_safe", "main", "write_json"]

# subcommand -> (module providing add_cli, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "train": ("neve_tune.cli.train", "one NeVe-controlled training run"),
    "optuna": ("neve_tune.cli.optuna", "Optuna: workers on a shared study, NeVe pruner"),
    "ray": ("neve_tune.cli.ray", "Ray Tune: searches with NeVeStopper, locally or on a cluster"),
    "compare": (
        "neve_tune.cli.compare",
        "NeVe search vs validation-based ASHA: cost and test accuracy",
    ),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neve-tune", description="Neural Velocity for hyperparameter search."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = argv[0] if argv else None
    for name, (module, help_) in VERBS.items():
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
    # the library's warnings (a damaged checkpoint the run starts over from), one line each
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"neve-tune {args.command}: warning: %(message)s"))
    logger = logging.getLogger("neve_tune")
    logger.addHandler(handler)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:  # CLIError is a ValueError
        print(f"neve-tune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk or the storage failed (full, read-only): not the input
        print(f"neve-tune {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # a worker's polite stop says what it kept
        print(f"neve-tune {args.command}: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(handler)
