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
    "Check",
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
class Check:
    """One quantitative condition of a claim, in the measured quantity's own units:
    ``lower <= value <= upper`` (either bound may be absent).

    ``slack`` is the signed distance of ``value`` from the nearer bound: positive inside,
    negative outside, ``None`` when the value is NaN. Over several seeds the claim's margin is
    the seed mean of the slack in units of the seed standard deviation of ``value`` (of the
    slack, where the bounds depend on the seed); see
    :func:`moebif.experiments.runner.aggregate_claims`. A strict inequality of the
    claim (``value > lower``) is stated with the same bound: slack 0 is the edge either way."""

    name: str
    value: float
    lower: float | None = None
    upper: float | None = None

    @classmethod
    def relative(cls, name: str, value: float, predicted: float, rtol: float) -> Check:
        """``|value / predicted - 1| <= rtol``, written as bounds on ``value``."""
        lo, hi = sorted((predicted * (1 - rtol), predicted * (1 + rtol)))
        return cls(name, value, lo, hi)

    @classmethod
    def absolute(cls, name: str, value: float, predicted: float, atol: float) -> Check:
        """``|value - predicted| <= atol``."""
        return cls(name, value, predicted - atol, predicted + atol)

    @property
    def slack(self) -> float | None:
        v = float(self.value)
        if math.isnan(v):
            return None
        gaps = [v - self.lower] if self.lower is not None else []
        gaps += [self.upper - v] if self.upper is not None else []
        return float(min(gaps)) if gaps else math.inf

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "value": jsonable(float(self.value)),
            "lower": None if self.lower is None else float(self.lower),
            "upper": None if self.upper is None else float(self.upper),
            "slack": jsonable(self.slack),
        }


@dataclass(frozen=True)
class Claim:
    """One checkable statement of the paper: what theory predicts, what was measured, whether it
    holds within the stated tolerance. A claim that fails is reported, never dropped.

    ``checks``: the claim's quantitative conditions as :class:`Check` rows (value and bounds),
    from which the runner derives its margin over seeds. Empty for a claim with no seed
    dependence (closed forms), whose margin is not defined."""

    id: str
    statement: str
    predicted: Any
    measured: Any
    tolerance: str
    holds: bool
    experiment: str = ""
    checks: tuple[Check, ...] = ()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "experiment": self.experiment,
            "statement": self.statement,
            "predicted": jsonable(self.predicted),
            "measured": jsonable(self.measured),
            "tolerance": self.tolerance,
            "holds": bool(self.holds),
            "checks": [c.to_dict() for c in self.checks],
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
