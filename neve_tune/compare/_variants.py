"""The validation baselines as a careful practitioner runs them: variants, the strongest
one, and a note when a baseline's final model ends far below its own winner.

A variant is ``method:val_metric:final`` (``asha_es:acc:best_checkpoint``): the search
(``asha``, ``asha_es``), the validation metric it decides on (``loss``, ``acc``) and its
final model (``retrain``, ``best_checkpoint``); parts left out are the study's.

    >>> from neve_tune import load_study
    >>> specs = "asha_es:acc:best_checkpoint, asha:acc"
    >>> [v.name for v in parse_variants(specs, load_study("digits"))]
    ['asha_es:acc:best_checkpoint', 'asha:acc:retrain']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._search_records import SearchTrial
from ..records import FINAL_MODELS, VAL_METRICS

__all__ = [
    "BASELINE_METHODS",
    "NOTE_GAP",
    "BaselineVariant",
    "final_model_note",
    "parse_variants",
    "strongest_baseline",
]

BASELINE_METHODS = ("asha", "asha_es")
#: how far (accuracy, 0-1) the final model may end below its winner before the report says why
NOTE_GAP = 0.10


@dataclass(frozen=True)
class BaselineVariant:
    """One validation search as run: its method, validation metric and final model."""

    method: str
    val_metric: str
    final: str

    @property
    def name(self) -> str:
        return f"{self.method}:{self.val_metric}:{self.final}"


def parse_variants(specs: str | Sequence[str] | None, study: Any) -> list[BaselineVariant]:
    """The variants ``specs`` names (a comma-separated string or a list of
    ``method[:val_metric[:final]]``), parts left out taken from ``study``; each bad one
    refused in one line naming ``baseline_variants``."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [s for s in specs.split(",")]
    if not isinstance(specs, (list, tuple)) or not all(isinstance(s, str) for s in specs):
        raise TypeError(f"baseline_variants must be a string or a list of strings, got {specs!r}")
    out: list[BaselineVariant] = []
    for spec in (s.strip() for s in specs):
        parts = spec.split(":")
        if not spec or len(parts) > 3:
            raise ValueError(
                f"baseline_variants: {spec!r} is not method[:val_metric[:final]] "
                "(e.g. 'asha_es:acc:best_checkpoint')"
            )
        method, metric, final = (parts + [study.val_metric, study.final][len(parts) - 1 :])[:3]
        for what, value, choices in (
            ("method", method, BASELINE_METHODS),
            ("val_metric", metric, VAL_METRICS),
            ("final", final, FINAL_MODELS),
        ):
            if value not in choices:
                raise ValueError(
                    f"baseline_variants: {spec!r} has {what} {value!r}; choose from {choices}"
                )
        variant = BaselineVariant(method, metric, final)
        if variant in out:
            raise ValueError(f"baseline_variants: {variant.name!r} is given twice")
        out.append(variant)
    return out


def strongest_baseline(result: Mapping[str, Any], baselines: Sequence[str]) -> str | None:
    """The baseline with the highest mean test accuracy of its final model, ties broken by
    the lower mean cost to that model; None when none has a score."""
    scored = [b for b in baselines if result[b].get("test_acc") is not None]
    if not scored:
        return None
    return min(
        scored,
        key=lambda b: (-result[b]["test_acc"], result[b]["cost"].get("epochs_equiv") or math.inf),
    )


def _best_val(trial: SearchTrial) -> tuple[float, int] | None:
    vals = [
        (float(v), i + 1)
        for i, v in enumerate(trial.val_acc)
        if v is not None and math.isfinite(float(v))
    ]
    return max(vals, key=lambda p: (p[0], -p[1])) if vals else None


def final_model_note(
    name: str,
    method: str,
    val_metric: str,
    final: str,
    best: SearchTrial | None,
    retrain: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """Why a validation search's final model ends far below its own winner, judged without
    the test set: the winner's best validation accuracy against what the final model
    reaches on the data it can be judged on (a retrain: its last epoch's training
    accuracy; the winner's checkpoint: its validation accuracy). None when the gap is at
    most :data:`NOTE_GAP` or nothing measures it."""
    top = None if best is None else _best_val(best)
    if top is None:
        return None
    peak, peak_epoch = top
    at = (
        f"the winner reached {100 * peak:.1f}% validation accuracy "
        f"(epoch {peak_epoch} of {best.epochs})"
    )
    which = f"its best validation {val_metric}"
    if retrain is not None:
        reached, n = retrain.get("train_acc"), int(retrain["epochs"])
        why = (
            f"up to {which}, epoch {best.best_epoch}"
            if method == "asha_es"
            else "every epoch the winner ran"
        )
        what = (
            f"the final model, retrained for {n} epoch{'s' if n != 1 else ''} ({why}), fits "
            f"{{:.1f}}% of the training labels"
        )
    else:
        epoch = int(best.best_epoch or best.epochs) if final == "best_checkpoint" else best.epochs
        reached = best.val_acc[epoch - 1] if 0 < epoch <= len(best.val_acc) else None
        kept = (
            f"the kept checkpoint (epoch {epoch}, {which})"
            if final == "best_checkpoint"
            else f"the winner's last epoch ({epoch})"
        )
        what = f"{kept} has {{:.1f}}% validation accuracy"
    if reached is None or not math.isfinite(float(reached)) or peak - float(reached) <= NOTE_GAP:
        return None
    text = f"{name}: {what.format(100 * float(reached))}; {at}"
    return {"search": name, "final_acc": float(reached), "winner_val_acc": peak, "text": text}
