"""Strict JSON for records, CLI output and Optuna user attributes.

>>> import math
>>> json_safe({"v": math.nan, "n": [1, 2.5]})
{'v': None, 'n': [1, 2.5]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "write_json"]


def json_safe(x: Any) -> Any:
    """``x`` as strict JSON values: tensors/numpy scalars unwrapped, NaN and inf as None."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (non-finite numbers become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")
