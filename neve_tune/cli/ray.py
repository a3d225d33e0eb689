"""``neve-tune ray run``: a Ray Tune search of a study file (:mod:`neve_tune.ray`)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._checks import check_float, check_int, check_seed
from .._json import write_json
from ..records import SCHEDULERS, SEARCH_METHODS
from . import _args as cli

__all__ = ["add_cli", "check_address"]

APIS = ("tuner", "run")
TRAINABLE_METHODS = SEARCH_METHODS
RAY_CLIENT_PORT = 10001  # Ray Client's default server port (ray start --ray-client-server-port)
ADDRESS_TIMEOUT_S = 3.0
ADDRESS_FORMS = (
    "HOST:PORT (the head's GCS, e.g. 10.0.0.5:6379), ray://HOST:PORT (Ray Client) or 'auto'"
)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return "-" if x is None else str(x)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ray",
        help="Ray Tune searches with NeVeStopper, locally or on a cluster",
        description="Ray Tune backend.",
    )
    sub = p.add_subparsers(dest="ray_command", metavar="VERB")
    r = sub.add_parser("run", help="run a search of a study file", description=_run.__doc__)
    cli.add_study(r)
    r.add_argument(
        "--address",
        help="Ray cluster to join ('auto', 'HOST:6379', 'ray://HOST:10001'); default: start a "
        "local Ray",
    )
    r.add_argument("--num-cpus", type=int, help="CPUs of the local Ray started without --address")
    r.add_argument(
        "--method",
        choices=TRAINABLE_METHODS,
        default="neve",
        help="neve (default), or the validation baselines",
    )
    cli.add_trials(r, "trials to run (default: 8)", 8, "--num-samples")
    r.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default="auto",
        help="auto: neve_asha for neve, asha for the baselines",
    )
    r.add_argument(
        "--no-stopper",
        action="store_true",
        help="no NeVeStopper (the trial's own controller still stops it)",
    )
    cli.add_max_epochs(r)
    cli.add_data_changes(r)
    cli.add_trial_control(r)
    cli.add_selection(r)
    r.add_argument(
        "--rung-signal",
        choices=["train_loss", "velocity", "consensus", "auto"],
        help="rung signal of the NeVe scheduler (default: the study's, auto for the bundled "
        "studies)",
    )
    r.add_argument(
        "--min-resource",
        dest="min_resource",
        type=cli.positive_int,
        default=1,
        help="first rung, in epochs (Ray's grace_period; default: 1)",
    )
    r.add_argument(
        "--reduction-factor", type=float, default=4, help="rung reduction factor (default: 4)"
    )
    r.add_argument("--cpus-per-trial", type=float, help="default: the study's resources")
    r.add_argument(
        "--gpus-per-trial", type=float, help="fractional GPUs share one GPU (default: the study's)"
    )
    r.add_argument(
        "--max-concurrent", type=int, help="trials at once (default: as many as resources allow)"
    )
    r.add_argument(
        "--storage-path", help="where results and checkpoints go; shared by all nodes on a cluster"
    )
    r.add_argument("--name", help="experiment name (a folder under --storage-path)")
    r.add_argument(
        "--max-failures",
        type=int,
        help="retries of a failed trial from its last checkpoint (-1: always; "
        "default: 2 with --address or on a Ray of several nodes, where a lost "
        "node fails its trials; else 0)",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="restore --storage-path/--name with Tuner.restore and finish it",
    )
    r.add_argument("--api", choices=APIS, default="tuner", help="tune.Tuner (default) or tune.run")
    cli.add_seed(r)
    cli.add_device(r)
    cli.add_json(r, "write trials and the best one here")
    r.add_argument(
        "--verbose",
        type=int,
        default=0,
        choices=[0, 1, 2, 3],
        help="Ray Tune's own progress output",
    )
    r.set_defaults(func=_run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _endpoint(address: str, source: str) -> tuple[str, int]:
    """``(host, port)`` of a Ray address: ``HOST:PORT`` or ``ray://HOST[:PORT]``."""
    client = address.startswith("ray://")
    if "://" in address and not client:
        raise cli.CLIError(f"{source}: expected {ADDRESS_FORMS}")
    parts = urlsplit(address if client else "//" + address)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = -1
    if not parts.hostname or port == -1 or (port is None and not client) or parts.path.strip("/"):
        raise cli.CLIError(f"{source}: expected {ADDRESS_FORMS}")
    return parts.hostname, RAY_CLIENT_PORT if port is None else port


