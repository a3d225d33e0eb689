"""Every door, one behaviour: the conformance table, doors x behaviours, one test per cell.

Each cell trains the same model on the same data (tests/_conformance.py: a 20-64-2 MLP on
512 points, clean or with 20 % of the labels flipped) through one door, with the studies'
trial rules, and checks one behaviour. :data:`DOORS`, :data:`BEHAVIOURS`,
:data:`NOT_APPLICABLE` and :data:`XFAIL` are the table; the cells are generated from them
and docs/conformance.md shows them (:func:`table`; a page that disagrees fails here).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

try:
    from tests import _conformance as C
    from tests import _conformance_callbacks as K
    from tests import _conformance_doors as D
except ImportError:  # tests/ on sys.path (pytest's default import mode)
    import _conformance as C  # type: ignore[no-redef]
    import _conformance_callbacks as K  # type: ignore[no-redef]
    import _conformance_doors as D  # type: ignore[no-redef]

from neve_tune._rules import STALL_PATIENCE

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "conformance.md"

#: the doors: how a user's training reaches the trial rules
DOORS = {
    "fit": "`fit`",
    "cli": "`neve-tune train` (`run_trial`)",
    "optuna": "own loop + Optuna",
    "ray": "Ray trainable",
    "lightning": "Lightning",
    "hf": "Hugging Face",
}
#: the behaviours every door must show, in the words of the docs table
BEHAVIOURS = {
    "converges": "a learnable task stops by its velocity, before the cap",
    "dead_lr_stalls": f"a dead LR (1e-6) ends `stalled` at epoch {1 + STALL_PATIENCE}, "
    f"not at the cap ({C.MAX_EPOCHS})",
    "guard_fires_on_noise": "the memorisation guard stops a run on noisy labels and keeps "
    "an earlier epoch",
    "guard_quiet_on_clean": "the guard, fed every epoch, does not stop a run on clean labels",
    "lr_decays": "the velocity LR decay fires within the budget",
    "resume": f"a run interrupted after epoch {C.STOPPED_AT} and resumed gives the "
    "uninterrupted velocity and LR series",
    "stop_reason": "the stop reason is recorded where the door records runs, "
    "a pruner's or scheduler's stop included",
    "auto_pick": "the `auto` pick: the consensus on noisy labels, the objective on clean "
    "ones, a warning without the data it needs",
}
#: cells that do not apply, with the reason (shown in the docs table; never skipped in silence)
NOT_APPLICABLE = {
    ("fit", "auto_pick"): "`fit` trains one configuration; a search over `fit` runs is "
    "the Optuna or Ray door (`make_objective`, `neve_trainable`)",
    ("cli", "auto_pick"): "`neve-tune train` trains one configuration; the CLI's searches "
    "pick with the Optuna and Ray doors' `pick_trial` and `summarize`",
}
#: cells that fail today, with the true reason (strict: a fix turns them into failures)
XFAIL: dict[tuple[str, str], str] = {}
#: cells that start a local Ray cluster: the slow suite
SLOW_DOORS = {"ray"}


def cells() -> list[Any]:
    out = []
    for behaviour in BEHAVIOURS:
        for door in DOORS:
            marks = []
            if (door, behaviour) in NOT_APPLICABLE:
                marks.append(pytest.mark.skip(reason=NOT_APPLICABLE[door, behaviour]))
            if (door, behaviour) in XFAIL:
                marks.append(pytest.mark.xfail(reason=XFAIL[door, behaviour], strict=True))
            if door in SLOW_DOORS:
                marks += [pytest.mark.slow, pytest.mark.ray]
            out.append(pytest.param(door, behaviour, marks=marks, id=f"{door}-{behaviour}"))
    return out


# ---------------------------------------------------------------- the runs, once per door and case
_RUNS: dict[tuple[str, str], C.Outcome] = {}


def run(door: str, case: str, ctx: Any) -> C.Outcome:
    """The outcome of ``case`` through ``door``, trained once per session."""
    if (door, case) not in _RUNS:
        setting = C.CASES[case]
        if door == "fit":
            out = D.fit_run(setting)
        elif door == "cli":
            out = D.cli_run(setting)
        elif door == "optuna":
            out = D.optuna_run(setting)
        elif door == "lightning":
            out = K.lightning_run(setting)
        elif door == "hf":
            out = K.hf_run(setting, ctx.tmp(f"hf-{case}"))
        else:
            out = ctx.ray()["runs"][case]
        _RUNS[door, case] = out
    return _RUNS[door, case]


class Ctx:
    """What a cell may need beyond its door: temporary folders, the Ray session's runs."""

    def __init__(self, request: pytest.FixtureRequest, factory: Any) -> None:
        self.request, self.factory = request, factory

    def tmp(self, name: str) -> Path:
        return self.factory.mktemp(name)

    def ray(self) -> dict[str, Any]:
        return self.request.getfixturevalue("ray_search")


