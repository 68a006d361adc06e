"""``recovered`` (information): at least a dwell after the last alarm, both halves of the last
dwell are back within ``RECOVER x excursion`` of the reference's excess (the frozen one once it
exists, else the short-term one from before the alarm), the loads are stationary, every expert
alive in the reference carries load again and, in the metastable regime, the latent gap stayed
below half the saddle gap for a dwell. It clears every collapse-type alarm at once. When the
long-term reference is frozen (the layer settled), the alarms raised before it clear too."""

from __future__ import annotations

from ..kinds import ACTIVE_KINDS, Alarm, AlarmKind
from .base import AlarmRule, BlockContext

__all__ = ["RECOVER", "Recovered"]

RECOVER = 0.6  # recovered: both dwell halves back within this x excursion of the profile left


class Recovered(AlarmRule):
    kind = AlarmKind.RECOVERED
    state_keys = ("calm", "since_alarm", "ref_pre")

    def __init__(self, monitor) -> None:
        super().__init__(monitor)
        self.calm = 0  # steps in a row with the latent gap calm (metastable rule)
        self.since_alarm = 0  # steps since the last collapse alarm
        self.ref_pre = None  # the short-term reference before the current collapse alarm

    def after_block(self, monitor, ctx: BlockContext, raised: list[Alarm]) -> None:
        """Bookkeeping after the other rules saw the block (``raised``: their alarms)."""
        m = monitor
        if raised and m.collapse_active() and self.ref_pre is None and m.reference is not None:
            self.ref_pre = m.reference
        meta = m.rules[AlarmKind.METASTABLE]
        self.calm = 0 if (ctx.in_meta and ctx.gap > 0.5 * meta.d_s) else self.calm + m.block
        self.since_alarm = 0 if raised else self.since_alarm + m.block

    def due(self, monitor) -> bool:
        """A collapse-type alarm is active and a dwell has passed since the last alarm."""
        m = monitor
        return any(m.rules[k].active for k in ACTIVE_KINDS) and self.since_alarm >= m.dwell

    def on_block(self, monitor, ctx: BlockContext) -> list[Alarm]:
        m, dm = monitor, ctx.dm
        if dm is None or self.calm < m.dwell:
            return []
        fr = ctx.frozen
        if fr.frozen:
            target, what = fr.loads, f"the reference frozen at step {fr.step}"
        elif self.ref_pre is not None:
            target, what = self.ref_pre, "the profile before the collapse"
        else:
            return []
        mean = dm[0]
        # both halves of the dwell back (an excess swinging in and out is not back)
        rise = max(m.excess(dm[1]), m.excess(dm[2])) - m.excess(target)
        if rise >= RECOVER * m.excursion or not m.stationary(dm[1:]):
            return []
        dead = m.rules[AlarmKind.DEAD_EXPERTS]
        if fr.frozen and m.dead_share is not None:
            if not dead.judge.revived(mean, fr, ctx.tokens, m.dwell):
                return []
        elif m.dead_count(mean, target) > 0:
            return []
        for kind in ACTIVE_KINDS:
            m.rules[kind].active = False
        dead.now[:] = False
        m.restart_reference(mean)  # the stable profile it came back to (it may differ)
        self.ref_pre = None
        return [
            ctx.alarm(
                self.kind,
                f"back at a stable profile: max-load excess {m.excess(mean):.2f} averaged "
                f"over the last {m.dwell} steps ({rise:+.2f} against {what}), every expert "
                "alive in it carries load again",
            )
        ]

    def settled(self, monitor, fr) -> list[Alarm]:
        """The long-term reference was just frozen: the layer settled, and the alarms raised
        before it (during the initial transient, against no or a short-lived reference) clear."""
        m = monitor
        m.restart_reference(fr.loads, fr.excess)  # the short-term one restarts from it
        kinds = [kind for kind in ACTIVE_KINDS if m.rules[kind].active]
        if not kinds:
            return []
        for kind in kinds:
            m.rules[kind].active = False
        self.ref_pre = None
        return [
            m.alarm(
                self.kind,
                f"the layer settled: its profile (max-load excess {fr.excess:.2f}) was stationary "
                "over two spans and is frozen as the long-term reference; the "
                f"{' and '.join(kinds)} raised before it belonged to the initial transient",
            )
        ]
