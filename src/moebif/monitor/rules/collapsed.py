"""``collapsed``: the filtered max-load excess rose ``collapsed`` above the short-term reference
(above the calm jitter), or the dwell mean drifted ``collapsed`` from the frozen reference, or
half the experts alive in the reference are dead over a block. Active until ``recovered``."""

from __future__ import annotations

import math

from ..kinds import Alarm, AlarmKind
from .base import AlarmRule, BlockContext

__all__ = ["Collapsed"]


class Collapsed(AlarmRule):
    kind = AlarmKind.COLLAPSED

    def on_block(self, monitor, ctx: BlockContext) -> list[Alarm]:
        m = monitor
        many_dead = ctx.alive > m.top_k and ctx.dying >= max(1, (ctx.alive - m.top_k + 1) // 2)
        drift_collapsed = ctx.drift >= m.collapsed
        if self.active or not (
            ctx.rise >= max(ctx.lvl_col, ctx.noise) or drift_collapsed or many_dead
        ):
            return []
        self.active = True
        fr = ctx.frozen
        if fr.frozen and math.isfinite(ctx.drift):
            where = (
                f"{ctx.drift + fr.excess:.2f} over the last {m.dwell} steps against "
                f"{fr.excess:.2f} in the reference frozen at step {fr.step}"
            )
        elif not ctx.warming:
            where = f"recent stable profile {ctx.ref_ex:.2f}; no long-term reference yet"
        else:
            where = "while warming up: no stable profile yet"
        lost = (
            f", {ctx.dying} of {ctx.alive} experts alive in it dropped out"
            if not ctx.warming
            else ""
        )
        return [
            ctx.alarm(
                self.kind,
                f"filtered max-load excess {ctx.ex:.2f} ({where}){lost}: the load sits on few "
                "experts",
            )
        ]
