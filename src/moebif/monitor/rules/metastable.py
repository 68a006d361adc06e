"""``metastable`` (N >= 3): kappa_hat at or above ``kappa_SN`` of the load profile on
``consecutive`` usable refits: a stable collapsed state exists, and jumps to it are
noise-induced (no lead time); the message carries the Eyring-Kramers escape time. Re-armed below
``kappa_SN - 0.03``. The rule also holds the score gaps of the one-winner saddle and of the
collapsed state at kappa_hat (near-uniform top-1 routers), which ``collapse-in-progress`` and
``recovered`` judge the latent gap against."""

from __future__ import annotations

import math

from ..estimation import saddle_gap
from ..kinds import Alarm, AlarmKind
from .base import AlarmRule

__all__ = ["Metastable"]


class Metastable(AlarmRule):
    kind = AlarmKind.METASTABLE
    state_keys = ("count", "d_s", "d_c", "d_commit")

    def __init__(self, monitor) -> None:
        super().__init__(monitor)
        self.count = 0  # usable refits in a row at or above kappa_SN
        self.d_s = self.d_c = self.d_commit = math.nan  # saddle, collapsed and commit gaps

    def on_unused_fit(self, monitor, rf) -> None:
        self.count = 0
        self.d_s = self.d_c = self.d_commit = math.nan

    def on_fit(self, monitor, rf) -> list[Alarm]:
        m, n = monitor, monitor.n_experts
        if n < 3:
            return []
        kap, ksn = rf.kappa, rf.collapse_kappa
        self.count = self.count + 1 if kap >= ksn else 0
        near_uniform = rf._esc_args is not None
        self.d_s, self.d_c = (
            saddle_gap(kap, n) if (near_uniform and ksn <= kap < 1.0) else (math.nan, math.nan)
        )
        self.d_commit = self.d_s + m.commit * (self.d_c - self.d_s)
        if self.count >= m.consecutive and not self.active:
            self.active = True
            esc = rf.escape_steps
            tau = f"{esc:.3g} steps" if math.isfinite(esc) else "not given (outside the theory)"
            return [
                m.alarm(
                    self.kind,
                    f"kappa_hat = {kap:.3f} >= {ksn:.3f}, where a stable collapsed state "
                    f"appears for this load profile: jumps to it are noise-induced and give "
                    f"no lead time; mean escape time {tau}",
                )
            ]
        if kap < ksn - 0.03:
            self.active = False
        return []

    @property
    def in_window(self) -> bool:
        """kappa_hat is in the metastable window of a near-uniform top-1 router and the alarm
        is active: the latent gap is judged against the saddle gap."""
        return math.isfinite(self.d_s) and self.active
