"""PNG plots of an Optuna study: velocity curves of all trials and the search history."""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ._report import check_optuna_study, trial_history

__all__ = ["plot_study"]

_STATE_STYLE = {
    TrialState.COMPLETE: ("tab:blue", "o"),
    TrialState.PRUNED: ("tab:orange", "x"),
    TrialState.FAIL: ("tab:red", "s"),
}


def plot_study(study: optuna.Study, out_dir: str | Path) -> dict[str, Path]:
    """Write ``velocity_curves.png`` (velocity vs epoch of every trial, from the epoch
    series :func:`~neve_tune.optuna.report_epoch` stored) and ``search_history.png``
    (objective of each complete trial with the best so far; epochs each trial ran,
    by state) into ``out_dir``; return their paths.

    The search history is drawn on a :class:`matplotlib.figure.Figure`, which needs no
    pyplot backend, so importing :mod:`neve_tune.optuna` leaves the user's backend alone.
    """
    from ..plots import plot_velocity_curves  # imported here: it selects the Agg backend

    check_optuna_study("study", study)
    if not isinstance(out_dir, (str, PathLike)):
        raise TypeError(f"out_dir must be a folder path, got {out_dir!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    histories = {
        f"#{t.number} {t.state.name.lower()}": trial_history(t)
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    }
    paths = {
        "velocity_curves": plot_velocity_curves(
            histories, out / "velocity_curves.png", title=f"{study.study_name}: velocity per trial"
        )
    }

    paths["search_history"] = _search_history(study, trials, out / "search_history.png")
    return paths


def _search_history(study: optuna.Study, trials: list, path: Path) -> Path:
    """Objective of each complete trial with the best so far (top); epochs each trial ran,
    by state (bottom)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if complete:
        xs = [t.number for t in complete]
        ys = [t.value for t in complete]
        ax1.plot(xs, ys, "o", color="tab:blue", label="objective (complete trials)")
        better = min if study.direction == optuna.study.StudyDirection.MINIMIZE else max
        best, run = [], None
        for y in ys:
            run = y if run is None else better(run, y)
            best.append(run)
        ax1.step(xs, best, where="post", color="tab:red", label="best so far")
        ax1.legend(fontsize=8)
    ax1.set_ylabel("objective")
    ax1.set_title(f"{study.study_name}: search history")
    ax1.grid(alpha=0.3)
    for state, (color, marker) in _STATE_STYLE.items():
        pts = [
            (t.number, len(trial_history(t)) or (t.last_step or 0))
            for t in trials
            if t.state == state
        ]
        if pts:
            ax2.scatter(*zip(*pts), color=color, marker=marker, label=state.name.lower())
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("trial")
    ax2.set_ylabel("epochs run")
    ax2.grid(alpha=0.3)
    if trials:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
