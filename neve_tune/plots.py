"""PNG plots: one run's velocity/LR/loss, velocity curves of many trials, anytime curves.

Uses matplotlib's Agg backend, so it works on headless machines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_history", "plot_velocity_curves", "plot_anytime"]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for m in history:
        v = m.get(key)
        if v is not None:
            xs.append(int(m["epoch"]))
            ys.append(float(v))
    return xs, ys


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Velocity (log), learning rate (log) and training loss per epoch of one run."""
    fig, axes = plt.subplots(3, 1, figsize=(6, 7), sharex=True)
    for ax, key, log in zip(axes, ("velocity", "lr", "train_loss"), (True, True, True)):
        xs, ys = _series(history, key)
        ax.plot(xs, ys, marker=".")
        if log and ys and min(ys) > 0:
            ax.set_yscale("log")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    stops = [m["epoch"] for m in history if m.get("neve_stop")]
    for x in stops:
        axes[0].axvline(x, color="tab:red", ls="--", lw=1, label="NeVe stop")
    if stops:
        axes[0].legend()
    axes[-1].set_xlabel("epoch")
    if title:
        axes[0].set_title(title)
    return _save(fig, path)


def plot_velocity_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    title: str = "velocity per trial",
) -> Path:
    """Velocity against epoch for many trials on one log-scale axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, hist in histories.items():
        xs, ys = _series(hist, "velocity")
        if ys:  # trials pruned after an epoch or two show as dots
            ax.plot(xs, ys, lw=1, alpha=0.8, label=label, marker="." if len(ys) < 3 else None)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("model velocity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    drawn = len(ax.get_lines())
    if 0 < drawn <= 12:
        ax.legend(fontsize=7)
    elif not drawn:  # a validation search, or trials that never finished an epoch
        ax.text(0.5, 0.5, "no trial recorded a velocity", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def plot_anytime(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: str | Path,
    xlabel: str = "cost (full-data training epochs)",
    title: str = "best configuration so far: test accuracy vs search cost",
) -> Path:
    """Step curves of ``[cost, test_acc]`` points, one per search, on one figure."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    finals = []
    for label, pts in curves.items():
        if pts:
            xs, ys = zip(*[(float(p[0]), float(p[1])) for p in pts])
            ax.step(xs, ys, where="post", label=label, marker=".")
            finals.append(ys[-1])
    if finals:  # zoom on where the searches end up; earlier, worse points fall below the axis
        low = min(finals)
        ax.set_ylim(
            max(0.0, low - 3 * (1.0 - low) - 0.01),
            min(1.0, max(finals) + 0.01) if max(finals) < 0.99 else 1.0,
        )
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
