"""What every experiment shares: claims, the result record, serialisation of configs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .._io import jsonable

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
    """One evaluated experiment: its data (for the files), the claims checked on it, notes."""

    data: dict[str, Any]
    claims: list[Claim] = field(default_factory=list)
    notes: str = ""
    legacy: bool = False  # returned by a module's own run() (not yet split)


def config_to_dict(config) -> dict:
    return jsonable(dataclasses.asdict(config))
