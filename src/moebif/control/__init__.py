"""Closed-loop balancing of MoE routers in training: :class:`RouterController` drives one
selection bias per router with the gain-scheduled proportional-integral law of
:mod:`moebif.model.control_law` (see docs/control.md)."""

from ..model.control_law import ControlGains as ControlGains
from .controller import RouterController as RouterController

__all__ = ["ControlGains", "RouterController"]
