"""``collapse-in-progress``: the latent score gap passed the commit level between the saddle and
the collapsed gap (metastable near-uniform top-1 router), or the filtered max-load excess rose
``excursion`` above the short-term reference (above the calm jitter), or the excess of the dwell
mean drifted ``excursion`` from the frozen long-term reference. Active until ``recovered``."""

from __future__ import annotations

from ..kinds import Alarm, AlarmKind
from .base import AlarmRule, BlockContext

__all__ = ["CollapseInProgress"]


class CollapseInProgress(AlarmRule):
    kind = AlarmKind.COLLAPSE_IN_PROGRESS

    def on_block(self, monitor, ctx: BlockContext) -> list[Alarm]:
        m = monitor
        runaway = ctx.rise >= max(ctx.lvl_in, ctx.noise)
        drifting = ctx.drift >= m.excursion  # False while NaN
        if self.active or not (ctx.past_saddle or runaway or drifting):
            return []
        self.active = True
        meta = m.rules[AlarmKind.METASTABLE]
        if ctx.past_saddle:
            why = (
                f"latent score gap {ctx.gap:.2f} passed the saddle gap {meta.d_s:.2f} by "
                f"{m.commit:g} of the way to the collapsed gap {meta.d_c:.2f}"
            )
        elif ctx.warming:
            why = f"filtered max-load excess {ctx.ex:.2f} >= {ctx.lvl_in:g} while warming up"
        elif runaway:
            why = (
                f"filtered max-load excess {ctx.ex:.2f} rose {ctx.rise:.2f} above the router's "
                f"recent stable profile ({ctx.ref_ex:.2f})"
            )
        else:
            fr = ctx.frozen
            why = (
                f"max-load excess {m.excess(ctx.dm[0]):.2f} over the last {m.dwell} steps "
                f"drifted {ctx.drift:+.2f} from the reference profile frozen at step "
                f"{fr.step} ({fr.excess:.2f})"
            )
        return [ctx.alarm(self.kind, why + "; the router is leaving balance")]
