"""Controller options NeVe refuses, with the message: each callback (Lightning, Hugging Face)
must refuse them when it is built, not when training starts."""

from __future__ import annotations

from typing import Any

REFUSED_BY_NEVE: list[tuple[dict[str, Any], str]] = [
    ({"num_classes": 1}, "num_classes must be an int >= 2"),
    ({"threshold_mode": "relatve"}, "threshold_mode must be one of"),
    ({"lr_signal": "velocty"}, "lr_signal must be one of"),
    ({"lr_factor": 5}, "lr_factor must be"),
    ({"min_epochs": -1}, "min_epochs must be"),
    ({"max_epochs": "10"}, "max_epochs must be"),
    ({"stall_margin": 2}, "stall_margin must be"),
    ({"pc_window": 0}, "pc_window must be"),
    ({"pc_restore": "meen"}, "pc_restore must be"),
]
