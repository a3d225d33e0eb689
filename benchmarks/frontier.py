"""The accuracy–cost frontier: NeVe's variants and the validation baselines' variants, each a
point (mean test accuracy of its final model ± std over seeds, against its mean cost to that
model in full-data epochs), measured with ``neve_tune.compare.compare`` exactly as
``neve-tune compare`` measures them.

Each job is one ``compare`` call (one condition, one seed, one group of searches) and writes
``runs/frontier/<condition>__<group>__seed<S>.json``; a job whose record exists is not run
again, so an interrupted run continues where it stopped. A group runs several searches in
one call where one call yields several points (the default group: NeVe, ``asha``,
``asha_es`` and the baseline variants). Then the points, their frontier per condition, one
plot per condition and the page ``docs/results/frontier.md`` are written
(``benchmarks/frontier_report.py``).

    python benchmarks/frontier.py                       # the full grid (issue: 5 seeds)
    python benchmarks/frontier.py --conditions digits_clean,digits_noise20 --seeds 0,1,2 \\
        --groups default,threshold_x0.5,threshold_x2
    python benchmarks/frontier.py --report              # JSON, plots and page from the records
    python benchmarks/frontier.py --rerun-neve --groups default  # after a change to NeVe's rules

``--rerun-neve`` runs only the NeVe search of each job again and puts it in the job's record
in place of the old one (with NeVe's paired ratios recomputed); the baselines' searches are
kept: their code did not change, and they are deterministic on one machine.

Groups (each a NeVe point, and the baselines' points where it runs them):

- ``default``: the study as it ships, reduction factor 4: NeVe, ``asha``, ``asha_es`` and
  ``--baseline-variants`` (default ``asha_es:acc:retrain,asha_es:acc:best_checkpoint``);
- ``threshold_x0.5`` / ``threshold_x2``: NeVe with the velocity threshold scaled, its
  search range (``LogUniform(1e-3, 1e-1)`` for the bundled studies) and default alike;
- ``rf8``: NeVe, ``asha`` and ``asha_es`` with reduction factor 8 (rungs at 1 and 8);
- ``subset_off``: NeVe without the selection subset (objective pick, training-loss rungs);
- ``subset_200``: NeVe with a selection subset of 200 examples instead of 500;
- ``rungs_train_loss``: NeVe with the ``auto`` pick and its rungs on the training loss
  (``rung_signal="train_loss"``) instead of ``auto``'s consensus rungs under noise;
- ``threshold_x4``: the threshold scaled ×4 (NeVe's cheapest stop measured);
- ``rungs_train_loss_threshold_x2``: both changes of ``rungs_train_loss`` and
  ``threshold_x2``;
- ``es_patience5`` / ``es_patience20``: no NeVe search; ``asha_es`` and the
  ``--baseline-variants`` with an early-stopping patience (``Study.early_stopping``) of 5 or 20
  epochs instead of 10.

Figures are deterministic on one machine, not across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "frontier"

# condition -> (study, data options); label noise as `neve-tune compare --label-noise`
CONDITIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits_clean": ("digits", {}),
    "digits_noise20": ("digits", {"label_noise": 0.2}),
    "mnist1d_clean": ("mnist1d", {}),
    "mnist1d_noise20": ("mnist1d", {"label_noise": 0.2}),
    # the other targets: 40% noise, and a quarter of the data (underfitting)
    "digits_noise40": ("digits", {"label_noise": 0.4}),
    "mnist1d_data25": ("mnist1d", {"train_fraction": 0.25}),
}
BASELINE_VARIANTS = "asha_es:acc:retrain,asha_es:acc:best_checkpoint"
SUBSET_SMALL = 200


def _scaled_threshold(study: Any, factor: float) -> Any:
    """The study with its velocity threshold scaled by ``factor``: the search range's bounds
    and the default alike, so the sampler explores the same log-range shifted."""
    from neve_tune.space import LogUniform

    space = dict(study.search_space)
    t = space.get("threshold")
    if t is not None:
        if not isinstance(t, LogUniform):
            raise ValueError(f"threshold scaling needs a LogUniform threshold range, got {t!r}")
        space["threshold"] = LogUniform(t.low * factor, t.high * factor)
    defaults = dict(study.defaults, threshold=study.defaults["threshold"] * factor)
    return study.replace(search_space=space, defaults=defaults)


# group -> (searches, reduction factor, whether the baseline variants run, study change)
GROUPS: dict[str, tuple[tuple[str, ...], int, bool, Any]] = {
    "default": (("neve", "asha", "asha_es"), 4, True, None),
    "threshold_x0.5": (("neve",), 4, False, lambda s: _scaled_threshold(s, 0.5)),
    "threshold_x2": (("neve",), 4, False, lambda s: _scaled_threshold(s, 2.0)),
    "rf8": (("neve", "asha", "asha_es"), 8, False, None),
    "subset_off": (
        ("neve",),
        4,
        False,
        lambda s: s.replace(selection_subset=0, selection="objective"),
    ),
    "subset_200": (("neve",), 4, False, lambda s: s.replace(selection_subset=SUBSET_SMALL)),
    "rungs_train_loss": (("neve",), 4, False, None),
    "threshold_x4": (("neve",), 4, False, lambda s: _scaled_threshold(s, 4.0)),
    "rungs_train_loss_threshold_x2": (("neve",), 4, False, lambda s: _scaled_threshold(s, 2.0)),
    "es_patience5": (("asha_es",), 4, True, lambda s: s.replace(early_stopping=5)),
    "es_patience20": (("asha_es",), 4, True, lambda s: s.replace(early_stopping=20)),
}
# group -> the NeVe search's rung signal where it is not the study's (compare's rung_signal)
RUNG_SIGNAL: dict[str, str] = {
    "rungs_train_loss": "train_loss",
    "rungs_train_loss_threshold_x2": "train_loss",
}
# what each group changes, in words (the page and the JSON carry it)
GROUP_SETTINGS: dict[str, str] = {
    "default": "the study as it ships, reduction factor 4",
    "threshold_x0.5": "velocity threshold range and default ×0.5",
    "threshold_x2": "velocity threshold range and default ×2",
    "rf8": "reduction factor 8 (rungs at epochs 1 and 8, each keeps 1/8)",
    "subset_off": "selection subset off (objective pick, training-loss rungs)",
    "subset_200": f"selection subset of {SUBSET_SMALL} examples (not 500)",
    "rungs_train_loss": "rungs on the training loss, the auto pick (not auto's consensus rungs)",
    "threshold_x4": "velocity threshold range and default ×4",
    "rungs_train_loss_threshold_x2": "rungs on the training loss and the threshold ×2",
    "es_patience5": "early stopping after 5 epochs without a better validation value (not 10)",
    "es_patience20": "early stopping after 20 epochs without a better validation value (not 10)",
}


def job_path(out: Path, condition: str, group: str, seed: int) -> Path:
    return out / f"{condition}__{group}__seed{seed}.json"


def job_study(condition: str, group: str, max_epochs: int | None = None) -> Any:
    """The study a job runs: the condition's data options, then the group's change."""
    from neve_tune import load_study

    name, options = CONDITIONS[condition]
    study = load_study(name)
    if options:
        study = study.replace(data_options={**study.data_options, **options})
    if max_epochs is not None:
        study = study.replace(max_epochs=max_epochs)
    change = GROUPS[group][3]
    return study if change is None else change(study)


def run_job(
    out: Path,
    condition: str,
    group: str,
    seed: int,
    *,
    trials: int,
    baseline_variants: str,
    max_epochs: int | None = None,
) -> Path:
    """One ``compare`` call; its record (with the job's identity) written atomically."""
    import torch

    from neve_tune.compare import compare

    torch.set_num_threads(1)
    searches, rf, with_variants, _ = GROUPS[group]
    study = job_study(condition, group, max_epochs)
    t0 = time.perf_counter()
    record = compare(
        study,
        trials=trials,
        seed=seed,
        searches=searches,
        reduction_factor=rf,
        rung_signal=RUNG_SIGNAL.get(group),
        baseline_variants=baseline_variants if with_variants and baseline_variants else None,
        progress=False,
    )
    record["job"] = {
        "condition": condition,
        "group": group,
        "seed": seed,
        "trials": trials,
        "settings": GROUP_SETTINGS[group],
        "seconds": time.perf_counter() - t0,
    }
    return _write_record(job_path(out, condition, group, seed), record)


def _write_record(path: Path, record: dict[str, Any]) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)  # a job cut off mid-write leaves no record (or the old one)
    return path


