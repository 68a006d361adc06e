"""The monitor's vocabulary, named once: the regimes a fit is classified into, the alarm kinds,
and the estimator a fit came from. String-valued enums (:class:`enum.StrEnum`): a member equals
its string, formats as it, and is written to logs and JSON as it, so files keep the same words.
Checkpoints store the plain strings (:meth:`moebif.monitor.LayerMonitor.state_dict`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ACTIVE_KINDS", "Alarm", "AlarmKind", "Regime", "Source", "UNUSED_REGIMES"]


class Regime(StrEnum):
    """What a refit says about the router (``Refit.regime``, :mod:`moebif.monitor.estimation`)."""

    BALANCED = "balanced"  # kappa_hat < kappa_SN (or N = 2 below 1)
    METASTABLE = "metastable"  # kappa_SN <= kappa_hat < 1: a stable collapsed state exists
    COLLAPSING = "collapsing"  # kappa_hat >= 1
    UNRESOLVED = "unresolved"  # no estimator resolved the window
    SHORT_WINDOW = "short-window"  # the window spans too few relaxation units for the alarms
    EXCURSION = "excursion"  # the window overlaps a collapse alarm
    WARMING_UP = "warming-up"  # no stable load profile yet


# fits whose regime the model-based alarms do not use
UNUSED_REGIMES = frozenset(
    {Regime.UNRESOLVED, Regime.SHORT_WINDOW, Regime.EXCURSION, Regime.WARMING_UP}
)


class AlarmKind(StrEnum):
    """The alarms (:class:`moebif.monitor.Alarm` ``kind``); see :mod:`moebif.monitor.rules`."""

    APPROACHING = "approaching-threshold"
    METASTABLE = "metastable"
    COLLAPSE_IN_PROGRESS = "collapse-in-progress"
    COLLAPSED = "collapsed"
    DEAD_EXPERTS = "dead-experts"
    RECOVERED = "recovered"


# the alarms that stay active until a recovery: collapse-type, cleared together by `recovered`
ACTIVE_KINDS = (AlarmKind.COLLAPSE_IN_PROGRESS, AlarmKind.COLLAPSED, AlarmKind.DEAD_EXPERTS)


class Source(StrEnum):
    """The estimator behind a fit's kappa_hat."""

    LOGITS = "logits"  # the feedback measured from the router's logits (moebif.monitor.feedback)
    LOADS = "loads"  # the Whittle fit of the loads (moebif.monitor.whittle)
    NONE = "none"  # unresolved


@dataclass(frozen=True)
class Alarm:
    """One alarm: the step it was raised at (steps fed to the monitor), its ``kind``
    (:class:`AlarmKind`), a one-line ``message`` and the ``layer``."""

    step: int
    kind: str
    message: str
    layer: str = ""

    def to_dict(self) -> dict:
        return {"step": self.step, "kind": self.kind, "layer": self.layer, "message": self.message}
