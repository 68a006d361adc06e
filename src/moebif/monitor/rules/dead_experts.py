"""``dead-experts``: an expert that carried ``>= 0.25 / N`` of the load in the frozen reference
keeps a filtered load below ``dead_share`` of its reference share for a dwell (the judging is
:class:`moebif.monitor.profile.DeadExperts`). Active until ``recovered``; off with
``dead_share=None``."""

from __future__ import annotations

import numpy as np

from ..kinds import Alarm, AlarmKind
from ..profile import DeadExperts as DeadJudge
from .base import AlarmRule, BlockContext

__all__ = ["DeadExpertsRule"]


class DeadExpertsRule(AlarmRule):
    kind = AlarmKind.DEAD_EXPERTS
    state_keys = ("judge", "now")

    def __init__(self, monitor) -> None:
        super().__init__(monitor)
        share = 0.1 if monitor.dead_share is None else float(monitor.dead_share)
        self.judge = DeadJudge(monitor.n_experts, fraction=share)
        self.now = np.zeros(monitor.n_experts, dtype=bool)  # experts of the reference now dead

    def on_block(self, monitor, ctx: BlockContext) -> list[Alarm]:
        m, fr = monitor, ctx.frozen
        if m.dead_share is None or not fr.frozen:
            return []
        self.now = self.judge.update(m.filtered_loads, fr, m.block, ctx.tokens, m.dwell)
        if self.active or not self.now.any():
            return []
        self.active = True
        return [ctx.alarm(self.kind, self.message(m, fr))]

    def message(self, m, fr) -> str:
        idx = np.flatnonzero(self.now)
        names = ", ".join(str(i) for i in idx[:8]) + (", ..." if idx.size > 8 else "")
        ema = m.filtered_loads
        now = ", ".join(f"{ema[i]:.3f}" for i in idx[:8])
        was = ", ".join(f"{fr.loads[i]:.3f}" for i in idx[:8])
        return (
            f"{idx.size} expert(s) ({names}) of the {int(fr.alive().sum())} alive in the "
            f"reference profile frozen at step {fr.step} kept less than {m.dead_share:g} of "
            f"their reference share for {m.dwell} steps (filtered loads {now} against {was})"
        )