def rerun_neve(
    out: Path,
    condition: str,
    group: str,
    seed: int,
    *,
    trials: int,
    max_epochs: int | None = None,
) -> Path:
    """The job's NeVe search run again, in place of the one its record holds (module doc);
    the record's means over seeds are recomputed as ``compare`` computes them."""
    import torch

    from neve_tune.compare import aggregate, compare
    from neve_tune.compare._api import paired
    from neve_tune.compare._variants import strongest_baseline

    torch.set_num_threads(1)
    path = job_path(out, condition, group, seed)
    record = json.loads(path.read_text())
    if record["trials"] != trials:
        raise ValueError(f"{path.name} ran {record['trials']} trials, not {trials}")
    study = job_study(condition, group, max_epochs)
    if record["max_epochs"] != study.max_epochs:
        raise ValueError(
            f"{path.name} ran max_epochs={record['max_epochs']}, not {study.max_epochs}: pass "
            "the --max-epochs it ran with"
        )
    _, rf, _, _ = GROUPS[group]
    t0 = time.perf_counter()
    fresh = compare(
        study,
        trials=trials,
        seed=seed,
        searches=("neve",),
        reduction_factor=rf,
        rung_signal=RUNG_SIGNAL.get(group),
        progress=False,
    )
    names = record["searches"]
    old_s, new_s = record["runs"][0]["neve"]["elapsed_s"], fresh["runs"][0]["neve"]["elapsed_s"]
    record["elapsed_s"] += new_s - old_s
    run = paired({**record["runs"][0], "neve": fresh["runs"][0]["neve"]})
    whole = aggregate([run], names)
    record.update(whole, runs=[run], rung_signal=fresh["rung_signal"])
    record["strongest_baseline"] = strongest_baseline(whole, [n for n in names if n != "neve"])
    record["notes"] = run["notes"]
    record["job"]["neve_rerun_seconds"] = time.perf_counter() - t0
    return _write_record(path, record)


