"""Argument builders shared by every verb: one flag, one meaning, one default.

| flag             | meaning                                                        |
|------------------|----------------------------------------------------------------|
| STUDY            | a study file or a bundled study name (default: digits)         |
| --trials N       | trials to run (``ray run`` also takes Ray's ``--num-samples``) |
| --max-epochs N   | epoch cap of every trial (default: the study's)                |
| --seed N         | training (and sampling) seed                                   |
| --device D       | ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda:1``...   |
| --out DIR        | folder for the PNG plots                                       |
| --json FILE      | the machine-readable record                                    |
| --storage URL    | an Optuna storage                                              |
| --min-resource N | the first rung, in epochs (Ray calls it grace period)          |
| --train-fraction, --label-noise, --noise-seed | the training data (test set untouched) |
| --lr-patience, --threshold-mode, --pc-patience | the trial's controller             |
| --quiet          | no progress bar or per-trial lines                             |
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "CLIError",
    "add_data_changes",
    "add_device",
    "add_json",
    "add_max_epochs",
    "add_out",
    "add_quiet",
    "add_seed",
    "add_storage",
    "add_study",
    "add_trial_control",
    "add_trials",
    "check_output_paths",
    "clean_stale_temporaries",
    "positive_int",
    "study_from_args",
]


class CLIError(ValueError):
    """A user error: printed as one line, exit status 2, no traceback."""


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def add_study(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    trust = "; a study file is Python code that is executed: load only files you trust"
    if required:
        p.add_argument(
            "study", help="study file (studies/digits.py) or bundled name (digits)" + trust
        )
    else:
        p.add_argument(
            "study",
            nargs="?",
            default="digits",
            help="study file or bundled name (default: digits)" + trust,
        )


def add_trials(
    p: argparse.ArgumentParser, help: str, default: int | None = None, *aliases: str
) -> None:
    p.add_argument(
        "--trials", *aliases, dest="trials", type=positive_int, default=default, help=help
    )


def add_max_epochs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-epochs", type=positive_int, help="epoch cap of every trial (default: the study's)"
    )


def add_seed(
    p: argparse.ArgumentParser, help: str = "training and sampling seed (default: 0)"
) -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ... (default: auto)",
    )


def add_out(p: argparse.ArgumentParser, help: str = "folder for the PNG plots") -> None:
    p.add_argument("--out", help=help)


def add_json(p: argparse.ArgumentParser, help: str = "write the record here (JSON)") -> None:
    p.add_argument("--json", dest="json_path", help=help)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-trial lines")


def add_storage(p: argparse.ArgumentParser, *, needed: bool = False) -> None:
    """``--storage``; ``needed``: a verb that reads what workers stored (no in-memory default)."""
    last = (
        "required: the storage the workers used"
        if needed
        else "default: in-memory, this process only"
    )
    p.add_argument(
        "--storage",
        help="sqlite:///FILE, postgresql://USER:PW@HOST/DB, mysql+pymysql://..., journal:FILE or "
        f"FILE.log ({last})",
    )


def check_device(device: str | None) -> str:
    """``device`` if torch knows it and it is present here; else a one-line error."""
    from .._checks import check_device as check

    try:
        return check("--device", device)
    except ValueError as e:
        raise CLIError(str(e)) from None


def check_output_paths(
    files: dict[str, Any] | None = None, dirs: dict[str, Any] | None = None
) -> None:
    """Before any work: each output file (``{"--json": path}``) and output folder
    (``{"--out": path}``) can be created and written; else a one-line error naming the flag.

    A folder permission bit is not proof (``/proc``, a read-only mount, root), so the
    deepest folder that exists is probed by writing a temporary file there, removed at
    once. An existing output file must be a regular, writable file: ``/dev/full`` or a
    pipe would take the record only to lose it after the work. An empty path is refused
    (``--json ''`` would otherwise write nothing, silently), and so is a path with a
    component longer than file systems hold (:func:`neve_tune._names.check_path_fits`).
    """
    for is_dir, group in ((True, dirs or {}), (False, files or {})):
        for flag, value in group.items():
            if value is not None and not str(value).strip():
                kind = "folder" if is_dir else "file"
                raise CLIError(f"{flag} {str(value)!r}: give a {kind} path")
            if value:
                _check_output(flag, Path(value), is_dir)


def _check_output(flag: str, path: Path, is_dir: bool) -> None:
    from .._names import check_path_fits

    try:
        check_path_fits(flag, path)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not is_dir and path.is_dir():
        raise CLIError(f"{flag} {path}: is a directory, expected a file path")
    if is_dir and path.exists() and not path.is_dir():
        raise CLIError(f"{flag} {path}: is a file, expected a folder")
    if not is_dir and path.exists():
        if not path.is_file():
            raise CLIError(
                f"{flag} {path}: is not a regular file (a device or a pipe); give a file path"
            )
        if not os.access(path, os.W_OK):
            raise CLIError(f"{flag} {path}: is not writable")
    existing = path if is_dir else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CLIError(f"{flag} {path}: {existing} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".neve-write-probe-") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as e:
        raise CLIError(f"{flag} {path}: {existing} is not writable ({e.strerror or e})") from None


def clean_stale_temporaries(checkpoint: str | os.PathLike) -> list[Path]:
    """Remove the ``CHECKPOINT.tmp<PID>`` files saves killed mid-write left beside
    ``checkpoint`` (a run about to use it is its only writer); return them."""
    path = Path(checkpoint)
    stale = (
        sorted(path.parent.glob(glob.escape(path.name) + ".tmp*")) if path.parent.is_dir() else []
    )
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def add_data_changes(p: argparse.ArgumentParser) -> None:
    """--train-fraction, --label-noise, --noise-seed: change the training data, never the test
    set."""
    g = p.add_argument_group(
        "data (the training set only; the test set only scores the final models)"
    )
    g.add_argument(
        "--train-fraction",
        type=float,
        help="keep this stratified fraction of the training set (default 1)",
    )
    g.add_argument(
        "--label-noise",
        type=float,
        help="flip this fraction of the training labels to another class",
    )
    g.add_argument("--noise-seed", type=int, help="seed of the flipped labels (default 0)")


def add_trial_control(p: argparse.ArgumentParser) -> None:
    """--lr-patience, --threshold-mode, --pc-patience: the controller of every trial."""
    g = p.add_argument_group("trial control (a rule the searches share applies to all of them)")
    g.add_argument(
        "--lr-patience",
        help="ReduceLROnPlateau patience in epochs, or 'auto' (max(2, max_epochs // 20); "
        "the default)",
    )
    g.add_argument(
        "--threshold-mode",
        choices=["absolute", "relative"],
        help="NeVe's velocity stop: V / peak V < t (the studies' default), or V < t; "
        "the searched range of t stays the study's",
    )
    g.add_argument(
        "--pc-patience",
        type=int,
        help="NeVe's memorisation guard: stop when prediction changes have not "
        "reached a new low for this many epochs (default 3; 0: off)",
    )
    g.add_argument(
        "--prediction-changes",
        choices=["in_pass", "subset"],
        help="where the guard counts prediction changes: in the training pass (default), or on a "
        "fixed subset of --pc-subset-size training examples forwarded after each epoch",
    )
    g.add_argument(
        "--pc-subset-size",
        type=int,
        help="examples in that subset (default 1000, or all when fewer)",
    )


def add_selection(p: argparse.ArgumentParser) -> None:
    """--selection, --selection-subset: which finished NeVe trial wins (docs/measurements.md,
    "Which trial wins")."""
    g = p.add_argument_group("selection (which NeVe trial wins; no validation set either way)")
    g.add_argument(
        "--selection",
        choices=["objective", "consensus", "auto"],
        help="pick the finished trial with the lowest objective, or the one whose predictions on "
        "a fixed training subset agree most with the other trials' majority vote, or (auto) the "
        "latter only when the finished trials' fit of the subset's labels says they are noisy and "
        "the memorisation guard stopped one of them "
        "(default: the study's; auto for every study unless its file says otherwise)",
    )
    g.add_argument(
        "--selection-subset",
        type=int,
        help="training examples whose predicted classes each trial records for the vote "
        "(default: the study's, 500 unless its file says otherwise; 500 whenever --selection or "
        "the rung signal is consensus or auto; 0: off, only with --selection objective and a "
        "train_loss or velocity signal)",
    )


def _lr_patience(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise CLIError(f"--lr-patience must be an int or 'auto', got {text!r}") from None


def _selection_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The study fields of --selection/--selection-subset; a consensus rung or pick records
    500 examples unless told otherwise."""
    out: dict[str, Any] = {}
    if getattr(args, "selection", None) is not None:
        out["selection"] = args.selection
    size = getattr(args, "selection_subset", None)
    if size is not None:
        if size < 0:
            raise CLIError(f"--selection-subset must be >= 0 (0: off), got {size}")
        out["selection_subset"] = size
    asked = (
        getattr(args, "selection", None),
        getattr(args, "rung_signal", None),
    )
    wants_votes = "consensus" in asked or "auto" in asked
    if wants_votes and size is None:
        out["selection_subset"] = 500
    if wants_votes and size == 0:
        raise CLIError(
            "--selection-subset 0 leaves no predictions for the consensus: give a size > 0 or "
            "omit it"
        )
    return out


