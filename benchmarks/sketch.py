"""Sketched velocity references (``reference="sketch"``) against exact float32 ones.

Four measurements, printed as tables:

1. ResNet-32 (CIFAR shape, 100 probe samples) and a timm ViT (``vit_tiny_patch16_224``
   with ``img_size=32, patch_size=4``: 65 tokens, depth 6; tokens on the last dim):
   bytes held (exact float32, half, sketch), the median time of ``measure()`` with each,
   measured round by round in the same process, and the bare no-grad probe forward.
2. The same two models trained for a few epochs on CIFAR-shaped synthetic data
   (``neve_tune.data.synthetic``: Gaussian class clusters, 3x32x32, 10 classes). The exact
   ``NeVe`` controller drives the run; a sketch monitor measures the same model after every
   epoch. Printed: relative error of V and D per epoch, and for a grid of thresholds the
   first epoch at which each series falls under it (the epoch the velocity stop would fire).
3. Digits (``small_cnn``): 10 full training runs over seeds and learning rates, each run
   twice, once with an exact ``NeVe`` controller and once with a sketched one (threshold
   1e-3, max 60 epochs); printed: the epoch and reason each one stopped, and whether they agree.
4. ViT-B/16 at 224 px with 100 probe samples: bytes for exact float32, half and sketch
   references, from a forward on the ``meta`` device (nothing is allocated).

    OMP_NUM_THREADS=1 python benchmarks/sketch.py [--sketch-dim 512] [--rounds 7]
        [--epochs 8] [--digits-runs 10] [--skip PART ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from neve_tune import NeuralVelocity, NeVe, gaussian_probe
from neve_tune.data import get_dataset
from neve_tune.models import create_model
from neve_tune.train import fit

THRESHOLDS = (1e-2, 5e-3, 2e-3, 1e-3, 5e-4)


def _vit(input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    return create_model(
        "timm:vit_tiny_patch16_224", num_classes, input_shape, patch_size=4, depth=6
    )


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet32": lambda: create_model("resnet32", 10, (3, 32, 32)),
    "vit_tiny/4@32 d6": _vit,
}


def _mb(n: float) -> str:
    return f"{n / 1e6:9.2f}"


def memory_and_time(name: str, sketch_dim: int, rounds: int) -> None:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    probe = gaussian_probe((3, 32, 32), 100, seed=0)
    exact = NeuralVelocity(model, probe, reference="exact")
    half = NeuralVelocity(model, probe, reference="exact", storage_dtype=torch.bfloat16)
    sketch = NeuralVelocity(model, probe, reference="sketch", sketch_dim=sketch_dim)
    for nv in (exact, half, sketch):
        nv.measure()

    def bare() -> None:
        with torch.no_grad():
            model(probe)

    fns = {"bare": bare, "exact": exact.measure, "sketch": sketch.measure}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    sketched = sum(1 for s in sketch._state.values() if s.width)
    print(
        f"{name:18s} {_mb(exact.nbytes)} {_mb(half.nbytes)} {_mb(sketch.nbytes)} "
        f"{exact.nbytes / sketch.nbytes:7.1f}x"
        f" {med['bare'] * 1e3:8.1f} {med['exact'] * 1e3:8.1f} {med['sketch'] * 1e3:8.1f} "
        f"{med['sketch'] / med['exact']:6.3f}"
        f"   {sketched}/{len(sketch._state)} layers, {exact.num_neurons} neurons"
    )


def _first_under(series: list[float], thr: float) -> int | None:
    return next((i + 1 for i, v in enumerate(series) if v < thr), None)


def training_errors(name: str, sketch_dim: int, epochs: int, seed: int = 0) -> None:
    data = get_dataset(
        "synthetic",
        seed=seed,
        num_train=512,
        num_test=16,
        input_shape=(3, 32, 32),
        num_classes=10,
        noise=2.0,
    )
    torch.manual_seed(seed)
    model = MODELS[name]()
    probe = gaussian_probe((3, 32, 32), 100, seed=seed)
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        if name == "resnet32"
        else torch.optim.AdamW(model.parameters(), lr=1e-3)
    )
    exact = NeuralVelocity(model, probe, reference="exact")
    sketch = NeuralVelocity(model, probe, reference="sketch", sketch_dim=sketch_dim)
    sketch.measure()
    rows: list[tuple[Any, ...]] = []

    def on_epoch(m: dict[str, Any]) -> None:
        r = sketch.measure()
        rows.append(
            (
                m["epoch"],
                m["train_loss"],
                m["velocity"],
                r.model_velocity,
                m["velocity_change"],
                r.velocity_change,
            )
        )

    t0 = time.perf_counter()
    fit(
        model,
        opt,
        data.train,
        NeVe(opt, exact, threshold=1e-6, max_epochs=epochs),
        batch_size=64,
        seed=seed,
        on_epoch=on_epoch,
    )
    print(
        f"\n{name}: {epochs} epochs of synthetic CIFAR-shaped data (512 samples, SGD/AdamW), "
        f"sketch_dim {sketch_dim}, {time.perf_counter() - t0:.0f} s"
    )
    print("epoch  train_loss   V exact    V sketch  rel.err   D exact    D sketch  rel.err")
    for ep, loss, ve, vs, de, ds in rows:
        d = "" if de is None else f"{de:9.3e} {ds:9.3e} {100 * (ds - de) / de:+6.2f}%"
        print(f"{ep:5d} {loss:10.4f}  {ve:9.3e} {vs:9.3e} {100 * (vs - ve) / ve:+6.2f}%  {d}")
    ve = [r[2] for r in rows]
    vs = [r[3] for r in rows]
    worst_v = max(abs(b - a) / a for a, b in zip(ve, vs))
    ds_ = [(r[4], r[5]) for r in rows if r[4] is not None]
    worst_d = max((abs(b - a) / a for a, b in ds_), default=float("nan"))
    print(f"max |rel.err| V {100 * worst_v:.2f}%  D {100 * worst_d:.2f}%")
    print(
        "stop epoch (V < thr), exact / sketch: "
        + "  ".join(
            f"{thr:g}: {_first_under(ve, thr)}/{_first_under(vs, thr)}" for thr in THRESHOLDS
        )
    )


def digits_agreement(sketch_dim: int, runs: int) -> None:
    lrs = (0.01, 0.03, 0.1, 0.3)
    print(
        "\ndigits small_cnn, threshold 1e-3, max 60 epochs, batch 64, SGD momentum 0.9, "
        f"sketch_dim {sketch_dim}"
    )
    print(
        "seed     lr   exact stop      sketch stop     same  max|rel.err V| while the runs are "
        "identical"
    )
    same = 0
    t0 = time.perf_counter()
    for i in range(runs):
        seed, lr = i, lrs[i % len(lrs)]
        data = get_dataset("digits", seed=seed)
        out = {}
        for ref in ("exact", "sketch"):
            torch.manual_seed(seed)
            model = create_model("small_cnn", data.num_classes, data.input_shape)
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            nv = NeuralVelocity(
                model,
                gaussian_probe(data.input_shape, 100, seed=seed),
                reference=ref,
                sketch_dim=sketch_dim,
            )
            res = fit(
                model,
                opt,
                data.train,
                NeVe(opt, nv, threshold=1e-3, max_epochs=60),
                batch_size=64,
                seed=seed,
            )
            out[ref] = res
        he, hs = out["exact"].history, out["sketch"].history
        errs = []
        for a, b in zip(he, hs):
            if a["lr"] != b["lr"] or a["train_loss"] != b["train_loss"]:
                break  # LR schedules differ from here on: no longer the same model
            errs.append(abs(b["velocity"] - a["velocity"]) / a["velocity"])
        agree = (
            out["exact"].epochs == out["sketch"].epochs
            and out["exact"].stopped_by == out["sketch"].stopped_by
        )
        same += agree
        print(
            f"{seed:4d} {lr:6.2f}   {out['exact'].epochs:3d} {out['exact'].stopped_by:10s}  "
            f"{out['sketch'].epochs:3d} {out['sketch'].stopped_by:10s}  "
            f"{'yes' if agree else 'NO ':3s}   "
            f"{100 * max(errs):.2f}% over {len(errs)} epochs"
        )
    print(f"same stop epoch in {same} of {runs} runs ({time.perf_counter() - t0:.0f} s)")


def vit_b_memory(sketch_dim: int) -> None:
    import timm

    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000)
    probe = torch.empty(100, 3, 224, 224, device="meta")
    rows = []
    for label, kw in (
        ("exact float32", {"reference": "exact"}),
        ("half (bf16)", {"reference": "exact", "storage_dtype": torch.bfloat16}),
        (f"sketch k={sketch_dim}", {"reference": "sketch", "sketch_dim": sketch_dim}),
    ):
        nv = NeuralVelocity(model, probe, **kw)
        nv.measure()  # shapes only: every tensor lives on the meta device
        rows.append((label, nv.nbytes, nv.num_neurons))
    auto = NeuralVelocity(model, probe)
    print(
        f"\nViT-B/16: exact_reference_bytes() {auto.exact_reference_bytes() / 1e9:.3f} GB "
        f"(from one probe sample) > sketch_above {auto.sketch_above / 2**30:g} GiB: "
        "reference='auto' picks sketch"
    )
    print(
        f"\nViT-B/16 at 224 px, 100 probe samples, {rows[0][2]} neurons (meta-device forward, "
        "nothing allocated)"
    )
    for label, nbytes, _ in rows:
        print(
            f"  {label:16s} {nbytes / 1e9:8.3f} GB   ({rows[0][1] / nbytes:6.1f}x less than "
            "float32)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sketch-dim", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--digits-runs", type=int, default=10)
    ap.add_argument("--skip", nargs="*", default=[], choices=["memory", "train", "digits", "vit_b"])
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, sketch_dim "
        f"{args.sketch_dim}"
    )
    if "memory" not in args.skip:
        print(
            "\nmodel                exact MB   half MB  sketch MB   saved   bare ms  exact ms "
            "sketch ms  ratio"
            f"   (measure() medians of {args.rounds} interleaved rounds)"
        )
        for name in MODELS:
            memory_and_time(name, args.sketch_dim, args.rounds)
    if "train" not in args.skip:
        for name in MODELS:
            training_errors(name, args.sketch_dim, args.epochs)
    if "digits" not in args.skip:
        digits_agreement(args.sketch_dim, args.digits_runs)
    if "vit_b" not in args.skip:
        vit_b_memory(args.sketch_dim)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