def _list(text: str, known: Any, name: str, parser: argparse.ArgumentParser) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in known]
    if bad or not items:
        parser.error(f"--{name}: unknown {bad or text!r}; known: {', '.join(known)}")
    return items


def _seeds(text: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {text!r}")
    if not seeds or any(s < 0 for s in seeds):
        parser.error(f"--seeds must be non-negative integers, got {text!r}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--max-epochs", type=int, default=None, help="default: the study's")
    p.add_argument("--baseline-variants", default=BASELINE_VARIANTS)
    p.add_argument("--out", default=str(OUT), help="folder of the per-job records")
    p.add_argument("--report", action="store_true", help="write JSON, plots, page; run nothing")
    p.add_argument("--no-report", action="store_true", help="run the jobs only")
    p.add_argument(
        "--rerun-neve",
        action="store_true",
        help="run the NeVe search of every existing job again (module doc)",
    )
    p.add_argument("--results", default=None, help="where the JSON, plots and page go")
    args = p.parse_args(argv)
    conditions = _list(args.conditions, CONDITIONS, "conditions", p)
    groups = _list(args.groups, GROUPS, "groups", p)
    seeds = _seeds(args.seeds, p)
    if args.rerun_neve and args.report:
        p.error("--rerun-neve runs jobs and --report runs none: pass one of them")
    if args.trials < 1:
        p.error(f"--trials must be >= 1, got {args.trials}")
    if args.max_epochs is not None and args.max_epochs < 1:
        p.error(f"--max-epochs must be >= 1, got {args.max_epochs}")
    if args.baseline_variants:
        from neve_tune.compare._variants import parse_variants

        try:
            parse_variants(args.baseline_variants, job_study(conditions[0], "default"))
        except (TypeError, ValueError) as e:
            p.error(f"--baseline-variants: {e}")
    out = Path(args.out)
    # seed-major: an interrupted run leaves every condition with the same seeds
    jobs = [(c, g, s) for s in seeds for c in conditions for g in groups]
    if args.rerun_neve:
        jobs = [j for j in jobs if "neve" in GROUPS[j[1]][0]]  # the baselines-only groups
        missing = [job_path(out, *j).name for j in jobs if not job_path(out, *j).exists()]
        if missing:
            p.error(f"--rerun-neve: no record to update for {', '.join(missing)}")
        for c, g, s in jobs:
            t0 = time.perf_counter()
            rerun_neve(out, c, g, s, trials=args.trials, max_epochs=args.max_epochs)
            print(f"reran NeVe {c} {g} seed {s} ({time.perf_counter() - t0:.0f} s)", flush=True)
    elif not args.report:
        out.mkdir(parents=True, exist_ok=True)
        todo = [j for j in jobs if not job_path(out, *j).exists()]
        print(f"{len(todo)} of {len(jobs)} jobs to run", flush=True)
        for c, g, s in todo:
            t0 = time.perf_counter()
            run_job(
                out,
                c,
                g,
                s,
                trials=args.trials,
                baseline_variants=args.baseline_variants,
                max_epochs=args.max_epochs,
            )
            print(f"done {c} {g} seed {s} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.no_report:
        return 0
    import frontier_report

    results = Path(args.results) if args.results else None
    return frontier_report.publish(out, conditions, groups, seeds, args.trials, results)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
