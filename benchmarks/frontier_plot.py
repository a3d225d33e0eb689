"""One plot per condition of the frontier JSON (``benchmarks/frontier_report.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

STYLE = {
    "neve": ("o", "tab:blue", "NeVe", "NeVe's frontier"),
    "baseline": ("s", "tab:orange", "baselines", "baselines' frontier"),
}


def _label_levels(points: list[Mapping[str, Any]]) -> dict[str, int]:
    """Per point, how many lines above its default place its label goes, so that labels of
    points near each other do not overlap."""
    scored = [p for p in points if p["cost_mean"] is not None and p["test_acc_mean"] is not None]
    if not scored:
        return {}
    costs = [p["cost_mean"] for p in scored]
    accs = [100 * p["test_acc_mean"] for p in scored]
    xspan = (max(costs) - min(costs)) or 1.0
    yspan = (max(accs) - min(accs)) or 1.0
    placed: list[tuple[float, int]] = []
    out = {}
    for p in sorted(scored, key=lambda p: p["cost_mean"]):
        base = level = round(100 * p["test_acc_mean"] / yspan * 30)  # a level: a line of text
        while any(abs(x - p["cost_mean"]) < xspan / 6 and lv == level for x, lv in placed):
            level += 1
        placed.append((p["cost_mean"], level))
        out[p["name"]] = level - base
    return out


def plot(entry: Mapping[str, Any], condition: str, path: Path) -> None:
    """Cost (x) against test accuracy (y) with std error bars both ways: NeVe points
    circles, baselines squares, their own frontiers as step lines, the frontier ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    by_name = {p["name"]: p for p in entry["points"]}
    lift = _label_levels(entry["points"])
    for family, (marker, color, label, front_label) in STYLE.items():
        pts = [p for p in entry["points"] if p["family"] == family and p["name"] in lift]
        for i, p in enumerate(pts):
            xy = (p["cost_mean"], 100 * p["test_acc_mean"])
            ax.errorbar(
                *xy,
                xerr=p["cost_std"],
                yerr=100 * (p["test_acc_std"] or 0.0),
                fmt=marker,
                color=color,
                capsize=3,
                label=label if i == 0 else None,
            )
            offset = (5, 4 + 9 * lift[p["name"]])
            ax.annotate(p["name"], xy, textcoords="offset points", xytext=offset, fontsize=7)
        line = [by_name[n] for n in entry[f"{family}_frontier"]]
        xs = [p["cost_mean"] for p in line]
        ys = [100 * p["test_acc_mean"] for p in line]
        ax.step(xs, ys, where="post", color=color, alpha=0.6, label=front_label)
    front = [by_name[n] for n in entry["frontier"]]
    ax.scatter(
        [p["cost_mean"] for p in front],
        [100 * p["test_acc_mean"] for p in front],
        s=220,
        facecolors="none",
        edgecolors="black",
        label="frontier (all points)",
    )
    seeds = ", ".join(map(str, entry["seeds"]))
    ax.set_title(f"{condition}: test accuracy vs cost to a final model (seeds {seeds})")
    ax.set_xlabel("cost to the final model (full-data epochs, mean ± std over seeds)")
    ax.set_ylabel("test accuracy % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
