r"""Does every class fit above chance at the guard's minimum? A single run's evidence that
it is still learning.

The guard's worst cuts on clean data are the token BERT at a slow start
(docs/measurements.md, "What the guard sees at the learners it cuts"): it stops on a
plateau at about half the labels unfit, and no feature of the run's totals told that
plateau from memorisation. A first look at one such run (tokens, clean, LR x 1/4, seed 1)
split its unfit labels by class: at the guard's minimum two of the four classes were fitted
on 6-21% of their examples, below chance (1/4), and the other two on 93%. The network had
not begun to learn half the classes. Symmetric label noise at rate p leaves every class
fitted on about 1 - p of its examples once the clean pattern is fitted, far above chance.

**The candidate** (``classes``): the library's guard, and a minimum counts as settled only
where every class is fitted on more than 1/K of its examples (K classes): a network that
fits some class no better than chance has not finished learning, whatever its totals say.
It changes no stop where every class is above chance.

Runs are recorded as ``benchmarks/guard_replay.py`` records them (no stop, 60 epochs, test
accuracy for scoring only), plus per epoch each class's share of training examples whose
predicted class (model in eval mode, after the epoch) is their label; no rule reads the test
accuracy. Conditions, written here before the first run:

- design (the candidate was read off these; one run of them was looked at before): ``tokens``
  at noise 0 / 0.2 / 0.4, LR x 1/4, 1, 4, seeds 0-2; ``digits`` and ``mnist1d`` at noise
  0.2 / 0.4 (where the guard's gains are), the same LRs and seeds;
- held out (confirm, never tuned on): ``tabular5``, ``mnist1d_g7``, ``vit``, ``breast`` and
  ``wine`` at noise 0 / 0.2 / 0.4, LR x 1/4, 1, 4, seed 3; ``tokens`` seeds 3-4.
- adoption rule: on every held-out (domain, noise) row, ``classes``'s mean difference from
  the guard off is no worse than ``default``'s by more than 0.25 points and its worst run is
  no worse than ``default``'s by more than 0.25 points. The table is reported whatever it
  says.

Added after both tables had been read, to replay what the library does rather than a proxy
(no new candidate): the records also keep the class fit counted in the training pass
(``class_fit_pass``, the ``PredictionChanges`` the library's guard reads, in training mode
with the weights of the moment), replayed as ``classes_pass``; ``--verify`` reruns a run live
and checks the library stops where ``classes_pass`` says. ``--verify wine:0.4:4:3`` is what
showed the two can differ (the eval-mode fit had a class below chance at the minimum, the
pass did not).

    OMP_NUM_THREADS=1 python benchmarks/guard_classes.py --set design --jobs 2
    OMP_NUM_THREADS=1 python benchmarks/guard_classes.py --set heldout --jobs 2
    python benchmarks/guard_classes.py --set design --table      # replay the records only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import guard_replay  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "guard_classes"
LRS = "0.25,1,4"
SETS: dict[str, list[tuple[str, str, str]]] = {  # (domains, noises, seeds)
    "design": [("tokens", "0,0.2,0.4", "0,1,2"), ("digits,mnist1d", "0.2,0.4", "0,1,2")],
    "heldout": [
        ("tabular5,mnist1d_g7,vit,breast,wine", "0,0.2,0.4", "3"),
        ("tokens", "0,0.2,0.4", "3,4"),
    ],
}


_PASS: list[list[float] | None] = [None]  # the class fit the training pass just counted


def _keep_pass_counts() -> None:
    """Keep each epoch's in-pass class fit (what the library's guard reads) for
    :func:`class_fit`: ``fit`` and the plain loop both count with ``PredictionChanges``."""
    from neve_tune.prediction_changes import PredictionChanges

    counted = PredictionChanges.epoch_end
    if getattr(counted, "keeps_pass_counts", False):  # a pool worker's second job
        return

    def epoch_end(self: PredictionChanges) -> int | None:
        changes = counted(self)
        _PASS[0] = self.class_fit
        return changes

    epoch_end.keeps_pass_counts = True  # type: ignore[attr-defined]
    PredictionChanges.epoch_end = epoch_end  # type: ignore[method-assign]


def class_fit(s: Any) -> dict[str, Any]:
    """Per class, the share of its training examples the model (eval mode, after the epoch)
    predicts as their label (``class_fit``), and the same counted in the training pass
    (``class_fit_pass``, as the library's guard reads it)."""
    import model_families

    from neve_tune.prediction_changes import class_fit as shares

    model, was = s.model, s.model.training
    model.eval()
    x, y = s.train.tensors
    with torch.no_grad():
        pred = torch.cat([model_families._logits(model, xb).argmax(1) for xb in x.split(512)])
    model.train(was)
    return {"class_fit": shares(pred, y), "class_fit_pass": _PASS[0]}


# the library's guard given each column as its class_fit
guard_replay.GUARDS["classes"] = lambda rows, n: guard_replay.guard_library(
    rows, n, class_fit="class_fit"
)
guard_replay.GUARDS["classes_pass"] = lambda rows, n: guard_replay.guard_library(
    rows, n, class_fit="class_fit_pass"
)


def _job(domain: str, noise: float, lr_scale: float, seed: int, max_epochs: int, out: str) -> str:
    torch.set_num_threads(1)
    _keep_pass_counts()
    path = guard_replay._path(Path(out), domain, noise, lr_scale, seed)
    t0 = time.perf_counter()
    rec = guard_replay.record(domain, noise, lr_scale, seed, max_epochs, measure=class_fit)
    rec["wall_s"] = time.perf_counter() - t0
    path.write_text(json.dumps(rec))
    return f"{path.name}: {len(rec['rows'])} epochs in {rec['wall_s']:.0f} s"


def verify(out: Path, run: str) -> int:
    """Rerun ``run`` live with the library's guard (its class fit counted in the pass) and
    compare its (stop, kept, reason) with the ``classes_pass`` replay of the record."""
    torch.set_num_threads(1)
    domain, noise, lr, seed = run.split(":")
    path = guard_replay._path(out, domain, float(noise), float(lr), int(seed))
    rec = json.loads(path.read_text())
    replayed = guard_replay.replay(rec, guard_replay.GUARDS["classes_pass"])
    live = guard_replay.record(domain, float(noise), float(lr), int(seed), 60, live=True)["live"]
    same = tuple(live) == tuple(replayed)
    print(
        f"verify {run}: live {tuple(live)}, replay {tuple(replayed)}: "
        f"{'same' if same else 'DIFFERENT'}"
    )
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--set", choices=sorted(SETS), required=True)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--table", action="store_true", help="replay the recorded runs only")
    p.add_argument("--markdown", action="store_true", help="the docs' table")
    p.add_argument(
        "--verify",
        metavar="DOMAIN:NOISE:LR:SEED",
        help="rerun one recorded run live under the library's rules (the class fit counted "
        "in the training pass) and compare its stop and kept epoch with the replay",
    )
    args = p.parse_args(argv)
    out = args.out / args.set
    out.mkdir(parents=True, exist_ok=True)
    if args.verify:
        return verify(out, args.verify)
    domains: list[str] = []
    for names, noises, seeds in SETS[args.set]:
        if not args.table:
            guard_replay.record_all(_job, out, names.split(","), noises, LRS, seeds, 60, args.jobs)
        domains += [d for d in names.split(",") if d not in domains]
    guard_replay.DESIGN = tuple(domains) if args.set == "design" else ()  # the table's labels
    recs = guard_replay.load(out, domains)
    guards = ["off", "default", "classes", "classes_pass"]
    show = guard_replay.markdown if args.markdown else guard_replay.table
    print(show(recs, guards))
    return 0


if __name__ == "__main__":
    sys.exit(main())
