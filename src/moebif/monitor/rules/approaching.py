"""``approaching-threshold``: kappa_hat at or above ``threshold`` with the lower end of its 95%
interval at or above ``lower`` on ``approach_refits`` usable refits in a row (re-armed below
``threshold - 0.05``); or the forces' forecast says with confidence that the margin vanishes
within ``horizon`` steps, on ``approach_refits`` estimates in a row (re-armed once the margin's
lower end is positive and no collapse is forecast within twice the horizon)."""

from __future__ import annotations

import math

from ..kinds import Alarm, AlarmKind
from .base import AlarmRule

__all__ = ["ApproachingThreshold"]


class ApproachingThreshold(AlarmRule):
    kind = AlarmKind.APPROACHING
    state_keys = ("above", "forecast_above")

    def __init__(self, monitor) -> None:
        super().__init__(monitor)
        self.above = 0  # usable refits in a row at or above the threshold
        self.forecast_above = 0  # forecasts in a row of a collapse within the horizon

    def on_unused_fit(self, monitor, rf) -> None:
        self.above = 0

    def on_fit(self, monitor, rf) -> list[Alarm]:
        m = monitor
        kap = rf.kappa
        lo_ok = rf.kappa_lo >= m.lower or not math.isfinite(rf.kappa_lo)
        self.above = self.above + 1 if (kap >= m.threshold and lo_ok) else 0
        if self.above >= m.approach_refits and not self.active:
            self.active = True
            lo = "?" if not math.isfinite(rf.kappa_lo) else f"{rf.kappa_lo:.3f}"
            return [
                m.alarm(
                    self.kind,
                    f"kappa_hat = {kap:.3f} [{lo}, {rf.kappa_hi:.3f}] ({rf.source}) "
                    f">= {m.threshold:g} (lower end >= {m.lower:g}) on "
                    f"{m.approach_refits} refits; the slowest mode stops relaxing at 1",
                )
            ]
        if kap < m.threshold - 0.05:
            self.active = False
        return []

    def on_forecast(self, monitor, est, fc, *, warm: bool) -> list[Alarm]:
        m = monitor
        soon = (fc.steps_hi <= m.horizon) if math.isfinite(fc.steps_hi) else False
        self.forecast_above = self.forecast_above + 1 if (soon and not warm) else 0
        if self.forecast_above >= m.approach_refits and not self.active:
            self.active = True
            if fc.steps_to_collapse == 0.0:
                when = "the margin is negative already"
            else:
                when = (
                    f"the margin vanishes in {fc.steps_to_collapse:.0f} steps "
                    f"[{fc.steps_lo:.0f}, {fc.steps_hi:.0f}]"
                )
            return [
                m.alarm(
                    self.kind,
                    f"forces: alpha* = {est.critical_coefficient:.3g} [{est.critical_lo:.3g}, "
                    f"{est.critical_hi:.3g}] against the coefficient {est.coefficient:.3g}; "
                    f"{when} (knob at collapse {fc.knob_at_collapse:.3g})",
                )
            ]
        if self.active and self.forecast_above == 0 and fc.knob_margin_lo > 0:
            if not (math.isfinite(fc.steps_hi) and fc.steps_hi <= 2 * m.horizon):
                self.active = False
        return []
