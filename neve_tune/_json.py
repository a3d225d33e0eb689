"""Strict JSON for records, CLI output and Optuna user attributes.

>>> import math
>>> json_safe({"v": math.nan, "n": [1, 2.5]})
{'v': None, 'n': [1, 2.5]}
>>> import numpy as np
>>> json_safe({"per_class": np.array([0.5, math.nan]), "n": np.int64(3)})
{'per_class': [0.5, None], 'n': 3}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "write_json"]


def json_safe(x: Any) -> Any:
    """``x`` as strict JSON values: tensors/NumPy scalars unwrapped, tensors/arrays as (nested)
    lists, NaN and inf as None."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "tolist") and callable(x.tolist):  # NumPy arrays and scalars, tensors
        return json_safe(x.tolist())
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