@pytest.fixture(scope="module")
def ray_search(tmp_path_factory) -> dict[str, Any]:
    try:
        from tests import _conformance_ray as R
    except ImportError:
        import _conformance_ray as R  # type: ignore[no-redef]
    return R.search(tmp_path_factory.mktemp("ray"))


# ---------------------------------------------------------------- the behaviours
def converges(door: str, ctx: Ctx) -> None:
    out = run(door, "clean", ctx)
    assert out.stopped_by == "velocity" and len(out.history) < C.MAX_EPOCHS, out.stopped_by
    assert out.history[-1]["neve_stop"] and out.history[-1]["kept_epoch"] == len(out.history)


def dead_lr_stalls(door: str, ctx: Ctx) -> None:
    out = run(door, "dead", ctx)
    assert (out.stopped_by, len(out.history)) == ("stalled", 1 + STALL_PATIENCE)
    assert out.history[-1]["stalled"] and not out.history[-1]["neve_stop"]


def guard_fires_on_noise(door: str, ctx: Ctx) -> None:
    out = run(door, "noisy", ctx)
    last = out.history[-1]
    assert out.stopped_by == "prediction_changes" and len(out.history) < C.MAX_EPOCHS
    kept = last["kept_epoch"]
    assert kept < last["epoch"] and last["kept_train_loss"] == out.history[kept - 1]["train_loss"]


def guard_quiet_on_clean(door: str, ctx: Ctx) -> None:
    out = run(door, "clean", ctx)
    changes = [m["prediction_changes"] for m in out.history]
    assert all(isinstance(c, int) for c in changes[1:]), changes  # the guard was fed
    assert out.stopped_by != "prediction_changes"
    assert all(m["kept_epoch"] == m["epoch"] for m in out.history)


def lr_decays(door: str, ctx: Ctx) -> None:
    out = run(door, "noisy_unguarded", ctx)
    lrs = [m["lr"] for m in out.history]
    lr = C.CASES["noisy_unguarded"].lr
    assert lrs[0] == lr and min(lrs) <= lr / 2, lrs
    assert out.stopped_by == "velocity" and len(out.history) < C.MAX_EPOCHS


def resume(door: str, ctx: Ctx) -> None:
    whole = run(door, "clean", ctx)
    if door == "fit":
        resumed = D.fit_resumed(ctx.tmp("fit-resume"))
    elif door == "cli":
        resumed = D.cli_resumed(ctx.tmp("cli-resume"))
    elif door == "optuna":
        resumed = D.optuna_resumed()
    elif door == "lightning":
        resumed = K.lightning_resumed(ctx.tmp("lightning-resume"))
    elif door == "hf":
        resumed = K.hf_resumed(ctx.tmp("hf-resume"))
    else:
        resumed = ctx.ray()["resumed"]
    assert resumed.velocities == whole.velocities
    assert [m["lr"] for m in resumed.history] == [m["lr"] for m in whole.history]
    assert resumed.stopped_by == whole.stopped_by


#: where each door records a run's stop: a key of :attr:`Outcome.record`
RECORD_KEY = {
    "fit": "FitResult.stopped_by",
    "cli": "TrialResult.stopped_by",
    "optuna": "stopped_by",  # the last epoch's user attribute; the trial's state beside it
    "ray": "stopped_by",  # the trial's last result
    "lightning": "neve_stopped_by",  # every logger's hyperparameters
    "hf": "neve_stopped_by",  # the Trainer's log history
}


