"""benchmarks/cost_split.py: NeVe's cost against a baseline split into epochs, samples per epoch
and forward passes, on hand-made frontier records (no training)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cost_split  # noqa: E402

N = 1000  # training examples


def _search(epochs: dict[str, int], per_epoch: float, fwd: int, retrain: int = 0) -> dict:
    """A search whose trials trained ``epochs`` on ``per_epoch`` x N samples an epoch, with
    ``fwd`` forward-only samples, and a retrain of ``retrain`` epochs on all N."""
    train = sum(epochs.values()) * per_epoch * N + retrain * N
    cost = {"train_samples": train, "probe_samples": fwd, "eval_samples": 0, "wall_s": 1.0}
    cost["epochs_equiv"] = (train + fwd / 3) / N
    return {
        "epochs_by_rung": epochs,
        "cost": cost,
        "retrain": {"epochs": retrain} if retrain else None,
    }


def _run(seed: int, extra_neve_epochs: int = 0) -> dict:
    neve = _search({"1-1": 20, "2-4": 12, "5-16": 30 + extra_neve_epochs}, 1.0, 6000)
    base = _search({"1-1": 20, "2-4": 12, "5-16": 40}, 0.9, 3000, retrain=8)
    return {"seed": seed, "neve": neve, "asha_es:acc:retrain": base}


def test_the_three_factors_multiply_to_the_cost_ratio() -> None:
    run = _run(0)
    s = cost_split.split(run["neve"], run["asha_es:acc:retrain"])
    assert s["epochs"] == pytest.approx(62 / 80)
    # the baseline's 80 epochs (72 on 90% of the data, a retrain of 8 on all) hold 72.8 of NeVe's
    assert s["samples_per_epoch"] == pytest.approx(80 / (72 * 0.9 + 8))
    assert s["epochs"] * s["samples_per_epoch"] * s["forward"] == pytest.approx(s["cost"])
    assert s["forward"] > 1.0  # NeVe's 6,000 forward samples against the baseline's 3,000


def test_a_condition_gives_geometric_means_segments_and_the_strongest_baseline(tmp_path) -> None:
    records = tmp_path / "frontier"
    records.mkdir()
    for seed, extra in ((0, 0), (1, 30)):
        job = {"condition": "digits_noise20", "group": "default", "seed": seed}
        record = {"runs": [_run(seed, extra)], "job": job}
        (records / f"digits_noise20__default__seed{seed}.json").write_text(json.dumps(record))
    frontier = tmp_path / "frontier.json"
    entry = {"strongest_baseline": "asha_es:acc:retrain"}
    frontier.write_text(json.dumps({"conditions": {"digits_noise20": entry, "other": entry}}))
    splits = cost_split.load(records, frontier, None)
    assert list(splits) == ["digits_noise20"]  # a condition without records is left out
    got = splits["digits_noise20"]
    costs = [
        cost_split.split(r["neve"], r["asha_es:acc:retrain"])["cost"]
        for r in (_run(0), _run(1, 30))
    ]
    assert got["cost"] == pytest.approx(math.sqrt(costs[0] * costs[1]))
    assert got["cost_mean"] == pytest.approx(sum(costs) / 2)
    assert got["epochs"] * got["samples_per_epoch"] * got["forward"] == pytest.approx(got["cost"])
    assert got["neve_segments"]["5-16"] == 45 and got["against_segments"]["retrain"] == 8
    table = cost_split.table(splits, markdown=True)
    assert "| digits_noise20 | asha_es:acc:retrain |" in table
    with pytest.raises(SystemExit, match="'asha' is not in every record of digits_noise20"):
        cost_split.load(records, frontier, "asha")
    # a point of another group: its record of the same seed, NeVe still the default group's
    for seed in (0, 1):
        job = {"condition": "digits_noise20", "group": "es_patience5", "seed": seed}
        base = _search({"1-1": 20, "2-4": 12, "5-16": 20}, 0.9, 2000, retrain=8)
        record = {"runs": [{"seed": seed, "asha_es:acc:retrain": base}], "job": job}
        (records / f"digits_noise20__es_patience5__seed{seed}.json").write_text(json.dumps(record))
    short = cost_split.load(records, frontier, "asha_es:acc:retrain es_patience5")
    assert short["digits_noise20"]["against_segments"]["5-16"] == 20
    assert short["digits_noise20"]["neve_segments"]["5-16"] == 45
    assert short["digits_noise20"]["cost"] > got["cost"]  # a cheaper baseline
    with pytest.raises(SystemExit, match="'asha es_patience5' is not in every record"):
        cost_split.load(records, frontier, "asha es_patience5")


def test_no_records_is_an_error_that_says_how_to_make_them(tmp_path, capsys) -> None:
    frontier = tmp_path / "frontier.json"
    frontier.write_text(json.dumps({"conditions": {}}))
    argv = ["--records", str(tmp_path), "--frontier", str(frontier)]
    with pytest.raises(SystemExit, match="run benchmarks/frontier.py"):
        cost_split.main(argv)