def _ray_address_file() -> Path:
    """Where ``ray start`` records the running cluster and ``ray.init(address="auto")``
    reads it: ``/tmp/ray/ray_current_cluster`` (``$RAY_TMPDIR``, or ``$TMPDIR`` on Linux,
    in place of ``/tmp``, as Ray itself does)."""
    tmp = (
        os.environ.get("RAY_TMPDIR")
        or (os.environ.get("TMPDIR") if sys.platform.startswith("linux") else None)
        or "/tmp"
    )
    return Path(tmp) / "ray" / "ray_current_cluster"


def check_address(address: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """Raise :class:`cli.CLIError` when no Ray head answers at ``--address``, within
    ``timeout`` s (for the connection, then for the handshake).

    Why: ``ray.init`` retries an address nobody listens at for a minute or more, printing
    a warning per try, and hangs for minutes on a port that accepts but is no Ray. A TCP
    connection and an HTTP/2 handshake (:func:`_http2_handshake`; the GCS is a gRPC
    server) tell in seconds. ``auto`` resolves as
    ``ray.init`` does: ``$RAY_ADDRESS``, else the cluster ``ray start`` recorded
    (:func:`_ray_address_file`); with neither, ``ray.init`` looks for a local Ray itself
    and its ``ConnectionError`` becomes the error (see :func:`_init`). ``local`` starts a
    Ray, so there is nothing to check.
    """
    if address == "local":
        return
    source = f"--address {address}"
    target = address
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "")
        if env:
            target, source = env, f"--address auto (RAY_ADDRESS={env})"
        else:
            path = _ray_address_file()
            try:
                target = path.read_text().strip()
            except OSError:
                return
            if not target:
                return
            source = f"--address auto (the cluster recorded in {path}: {target})"
        if target in ("local", "auto"):
            return
    host, port = _endpoint(target, source)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            answer = _http2_handshake(conn, timeout)
    except socket.gaierror as e:
        raise cli.CLIError(f"{source}: cannot resolve host {host!r} ({e.strerror})") from None
    except TimeoutError:
        raise cli.CLIError(
            f"{source}: no answer from {host}:{port} within {timeout:g} s; is the Ray head running "
            "and reachable?"
        ) from None
    except OSError as e:
        raise cli.CLIError(
            f"{source}: nothing listens at {host}:{port} ({e.strerror or e}); start the head with "
            f"`ray start --head` or give the address it printed"
        ) from None
    if answer is not None:
        raise cli.CLIError(
            f"{source}: {host}:{port} is not a Ray head ({answer}); give the address `ray start "
            "--head` printed (GCS port, 6379 by default) or ray://HOST:10001"
        )


# The client connection preface of HTTP/2 (RFC 9113, section 3.4) and an empty SETTINGS frame.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS = 0x4


def _http2_handshake(conn: socket.socket, timeout: float) -> str | None:
    """``None`` if the server at ``conn`` speaks gRPC's HTTP/2: it answers the client
    preface with a SETTINGS frame on stream 0, as every gRPC server (Ray's GCS, the Ray
    Client server) does at once. Else what it did instead, in words. A TCP connect alone
    would accept any listener (``ray.init`` then waits minutes on it). With
    ``RAY_USE_TLS`` set the handshake is TLS first, so only the connect is checked."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return None
    conn.settimeout(timeout)
    conn.sendall(_HTTP2_PREFACE)
    header = b""
    try:
        while len(header) < 9:
            chunk = conn.recv(9 - len(header))
            if not chunk:
                return (
                    "it closed the connection without an HTTP/2 answer"
                    if not header
                    else "its answer is not HTTP/2"
                )
            header += chunk
    except TimeoutError:
        return (
            f"it sent {'nothing' if not header else 'too little'} within {timeout:g} s in "
            "answer to an HTTP/2 handshake"
        )
    except OSError as e:
        return f"it dropped the HTTP/2 handshake ({e.strerror or e})"
    frame_type, stream = header[3], int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
    if frame_type != _SETTINGS or stream != 0:
        return "its answer is not HTTP/2 (no SETTINGS frame)"
    return None


def _init(ray: Any, address: str | None, num_cpus: int | None) -> None:
    """``ray.init`` on ``address`` (a local Ray when ``None``), its ``ConnectionError``
    as a one-line :class:`cli.CLIError` naming ``--address``."""
    if address is None:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)
        return
    try:
        ray.init(address=address)
    except ConnectionError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise cli.CLIError(f"--address {address}: cannot join the Ray cluster: {first}") from None


def _check_flags(args: argparse.Namespace, study: Any, resources: Any) -> None:
    """Every ``ray run`` flag under its own name, then what only the search can judge."""
    from ..ray._search import check_search_args

    check_int("--num-cpus", args.num_cpus, minimum=1, allow_none=True)
    check_int("--max-concurrent", args.max_concurrent, minimum=1, allow_none=True)
    check_int("--max-failures", args.max_failures, minimum=-1, allow_none=True)
    if args.name is not None:
        _check_name("--name", args.name)
    if args.storage_path is not None:
        _check_name("--storage-path", args.storage_path, folder=False)
    check_float("--reduction-factor", args.reduction_factor, low=1.0, low_open=True)
    check_seed("--seed", args.seed)
    for flag, value in (
        ("--cpus-per-trial", args.cpus_per_trial),
        ("--gpus-per-trial", args.gpus_per_trial),
    ):
        check_float(flag, value, low=0.0, allow_none=True)
    if args.resume and not (args.storage_path and args.name):
        raise cli.CLIError(
            "--resume needs --storage-path and --name (the experiment folder to restore)"
        )
    check_search_args(
        study,
        method=args.method,
        num_samples=args.trials,
        scheduler=args.scheduler,
        seed=args.seed,
        resources=resources,
        max_concurrent_trials=args.max_concurrent,
        min_resource=args.min_resource,
        reduction_factor=args.reduction_factor,
        api=args.api,
        rung_signal=args.rung_signal,
    )


def _check_name(flag: str, value: str, folder: bool = True) -> None:
    """``--name`` is one plain folder name under --storage-path; a path's parts must fit."""
    from .._names import check_folder_name, check_path_fits

    try:
        check_folder_name(flag, value) if folder else check_path_fits(flag, value)
    except (TypeError, ValueError) as e:
        raise cli.CLIError(str(e)) from None


