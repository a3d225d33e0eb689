"""Velocity's scale and the velocity stop across model families.

Trains one model per family and seed under NeVe's controller with the studies' LR decay
(``ReduceLROnPlateau`` on the velocity change, factor 0.5, ``lr_patience="auto"``:
``max(2, max_epochs // 20)``) and no stop before ``max_epochs``, and records per epoch the
velocity, the training loss and accuracy, the prediction changes, the LR and, for this
report only, the test accuracy. A stop rule does not change the run before it fires, so
every rule is then applied to the recorded series (:func:`replay`, the same decision as
``NeVe.step``: the velocity rule after ``min_epochs`` (0), then the stall check; else the
``max_epochs`` cap). ``--verify`` reruns seed 0 of each family live under one rule and
checks that the controller stops where the replay says.

Families: ``digits_cnn`` (the digits study's small CNN), ``tabular_mlp`` (a 2-hidden-layer
MLP on scikit-learn's breast cancer, standardised), ``wine_mlp`` (the same on wine),
``mnist1d_cnn`` (a 1-D CNN on MNIST-1D, generated offline by the ``mnist1d`` package),
``bert`` (a 2-layer ``BertForSequenceClassification``, hidden 32, on a synthetic token
task, in a plain loop with ``token_probe``) and ``vit`` (timm ``VisionTransformer`` on the
8x8 digits, patch 2, depth 3, width 48). ``FAMILY@LR`` trains a family at another initial LR.

    export OMP_NUM_THREADS=1   # one torch thread, as the figures were recorded
    python benchmarks/model_families.py                  # all, seeds 0-2, 60 epochs
    python benchmarks/model_families.py --table-only     # reprint from runs/model_families
    python benchmarks/model_families.py --verify relative:0.01
    python benchmarks/model_families.py --lr-patience 10 --out runs/model_families_p10
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (threshold_mode, threshold): the current default first, then the alternatives measured
DEFAULT_RULE = ("relative", 1e-2)  # the studies' and callbacks' default, chosen from this table
RULES = [
    ("absolute", 1e-3),
    ("absolute", 2e-3),
    ("absolute", 5e-4),
    ("relative", 1e-3),
    ("relative", 3e-3),
    ("relative", 1e-2),
    ("relative", 3e-2),
    ("relative", 1e-1),
]


@dataclass
class Setup:
    model: nn.Module
    train: TensorDataset
    test: TensorDataset
    probe: torch.Tensor
    num_classes: int
    optimizer: dict[str, Any]
    batch_size: int
    plain_loop: bool = False  # the BERT: a user's own loop with NeVe.step, not fit


def _standardised(x_tr: torch.Tensor, x_te: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    return (x_tr - mean) / std, (x_te - mean) / std


def _sgd(lr: float) -> dict[str, Any]:
    return {"optimizer": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4}


def digits_cnn(seed: int) -> Setup:
    from neve_tune import gaussian_probe
    from neve_tune.data import get_dataset
    from neve_tune.models import create_model

    b = get_dataset("digits", seed=seed)
    return Setup(
        create_model("small_cnn", b.num_classes, b.input_shape),
        b.train,
        b.test,
        gaussian_probe(b.input_shape, 100, seed=seed),
        b.num_classes,
        _sgd(0.05),
        64,
    )


def _mlp_on(loader: Callable, seed: int) -> Setup:
    from sklearn.model_selection import train_test_split

    from neve_tune import gaussian_probe

    x, y = loader(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    xt, xe = _standardised(
        torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
    )
    k = int(y.max()) + 1
    model = nn.Sequential(
        nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, k)
    )
    return Setup(
        model,
        TensorDataset(xt, torch.tensor(y_tr)),
        TensorDataset(xe, torch.tensor(y_te)),
        gaussian_probe((x.shape[1],), 100, seed=seed),
        k,
        _sgd(0.05),
        32,
    )


def tabular_mlp(seed: int) -> Setup:
    from sklearn.datasets import load_breast_cancer

    return _mlp_on(load_breast_cancer, seed)


def wine_mlp(seed: int) -> Setup:
    from sklearn.datasets import load_wine

    return _mlp_on(load_wine, seed)


class CNN1d(nn.Module):
    """Three 1-D conv blocks (batch norm, ReLU) with pooling and a linear head."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 3, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(width, width, 3, padding=1),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def mnist1d_cnn(seed: int) -> Setup:
    from mnist1d.data import get_dataset_args, make_dataset

    from neve_tune import gaussian_probe

    args = get_dataset_args()
    args.seed = 42 + seed
    d = make_dataset(args)  # 4,000 train / 1,000 test signals of length 40, 10 classes
    xt, xe = _standardised(
        torch.tensor(d["x"], dtype=torch.float32), torch.tensor(d["x_test"], dtype=torch.float32)
    )
    torch.manual_seed(seed)
    return Setup(
        CNN1d(10),
        TensorDataset(xt[:, None], torch.tensor(d["y"])),
        TensorDataset(xe[:, None], torch.tensor(d["y_test"])),
        gaussian_probe((1, 40), 100, seed=seed),
        10,
        _sgd(0.05),
        64,
    )