def stop_reason(door: str, ctx: Ctx) -> None:
    key = RECORD_KEY[door]
    for case, why in (("clean", "velocity"), ("dead", "stalled"), ("noisy", "prediction_changes")):
        out = run(door, case, ctx)
        assert out.record.get(key) == out.stopped_by == why, (case, out.record)
    if door in ("fit", "cli"):
        return  # no pruner or scheduler of their own: their stops are the controller's
    if door == "optuna":
        pruned = D.optuna_run(C.CASES["clean"], pruner=D.pruner_at_once())
        assert pruned.record == {"trial.state": "PRUNED", "stopped_by": None}
        assert run(door, "dead", ctx).record["trial.state"] == "PRUNED"  # NeVePruner: stalled
        return
    if door == "lightning":
        pruned = K.lightning_run(C.CASES["clean"], trial=D.pruned_at_once())
    elif door == "hf":
        pruned = K.hf_run(C.CASES["clean"], ctx.tmp("hf-pruned"), trial=D.pruned_at_once())
    else:
        pruned = ctx.ray()["pruned"]
    assert pruned.record.get(key) == "pruned" and len(pruned.history) < C.MAX_EPOCHS, pruned.record
    assert pruned.history[-1]["stopped_by"] == "pruned"


def auto_pick(door: str, ctx: Ctx) -> None:
    if door == "ray":
        picks = ctx.ray()["picks"]
    elif door in ("lightning", "hf"):
        picks = K.callback_picks(door, ctx.tmp(f"{door}-picks"))
    else:
        picks = D.optuna_picks()
    assert picks["noisy"] == ("consensus", picks["noisy_consensus"]), picks
    assert picks["clean"] == ("objective", picks["clean_objective"]), picks
    assert picks["noisy"][1] != picks["noisy_objective"]  # the two rules disagree here
    assert picks["without_data_warns"], picks


CHECKS = {
    "converges": converges,
    "dead_lr_stalls": dead_lr_stalls,
    "guard_fires_on_noise": guard_fires_on_noise,
    "guard_quiet_on_clean": guard_quiet_on_clean,
    "lr_decays": lr_decays,
    "resume": resume,
    "stop_reason": stop_reason,
    "auto_pick": auto_pick,
}


@pytest.mark.parametrize("door, behaviour", cells())
def test_cell(door: str, behaviour: str, request, tmp_path_factory) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        CHECKS[behaviour](door, Ctx(request, tmp_path_factory))


# ---------------------------------------------------------------- the table in the docs
START = "<!-- begin generated table (tests/test_conformance.py) -->"
END = "<!-- end generated table -->"


def table() -> str:
    """The table docs/conformance.md shows, from :data:`DOORS` and :data:`BEHAVIOURS`."""
    lines = [
        "| behaviour | " + " | ".join(DOORS.values()) + " |",
        "|---|" + "---|" * len(DOORS),
    ]
    notes: list[str] = []
    for behaviour, words in BEHAVIOURS.items():
        row = []
        for door in DOORS:
            if (door, behaviour) in NOT_APPLICABLE:
                notes.append(f"{DOORS[door]}, {behaviour}: {NOT_APPLICABLE[door, behaviour]}.")
                row.append(f"n/a [{len(notes)}]")
            elif (door, behaviour) in XFAIL:
                notes.append(f"{DOORS[door]}, {behaviour}: {XFAIL[door, behaviour]}.")
                row.append(f"fails [{len(notes)}]")
            else:
                row.append("yes (slow suite)" if door in SLOW_DOORS else "yes")
        lines.append(f"| `{behaviour}`: {words} | " + " | ".join(row) + " |")
    lines.append("")
    lines += [f"[{i}] {note}  " for i, note in enumerate(notes, start=1)]
    return "\n".join(lines).rstrip() + "\n"


def test_the_docs_show_this_table() -> None:
    text = PAGE.read_text()
    assert START in text and END in text, f"{PAGE} lost its table markers"
    shown = text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert shown == table(), (
        "docs/conformance.md disagrees with tests/test_conformance.py: "
        "python tests/test_conformance.py writes the table"
    )


def test_every_cell_is_tested_or_declared() -> None:
    declared = set(NOT_APPLICABLE) | set(XFAIL)
    assert declared <= {(d, b) for d in DOORS for b in BEHAVIOURS}
    assert set(CHECKS) == set(BEHAVIOURS) and set(RECORD_KEY) == set(DOORS)
    assert len(cells()) == len(DOORS) * len(BEHAVIOURS)


def write_table() -> None:
    """Write :func:`table` into docs/conformance.md, between its markers."""
    text = PAGE.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    PAGE.write_text(f"{head}{START}\n{table()}{END}{tail}")


if __name__ == "__main__":
    write_table()
