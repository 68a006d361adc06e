"""Where :class:`~moebif.monitor.hooks.RouterMonitor` sends the records of each step, behind one
small protocol (as torchtitan's MoE metrics hand their records to JSONL, TensorBoard and
histogram sinks): a :class:`Sink` has ``write(records)`` (one :class:`RouterRecord` per router
that ran in the step) and optionally ``close()``. The JSONL log (``log=``) is written as before;
``sinks=`` adds others. Sinks are called on the rank that writes the log (rank 0 of the group),
on the host, after the step's counts reached it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["ListSink", "RouterRecord", "Sink"]


@dataclass(frozen=True)
class RouterRecord:
    """One router in one step: ``step`` (the monitor's step index), ``layer`` (its label),
    ``counts`` (N,), ``importance`` and ``scores`` (N,) or None, ``tokens`` routed,
    ``dropped`` assignments, the force probe's sums ``forces`` (5,) or None, and the
    ``alarms`` its monitor raised at this step (dicts of :meth:`Alarm.to_dict`)."""

    step: int
    layer: str
    counts: np.ndarray
    importance: np.ndarray | None
    scores: np.ndarray | None
    tokens: int
    dropped: int
    forces: np.ndarray | None
    alarms: list[dict] = field(default_factory=list)


@runtime_checkable
class Sink(Protocol):
    def write(self, records: list[RouterRecord]) -> None: ...


class ListSink:
    """Keeps every record in memory (``records``): for tests and notebooks."""

    def __init__(self) -> None:
        self.records: list[RouterRecord] = []
        self.closed = False

    def write(self, records: list[RouterRecord]) -> None:
        self.records.extend(records)

    def close(self) -> None:
        self.closed = True
