"""Predicted classes as a string, one character per example: compact in JSON storage
(Optuna user attributes, Ray results, checkpoints), where the selection subset's
predictions travel (``subset_pred``). :mod:`neve_tune.selection` re-exports both functions.
"""

from __future__ import annotations

import torch

__all__ = ["decode_predictions", "encode_predictions"]

_CODE_OFFSET, _CODE_LIMIT = 48, 55_000  # below the UTF-16 surrogates


def encode_predictions(classes: torch.Tensor) -> str:
    """Predicted classes as a string, one character per example (``chr(48 + class)``).

    >>> encode_predictions(torch.tensor([0, 3, 9]))
    '039'
    """
    values = classes.long().tolist()
    if values and not 0 <= min(values) <= max(values) < _CODE_LIMIT:
        raise ValueError(f"classes must be in [0, {_CODE_LIMIT}), got {min(values)}..{max(values)}")
    return "".join(chr(_CODE_OFFSET + c) for c in values)


def decode_predictions(codes: str) -> torch.Tensor:
    """The inverse of :func:`encode_predictions`."""
    return torch.tensor([ord(c) - _CODE_OFFSET for c in codes], dtype=torch.long)