def _token_task(n: int, gen: torch.Generator, vocab: int = 64, length: int = 16, k: int = 4):
    """Label = the token group (vocab split in ``k``) planted in 6 of ``length`` random
    positions."""
    y = torch.randint(k, (n,), generator=gen)
    ids = torch.randint(vocab, (n, length), generator=gen)
    group = vocab // k
    planted = y[:, None] * group + torch.randint(group, (n, 6), generator=gen)
    pos = torch.rand(n, length, generator=gen).argsort(1)[:, :6]
    ids.scatter_(1, pos, planted)
    return TensorDataset(ids, y)


def bert_classifier() -> nn.Module:
    """The token task's model: a 2-layer BERT, hidden 32, 4 classes."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=4,
    )
    return BertForSequenceClassification(cfg)


def bert(seed: int) -> Setup:
    from neve_tune.hf import token_probe

    gen = torch.Generator().manual_seed(1000 + seed)
    train, test = _token_task(2000, gen), _token_task(500, gen)
    torch.manual_seed(seed)
    return Setup(
        bert_classifier(),
        train,
        test,
        token_probe(64, 16, 100, seed=seed),
        4,
        {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01},
        64,
        plain_loop=True,
    )


def vit(seed: int) -> Setup:
    from timm.models.vision_transformer import VisionTransformer

    from neve_tune import gaussian_probe
    from neve_tune.data import get_dataset

    b = get_dataset("digits", seed=seed)
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=8,
        patch_size=2,
        in_chans=1,
        num_classes=10,
        embed_dim=48,
        depth=3,
        num_heads=3,
        mlp_ratio=2.0,
    )
    return Setup(
        model,
        b.train,
        b.test,
        gaussian_probe(b.input_shape, 100, seed=seed),
        10,
        {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05},
        64,
    )


FAMILIES: dict[str, Callable[[int], Setup]] = {
    "digits_cnn": digits_cnn,
    "tabular_mlp": tabular_mlp,
    "wine_mlp": wine_mlp,
    "mnist1d_cnn": mnist1d_cnn,
    "bert": bert,
    "vit": vit,
}


def _controller(
    s: Setup,
    optimizer: torch.optim.Optimizer,
    max_epochs: int,
    rule: tuple[str, float] | None,
    lr_patience: int | None,
):
    from neve_tune import NeuralVelocity, NeVe

    mode, threshold = rule if rule is not None else ("absolute", 1e-12)
    patience = (
        max(2, max_epochs // 20) if lr_patience is None else lr_patience
    )  # None: the studies' "auto"
    return NeVe(
        optimizer,
        NeuralVelocity(s.model, s.probe),
        threshold=threshold,
        threshold_mode=mode,
        max_epochs=max_epochs,
        min_epochs=max_epochs if rule is None else 0,  # None: never stop early
        lr_patience=patience,
        lr_factor=0.5,
        num_classes=s.num_classes,
        pc_patience=None,
    )


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _plain_loop(s: Setup, optimizer, neve, seed: int, on_epoch: Callable[[dict], None]) -> None:
    """A user's own loop (docs/plain_loop.py) with prediction changes kept from indices."""
    from neve_tune import PredictionChanges

    x, y = s.train.tensors
    tracker = PredictionChanges(len(y))
    neve.start()
    while not neve.should_stop:
        order = torch.randperm(
            len(y), generator=torch.Generator().manual_seed(seed * 1_000_003 + neve.epoch + 1)
        )
        total, correct = 0.0, 0
        s.model.train()
        for idx in order.split(s.batch_size):
            out = _logits(s.model, x[idx])
            loss = F.cross_entropy(out, y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            correct += int((out.argmax(1) == y[idx]).sum())
            tracker.update(idx, out.detach(), y[idx])
        changes = tracker.epoch_end()
        m = neve.step(
            train_loss=total / len(y),
            prediction_changes=changes,
            unfit=tracker.unfit,
            class_fit=tracker.class_fit,
        )
        on_epoch(
            {
                **m,
                "train_loss": total / len(y),
                "train_acc": correct / len(y),
                "prediction_changes": changes,
                "stopped_by": neve.stopped_by,
            }
        )


def _test_acc(model: nn.Module, test: TensorDataset) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        acc = float((_logits(model, x).argmax(1) == y).float().mean())
    model.train(was)
    return acc


def run(
    family: str,
    seed: int,
    max_epochs: int,
    rule: tuple[str, float] | None = None,
    lr_patience: int | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One run's per-epoch record and class count (``rule`` None: to ``max_epochs`` without a
    stop)."""
    from neve_tune.train import fit
    from neve_tune.trial import make_optimizer

    torch.manual_seed(seed)
    name, _, lr = family.partition("@")  # "wine_mlp@0.005": the family at another initial LR
    s = FAMILIES[name](seed)
    if lr:
        s.optimizer = {**s.optimizer, "lr": float(lr)}
    optimizer = make_optimizer(s.model, s.optimizer)
    neve = _controller(s, optimizer, max_epochs, rule, lr_patience)
    rows: list[dict[str, Any]] = []
    keys = (
        "epoch",
        "velocity",
        "velocity_change",
        "train_loss",
        "train_acc",
        "prediction_changes",
        "lr",
        "stopped_by",
    )

    def on_epoch(m: dict) -> None:
        rows.append({**{k: m.get(k) for k in keys}, "test_acc": _test_acc(s.model, s.test)})

    if s.plain_loop:
        _plain_loop(s, optimizer, neve, seed, on_epoch)
    else:
        fit(
            s.model, optimizer, s.train, neve, batch_size=s.batch_size, seed=seed, on_epoch=on_epoch
        )
    return rows, s.num_classes


def replay(
    rows: list[dict[str, Any]],
    mode: str,
    threshold: float,
    num_classes: int,
    max_epochs: int,
    stall_margin: float = 0.1,
) -> tuple[int, str]:
    """(stop epoch, stopped_by) of ``NeVe`` under one rule, from a run recorded without a stop
    (the stall checks are the controller's own functions, neve_tune._rules)."""
    from neve_tune._rules import STALL_PATIENCE, learned, stalled_early

    first, peak, best = rows[0]["train_loss"], 0.0, math.inf
    for r in rows:
        v = r["velocity"]
        peak = max(peak, v)
        best = min(best, r["train_loss"])
        settled = v / peak if mode == "relative" and peak > 0 else v
        fired = settled < threshold
        if fired or r["epoch"] >= max_epochs:
            ok = learned(r["train_loss"], first, stall_margin=stall_margin, num_classes=num_classes)
            return r["epoch"], ("velocity" if fired else "max_epochs") if ok else "stalled"
        if stalled_early(
            r["epoch"],
            best,
            first,
            max_epochs=max_epochs,
            stall_patience=STALL_PATIENCE,
            stall_margin=stall_margin,
        ):
            return r["epoch"], "stalled"
    raise ValueError("the record ends before max_epochs")


def _record_path(out: Path, family: str, seed: int) -> Path:
    return out / f"{family}_s{seed}.json"


def _rule_name(mode: str, threshold: float) -> str:
    return f"{'abs' if mode == 'absolute' else 'rel'} {threshold:g}"


def _records(out: Path, family: str, seeds: list[int]) -> list[dict[str, Any]]:
    return [json.loads(_record_path(out, family, s).read_text()) for s in seeds]


def _stops(
    recs: list[dict[str, Any]], mode: str, thr: float
) -> list[tuple[int, str, dict[str, Any]]]:
    """(epoch, stopped_by, that epoch's row) per seed."""
    out = []
    for rec in recs:
        epoch, why = replay(rec["rows"], mode, thr, rec["num_classes"], rec["max_epochs"])
        out.append((epoch, why, rec["rows"][epoch - 1]))
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def table(out: Path, families: list[str], seeds: list[int]) -> str:
    """Velocity's scale per family, then every rule's stop per seed."""
    lines = [
        "velocity scale (mean over seeds): epoch 1 | median | min over the run;  final train/test "
        "acc at the cap",
        f"{'family':<18} {'V1':>8} {'median':>9} {'min':>9}  {'acc@cap':>11}  epochs",
    ]
    stops = []
    for fam in families:
        recs = _records(out, fam, seeds)
        vs = [[r["velocity"] for r in rec["rows"]] for rec in recs]
        lines.append(
            f"{fam:<18} {_mean([v[0] for v in vs]):8.4f} "
            f"{_mean([statistics.median(v) for v in vs]):9.2e} "
            f"{_mean([min(v) for v in vs]):9.2e}  "
            f"{_mean([r['rows'][-1]['train_acc'] for r in recs]):5.3f}/"
            f"{_mean([r['rows'][-1]['test_acc'] for r in recs]):5.3f}  {recs[0]['max_epochs']}"
        )
        for mode, thr in RULES:
            cells = [
                f"{e:>2}{why[0]} {row['train_acc']:.2f}/{row['test_acc']:.2f}"
                for e, why, row in _stops(recs, mode, thr)
            ]
            stops.append(f"{fam:<18} {_rule_name(mode, thr):<10} " + "  ".join(cells))
    lines += [
        "",
        "stop epoch per seed (v: velocity, m: max_epochs, s: stalled)  train acc/test acc at that "
        "epoch",
    ]
    return "\n".join(lines + stops)


def markdown(out: Path, families: list[str], seeds: list[int], default: tuple[str, float]) -> str:
    """The README's table: scale, stop epochs per seed under every rule (suffix s: stalled,
    m: the cap), and the accuracies at the default rule's stop and at the cap."""
    head = ["family", "V epoch 1", "median V", "min V"] + [_rule_name(*r) for r in RULES]
    head += [f"train / test acc at {_rule_name(*default)} stop", "train / test acc at the cap"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fam in families:
        recs = _records(out, fam, seeds)
        vs = [[r["velocity"] for r in rec["rows"]] for rec in recs]
        cells = [
            f"`{fam}`",
            f"{_mean([v[0] for v in vs]):.2g}",
            f"{_mean([statistics.median(v) for v in vs]):.1e}",
            f"{_mean([min(v) for v in vs]):.0e}",
        ]
        for rule in RULES:
            stops = _stops(recs, *rule)
            text = "/".join(f"{e}{'' if why == 'velocity' else why[0]}" for e, why, _ in stops)
            cells.append(f"**{text}**" if rule == default else text)
        at = [row for _, _, row in _stops(recs, *default)]
        cap = [rec["rows"][-1] for rec in recs]
        for picked in (at, cap):
            cells.append(
                f"{_mean([r['train_acc'] for r in picked]) * 100:.1f} / "
                f"{_mean([r['test_acc'] for r in picked]) * 100:.1f}"
            )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-epochs", type=int, default=60)
    p.add_argument(
        "--epochs-for", nargs="*", default=[], help="FAMILY=N: a smaller cap for a slow family"
    )
    p.add_argument(
        "--lr-patience",
        default="auto",
        help="'auto' (the studies': max(2, max_epochs // 20)) or "
        "epochs (10: the NeVe class default)",
    )
    p.add_argument("--out", default=str(ROOT / "runs" / "model_families"))
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--markdown", action="store_true", help="also print the README's table")
    p.add_argument(
        "--verify",
        metavar="MODE:THRESHOLD",
        help="rerun seed 0 live under this rule, compare with the replay",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted({f.partition("@")[0] for f in families} - set(FAMILIES))
    if unknown:
        p.error(f"--families: unknown {unknown}; known {sorted(FAMILIES)}")
    patience = None if args.lr_patience == "auto" else int(args.lr_patience)
    caps = {f: args.max_epochs for f in families}
    caps.update({k: int(v) for k, v in (e.split("=") for e in args.epochs_for)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for fam in families if not args.table_only else []:
        for seed in args.seeds:
            path = _record_path(out, fam, seed)
            if path.exists() and json.loads(path.read_text())["max_epochs"] == caps[fam]:
                # recorded already (a record holds its lr_patience; use another --out for another)
                continue
            t0 = time.perf_counter()
            rows, k = run(fam, seed, caps[fam], lr_patience=patience)
            path.write_text(
                json.dumps(
                    {
                        "family": fam,
                        "seed": seed,
                        "max_epochs": caps[fam],
                        "num_classes": k,
                        "lr_patience": args.lr_patience,
                        "wall_s": time.perf_counter() - t0,
                        "rows": rows,
                    }
                )
            )
            print(
                f"{fam} seed {seed}: {len(rows)} epochs in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
    print(table(out, families, args.seeds))
    if args.markdown:
        print(markdown(out, families, args.seeds, DEFAULT_RULE))
    if args.verify:
        mode, thr = args.verify.split(":")
        for fam in families:
            rec = json.loads(_record_path(out, fam, args.seeds[0]).read_text())
            live, _ = run(fam, args.seeds[0], caps[fam], (mode, float(thr)), patience)
            want = replay(rec["rows"], mode, float(thr), rec["num_classes"], caps[fam])
            got = (live[-1]["epoch"], live[-1]["stopped_by"])
            print(
                f"verify {fam} seed {args.seeds[0]} {args.verify}: live {got}, replay {want}: "
                f"{'same' if got == want else 'DIFFERENT'}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