def study_from_args(args: argparse.Namespace, **extra_changes: Any) -> Any:
    """The study named by ``args.study`` with the shared overrides applied (``--max-epochs``,
    ``--data-root``, the data changes and the trial control, where the verb has them)."""
    from .._checks import check_seed
    from ..study import load_study

    study = load_study(args.study)
    changes: dict[str, Any] = {}
    if getattr(args, "max_epochs", None) is not None:
        changes["max_epochs"] = args.max_epochs
    data = {
        key: getattr(args, key)
        for key in ("data_root", "train_fraction", "label_noise", "noise_seed")
        if getattr(args, key, None) is not None
    }
    if data:
        changes["data_options"] = {**study.data_options, **data}
    if getattr(args, "noise_seed", None) is not None:
        check_seed("--noise-seed", args.noise_seed)
    if getattr(args, "seed", None) is not None:
        check_seed("--seed", args.seed)
    if getattr(args, "lr_patience", None) is not None:
        changes["lr_patience"] = _lr_patience(args.lr_patience)
    if getattr(args, "pc_patience", None) is not None:
        if args.pc_patience < 0:
            raise CLIError(f"--pc-patience must be >= 0 (0: off), got {args.pc_patience}")
        changes["pc_patience"] = args.pc_patience or None
    if getattr(args, "threshold_mode", None) is not None:
        changes["threshold_mode"] = args.threshold_mode
    changes.update(_selection_changes(args))
    for key in ("prediction_changes", "pc_subset_size"):
        if getattr(args, key, None) is not None:
            changes[key] = getattr(args, key)
    changes.update({k: v for k, v in extra_changes.items() if v is not None})
    if "data_root" in data:  # before the study's own check, which names data_options
        _check_reads_files(changes.get("data", study.data))
    return study.replace(**changes) if changes else study


def _check_reads_files(data: str) -> None:
    """--data-root only for a data set read from files: digits, mnist1d and synthetic would
    train on as if the folder were read (a forgotten --data cifar10)."""
    from ..data import file_datasets, reads_files

    if not reads_files(data):
        raise CLIError(
            f"--data-root: data {data!r} is not read from files (only {file_datasets()} are), "
            "so the folder would be ignored"
        )
