"""The base of the alarm rules: one :class:`AlarmRule` per alarm kind, each a small object with its
own state, and the registry :data:`RULES` that :class:`~moebif.monitor.LayerMonitor` builds its
rules from (in the registry's order, which is the order alarms of one step are raised in).

A rule listens to the monitor's events and returns the alarms it raises:

- :meth:`AlarmRule.on_fit`: a concluded refit whose regime the model-based rules use
  (:class:`~moebif.monitor.estimation.Refit`); :meth:`AlarmRule.on_unused_fit`: one they do
  not (unresolved, short window, excursion, warming up), which resets their counts;
- :meth:`AlarmRule.on_forecast`: a new estimate of the forces' margin and its forecast;
- :meth:`AlarmRule.on_block`: a closed block of steps, with the profile's :class:`BlockContext`.

A new rule: subclass :class:`AlarmRule`, set ``kind`` (an :class:`~moebif.monitor.kinds.AlarmKind`)
and ``state_keys`` (the attributes its checkpoint holds besides ``active``), implement the events
it needs, and add it to :data:`RULES` in :mod:`moebif.monitor.rules`. A test checks every
registered rule against this interface (tests/monitor/test_rules.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..kinds import Alarm, AlarmKind

__all__ = ["AlarmRule", "BlockContext"]


@dataclass
class BlockContext:
    """What the profile rules see at a closed block (computed once by the monitor):

    - ``step``, ``layer``: for the alarms; ``ex``: the filtered max-load excess; ``gap``: the
      latent score gap ``d_max``; ``dm``: the dwell means (mean, first half, second half) or
      None; ``warming``: no short-term reference yet;
    - ``rise``: the excess above the short-term reference (``-inf`` while warming and not
      settled); ``lvl_in``, ``lvl_col``: the levels of ``collapse-in-progress`` and
      ``collapsed`` in force; ``noise``: the calm jitter of the rise a collapse must stand out
      of; ``ref_ex``: the short-term reference's excess;
    - ``drift``: the dwell-mean excess minus the frozen reference's (NaN before it);
      ``frozen``: the :class:`~moebif.monitor.profile.FrozenReference`;
    - ``tokens``: token slots per step; ``dying``: experts alive in the reference with nearly
      no load now; ``alive``: experts alive in the reference;
    - ``in_meta``: the metastable rule holds a saddle gap; ``past_saddle``: the gap passed its
      commit level."""

    step: int
    layer: str
    ex: float
    gap: float
    dm: tuple | None
    warming: bool
    rise: float
    lvl_in: float
    lvl_col: float
    noise: float
    ref_ex: float
    drift: float
    frozen: object
    tokens: float
    dying: int
    alive: int
    in_meta: bool
    past_saddle: bool

    def alarm(self, kind: AlarmKind, message: str) -> Alarm:
        return Alarm(step=self.step, kind=kind, message=message, layer=self.layer)


class AlarmRule:
    """One alarm kind and its state (see the module docstring). ``active``: raised and not yet
    re-armed or cleared. Subclasses set ``kind`` and ``state_keys``."""

    kind: ClassVar[AlarmKind]
    state_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, monitor) -> None:
        self.active = False

    # events (each returns the alarms it raises)

    def on_fit(self, monitor, rf) -> list[Alarm]:
        return []

    def on_unused_fit(self, monitor, rf) -> None:
        return None

    def on_forecast(self, monitor, est, fc, *, warm: bool) -> list[Alarm]:
        return []

    def on_block(self, monitor, ctx: BlockContext) -> list[Alarm]:
        return []

    # checkpoint

    def state_dict(self) -> dict:
        """``active`` and the ``state_keys`` as plain values (see :mod:`moebif.monitor.state`)."""
        from ..state import encode

        return {
            "active": bool(self.active),
            **{k: encode(getattr(self, k)) for k in self.state_keys},
        }

    def load_state_dict(self, state: dict) -> None:
        from ..state import decode

        missing = [k for k in ("active", *self.state_keys) if k not in state]
        if missing:
            raise ValueError(f"state: rule {self.kind!s} lacks {', '.join(missing)}")
        self.active = bool(state["active"])
        for k in self.state_keys:
            setattr(self, k, decode(state[k]))
