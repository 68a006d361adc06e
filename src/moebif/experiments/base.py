"""What every experiment shares: claims, the result record, serialisation of configs, and the
readers of saved data (``data.json`` has lists for arrays and ``None`` for NaN)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._io import jsonable

__all__ = [
    "Claim",
    "ExperimentResult",
    "config_from_dict",
    "config_to_dict",
    "floats",
    "json_roundtrip",
    "jsonable",
    "num",
]


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
    """One evaluated experiment: its data (for the files), the claims checked on it, notes."""

    data: dict[str, Any]
    claims: list[Claim] = field(default_factory=list)
    notes: str = ""


def config_to_dict(config) -> dict:
    return jsonable(dataclasses.asdict(config))


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def config_from_dict(cls, values: dict):
    """Rebuild a frozen ``Config`` from :func:`config_to_dict` output (JSON lists become the
    tuples the dataclass holds). Fields the class no longer has are ignored; fields it has
    gained take their defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _tuples(v) for k, v in values.items() if k in names})


def json_roundtrip(data):
    """``data`` exactly as it reads back from ``data.json`` (floats round-trip exactly; arrays
    become lists, NaN becomes None)."""
    return json.loads(json.dumps(jsonable(data), allow_nan=False))


def floats(x) -> np.ndarray:
    """A saved series (nested lists, ``None`` for NaN) as a float array with NaN."""
    return np.asarray(x, dtype=float)


def num(x) -> float:
    """A saved number as a float (``None``, the JSON form of NaN, becomes NaN)."""
    return math.nan if x is None else float(x)
