"""Cost of one velocity measurement against a bare probe forward, side by side.

CIFAR ResNet-32 (63 monitored layers), 100 probe samples of 3x32x32 noise, on this
machine's CPU (or --device cuda). Three timings are interleaved round by round and their
medians compared:

  bare     model(probe) under no_grad in eval mode
  copy     the same with a forward hook that stores a copy of every monitored output
  measure  NeuralVelocity.measure() (steady state: reference already recorded)

It also prints the bytes held with float32 and with float16 reference storage.

    python benchmarks/velocity_overhead.py [--rounds 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from neve_tune import NeuralVelocity, gaussian_probe
from neve_tune.models import create_model
from neve_tune.velocity import select_layers


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("resnet32", 10, (3, 32, 32)).to(device).eval()
    probe = gaussian_probe((3, 32, 32), args.samples, seed=0).to(device)
    layers = select_layers(model)

    def bare():
        with torch.no_grad():
            model(probe)

    stored: list[torch.Tensor] = []

    def copy():
        stored.clear()
        hooks = [
            m.register_forward_hook(lambda m, i, o: stored.append(o.detach().clone()))
            for m in layers.values()
        ]
        try:
            with torch.no_grad():
                model(probe)
        finally:
            for h in hooks:
                h.remove()

    nv = NeuralVelocity(model, probe)
    nv.measure()  # reference
    half = NeuralVelocity(model, probe, storage_dtype=torch.float16)
    half.measure()

    for fn in (bare, copy, nv.measure):  # warm-up
        fn()
    times: dict[str, list[float]] = {"bare": [], "copy": [], "measure": []}
    for _ in range(args.rounds):
        times["bare"].append(_timed(bare, device))
        times["copy"].append(_timed(copy, device))
        times["measure"].append(_timed(nv.measure, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (min(v), max(v)) for k, v in times.items()}

    print(
        f"ResNet-32, {args.samples} probe samples, {len(layers)} monitored layers, "
        f"{nv.num_neurons} neurons, "
        f"device={device}, threads={torch.get_num_threads()}, rounds={args.rounds}"
    )
    for k in ("bare", "copy", "measure"):
        lo, hi = spread[k]
        print(f"  {k:8s} median {med[k] * 1e3:8.1f} ms   (min {lo * 1e3:.1f}, max {hi * 1e3:.1f})")
    print(f"  measure / bare forward : {med['measure'] / med['bare']:.2f}x   (target <= 1.5)")
    print(
        f"  copy    / bare forward : {med['copy'] / med['bare']:.2f}x   (merely storing every "
        "activation)"
    )
    print(f"  bytes held, float32 refs : {nv.nbytes / 1e6:.1f} MB")
    print(f"  bytes held, float16 refs : {half.nbytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