def _run(args: argparse.Namespace) -> int:
    """Run a Ray Tune search of a study file: NeVe-controlled trials, NeVeStopper and the
    NeVeASHAScheduler (or the validation ASHA baseline), on a local Ray or a cluster."""
    import ray
    from ray import tune

    from ..ray import CLUSTER_MAX_FAILURES, default_max_failures, run_search, summarize

    device = cli.check_device(args.device)
    cli.check_output_paths(
        files={"--json": args.json_path}, dirs={"--storage-path": args.storage_path}
    )
    study = cli.study_from_args(args)
    resources = None
    if args.cpus_per_trial is not None or args.gpus_per_trial is not None:
        resources = dict(study.resources)
        if args.cpus_per_trial is not None:
            resources["cpu"] = args.cpus_per_trial
        if args.gpus_per_trial is not None:
            resources["gpu"] = args.gpus_per_trial
    if args.address and args.num_cpus is not None:
        raise cli.CLIError(
            "--num-cpus is for a local Ray; a cluster joined with --address has its own"
        )
    _check_flags(
        args, study, resources
    )  # all of them before ray.init: a bad flag costs no cluster start
    if args.address:
        check_address(args.address)  # before ray.init, which would retry for a minute
    max_failures = args.max_failures
    if max_failures is None and args.address:  # a lost node's trials resume from their checkpoints
        max_failures = CLUSTER_MAX_FAILURES
    started = False
    if not ray.is_initialized():
        _init(ray, args.address, args.num_cpus)
        started = True
    try:
        failures = default_max_failures() if max_failures is None else max_failures
        run_config = tune.RunConfig(
            name=args.name,
            storage_path=args.storage_path,
            verbose=args.verbose,
            failure_config=tune.FailureConfig(max_failures=failures),
        )
        results = run_search(
            study,
            method=args.method,
            num_samples=args.trials,
            scheduler=args.scheduler,
            stopper=not args.no_stopper,
            seed=args.seed,
            run_config=run_config,
            resources=resources,
            max_concurrent_trials=args.max_concurrent,
            min_resource=args.min_resource,
            rung_signal=args.rung_signal,
            reduction_factor=args.reduction_factor,
            api=args.api,
            resume=args.resume,
            device=device,
        )
        summary = summarize(results, study.selection if args.method == "neve" else "objective")
    finally:
        if started:
            ray.shutdown()
    n = len(summary["trials"])
    done = sum(1 for t in summary["trials"] if t.get("stopped_by"))
    print(
        f"{n} trials: {done} stopped themselves, {n - done - summary['errors']} stopped by Tune, "
        f"{summary['errors']} failed; total cost {summary['total_epochs_equiv']:.1f} epochs"
    )
    best = summary["best"]
    if best:
        cfg = ", ".join(f"{k}={_fmt(v)}" for k, v in best["config"].items())
        print(
            f"best: {cfg}  objective={best['objective']:.4f}  "
            f"test_acc={_fmt(best.get('test_acc'))}  epochs={best.get('epochs')}  "
            f"stopped_by={best.get('stopped_by')}  ({summary['selection']['reason']})"
        )
    if args.json_path:
        write_json(args.json_path, {"study": study.name, "method": args.method, **summary})
        print(f"wrote {args.json_path}")
    return 1 if summary["errors"] else 0
