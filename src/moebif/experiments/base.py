"""What every experiment shares: claims, the result record, serialisation of configs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Claim", "ExperimentResult", "config_to_dict", "jsonable"]


@dataclass(frozen=True)
class Claim:
    """One checkable statement of the paper: what theory predicts, what was measured, whether it
    holds within the stated tolerance. A claim that fails is reported, never dropped."""

    id: str
    statement: str
    predicted: Any
    measured: Any
    tolerance: str
    holds: bool
    experiment: str = ""

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "experiment": self.experiment,
            "statement": self.statement,
            "predicted": jsonable(self.predicted),
            "measured": jsonable(self.measured),
            "tolerance": self.tolerance,
            "holds": bool(self.holds),
        }


@dataclass
class ExperimentResult:
    """What ``run(config)`` returns: data for the files, and the claims it checks."""

    data: dict[str, Any]
    claims: list[Claim] = field(default_factory=list)
    notes: str = ""


def jsonable(x):
    """Convert numpy scalars/arrays (and nested containers) to JSON-ready Python objects;
    non-finite floats become None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else None
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(dataclasses.asdict(x))
    return x


def config_to_dict(config) -> dict:
    return jsonable(dataclasses.asdict(config))
