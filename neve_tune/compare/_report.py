"""The comparison's terminal table, JSON record and plots."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._json import write_json
from ..records import SEARCH_METHODS as SEARCHES

__all__ = ["run_line", "summary_table", "write_outputs"]


def _fmt(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _names(record: Mapping[str, Any]) -> list[str]:
    """The searches a result (or one run) holds, in the order they ran."""
    return list(record.get("searches") or [m for m in SEARCHES if m in record])


def run_line(run: Mapping[str, Any]) -> str:
    parts = [f"seed {run['seed']}:"]
    for m in _names(run):
        if m in run:
            rule = (run[m].get("selection") or {}).get("rule")
            parts.append(
                f"{m} acc {_fmt(run[m]['test_acc'], 4)} cost "
                f"{_fmt(run[m]['cost']['epochs_equiv'], 1)}ep"
                + (f" (by the {rule})" if m == "neve" and rule else "")
            )
    parts.append(f"cost_ratio {_fmt(run.get('cost_ratio'))}")
    return "  ".join(parts)


def summary_table(result: Mapping[str, Any]) -> str:
    """The terminal table: one row per search (means over seeds, ± std); each block is
    explained in docs/compare.md, "Reading the output"."""
    names = _names(result)
    strongest = result.get("strongest_baseline")
    w = max([9] + [len(m) + 2 for m in names])
    rows = [
        _head(result),
        "",
        f"{'search':{w}s} {'test acc (final model)':>24s} {'cost to final model':>22s} "
        f"{'search cost':>18s} {'wall s':>8s}",
        f"{'':{w}s} {'mean ± std':>24s} {'epochs-equiv':>22s} {'epochs-equiv':>18s} {'':>8s}",
    ]
    rows += [_search_row(m + (" *" if m == strongest else ""), result[m], w) for m in names]
    vs = result.get("vs") or {"asha": result, "asha_es": result.get("vs_asha_es")}
    for base, d in vs.items():
        if d and "cost_ratio" in d:
            rows.append(
                f"NeVe vs {base:{w - 1}s} cost ratio {_pm(d, 'cost_ratio')}   search cost ratio "
                f"{_pm(d, 'search_cost_ratio')}   "
                f"test acc diff {_pm(d, 'test_acc_diff', 100, '+.2f')} pt"
            )
    if strongest:
        rows.append(
            f"* strongest baseline: {strongest} (highest mean test accuracy; ties by lower cost)"
        )
    rows.append("")
    rows.append("epochs spent per rung interval (mean per seed):")
    for m in names:
        rungs = "  ".join(f"{k}: {v:.0f}" for k, v in result[m]["epochs_by_rung"].items())
        ended = ", ".join(f"{k} {v:.1f}" for k, v in sorted(result[m]["stopped_by"].items()))
        rows.append(f"  {m:{w - 1}s} {rungs}   ended: {ended}")
    for note in result.get("notes") or []:
        rows.append(f"note (seed {note['seed']}): {note['text']}")
    return "\n".join(rows)


def _head(result: Mapping[str, Any]) -> str:
    """The table's first line: the study, its data options, the search settings."""
    n = len(result["runs"])
    data = "".join(
        f" · {k} {v}" for k, v in (result.get("data_options") or {}).items() if k != "data_root"
    )
    return (
        f"{result['study']}{data} · backend {result['backend']} · {result['trials']} trials · "
        f"max_epochs {result['max_epochs']} · {n} seed{'s' if n > 1 else ''}"
    )


def _pm(d: Mapping[str, Any], key: str, scale: float = 1.0, fmt: str = ".3f") -> str:
    """``d[key] ± d[key_std]`` (scaled), or ``-`` without a value."""
    if d.get(key) is None:
        return "-"
    return f"{scale * d[key]:{fmt}} ± {scale * (d.get(key + '_std') or 0.0):{fmt.lstrip('+')}}"


def _search_row(label: str, r: Mapping[str, Any], w: int) -> str:
    """One search's row: final model's test accuracy, cost to it, search cost, wall time."""
    acc = (
        f"{100 * r['test_acc']:.2f} ± {100 * (r['test_acc_std'] or 0):.2f} %"
        if r["test_acc"] is not None
        else "-"
    )
    cost = _pm(
        {"c": r["cost"]["epochs_equiv"], "c_std": r["cost_std"]["epochs_equiv"]}, "c", fmt=".1f"
    )
    scost = _pm(
        {"c": r["search_cost"]["epochs_equiv"], "c_std": r["search_cost_std"]["epochs_equiv"]},
        "c",
        fmt=".1f",
    )
    wall = r["cost"]["wall_s"] or 0.0
    return f"{label:{w}s} {acc:>24s} {cost:>22s} {scost:>18s} {wall:8.1f}"


def write_outputs(
    result: Mapping[str, Any], out_dir: str | Path | None, json_path: str | Path | None
) -> list[Path]:
    """The JSON record at ``json_path``; ``anytime.png`` and ``velocity.png`` in ``out_dir``."""
    from ..plots import plot_anytime, plot_velocity_curves

    written: list[Path] = []
    if json_path:
        write_json(json_path, result)
        written.append(Path(json_path))
    if out_dir:
        out = Path(out_dir)
        curves = {m: result[m]["anytime"] for m in _names(result) if m in result}
        written.append(
            plot_anytime(
                curves,
                out / "anytime.png",
                title=f"{result['study']}: best-so-far test accuracy vs cost (mean of "
                f"{len(result['runs'])} seeds)",
            )
        )
        if "neve" in result:
            first = result["runs"][0]["neve"]["trials"]
            hists = {
                f"#{t['number']} lr={t['config']['lr']:.3g}": [
                    {"epoch": i + 1, "velocity": v} for i, v in enumerate(t["velocity"])
                ]
                for t in first
            }
            written.append(
                plot_velocity_curves(
                    hists,
                    out / "velocity.png",
                    title=f"NeVe trials, seed {result['runs'][0]['seed']}",
                )
            )
    return written
