"""One prepared check of neve_tune on a lent GPU: run it, read the table, done.

    python benchmarks/gpu_check.py              # on a CUDA machine: at most ~8 minutes on one H200
    python benchmarks/gpu_check.py --dry-run    # every check on the CPU, tiny sizes (tests run it)
    make gpu-check

Without CUDA (and without ``--dry-run``) it prints one line saying so and exits 0.

Checks, in order (``--only NAME,...`` runs a subset):

``velocity``  The same model (ResNet-32, CIFAR shape, 100 probe samples) and the same
              weight changes measured on CUDA and on the CPU: V and D of three epochs.
              Pass: float32 within 1e-5 relative (exact and sketched references);
              bf16 and fp16 autocast on CUDA against the float32 CPU series within 1e-3.
``overhead``  ``measure()`` against a bare no-grad probe forward (eval mode), medians of
              interleaved rounds, for ResNet-32 (CIFAR shape) and timm ViT-S/16 at 224 px,
              with exact and sketched references; the reference bytes held on the
              device and the peak device memory of a measurement. Pass: it ran
              (the figures are for reading).
``optuna``    Two ``neve-tune optuna worker`` processes on one GPU share a journal-file
              study of CIFAR-shaped synthetic data (ResNet-20). Pass: both exit 0 and
              every trial of both ended (COMPLETE or PRUNED).
``ray``       Ray Tune, 4 NeVe trials at 0.25 GPU each (``neve_trainable`` + ``Tuner``).
              Pass: 4 trials ended without error and their [start, end] intervals share
              a common instant (they really ran at the same time on one card).
``compare``   ``neve-tune compare`` (every search) at a tiny budget. Pass: exit 0 and
              the JSON it writes holds every search.

Output format (stdout; one line per check, fixed columns, then a summary line; the
libraries' own progress and logs go to stderr)::

    gpu_check  device=<name>  torch=<version>  cuda=<version|none>  mode=<gpu|dry-run>
    check       result  seconds  details
    velocity    PASS       12.3  fp32 V/D max rel diff 2.1e-07 (<= 1e-05); sketch ...; bf16 ...
    overhead    PASS       40.1  resnet32: bare 3.1 ms, exact 4.0 ms (1.29x), ...
    ...
    summary     PASS      123.4  5 checks, 0 failed

``result`` is PASS, FAIL or SKIP (a check whose library is missing); ``details`` holds
the figures, or the error of a failed check. The exit status is 1 when any check
failed, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

CHECKS = ("velocity", "overhead", "optuna", "ray", "compare")


@dataclass
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    device: str
    resnet: tuple[str, tuple[int, int, int]]
    vit: tuple[str, dict]
    probe: int
    rounds: int
    amp: tuple[torch.dtype, ...]
    study: dict
    ray_epochs: int
    trials: int
    ray_gpus: float
    timeout: int


def sizes(dry_run: bool) -> Sizes:
    if dry_run:
        return Sizes(
            device="cpu",
            resnet=("resnet20", (3, 16, 16)),
            vit=("timm:vit_tiny_patch16_224", {"depth": 2, "input": (3, 32, 32)}),
            probe=8,
            rounds=2,
            amp=(torch.bfloat16,),
            study={
                "input_shape": (1, 8, 8),
                "num_train": 128,
                "num_test": 32,
                "model": "small_cnn",
                "max_epochs": 2,
            },
            ray_epochs=40,
            trials=1,
            ray_gpus=0.25,
            timeout=240,
        )
    return Sizes(
        device="cuda",
        resnet=("resnet32", (3, 32, 32)),
        vit=("timm:vit_small_patch16_224", {"input": (3, 224, 224)}),
        probe=100,
        rounds=20,
        amp=(torch.bfloat16, torch.float16),
        study={
            "input_shape": (3, 32, 32),
            "num_train": 2048,
            "num_test": 512,
            "model": "resnet20",
            "max_epochs": 6,
        },
        ray_epochs=6,
        trials=3,
        ray_gpus=0.25,
        timeout=300,
    )


# ----------------------------------------------------------------------------- checks
def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.detach().abs().mean().cpu() * torch.randn(p.shape, generator=g))


def _series(
    model_cpu: torch.nn.Module, device: str, probe: torch.Tensor, **kw
) -> list[tuple[float, float | None]]:
    """V and D over three epochs of the same weight changes, measured on ``device``."""
    from neve_tune import NeuralVelocity

    model = copy.deepcopy(model_cpu).to(device)
    nv = NeuralVelocity(model, probe.to(device), **kw)
    nv.measure()
    out = []
    for step in range(3):
        _perturb(model, step)
        r = nv.measure()
        out.append((r.model_velocity, r.velocity_change))
    return out


def _max_rel(a: list, b: list) -> float:
    worst = 0.0
    for (va, da), (vb, db) in zip(a, b):
        worst = max(worst, abs(vb - va) / abs(va))
        if da is not None:
            worst = max(worst, abs(db - da) / abs(da))
    return worst


def check_velocity(sz: Sizes) -> tuple[bool, str]:
    from neve_tune import gaussian_probe
    from neve_tune.models import create_model

    name, shape = sz.resnet
    torch.manual_seed(0)
    model = create_model(name, 10, shape).eval()
    probe = gaussian_probe(shape, sz.probe, seed=0)
    ok, parts = True, []
    exact = {"reference": "exact"}
    fp32_cpu = _series(model, "cpu", probe, **exact)
    for label, kw, limit in (
        ("fp32", exact, 1e-5),
        ("sketch fp32", {"reference": "sketch"}, 1e-5),
        *(
            (f"{str(dt).split('.')[-1]} autocast", {**exact, "autocast_dtype": dt}, 1e-3)
            for dt in sz.amp
        ),
    ):
        # autocast is compared with the CPU under the same autocast (where the CPU runs it):
        # against float32 the half-precision rounding alone moves V far more than 1e-3
        ref = fp32_cpu if kw is exact else _series(model, "cpu", probe, **kw)
        against = "cpu"
        if not all(math.isfinite(v) for v, _ in ref):
            ref, against = fp32_cpu, "cpu fp32"
        got = _series(model, sz.device, probe, **kw)
        diff = _max_rel(ref, got)
        ok &= diff <= limit
        parts.append(
            f"{label} vs {against}: max rel diff {diff:.1e} (<= {limit:g})"
            + (f", vs cpu fp32 {_max_rel(fp32_cpu, got):.1e}" if "autocast" in label else "")
        )
    return ok, "; ".join(parts)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _overhead_one(name: str, shape: tuple[int, ...], opts: dict, sz: Sizes) -> str:
    from neve_tune import NeuralVelocity, gaussian_probe
    from neve_tune.models import create_model

    torch.manual_seed(0)
    model = create_model(name, 10, shape, **opts).to(sz.device).eval()
    probe = gaussian_probe(shape, sz.probe, seed=0).to(sz.device)
    cuda = sz.device.startswith("cuda")

    def bare() -> None:
        with torch.no_grad():
            model(probe)

    monitors = {}
    peaks = {}
    for ref in ("exact", "sketch"):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        nv = NeuralVelocity(model, probe, reference=ref)
        nv.measure()
        nv.measure()
        if cuda:
            peaks[ref] = torch.cuda.max_memory_allocated() - base
        monitors[ref] = nv
    fns: dict[str, Callable[[], object]] = {
        "bare": bare,
        **{k: nv.measure for k, nv in monitors.items()},
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(sz.rounds):
        for k, fn in fns.items():
            _sync(sz.device)
            t0 = time.perf_counter()
            fn()
            _sync(sz.device)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    mem = "".join(
        f", {k} refs {nv.nbytes / 1e6:.1f} MB"
        + (f" peak {peaks[k] / 1e6:.0f} MB" if k in peaks else "")
        for k, nv in monitors.items()
    )
    return (
        f"{name.replace('timm:', '')}: bare {med['bare']:.1f} ms, exact {med['exact']:.1f} ms "
        f"({med['exact'] / med['bare']:.2f}x), sketch {med['sketch']:.1f} ms "
        f"({med['sketch'] / med['bare']:.2f}x){mem}"
    )


def check_overhead(sz: Sizes) -> tuple[bool, str]:
    name, shape = sz.resnet
    vit, opts = sz.vit
    opts = dict(opts)
    vshape = opts.pop("input")
    return True, " | ".join(
        [_overhead_one(name, shape, {}, sz), _overhead_one(vit, vshape, opts, sz)]
    )


def _study_file(tmp: Path, sz: Sizes, max_epochs: int | None = None) -> Path:
    s = dict(sz.study, max_epochs=max_epochs or sz.study["max_epochs"])
    path = tmp / "gpu_check_study.py"
    path.write_text(
        textwrap.dedent(f'''\
        """CIFAR-shaped (or, in the dry run, tiny) synthetic data for benchmarks/gpu_check.py."""
        from neve_tune import Choice, LogUniform, Study

        STUDY = Study(
            name="gpu_check",
            data="synthetic",
            data_options={{"input_shape": {tuple(s["input_shape"])!r}, "num_classes": 10,
                          "num_train": {s["num_train"]}, "num_test": {s["num_test"]}}},
            model={s["model"]!r},
            search_space={{"lr": LogUniform(1e-2, 0.2), "threshold": LogUniform(1e-3, 1e-2),
                           "batch_size": Choice([64, 128])}},
            max_epochs={s["max_epochs"]},
            resources={{"cpu": 1, "gpu": 0}},
        )
        ''')
    )
    return path


def _run(cmd: list[str], timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def check_optuna(sz: Sizes, tmp: Path) -> tuple[bool, str]:
    import optuna

    study_file = _study_file(tmp, sz)
    storage = f"journal:{tmp / 'optuna.log'}"
    cmd = [
        sys.executable,
        "-m",
        "neve_tune",
        "optuna",
        "worker",
        str(study_file),
        "--study-name",
        "gpu_check",
        "--storage",
        storage,
        "--trials",
        str(sz.trials),
        "--create",
        "--device",
        sz.device,
        "--quiet",
    ]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd + ["--seed", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=sz.timeout)[0] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        bad = next(i for i, p in enumerate(procs) if p.returncode)
        return (
            False,
            f"worker {bad} exited {procs[bad].returncode}: {outs[bad].strip().splitlines()[-3:]}",
        )
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(
        study_name="gpu_check", storage=JournalStorage(JournalFileBackend(str(tmp / "optuna.log")))
    )
    states = [t.state.name for t in study.trials]
    done = sum(s in ("COMPLETE", "PRUNED") for s in states)
    ok = done == len(states) == 2 * sz.trials
    counts = {s: states.count(s) for s in sorted(set(states))}
    return ok, f"2 workers x {sz.trials} trials on {sz.device}: {counts}, {wall:.0f} s wall"


def check_ray(sz: Sizes, tmp: Path) -> tuple[bool, str]:
    import ray
    from ray import tune

    from neve_tune.ray import neve_trainable

    study_file = _study_file(tmp, sz, sz.ray_epochs)  # long enough to see the trials overlap
    cpus = max(2, min(os.cpu_count() or 2, 8))
    ray.init(
        num_cpus=cpus,
        num_gpus=1 if sz.device == "cpu" else None,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    try:
        per_trial = {"cpu": cpus / 4, "gpu": sz.ray_gpus}
        trainable = neve_trainable(
            str(study_file),
            device=None if sz.device.startswith("cuda") else "cpu",
            resources=per_trial,
        )
        space = {
            "lr": 0.05,
            "batch_size": 64,
            "threshold": 1e-9,
            "seed": tune.grid_search([0, 1, 2, 3]),
        }
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            run_config=tune.RunConfig(storage_path=str(tmp / "ray"), name="gpu_check", verbose=0),
        )
        with contextlib.redirect_stdout(sys.stderr):  # Tune's progress stays out of the table
            grid = tuner.fit()
        spans = []
        for res in grid:
            if res.error is not None:
                return False, f"a trial failed: {res.error}"
            df = res.metrics_dataframe
            end = float(df["timestamp"].iloc[-1])
            spans.append((end - float(df["time_total_s"].iloc[-1]), end))
    finally:
        ray.shutdown()
    together = max(s for s, _ in spans) < min(e for _, e in spans)
    ok = len(spans) == 4 and together
    return ok, (
        f"4 trials at {per_trial}: intervals {'overlap' if together else 'DO NOT overlap'} "
        f"(latest start {max(s for s, _ in spans) - min(s for s, _ in spans):.0f} s after the "
        "first, "
        f"first end {min(e for _, e in spans) - min(s for s, _ in spans):.0f} s)"
    )


def check_compare(sz: Sizes, tmp: Path) -> tuple[bool, str]:
    study_file = _study_file(tmp, sz)
    out = tmp / "compare.json"
    cmd = [
        sys.executable,
        "-m",
        "neve_tune",
        "compare",
        str(study_file),
        "--trials",
        str(max(2, sz.trials)),
        "--max-epochs",
        str(sz.study["max_epochs"]),
        "--device",
        sz.device,
        "--json",
        str(out),
        "--quiet",
    ]
    t0 = time.perf_counter()
    proc = _run(cmd, sz.timeout, {"OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        return (
            False,
            f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip().splitlines()[-3:]}",
        )
    text = out.read_text()
    found = [s for s in ("neve", "asha", "asha_es") if f'"{s}"' in text]
    json.loads(text)
    return (
        len(found) == 3,
        f"{max(2, sz.trials)} trials x 3 searches on {sz.device}, {wall:.0f} s, in the JSON: "
        f"{found}",
    )


# ----------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dry-run", action="store_true", help="every check on the CPU with tiny sizes")
    ap.add_argument(
        "--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}"
    )
    args = ap.parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    bad = [c for c in only if c not in CHECKS]
    if bad:
        ap.error(f"--only: unknown checks {bad}; choose from {CHECKS}")
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print(
            "gpu_check: CUDA is not available on this machine; nothing to check (--dry-run runs "
            "the checks on the CPU)"
        )
        return 0
    sz = sizes(args.dry_run)
    name = torch.cuda.get_device_name(0) if sz.device == "cuda" else "cpu"
    print(
        f"gpu_check  device={name.replace(' ', '_')}  torch={torch.__version__}  "
        f"cuda={torch.version.cuda or 'none'}"
        f"  mode={'dry-run' if args.dry_run else 'gpu'}",
        flush=True,
    )
    print(f"{'check':10s}  result  seconds  details", flush=True)
    failed = 0
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for check in only:
            t0 = time.perf_counter()
            try:
                fn = globals()[f"check_{check}"]
                work = Path(tmp) / check
                work.mkdir()
                ok, details = fn(sz) if check in ("velocity", "overhead") else fn(sz, work)
                result = "PASS" if ok else "FAIL"
            except ImportError as e:
                result, details = "SKIP", f"missing library: {e}"
            except Exception as e:  # a failed check is reported, the others still run
                result = "FAIL"
                details = f"{type(e).__name__}: {e} | " + " / ".join(
                    traceback.format_exc().strip().splitlines()[-3:]
                )
            failed += result == "FAIL"
            print(
                f"{check:10s}  {result:6s}  {time.perf_counter() - t0:7.1f}  {details}", flush=True
            )
    print(
        f"{'summary':10s}  {'FAIL' if failed else 'PASS':6s}  {time.perf_counter() - t_all:7.1f}  "
        f"{len(only)} checks, {failed} failed",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
